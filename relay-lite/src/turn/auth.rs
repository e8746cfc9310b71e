//! Long-term credentials in the shared-secret scheme for the TURN server:
//! the `AuthHandler` the webrtc-rs server asks for keys, and `GuardedConn`,
//! which answers a request carrying a wrong password, a malformed or expired
//! username or a foreign realm with 401 Unauthorized (RFC 8489 §9.2.4), as
//! coturn does. (The webrtc-rs server itself would answer 400.) A
//! credential's expiry bounds when it can make an allocation: Refresh,
//! CreatePermission and ChannelBind on an allocation made in time keep
//! working with it (relay-lite's credentials are short-lived and renewed,
//! and a WebRTC agent keeps refreshing with the one it allocated with); the
//! allocation still ends at its hard maximum age. It also
//! rate-limits requests without credentials, per client IP and in total:
//! the webrtc-rs server keeps the nonce of every 401 challenge it sends
//! until the nonce is used, so unanswered challenges would pile up.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::{ErrorCodeAttribute, CODE_UNAUTHORIZED};
use stun::integrity::MessageIntegrity;
use stun::message::{
    Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST, METHOD_ALLOCATE,
    METHOD_BINDING,
};
use stun::textattrs::TextAttribute;
use util::Conn;

use super::admission::{Admission, Admit, PendingAllocation};
use super::relay::StreamAllocations;
use super::replay::AllocateReplay;
use super::Counters;
use crate::credentials::check_username;

fn now_secs() -> u64 {
    zajel_client_net::now_ms() / 1000
}

/// Checks usernames and passwords against the shared secret.
pub(crate) struct SharedSecret {
    pub secret: Vec<u8>,
    pub realm: String,
    pub counters: Arc<Counters>,
    pub challenges: ChallengeLimiter,
}

impl SharedSecret {
    /// The long-term key (MD5 of `username:realm:password`) for `username`,
    /// or `None` when the username is malformed, for another realm, or
    /// (with `allocating`) expired.
    fn key_for(&self, username: &str, realm: &str, allocating: bool) -> Option<Vec<u8>> {
        if realm != self.realm {
            return None;
        }
        // Expired names are checked as if issued now: format and MAC still count.
        let now = if allocating { now_secs() } else { 0 };
        let password = check_username(&self.secret, username, now).ok()?;
        Some(turn::auth::generate_auth_key(username, realm, &password))
    }

    /// What to do with one datagram from `from`.
    fn verdict(&self, datagram: &[u8], from: SocketAddr) -> Verdict {
        if datagram.first().is_none_or(|b| b >> 6 != 0) {
            return Verdict::Pass;
        }
        let mut message = Message::new();
        message.raw = datagram.to_vec();
        if message.decode().is_err() || message.typ.class != CLASS_REQUEST {
            return Verdict::Pass;
        }
        if !message.contains(ATTR_MESSAGE_INTEGRITY) {
            // The server answers with a 401 challenge and keeps its nonce
            // until it is used, so challenges are rate-limited.
            if message.typ.method == METHOD_BINDING || self.challenges.allow(from.ip()) {
                return Verdict::Pass;
            }
            self.counters
                .dropped_challenges
                .fetch_add(1, Ordering::Relaxed);
            return Verdict::Drop;
        }
        let (Ok(username), Ok(realm), Ok(nonce)) = (
            TextAttribute::get_from_as(&message, ATTR_USERNAME),
            TextAttribute::get_from_as(&message, ATTR_REALM),
            TextAttribute::get_from_as(&message, ATTR_NONCE),
        ) else {
            return Verdict::Pass;
        };
        let allocating = message.typ.method == METHOD_ALLOCATE;
        let accepted = self
            .key_for(&username.text, &realm.text, allocating)
            .is_some_and(|key| MessageIntegrity(key).check(&mut message.clone()).is_ok());
        if accepted {
            return Verdict::Pass;
        }
        self.counters.refused_auth.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            method = %message.typ.method,
            "TURN request refused with 401: bad or expired credential"
        );
        let mut refusal = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(message.transaction_id),
            Box::new(MessageType::new(message.typ.method, CLASS_ERROR_RESPONSE)),
            Box::new(ErrorCodeAttribute {
                code: CODE_UNAUTHORIZED,
                reason: b"Unauthorized".to_vec(),
            }),
            Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())),
            Box::new(TextAttribute::new(ATTR_NONCE, nonce.text)),
        ];
        match refusal.build(&setters) {
            Ok(()) => Verdict::Refuse(refusal.raw),
            Err(_) => Verdict::Drop,
        }
    }
}

/// What the guard does with a datagram.
enum Verdict {
    /// Hand it to the server.
    Pass,
    /// Answer it with this (a 401) instead.
    Refuse(Vec<u8>),
    /// Ignore it (over the challenge rate).
    Drop,
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn take(&mut self, burst: f64, per_second: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How many 401 challenges (requests without credentials) are answered.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeRate {
    /// Per client IP address, per minute (also the burst).
    pub per_ip_per_minute: u32,
    /// For all clients together, per second (the burst is twice this).
    pub total_per_second: u32,
}

/// Sources tracked at most; beyond this, idle (refilled) buckets are
/// forgotten, and if none is idle every bucket is.
const MAX_TRACKED_SOURCES: usize = 10_000;

pub(crate) struct ChallengeLimiter {
    rate: ChallengeRate,
    state: Mutex<(Bucket, HashMap<IpAddr, Bucket>)>,
}

impl ChallengeLimiter {
    pub fn new(rate: ChallengeRate) -> Self {
        let now = Instant::now();
        let total_burst = 2.0 * f64::from(rate.total_per_second);
        Self {
            rate,
            state: Mutex::new((Bucket::full(total_burst, now), HashMap::new())),
        }
    }

    fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let ip_burst = f64::from(self.rate.per_ip_per_minute);
        let ip_rate = ip_burst / 60.0;
        let total_rate = f64::from(self.rate.total_per_second);
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let (total, per_ip) = &mut *state;
        if per_ip.len() >= MAX_TRACKED_SOURCES && !per_ip.contains_key(&ip) {
            per_ip.retain(|_, bucket| {
                let idle = now.saturating_duration_since(bucket.at).as_secs_f64();
                bucket.tokens + idle * ip_rate < ip_burst
            });
            if per_ip.len() >= MAX_TRACKED_SOURCES {
                per_ip.clear();
            }
        }
        let bucket = per_ip
            .entry(ip)
            .or_insert_with(|| Bucket::full(ip_burst, now));
        if !bucket.take(ip_burst, ip_rate, now) {
            return false;
        }
        total.take(2.0 * total_rate, total_rate, now)
    }
}

impl turn::auth::AuthHandler for SharedSecret {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        // Allocate requests had their expiry checked by `verdict` already.
        self.key_for(username, realm, false).ok_or_else(|| {
            self.counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            turn::Error::ErrNoSuchUser
        })
    }
}

/// A listener `Conn` that answers refused credentials itself, then what
/// the peer policy or the quotas refuse (`admission`), and passes
/// everything else to the server. Its `close` does nothing: the webrtc-rs
/// server closes the listener when any one allocation closes, so the
/// listener's life is managed by `TurnServer` instead.
pub(crate) struct GuardedConn {
    pub inner: Arc<dyn Conn + Send + Sync>,
    pub auth: Arc<SharedSecret>,
    /// Answers retransmitted Allocates (shared by every listener).
    pub replay: Arc<AllocateReplay>,
    /// For stream listeners: where to record whose message is handled.
    pub streams: Option<Arc<StreamAllocations>>,
    /// The peer policy and the allocation quotas (shared by every listener).
    pub admission: Arc<Admission>,
    /// The quota taken by the Allocate this listener handed out last.
    pub pending: Arc<PendingAllocation>,
}

#[async_trait]
impl Conn for GuardedConn {
    async fn connect(&self, addr: SocketAddr) -> util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            if let Some(response) = self.replay.replay(from, &buf[..n]) {
                self.auth
                    .counters
                    .replayed_allocates
                    .fetch_add(1, Ordering::Relaxed);
                let _ = self.inner.send_to(&response, from).await;
                continue;
            }
            match self.auth.verdict(&buf[..n], from) {
                Verdict::Refuse(refusal) => {
                    let _ = self.inner.send_to(&refusal, from).await;
                }
                Verdict::Drop => {}
                Verdict::Pass => match self.admission.admit(&buf[..n], from, &self.pending) {
                    Admit::Refuse(refusal) => {
                        let _ = self.inner.send_to(&refusal, from).await;
                    }
                    Admit::Drop => {}
                    Admit::Pass => {
                        if let Some(streams) = &self.streams {
                            streams.handling(from);
                        }
                        return Ok((n, from));
                    }
                },
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> util::Result<usize> {
        self.replay.remember(target, buf);
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    async fn close(&self) -> util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::agent::TransactionId;
    use stun::message::METHOD_REFRESH;

    fn signed(method: stun::message::Method, username: &str, password: &str) -> Vec<u8> {
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
            Box::new(TextAttribute::new(ATTR_REALM, "zajel".to_owned())),
            Box::new(TextAttribute::new(ATTR_NONCE, "n".to_owned())),
            Box::new(MessageIntegrity::new_long_term_integrity(
                username.to_owned(),
                "zajel".to_owned(),
                password.to_owned(),
            )),
        ];
        let mut message = Message::new();
        message.build(&setters).unwrap();
        message.raw
    }

    #[test]
    fn an_expired_credential_cannot_allocate_but_keeps_its_allocation_alive() {
        let auth = SharedSecret {
            secret: b"s3cret".to_vec(),
            realm: "zajel".into(),
            counters: Arc::new(Counters::default()),
            challenges: ChallengeLimiter::new(ChallengeRate {
                per_ip_per_minute: 10,
                total_per_second: 10,
            }),
        };
        let from: SocketAddr = "198.51.100.1:5000".parse().unwrap();
        let expired = crate::credentials::issue(b"s3cret", "x", now_secs() - 700, 600);
        let allocate = signed(METHOD_ALLOCATE, &expired.username, &expired.credential);
        assert!(matches!(auth.verdict(&allocate, from), Verdict::Refuse(_)));
        let refresh = signed(METHOD_REFRESH, &expired.username, &expired.credential);
        assert!(matches!(auth.verdict(&refresh, from), Verdict::Pass));
        // The MAC still counts.
        let forged = signed(METHOD_REFRESH, &expired.username, "not the password");
        assert!(matches!(auth.verdict(&forged, from), Verdict::Refuse(_)));
    }

    #[test]
    fn challenges_are_limited_per_ip_and_in_total() {
        // Per IP: a burst of 2; in total: a burst of 4 (twice 2 per second).
        let limiter = ChallengeLimiter::new(ChallengeRate {
            per_ip_per_minute: 2,
            total_per_second: 2,
        });
        let [a, b, c]: [IpAddr; 3] =
            [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]].map(IpAddr::from);
        assert!(limiter.allow(a));
        assert!(limiter.allow(a));
        assert!(!limiter.allow(a), "third from one IP within the minute");
        assert!(limiter.allow(b));
        assert!(limiter.allow(b));
        assert!(!limiter.allow(c), "fifth in total within the second");
    }

    #[test]
    fn the_source_table_stays_bounded() {
        let limiter = ChallengeLimiter::new(ChallengeRate {
            per_ip_per_minute: 1,
            total_per_second: 1_000_000,
        });
        for n in 0..(MAX_TRACKED_SOURCES as u32 + 10) {
            limiter.allow(IpAddr::from(n.to_be_bytes()));
        }
        let tracked = limiter.state.lock().unwrap().1.len();
        assert!(tracked <= MAX_TRACKED_SOURCES, "{tracked}");
    }
}
