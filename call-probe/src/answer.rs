//! `call-probe answer`: a phone that waits on a relay. It registers a pairing code (shown with
//! a `zajel://` sharing link and its QR code), accepts every pair request, answers every call
//! (audio, and video when offered), sends a tone (or echoes what it hears), and goes on until
//! it has answered the number of calls it was told to.
//!
//! It registers the probe's identity and shows its public key ([`Answerer::public_key`]) so a
//! caller can pin it (`call --peer-key`). Calls come only from codes it paired with; a call
//! whose authentication fails ends `media_not_authenticated` (counted in
//! [`Answerer::serve`]'s calls like any other); an authenticated call marks its contact so.
//!
//! With contacts (`contacts.json` in the state folder) it also registers their rendezvous
//! points, as Zajel's app does after each connect ([`crate::rendezvous`]), so that a contact
//! can find it with `call --contact` although its pairing code is new: on a live match the
//! smaller code sends `pair_request` ([`AnswerOptions::rendezvous`], `--no-rendezvous` turns
//! it off; the contacts are those of the start of the run), and, beyond the app, again every
//! hour with the points recomputed, so that it stays findable however long it runs.
//! [`Answerer::serve_until`] also stops on Ctrl-C / SIGTERM, hanging up a call in progress.
//!
//! With a script ([`AnswerOptions::script`], `--script`), the callee's controls (mute, camera
//! off, switch camera…) run on every answered call from the moment its media flows (its first
//! RTP), and stop when it ends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery_client::share::{self, ShareLink};
use serde::Serialize;
use url::Url;
use zajel_client_net::signaling::SessionError;
use zajel_wire::pairing::PairingCode;

use crate::call::CallEvent;
use crate::client::{TurnPaths, TurnRouteError, TurnTransport};
use crate::config::{AnswerPolicy, CallConfig};
use crate::contacts::Contact;
use crate::error::{session_kind, ErrorKind};
use crate::interrupt::Interrupt;
use crate::line::{lock_contacts, ContactSearch, IceConverter, IceUpdates, LineEvent, PhoneLine};
use crate::line_options::{LineOptions, StateError};
use crate::rendezvous::REFRESH_EVERY_MS;
use crate::report::CallReport;
use crate::selftest::PhoneError;

/// Why the answerer could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error("signaling: {0}")]
    Signaling(#[source] SessionError),
    #[error(transparent)]
    Turn(#[from] TurnRouteError),
    /// The sharing link as a QR code.
    #[error(transparent)]
    QrCode(#[from] discovery_client::share::QrError),
    #[error(transparent)]
    Phone(#[from] PhoneError),
    #[error("the relay closed the connection")]
    Closed,
}

impl AnswerError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::State(error) => error.kind(),
            Self::Signaling(error) => session_kind(error),
            Self::Turn(error) => error.kind(),
            Self::QrCode(_) => ErrorKind::QrCode,
            Self::Phone(error) => error.kind(),
            Self::Closed => ErrorKind::RelayClosed,
        }
    }
}

/// What `answer` does.
#[derive(Debug, Clone)]
pub struct AnswerOptions {
    /// The relay's WebSocket URL.
    pub server: Url,
    /// The code to register (random when `None`).
    pub code: Option<PairingCode>,
    /// Stop after this many calls ended (`None`: never).
    pub max_calls: Option<u32>,
    /// Send back what is heard instead of a tone.
    pub echo: bool,
    /// Decline calls instead of answering them (tests, `--decline`).
    pub decline: bool,
    /// Register every contact's rendezvous points (default), so contacts find this answerer.
    pub rendezvous: bool,
    /// The signed fleet as (serverId, endpoint), from discovery's signed sources: a contact
    /// found connected on one of these relays is met there ([`crate::rendezvous`]).
    pub fleet: Vec<(String, String)>,
    /// Call controls carried out on each call once connected (`--script`; none by default).
    pub script: crate::script::Script,
    /// Trust, TURN, addresses, tone (660 Hz by default) and timeouts.
    pub line: LineOptions,
}

impl AnswerOptions {
    pub fn new(server: Url) -> Self {
        Self {
            server,
            code: None,
            max_calls: None,
            echo: false,
            decline: false,
            rendezvous: true,
            fleet: Vec::new(),
            script: crate::script::Script::default(),
            line: LineOptions::new(660.0),
        }
    }
}

/// A registered answerer, ready to take calls.
pub struct Answerer {
    pub code: PairingCode,
    pub server_id: String,
    /// This answerer's X25519 public key (standard base64), as registered: what a caller pins.
    pub public_key: String,
    /// `zajel://CODE?server=…`
    pub share_uri: String,
    /// How many contacts' rendezvous points it registered.
    pub rendezvous_contacts: usize,
    line: PhoneLine,
    options: AnswerOptions,
    /// Set when the relay's `ice_servers` are turned into the engine's (once paired).
    turn_paths: Arc<Mutex<TurnPaths>>,
}

/// One answered (or declined) call.
#[derive(Debug, Clone, Serialize)]
pub struct AnsweredCall {
    pub number: u32,
    pub report: CallReport,
    /// How our media reached TURN, when ICE selected one of our relay candidates.
    pub relayed_media: Option<TurnTransport>,
}

/// Turns the relay's servers into the engine's with `line`'s options, keeping the routes to
/// TURN in `paths` (for the reports) for as long as the answerer lives.
fn converter(line: LineOptions, paths: Arc<Mutex<TurnPaths>>) -> IceConverter {
    Arc::new(move |offered| {
        let (line, paths) = (line.clone(), paths.clone());
        Box::pin(async move {
            match line.engine_ice_servers(&offered).await {
                Ok((servers, routes)) => {
                    *paths.lock().unwrap_or_else(|e| e.into_inner()) = routes;
                    Some(servers)
                }
                Err(error) => {
                    tracing::warn!(%error, "the relay's TURN servers cannot be used");
                    None
                }
            }
        })
    })
}

impl Answerer {
    /// Connects, registers and wires the engine.
    pub async fn start(options: AnswerOptions) -> Result<Self, AnswerError> {
        let keys = options.line.line_keys()?;
        let registered = options
            .line
            .register(&options.server, options.code, &keys.identity)
            .await
            .map_err(AnswerError::Signaling)?;
        // Servers a relay sent at registration (older relays) are converted now; relay-lite
        // sends them once a caller paired, and the line converts them then, before that
        // caller's call_offer reaches the engine.
        let early = !registered.ice_servers.is_empty();
        let (ice_servers, turn_paths) = options
            .line
            .engine_ice_servers(&registered.ice_servers)
            .await?;
        let turn_paths = Arc::new(Mutex::new(turn_paths));
        let ice = IceUpdates {
            convert: converter(options.line.clone(), turn_paths.clone()),
            converted: early.then(|| ice_servers.clone()),
        };
        let config = CallConfig {
            echo: options.echo,
            answer_policy: if options.decline {
                AnswerPolicy::Decline
            } else {
                AnswerPolicy::Accept
            },
            allow_video: true,
            ..options.line.call_config(ice_servers)
        };
        let share_uri = ShareLink::new(registered.code, &[options.server.to_string()], None)
            .map(|link| link.to_uri())
            .unwrap_or_else(|_| format!("zajel://{}", registered.code.as_str()));
        let code = registered.code;
        let server_id = registered.server_id.clone();
        let public_key = keys.identity.public_base64();
        let contacts: Vec<Contact> = if options.rendezvous {
            lock_contacts(&keys.contacts).all().cloned().collect()
        } else {
            Vec::new()
        };
        let rendezvous_contacts = contacts.len();
        let search = (!contacts.is_empty()).then(|| {
            let mut search = ContactSearch::new(
                keys.identity.clone(),
                code,
                contacts,
                options.line.trust.clone(),
                options.line.step_timeout,
            );
            // Long-running: the points again every hour (beyond the app), recomputed.
            search.rules = search.rules.refreshing_every(REFRESH_EVERY_MS);
            search.with_fleet(options.fleet.clone())
        });
        let line = PhoneLine::start_searching(
            "answerer",
            registered.session,
            code,
            config,
            true,
            Some(keys),
            Some(ice),
            search,
        );
        Ok(Self {
            code,
            server_id,
            public_key,
            share_uri,
            rendezvous_contacts,
            line,
            options,
            turn_paths,
        })
    }

    /// The sharing link as a QR code for a terminal.
    pub fn qr_terminal(&self) -> Result<String, AnswerError> {
        Ok(share::render_terminal(&self.share_uri)?)
    }

    /// Answers calls until `max_calls` have ended (or forever), calling `on_call` with each
    /// call's report. Returns the reports, or an error when the relay goes away.
    pub async fn serve(
        self,
        on_call: impl FnMut(&AnsweredCall),
    ) -> Result<Vec<AnsweredCall>, AnswerError> {
        self.serve_until(Interrupt::never(), on_call).await
    }

    /// [`Self::serve`] until `interrupt` fires too: then a call in progress is hung up
    /// (`call_hangup`; a ringing one declined) and reported through `on_call` like any other,
    /// the line is closed cleanly, and the reports so far are returned.
    pub async fn serve_until(
        mut self,
        mut interrupt: Interrupt,
        mut on_call: impl FnMut(&AnsweredCall),
    ) -> Result<Vec<AnsweredCall>, AnswerError> {
        let mut calls = Vec::new();
        let mut resends_before = 0;
        let forever = Duration::from_secs(365 * 24 * 3600);
        // The script running on the current call (started at its first RTP).
        let mut script: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            if self
                .options
                .max_calls
                .is_some_and(|max| calls.len() as u32 >= max)
            {
                // What the engine sent last (the `call_hangup` of a refused call) goes out
                // before the process may exit.
                self.line.close().await;
                return Ok(calls);
            }
            let start_script = script.is_none() && !self.options.script.is_empty();
            tokio::select! {
                event = self.line.phone.wait_for(forever, "end of the call", |event| match event {
                    CallEvent::Ended(report) => Some(Some((**report).clone())),
                    CallEvent::FirstRtp { .. } if start_script => Some(None),
                    _ => None,
                }) => match event? {
                    Some(ended) => {
                        if let Some(script) = script.take() {
                            script.abort();
                        }
                        let call = self.finish_call(ended, &mut resends_before, calls.len());
                        on_call(&call);
                        calls.push(call);
                    }
                    None => {
                        let steps = self.options.script.clone();
                        script = Some(tokio::spawn(steps.run(self.line.phone.engine.clone())));
                    }
                },
                event = self.line.events.recv() => match event {
                    Some(LineEvent::Closed) | None => {
                        return Err(AnswerError::Closed);
                    }
                    Some(LineEvent::PairIncoming { from_code }) => {
                        tracing::info!(%from_code, "pair request accepted");
                    }
                    Some(other) => tracing::debug!(?other, "line event"),
                },
                signal = interrupt.fired() => {
                    tracing::info!(signal, "interrupted: hanging up");
                    if let Some(script) = script.take() {
                        script.abort();
                    }
                    // No call: NoCall, nothing to report.
                    if self.line.phone.engine.hangup().await.is_ok() {
                        let step = self.options.line.step_timeout;
                        if let Ok(report) = self.line.phone.ended(step).await {
                            let call = self.finish_call(report, &mut resends_before, calls.len());
                            on_call(&call);
                            calls.push(call);
                        }
                    }
                    self.line.close().await;
                    return Ok(calls);
                }
            }
        }
    }

    /// Completes an ended call's report (TURN paths, this call's own resend count) and
    /// remembers an authenticated contact.
    fn finish_call(
        &mut self,
        mut report: CallReport,
        resends_before: &mut u64,
        calls_before: usize,
    ) -> AnsweredCall {
        self.remember_authenticated(&report);
        // The taps serve every call; their resend count is since the start.
        let turn_paths = self.turn_paths.lock().unwrap_or_else(|e| e.into_inner());
        turn_paths.complete(&mut report);
        let resends = report.dtls.final_flight_resends_through_turn;
        report.dtls.final_flight_resends_through_turn = resends - *resends_before;
        *resends_before = resends;
        self.line.phone.clear_history();
        let relayed_media = turn_paths.relayed_media(&report);
        drop(turn_paths);
        AnsweredCall {
            number: calls_before as u32 + 1,
            report,
            relayed_media,
        }
    }

    /// Marks the contact of an authenticated call.
    fn remember_authenticated(&self, report: &CallReport) {
        let (true, Some(key), Some(keys)) =
            (report.authenticated, &report.peer_key, self.line.keys())
        else {
            return;
        };
        let now = zajel_client_net::now_ms();
        if let Err(error) = lock_contacts(&keys.contacts).authenticated(key, now) {
            tracing::warn!(%error, "the contact was not saved");
        }
    }

    /// Waits for a call to be connected (tests).
    pub async fn wait_connected(&mut self, limit: Duration) -> Result<(), PhoneError> {
        self.line
            .phone
            .wait_for(limit, "a connected call", |e| {
                matches!(e, CallEvent::FirstRtp { .. }).then_some(())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answerer_on_a_refused_relay_says_signaling() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
        drop(listener);
        let mut options = AnswerOptions::new(url);
        options.line.step_timeout = Duration::from_secs(5);
        let Err(error) = Answerer::start(options).await else {
            panic!("nothing listens there");
        };
        assert_eq!(error.kind(), ErrorKind::SignalingTcp);
        assert!(
            error
                .to_string()
                .starts_with("signaling: TCP connection failed: "),
            "{error}"
        );
        assert_eq!(
            AnswerError::Closed.to_string(),
            "the relay closed the connection"
        );
    }
}
