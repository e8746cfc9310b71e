//! One client's WebSocket session: the `server_info` greeting, reading
//! frames in Zajel's order (size, rate limit, parse, then the hub or, for
//! `identity_challenge`, a proof signed with the server key), the writer
//! draining the bounded outbox (in the session's own task), the idle
//! timeout, the close codes (1009 too big, 1007 bad UTF-8, 1001 shutdown),
//! and cleanup.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use zajel_wire::pairing::PairingCode;
use zajel_wire::signaling::{self, ClientMessage, IdentityProof, ServerMessage, SignalingError};

use crate::hub::Registration;
use crate::ice::{self, IceGrant};
use crate::limits::{address_key, FixedWindow};
use crate::metrics::Refusal;
use crate::outbox::{Outbound, Outbox};
use crate::relay::Shared;

/// `error` text once a connection sends more than its `pair_request`s per window (Zajel's text).
pub const PAIR_RATE_LIMIT_EXCEEDED: &str = "Too many pair requests. Please slow down.";

/// Bytes tungstenite reads at once from a client (its `read_buffer_size`).
/// Every connection keeps a buffer this large for its whole life, idle or
/// not, so it is small: a signaling frame is a few hundred bytes, and a
/// larger frame gets room for all of it once its header is read (the frame
/// size limits still apply).
pub const READ_BUFFER_BYTES: usize = 256;

/// Bytes of frames tungstenite gathers before it writes them (its
/// `write_buffer_size`); the writer flushes whenever the outbox is empty,
/// so a burst for one client goes out in a few writes, not one per frame
/// (on loopback the send is most of the relay's CPU per forwarded frame).
/// The buffer grows only when a burst comes, up to about this much.
pub const WRITE_BATCH_BYTES: usize = 4096;

/// Close codes the relay uses.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_NORMAL: u16 = 1000;

/// Runs a session for the client at `peer` until it leaves, is dropped, or the relay stops.
/// `_hold` is the connection's place under the limits, let go when the session ends.
pub(crate) async fn run<S>(
    sink: SplitSink<WebSocketStream<S>, Message>,
    mut stream: SplitStream<WebSocketStream<S>>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    _hold: crate::relay::ConnectionHold,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = shared.next_connection_id();
    let limits = &shared.config.limits;
    let timeouts = &shared.config.timeouts;
    let (outbox, receiver) = Outbox::new(
        id,
        limits.outbound_queue_frames,
        limits.outbound_queue_bytes,
        shared.metrics.clone(),
    );
    // The writer runs in this task beside the reading below, not as a task
    // of its own: an idle connection is one task.
    let writer = write_loop(sink, receiver, outbox.clone());
    tokio::pin!(writer);
    let mut writer_done = false;
    shared.metrics.session_opened();
    let mut session = Session {
        shared: shared.clone(),
        outbox: outbox.clone(),
        code: None,
        address: address_key(peer.ip()),
        rate: FixedWindow::new(limits.rate_limit_messages, limits.rate_window),
        pair_rate: FixedWindow::new(limits.pair_request_limit, limits.pair_request_window),
        ice: IceGrant::default(),
    };
    let close = {
        let reading = read_frames(&mut session, &mut stream, id);
        tokio::pin!(reading);
        loop {
            tokio::select! {
                biased;
                // A writer that failed closed the outbox: the reading sees its replies refused.
                () = &mut writer, if !writer_done => writer_done = true,
                close = &mut reading => break close,
            }
        }
    };
    let code = session.code.take();
    if let Some(code) = code {
        shared.hub.release(code, id);
    }
    shared.relay_requests.connection_closed(id, code);
    shared.metrics.session_closed();
    match close {
        Some((code, reason)) if !outbox.is_killed() => {
            drop(session);
            // Best effort: a peer that reads gets its close frame.
            if !writer_done && outbox.close(code, reason) {
                let grace = tokio::time::sleep(timeouts.shutdown_grace);
                tokio::select! {
                    () = &mut writer => {}
                    () = grace => {}
                }
                // Let the client answer the close before the socket drops.
                let drain = tokio::time::timeout(timeouts.shutdown_grace, async {
                    while let Some(Ok(_)) = stream.next().await {}
                });
                let _ = drain.await;
            }
        }
        // Killed, or the client left: the writer and the socket are dropped here.
        _ => {}
    }
}

/// Reads and handles the client's frames until the session ends; the close
/// frame to send, if any.
async fn read_frames<S>(
    session: &mut Session,
    stream: &mut SplitStream<WebSocketStream<S>>,
    id: u64,
) -> Option<(u16, &'static str)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = session.shared.clone();
    let outbox = session.outbox.clone();
    let timeouts = &shared.config.timeouts;
    let mut close: Option<(u16, &'static str)> = None;
    // The waits below live as long as the session, not one loop turn: a
    // forwarded frame costs no timer or waiter registration. The idle
    // deadline is checked lazily: each frame only records when it came, and
    // the one idle timer, when it fires early, is moved to the real deadline.
    let mut last_heard = Instant::now();
    let idle_timer = tokio::time::sleep_until(last_heard + timeouts.idle);
    // Made only once there are TURN credentials to renew: most
    // connections never have any, and a timer is large.
    let mut renewal: Option<(Instant, Pin<Box<Sleep>>)> = None;
    let stop = shared.sessions_stop.stopped();
    let attention = outbox.attention();
    tokio::pin!(idle_timer, stop, attention);
    // The greeting; a client that cannot take even that is simply dropped.
    if session.reply(shared.server_info.clone()).await {
        loop {
            if !session.grant_if_engaged().await {
                break;
            }
            let renew_at = session.ice.renew_at();
            if renew_at != renewal.as_ref().map(|(at, _)| *at) {
                renewal = renew_at.map(|at| match renewal.take() {
                    Some((_, mut timer)) => {
                        timer.as_mut().reset(at);
                        (at, timer)
                    }
                    None => (at, Box::pin(tokio::time::sleep_until(at))),
                });
            }
            tokio::select! {
                biased;
                () = &mut stop => {
                    close = Some((CLOSE_GOING_AWAY, "Server shutting down"));
                    break;
                }
                // Killed, or engaged (seen at the top of the next turn).
                () = &mut attention => {
                    if outbox.is_killed() {
                        break;
                    }
                    attention.set(outbox.attention());
                }
                () = async {
                    if let Some((_, timer)) = renewal.as_mut() {
                        timer.as_mut().await;
                    }
                }, if renewal.is_some() => {
                    // Re-armed from the grant's next renewal time on the next turn.
                    renewal = None;
                    if let Some(frame) = session.renewed() {
                        if !session.reply(frame).await {
                            break;
                        }
                    }
                }
                () = &mut idle_timer => {
                    let deadline = last_heard + timeouts.idle;
                    if Instant::now() < deadline {
                        idle_timer.as_mut().reset(deadline);
                        continue;
                    }
                    shared.metrics.refused(Refusal::IdleTimeout);
                    tracing::debug!(connection = id, "idle timeout");
                    close = Some((CLOSE_NORMAL, "Idle timeout"));
                    break;
                }
                frame = stream.next() => {
                    let Some(frame) = frame else { break };
                    last_heard = Instant::now();
                    if frame.is_ok() {
                        outbox.heard();
                    }
                    // The text alone is kept while the frame is handled, not
                    // the whole frame (room for an error) in every session.
                    let text: Utf8Bytes = match frame {
                        Ok(Message::Text(text)) => text,
                        // Zajel's server reads binary frames as text too (lossily).
                        Ok(Message::Binary(bytes)) => {
                            String::from_utf8_lossy(&bytes).into_owned().into()
                        }
                        Ok(_) => continue, // ping/pong/close: tungstenite answers them
                        Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                            shared.metrics.refused(Refusal::FrameTooLarge);
                            close = Some((signaling::CLOSE_MESSAGE_TOO_BIG, "Message Too Big"));
                            break;
                        }
                        Err(WsError::Utf8(_)) => {
                            shared.metrics.refused(Refusal::InvalidMessage);
                            close = Some((CLOSE_INVALID_PAYLOAD, "Invalid UTF-8"));
                            break;
                        }
                        Err(error) => {
                            tracing::debug!(connection = id, %error, "connection ended");
                            close = crate::http::close_for_read_error(&error);
                            if close.is_some() {
                                shared.metrics.refused(Refusal::InvalidMessage);
                            }
                            break;
                        }
                    };
                    // Looked at again here, not only when the wake for it came.
                    if !session.grant_if_engaged().await {
                        break;
                    }
                    let mut ok = true;
                    for reply in session.handle(text.as_str()).await {
                        if !session.reply(reply).await {
                            ok = false;
                            break;
                        }
                    }
                    if !ok {
                        break;
                    }
                }
            }
        }
    }
    close
}

async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut receiver: crate::outbox::Receiver,
    outbox: Arc<Outbox>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    while let Some(frame) = receiver.recv().await {
        match frame {
            Outbound::Text(text) => {
                outbox.dequeued(text.len());
                if sink.feed(Message::text(text)).await.is_err() {
                    return;
                }
                if receiver.is_empty() && sink.flush().await.is_err() {
                    return;
                }
            }
            Outbound::Ping => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            Outbound::Close(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    code: Option<PairingCode>,
    /// The client's address as the per-address limits count it.
    address: IpAddr,
    rate: FixedWindow,
    pair_rate: FixedWindow,
    /// When this connection gets TURN credentials (`ice_servers`).
    ice: IceGrant,
}

impl Session {
    /// The connection is paired or in a call: its first `ice_servers`, if it asked.
    fn engaged(&mut self) -> Option<String> {
        let config = self.shared.config.ice.as_ref()?;
        self.ice
            .engaged(Instant::now(), config.ttl)
            .then(|| self.ice_frame(config))
    }

    /// Paired or called by another connection: its first `ice_servers` now,
    /// before the reply to anything the client sends after reading that
    /// frame (a `ping` after `pair_matched`). False if the client is gone.
    async fn grant_if_engaged(&mut self) -> bool {
        if !(self.outbox.is_engaged() && self.ice.waiting()) {
            return true;
        }
        match self.engaged() {
            Some(frame) => self.reply(frame).await,
            None => true,
        }
    }

    /// The renewal timer fired: a fresh `ice_servers`.
    fn renewed(&mut self) -> Option<String> {
        let config = self.shared.config.ice.as_ref()?;
        self.ice.renewed(Instant::now(), config.ttl);
        Some(self.ice_frame(config))
    }

    fn ice_frame(&self, config: &crate::config::IceConfig) -> String {
        self.shared.metrics.ice_credential_issued();
        ice::frame(config)
    }

    /// Queues a reply to this client, waiting at most the stall timeout for room.
    async fn reply(&self, text: String) -> bool {
        // Room in the queue (the usual case): no timer.
        let text = match self.outbox.try_reply(text) {
            Ok(queued) => return queued,
            Err(text) => text,
        };
        let stall = self.shared.config.timeouts.outbound_stall;
        // Boxed: rare (the queue is full), and a timer is large.
        match Box::pin(tokio::time::timeout(stall, self.outbox.reply(text))).await {
            Ok(queued) => queued,
            Err(_) => {
                self.shared.metrics.refused(Refusal::SlowConsumer);
                false
            }
        }
    }

    /// Handles one text frame; returns the replies to this client, in order.
    async fn handle(&mut self, text: &str) -> Vec<String> {
        let metrics = &self.shared.metrics;
        metrics.message_received();
        if self.outbox.is_killed() {
            // Dropped (slow, or its code was taken back by its owner's new
            // connection): it no longer speaks for its code.
            return Vec::new();
        }
        if !self.rate.allow(Instant::now()) {
            metrics.refused(Refusal::RateLimit);
            return vec![ServerMessage::error(signaling::RATE_LIMIT_EXCEEDED).to_text()];
        }
        if let Some(value) = crate::relay_requests::claimed(text) {
            // Boxed: rare and large, so it does not widen every session's task.
            return Box::pin(
                self.shared
                    .relay_requests
                    .handle(&self.outbox, self.code, value),
            )
            .await;
        }
        let message = match ClientMessage::parse_for_connection(text, self.code.is_some()) {
            Ok(message) => message,
            Err(error) => {
                metrics.refused(if error == SignalingError::NotRegistered {
                    Refusal::NotRegistered
                } else {
                    Refusal::InvalidMessage
                });
                return vec![error.to_server_message().to_text()];
            }
        };
        let hub = &self.shared.hub;
        let reply = match &message {
            ClientMessage::Ping => Some(ServerMessage::Pong),
            ClientMessage::IdentityChallenge { nonce } => Some(ServerMessage::IdentityProof(
                IdentityProof::sign(&self.shared.identity, nonce, &self.shared.endpoint),
            )),
            ClientMessage::Register {
                pairing_code,
                public_key,
                ice_servers,
            } => {
                // Boxed: once per connection, and the takeover probe makes it large.
                return Box::pin(self.register(*pairing_code, public_key, *ice_servers)).await;
            }
            ClientMessage::PairRequest {
                target_code,
                proposed_name,
            } => {
                if !self.pair_rate.allow(Instant::now()) {
                    metrics.refused(Refusal::PairRateLimit);
                    Some(ServerMessage::error(PAIR_RATE_LIMIT_EXCEEDED))
                } else {
                    let from = self.code.expect("registered: checked by the parser");
                    hub.pair_request(
                        (from, self.outbox.id),
                        self.address,
                        *target_code,
                        proposed_name.clone(),
                    )
                }
            }
            ClientMessage::PairResponse {
                target_code,
                accepted,
            } => {
                let from = self.code.expect("registered: checked by the parser");
                let reply = hub.pair_response(from, *target_code, *accepted);
                if let Some(matched @ ServerMessage::PairMatched { .. }) = reply {
                    // Paired: credentials first, so they are there when the call comes.
                    let mut replies: Vec<String> = self.engaged().into_iter().collect();
                    replies.push(matched.to_text());
                    return replies;
                }
                reply
            }
            ClientMessage::Forward(forward) => {
                let from = self.code.expect("registered: checked by the parser");
                let reply = hub.forward(from, forward);
                if reply.is_none()
                    && forward.kind
                        == signaling::ForwardKind::Call(zajel_wire::call::CallKind::Offer)
                {
                    return self.engaged().into_iter().collect();
                }
                reply
            }
        };
        reply.map(|r| vec![r.to_text()]).unwrap_or_default()
    }

    /// `register`; `asks_ice_servers` is its `"iceServers": true`. When
    /// the same key holds the code on another connection, that connection
    /// is probed first: if it answers, this is a collision; if not (the
    /// owner reconnected before the relay noticed the old socket died),
    /// this connection takes the code over and the old one is closed.
    async fn register(
        &mut self,
        code: PairingCode,
        public_key: &str,
        asks_ice_servers: bool,
    ) -> Vec<String> {
        let shared = self.shared.clone();
        let mut registration = shared
            .hub
            .register(&self.outbox, self.code, code, public_key, None);
        if let Registration::HeldBySameKey(old) = registration {
            let probe = shared.config.timeouts.takeover_probe;
            registration = if old.probe(probe).await {
                shared.hub.refuse_same_key()
            } else {
                shared
                    .hub
                    .register(&self.outbox, self.code, code, public_key, Some(old.id))
            };
        }
        match registration {
            Registration::Collision | Registration::HeldBySameKey(_) => {
                vec![ServerMessage::CodeCollision {
                    message: signaling::CODE_COLLISION.to_string(),
                }
                .to_text()]
            }
            Registration::Registered => {
                self.code = Some(code);
                let replies = vec![ServerMessage::Registered {
                    pairing_code: code.to_string(),
                    server_id: shared.server_id.clone(),
                }
                .to_text()];
                // Credentials come once the connection is paired or in a call.
                // Unasked too when so configured: Zajel's clients ignore the frame.
                self.ice.registered(
                    (asks_ice_servers || shared.config.ice_servers_unasked)
                        && shared.config.ice.is_some(),
                );
                replies
            }
        }
    }
}
