//! Device linking (`shared/reference/zajel-wire.md` §6) as Zajel's server
//! does it, sans-IO: `link_request` / `link_response` and connection
//! closes in (with `now`), the frames for each pairing code out, and the
//! next deadline for the caller's timer.
//!
//! The link code is the mobile's pairing code. A `link_request` for a code
//! no connection holds gets `link_error` "Link request could not be
//! processed"; otherwise the mobile gets `link_request` (`expiresIn`
//! 120 000 ms) and the request waits, one per code (a newer one silently
//! replaces it). The mobile answers with `link_response` for its own code
//! only ("Cannot respond to link request for another device"); with nothing
//! pending it gets `link_error` "No pending link request found"; when the
//! web client is gone, silence. Accepted: `link_matched` to both (the web
//! client's with the mobile's registered key and `deviceId`, the mobile's
//! with the web client's key, `webClientCode` and `deviceName`); declined:
//! `link_rejected` to the web client only. At the deadline both get
//! `link_timeout`; a web client that leaves first sends the mobile
//! `link_timeout` at once; a mobile that leaves drops its request silently.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use zajel_wire::pairing::PairingCode;
use zajel_wire::rendezvous::{self as wire, RelayReply};

/// A frame for the connection holding a pairing code.
pub(crate) type Send = (PairingCode, RelayReply);

/// A frame for the sender itself, as an `error` or a typed reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LinkReply {
    Error(&'static str),
    Reply(RelayReply),
}

#[derive(Debug)]
struct PendingLink {
    web_code: PairingCode,
    web_public_key: String,
    device_name: String,
    deadline: Instant,
}

/// Pending link requests by link code.
#[derive(Debug)]
pub(crate) struct Links {
    timeout: Duration,
    pending: HashMap<PairingCode, PendingLink>,
}

impl Links {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            pending: HashMap::new(),
        }
    }

    /// `link_request` from the web client registered as `web_code`;
    /// `mobile_present`: a connection holds `link_code`. Returns the reply
    /// to the web client (if any) and the frames for others.
    pub fn request(
        &mut self,
        now: Instant,
        web_code: PairingCode,
        link_code: PairingCode,
        public_key: String,
        device_name: String,
        mobile_present: bool,
    ) -> (Option<LinkReply>, Vec<Send>) {
        if !mobile_present {
            return (
                Some(LinkReply::Reply(RelayReply::LinkError {
                    error: wire::LINK_REQUEST_FAILED.to_string(),
                })),
                Vec::new(),
            );
        }
        let incoming = RelayReply::LinkRequest {
            link_code: link_code.to_string(),
            public_key: public_key.clone(),
            device_name: device_name.clone(),
            expires_in: self.timeout.as_millis() as u64,
        };
        self.pending.insert(
            link_code,
            PendingLink {
                web_code,
                web_public_key: public_key,
                device_name,
                deadline: now + self.timeout,
            },
        );
        (None, vec![(link_code, incoming)])
    }

    /// `link_response` from the mobile registered as `mobile_code` with key
    /// `mobile_key`; `web_present(code)`: a connection still holds the web
    /// client's code.
    pub fn respond(
        &mut self,
        mobile_code: PairingCode,
        mobile_key: &str,
        link_code: PairingCode,
        accepted: bool,
        device_id: Option<String>,
        web_present: impl Fn(PairingCode) -> bool,
    ) -> (Option<LinkReply>, Vec<Send>) {
        if link_code != mobile_code {
            return (
                Some(LinkReply::Error(wire::LINK_FOR_ANOTHER_DEVICE)),
                Vec::new(),
            );
        }
        let Some(pending) = self.pending.remove(&link_code) else {
            return (
                Some(LinkReply::Reply(RelayReply::LinkError {
                    error: wire::NO_PENDING_LINK_REQUEST.to_string(),
                })),
                Vec::new(),
            );
        };
        if !web_present(pending.web_code) {
            return (None, Vec::new());
        }
        let link = link_code.to_string();
        if !accepted {
            return (
                None,
                vec![(
                    pending.web_code,
                    RelayReply::LinkRejected { link_code: link },
                )],
            );
        }
        let to_web = RelayReply::LinkMatched {
            link_code: link.clone(),
            peer_public_key: mobile_key.to_string(),
            is_initiator: true,
            device_id,
            web_client_code: None,
            device_name: None,
        };
        let to_mobile = RelayReply::LinkMatched {
            link_code: link,
            peer_public_key: pending.web_public_key,
            is_initiator: false,
            device_id: None,
            web_client_code: Some(pending.web_code.to_string()),
            device_name: Some(pending.device_name),
        };
        (
            None,
            vec![(pending.web_code, to_web), (mobile_code, to_mobile)],
        )
    }

    /// Expires the requests due at `now`: `link_timeout` to both sides.
    pub fn expire(&mut self, now: Instant) -> Vec<Send> {
        let due: Vec<PairingCode> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(code, _)| *code)
            .collect();
        let mut sends = Vec::new();
        for link_code in due {
            let pending = self.pending.remove(&link_code).expect("present");
            let timeout = RelayReply::LinkTimeout {
                link_code: link_code.to_string(),
            };
            sends.push((pending.web_code, timeout.clone()));
            sends.push((link_code, timeout));
        }
        sends
    }

    /// The earliest pending deadline.
    #[cfg(test)]
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// The connection holding `code` left: a mobile's request is dropped
    /// silently; a web client's request ends with `link_timeout` to the mobile.
    pub fn code_left(&mut self, code: PairingCode) -> Vec<Send> {
        self.pending.remove(&code);
        let gone: Vec<PairingCode> = self
            .pending
            .iter()
            .filter(|(_, p)| p.web_code == code)
            .map(|(link, _)| *link)
            .collect();
        gone.into_iter()
            .map(|link_code| {
                self.pending.remove(&link_code);
                (
                    link_code,
                    RelayReply::LinkTimeout {
                        link_code: link_code.to_string(),
                    },
                )
            })
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBLPHN_KEY: &str = "mobile-key";
    const TIMEOUT: Duration = Duration::from_millis(wire::LINK_REQUEST_TIMEOUT_MS);

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn text(send: &Send) -> (String, String) {
        (send.0.to_string(), send.1.to_text())
    }

    fn request(links: &mut Links, now: Instant, web: &str) -> (Option<LinkReply>, Vec<Send>) {
        links.request(
            now,
            code(web),
            code("MBLPHN"),
            format!("{web}-key"),
            "Firefox on Linux".into(),
            true,
        )
    }

    #[test]
    fn an_accepted_request_matches_both_sides_in_zajels_shapes() {
        let mut links = Links::new(TIMEOUT);
        let now = Instant::now();
        let (reply, sends) = request(&mut links, now, "WEBAAA");
        assert_eq!(reply, None);
        assert_eq!(
            text(&sends[0]),
            (
                "MBLPHN".into(),
                r#"{"type":"link_request","linkCode":"MBLPHN","publicKey":"WEBAAA-key","deviceName":"Firefox on Linux","expiresIn":120000}"#.into()
            )
        );
        let (reply, sends) = links.respond(
            code("MBLPHN"),
            MBLPHN_KEY,
            code("MBLPHN"),
            true,
            Some("link_MBLPHN".into()),
            |_| true,
        );
        assert_eq!(reply, None);
        let sends: Vec<_> = sends.iter().map(text).collect();
        assert_eq!(
            sends,
            [
                (
                    "WEBAAA".to_string(),
                    r#"{"type":"link_matched","linkCode":"MBLPHN","peerPublicKey":"mobile-key","isInitiator":true,"deviceId":"link_MBLPHN"}"#.to_string()
                ),
                (
                    "MBLPHN".to_string(),
                    r#"{"type":"link_matched","linkCode":"MBLPHN","peerPublicKey":"WEBAAA-key","isInitiator":false,"webClientCode":"WEBAAA","deviceName":"Firefox on Linux"}"#.to_string()
                ),
            ]
        );
        assert_eq!(links.len(), 0);
    }

    #[test]
    fn refusals_use_zajels_texts() {
        let mut links = Links::new(TIMEOUT);
        let now = Instant::now();
        let (reply, sends) = links.request(
            now,
            code("WEBAAA"),
            code("NBDY22"),
            "k".into(),
            "d".into(),
            false,
        );
        assert_eq!(
            reply.map(|r| match r {
                LinkReply::Reply(reply) => reply.to_text(),
                LinkReply::Error(e) => e.into(),
            }),
            Some(r#"{"type":"link_error","error":"Link request could not be processed"}"#.into())
        );
        assert!(sends.is_empty());
        let (reply, _) = links.respond(
            code("MBLPHN"),
            MBLPHN_KEY,
            code("MBLPHN"),
            true,
            None,
            |_| true,
        );
        assert_eq!(
            reply,
            Some(LinkReply::Reply(RelayReply::LinkError {
                error: "No pending link request found".into()
            }))
        );
        request(&mut links, now, "WEBAAA");
        // Another connection cannot answer for the mobile.
        let (reply, _) = links.respond(
            code("THEF22"),
            MBLPHN_KEY,
            code("MBLPHN"),
            true,
            None,
            |_| true,
        );
        assert_eq!(
            reply,
            Some(LinkReply::Error(
                "Cannot respond to link request for another device"
            ))
        );
        assert_eq!(links.len(), 1);
        // Declined: link_rejected to the web client only.
        let (reply, sends) = links.respond(
            code("MBLPHN"),
            MBLPHN_KEY,
            code("MBLPHN"),
            false,
            None,
            |_| true,
        );
        assert_eq!(reply, None);
        assert_eq!(
            sends.iter().map(text).collect::<Vec<_>>(),
            [(
                "WEBAAA".to_string(),
                r#"{"type":"link_rejected","linkCode":"MBLPHN"}"#.to_string()
            )]
        );
        // Web client gone before the answer: silence.
        request(&mut links, now, "WEBAAA");
        let (reply, sends) = links.respond(
            code("MBLPHN"),
            MBLPHN_KEY,
            code("MBLPHN"),
            true,
            None,
            |_| false,
        );
        assert_eq!((reply, sends.len()), (None, 0));
    }

    #[test]
    fn requests_time_out_to_both_and_a_newer_one_replaces_the_older() {
        let mut links = Links::new(TIMEOUT);
        let start = Instant::now();
        request(&mut links, start, "WEBAAA");
        request(&mut links, start + Duration::from_secs(10), "WEBBBB");
        assert_eq!(links.len(), 1);
        assert_eq!(
            links.next_deadline(),
            Some(start + Duration::from_secs(130))
        );
        assert!(links.expire(start + Duration::from_secs(129)).is_empty());
        let sends: Vec<_> = links
            .expire(start + Duration::from_secs(130))
            .iter()
            .map(text)
            .collect();
        let timeout = r#"{"type":"link_timeout","linkCode":"MBLPHN"}"#.to_string();
        // Only the newer web client hears of it: the older one was replaced silently.
        assert_eq!(
            sends,
            [
                ("WEBBBB".to_string(), timeout.clone()),
                ("MBLPHN".to_string(), timeout)
            ]
        );
        assert_eq!(links.next_deadline(), None);
    }

    #[test]
    fn a_web_client_leaving_times_out_the_mobile_and_a_mobile_leaving_is_silent() {
        let mut links = Links::new(TIMEOUT);
        let now = Instant::now();
        request(&mut links, now, "WEBAAA");
        let sends: Vec<_> = links.code_left(code("WEBAAA")).iter().map(text).collect();
        assert_eq!(
            sends,
            [(
                "MBLPHN".to_string(),
                r#"{"type":"link_timeout","linkCode":"MBLPHN"}"#.to_string()
            )]
        );
        request(&mut links, now, "WEBAAA");
        assert!(links.code_left(code("MBLPHN")).is_empty());
        assert_eq!(links.len(), 0);
        assert!(links.expire(now + TIMEOUT).is_empty());
    }
}
