//! Long-term credentials in the shared-secret scheme for the TURN server:
//! the `AuthHandler` the webrtc-rs server asks for keys, and `GuardedConn`,
//! which answers a request carrying a wrong password, a malformed or expired
//! username or a foreign realm with 401 Unauthorized (RFC 8489 §9.2.4), as
//! coturn does. (The webrtc-rs server itself would answer 400.)

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use stun::attributes::{ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::{ErrorCodeAttribute, CODE_UNAUTHORIZED};
use stun::integrity::MessageIntegrity;
use stun::message::{Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST};
use stun::textattrs::TextAttribute;
use util::Conn;

use super::relay::StreamAllocations;
use super::Counters;
use crate::credentials::check_username;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks usernames and passwords against the shared secret.
pub(crate) struct SharedSecret {
    pub secret: Vec<u8>,
    pub realm: String,
    pub counters: Arc<Counters>,
}

impl SharedSecret {
    /// The long-term key (MD5 of `username:realm:password`) for `username`,
    /// or `None` when the username is malformed, expired, or for another realm.
    fn key_for(&self, username: &str, realm: &str) -> Option<Vec<u8>> {
        if realm != self.realm {
            return None;
        }
        let password = check_username(&self.secret, username, now_secs()).ok()?;
        Some(turn::auth::generate_auth_key(username, realm, &password))
    }

    /// Whether `datagram` is an authenticated request that must be refused
    /// with 401; returns the refusal to send back.
    fn refusal_for(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.first().is_none_or(|b| b >> 6 != 0) {
            return None;
        }
        let mut message = Message::new();
        message.raw = datagram.to_vec();
        message.decode().ok()?;
        if message.typ.class != CLASS_REQUEST || !message.contains(ATTR_MESSAGE_INTEGRITY) {
            return None;
        }
        let username = TextAttribute::get_from_as(&message, ATTR_USERNAME).ok()?;
        let realm = TextAttribute::get_from_as(&message, ATTR_REALM).ok()?;
        let nonce = TextAttribute::get_from_as(&message, ATTR_NONCE).ok()?;
        let accepted = match self.key_for(&username.text, &realm.text) {
            Some(_) => {
                let password =
                    check_username(&self.secret, &username.text, now_secs()).unwrap_or_default();
                MessageIntegrity::new_long_term_integrity(
                    username.text.clone(),
                    self.realm.clone(),
                    password,
                )
                .check(&mut message.clone())
                .is_ok()
            }
            None => false,
        };
        if accepted {
            return None;
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
        refusal.build(&setters).ok()?;
        Some(refusal.raw)
    }
}

impl turn::auth::AuthHandler for SharedSecret {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        self.key_for(username, realm).ok_or_else(|| {
            self.counters.refused_auth.fetch_add(1, Ordering::Relaxed);
            turn::Error::ErrNoSuchUser
        })
    }
}

/// A listener `Conn` that answers refused credentials itself and passes
/// everything else to the server. Its `close` does nothing: the webrtc-rs
/// server closes the listener when any one allocation closes, so the
/// listener's life is managed by `TurnServer` instead.
pub(crate) struct GuardedConn {
    pub inner: Arc<dyn Conn + Send + Sync>,
    pub auth: Arc<SharedSecret>,
    /// For stream listeners: where to record whose message is handled.
    pub streams: Option<Arc<StreamAllocations>>,
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
            match self.auth.refusal_for(&buf[..n]) {
                Some(refusal) => {
                    let _ = self.inner.send_to(&refusal, from).await;
                }
                None => {
                    if let Some(streams) = &self.streams {
                        streams.handling(from);
                    }
                    return Ok((n, from));
                }
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> util::Result<usize> {
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
