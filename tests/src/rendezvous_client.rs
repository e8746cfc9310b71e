//! A signaling client that finds a known contact through rendezvous exactly
//! as Zajel's app does (`zajel-wire.md` §5.3–§5.4), for the suites that run
//! relays as processes: its meeting points from [`zajel_wire::peer_keys`],
//! `register_rendezvous` as [`RegisterRendezvous::as_the_app_sends`], on
//! connect; redirects followed when asked (a second connection per
//! redirect's endpoint, `register` with the same code and key, then
//! `register_rendezvous` with the redirect's items); matches from
//! `rendezvous_result`, `rendezvous_partial.local` and `rendezvous_match`.
//!
//! Then pairing across relays, relay-lite's rule (relay-lite's README,
//! "Rendezvous across relays"): a match names the relay where the contact
//! is connected (`relayId`, a serverId; empty or this relay's id = here).
//! The side with the smaller code (the app's rule) opens a connection to
//! that relay, registers there with the same code and key, and sends
//! `pair_request`; the other accepts `pair_incoming` from the contact's key
//! on whichever connection it arrives.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zajel_client_net::now_ms;
use zajel_client_net::signaling::{tls_handshake, url_host, TrustAnchors};
use zajel_wire::pairing::PairingCode;
use zajel_wire::peer_keys;
use zajel_wire::rendezvous::{RegisterRendezvous, RelayRequest};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One signaling connection.
pub struct Connection {
    pub url: String,
    /// The relay's serverId (from `server_info`).
    pub server_id: String,
    socket: Socket,
    /// Frames read while waiting for something else, oldest first.
    backlog: Vec<Value>,
}

/// A WebSocket to `url` (`ws://`, or `wss://` trusting `trust`).
async fn open(url: &str, trust: &TrustAnchors) -> Result<Socket, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = url_host(&parsed).ok_or_else(|| format!("{url}: no host"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("{url}: no port"))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let stream = if parsed.scheme() == "wss" {
        let config = trust.client_config().map_err(|e| e.to_string())?;
        tls_handshake(&host, tcp, config)
            .await
            .map_err(|e| format!("TLS {url}: {e}"))?
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    let (socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("upgrade {url}: {e}"))?;
    Ok(socket)
}

impl Connection {
    /// Connects to `url`, reads `server_info`, registers `code` with `public_key`.
    pub async fn register(
        url: &str,
        code: &str,
        public_key: &[u8; 32],
        trust: &TrustAnchors,
    ) -> Result<Self, String> {
        let socket = open(url, trust).await?;
        let mut connection = Connection {
            url: url.to_string(),
            server_id: String::new(),
            socket,
            backlog: Vec::new(),
        };
        let info = connection
            .next_of(&["server_info"], Duration::from_secs(10))
            .await?;
        connection.server_id = info["serverId"].as_str().unwrap_or_default().to_string();
        connection
            .send(&json!({
                "type": "register", "pairingCode": code,
                "publicKey": STANDARD.encode(public_key),
            }))
            .await?;
        let registered = connection
            .next_of(
                &["registered", "code_collision", "error"],
                Duration::from_secs(10),
            )
            .await?;
        if registered["type"] != "registered" {
            return Err(format!("register on {url}: {registered}"));
        }
        Ok(connection)
    }

    pub async fn send(&mut self, value: &Value) -> Result<(), String> {
        self.send_text(value.to_string()).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        self.socket
            .send(Message::text(text))
            .await
            .map_err(|e| format!("send to {}: {e}", self.url))
    }

    /// The next frame (backlog first) whose `type` is one of `types`;
    /// frames of other types are kept in the backlog.
    pub async fn next_of(&mut self, types: &[&str], timeout: Duration) -> Result<Value, String> {
        if let Some(index) = self
            .backlog
            .iter()
            .position(|v| types.iter().any(|t| v["type"] == *t))
        {
            return Ok(self.backlog.remove(index));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| format!("no {types:?} from {} in {timeout:?}", self.url))?;
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(text.as_str())
                        .map_err(|e| format!("not JSON from {}: {e}", self.url))?;
                    if types.iter().any(|t| value["type"] == *t) {
                        return Ok(value);
                    }
                    self.backlog.push(value);
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(format!("{}: {error}", self.url)),
                None => return Err(format!("{} closed", self.url)),
            }
        }
    }

    /// A frame of `types` if one is already read or arrives within `timeout`.
    pub async fn maybe_next_of(&mut self, types: &[&str], timeout: Duration) -> Option<Value> {
        self.next_of(types, timeout).await.ok()
    }
}

/// A contact found through rendezvous: its code and the relay it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub peer_id: String,
    /// The serverId of the relay where it is connected (empty: where it was found).
    pub relay_id: String,
    /// The URL of the connection the match arrived on.
    pub via: String,
}

/// A client with one identity and one trusted contact.
pub struct RendezvousClient {
    pub code: String,
    secret: [u8; 32],
    pub public_key: [u8; 32],
    contact: [u8; 32],
    /// The primary connection, then redirect connections by URL.
    pub primary: Connection,
    pub redirects: HashMap<String, Connection>,
    trust: TrustAnchors,
}

/// A fresh random pairing code.
pub fn random_code() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("random");
    PairingCode::from_random_bytes(bytes).to_string()
}

/// A fresh X25519 identity secret.
pub fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("random");
    secret
}

fn matches_of(reply: &Value) -> Vec<(String, String)> {
    let list = match reply["type"].as_str() {
        Some("rendezvous_result") => &reply["liveMatches"],
        Some("rendezvous_partial") => &reply["local"]["liveMatches"],
        Some("rendezvous_match") => {
            let m = &reply["match"];
            return vec![(
                m["peerId"].as_str().unwrap_or_default().to_string(),
                m["relayId"].as_str().unwrap_or_default().to_string(),
            )];
        }
        _ => return Vec::new(),
    };
    list.as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["peerId"].as_str().unwrap_or_default().to_string(),
                m["relayId"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

impl RendezvousClient {
    /// Connects to `url` as a fresh code with `secret`, trusting `contact`.
    pub async fn connect(url: &str, secret: [u8; 32], contact: [u8; 32]) -> Result<Self, String> {
        Self::connect_as(url, &random_code(), secret, contact, TrustAnchors::WebPki).await
    }

    /// Connects to `url` (`wss://` trusting `trust`) as `code` with `secret`, trusting `contact`.
    pub async fn connect_as(
        url: &str,
        code: &str,
        secret: [u8; 32],
        contact: [u8; 32],
        trust: TrustAnchors,
    ) -> Result<Self, String> {
        let public_key = peer_keys::public_key(&secret);
        let primary = Connection::register(url, code, &public_key, &trust).await?;
        Ok(Self {
            code: code.to_string(),
            secret,
            public_key,
            contact,
            primary,
            redirects: HashMap::new(),
            trust,
        })
    }

    /// The app's `register_rendezvous` for the contact at `now_ms`.
    pub fn registration(&self, now_ms: u64) -> RegisterRendezvous {
        let now = now_ms as i64;
        let daily = peer_keys::daily_points(&self.public_key, &self.contact, now).to_vec();
        let session = peer_keys::session_key(&self.secret, &self.contact).expect("session key");
        let hourly = peer_keys::hourly_tokens(&session, now).to_vec();
        RegisterRendezvous::as_the_app_sends(&self.code, &daily, &hourly)
    }

    /// Sends the app's `register_rendezvous` on the primary connection and
    /// returns its reply; with `follow`, follows the reply's redirects as the
    /// app does. Matches in replies are returned.
    pub async fn register_rendezvous(&mut self, follow: bool) -> Result<Vec<Found>, String> {
        let request = RelayRequest::RegisterRendezvous(self.registration(now_ms())).to_text();
        self.primary.send_text(request).await?;
        let reply = self
            .primary
            .next_of(
                &["rendezvous_result", "rendezvous_partial", "error"],
                Duration::from_secs(10),
            )
            .await?;
        if reply["type"] == "error" {
            return Err(format!("register_rendezvous: {reply}"));
        }
        let mut found = self.found_in(&reply, &self.primary.url.clone());
        if follow && reply["type"] == "rendezvous_partial" {
            for redirect in reply["redirects"].as_array().into_iter().flatten() {
                let Some(endpoint) = redirect["endpoint"].as_str() else {
                    continue;
                };
                let daily: Vec<String> = serde_json::from_value(redirect["dailyPoints"].clone())
                    .map_err(|e| e.to_string())?;
                let hourly: Vec<String> = serde_json::from_value(redirect["hourlyTokens"].clone())
                    .map_err(|e| e.to_string())?;
                if daily.is_empty() && hourly.is_empty() {
                    continue;
                }
                let mut connection =
                    Connection::register(endpoint, &self.code, &self.public_key, &self.trust)
                        .await?;
                connection
                    .send(&json!({
                        "type": "register_rendezvous", "peerId": self.code,
                        "daily_points": daily, "hourly_tokens": hourly, "dead_drops": {},
                    }))
                    .await?;
                let reply = connection
                    .next_of(
                        &["rendezvous_result", "rendezvous_partial", "error"],
                        Duration::from_secs(10),
                    )
                    .await?;
                found.extend(self.found_in(&reply, endpoint));
                self.redirects.insert(endpoint.to_string(), connection);
            }
        }
        Ok(found)
    }

    fn found_in(&self, reply: &Value, via: &str) -> Vec<Found> {
        matches_of(reply)
            .into_iter()
            .filter(|(peer, _)| !peer.is_empty())
            .map(|(peer_id, relay_id)| Found {
                peer_id,
                relay_id,
                via: via.to_string(),
            })
            .collect()
    }

    /// Waits for a `rendezvous_match` push on any connection.
    pub async fn next_match(&mut self, timeout: Duration) -> Result<Found, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let step = Duration::from_millis(50);
            if let Some(push) = self
                .primary
                .maybe_next_of(&["rendezvous_match"], step)
                .await
            {
                let url = self.primary.url.clone();
                if let Some(found) = self.found_in(&push, &url).into_iter().next() {
                    return Ok(found);
                }
            }
            for (url, connection) in &mut self.redirects {
                if let Some(push) = connection.maybe_next_of(&["rendezvous_match"], step).await {
                    let found = matches_of(&push).into_iter().next();
                    if let Some((peer_id, relay_id)) = found {
                        return Ok(Found {
                            peer_id,
                            relay_id,
                            via: url.clone(),
                        });
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "no rendezvous_match for {} in {timeout:?}",
                    self.code
                ));
            }
        }
    }

    /// The connection to the relay `relay_id` names (`relay_urls`: serverId →
    /// URL, from the registry's list), opening and registering one if needed.
    pub async fn connection_to(
        &mut self,
        found: &Found,
        relay_urls: &HashMap<String, String>,
    ) -> Result<&mut Connection, String> {
        let url = if found.relay_id.is_empty() || found.relay_id == self.primary.server_id {
            if found.relay_id.is_empty() {
                found.via.clone()
            } else {
                self.primary.url.clone()
            }
        } else {
            relay_urls
                .get(&found.relay_id)
                .cloned()
                .ok_or_else(|| format!("no relay {} in the list", found.relay_id))?
        };
        if url == self.primary.url {
            return Ok(&mut self.primary);
        }
        if !self.redirects.contains_key(&url) {
            let connection =
                Connection::register(&url, &self.code, &self.public_key, &self.trust).await?;
            self.redirects.insert(url.clone(), connection);
        }
        Ok(self.redirects.get_mut(&url).expect("just inserted"))
    }

    /// Pairs with the contact found as `found`: the smaller code asks on the
    /// contact's relay, the other accepts `pair_incoming` from the contact's
    /// key on any of its connections. Returns the relay URL it paired on.
    pub async fn pair(
        &mut self,
        found: &Found,
        relay_urls: &HashMap<String, String>,
        timeout: Duration,
    ) -> Result<String, String> {
        if self.code < found.peer_id {
            let connection = self.connection_to(found, relay_urls).await?;
            connection
                .send(&json!({"type": "pair_request", "targetCode": found.peer_id}))
                .await?;
            let answer = connection
                .next_of(&["pair_matched", "pair_rejected", "pair_error"], timeout)
                .await?;
            if answer["type"] != "pair_matched" || answer["peerCode"] != found.peer_id.as_str() {
                return Err(format!("pairing: {answer}"));
            }
            return Ok(connection.url.clone());
        }
        let contact_key = STANDARD.encode(self.contact);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let step = Duration::from_millis(50);
            let mut connections: Vec<&mut Connection> = vec![&mut self.primary];
            connections.extend(self.redirects.values_mut());
            for connection in connections {
                let Some(incoming) = connection.maybe_next_of(&["pair_incoming"], step).await
                else {
                    continue;
                };
                if incoming["fromPublicKey"] != contact_key.as_str() {
                    continue;
                }
                connection
                    .send(&json!({
                        "type": "pair_response", "targetCode": incoming["fromCode"],
                        "accepted": true,
                    }))
                    .await?;
                let matched = connection.next_of(&["pair_matched"], timeout).await?;
                if matched["peerCode"] != found.peer_id.as_str() {
                    return Err(format!("paired with someone else: {matched}"));
                }
                return Ok(connection.url.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no pair_incoming for {} in {timeout:?}", self.code));
            }
        }
    }
}
