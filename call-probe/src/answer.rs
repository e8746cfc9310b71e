//! `call-probe answer`: a phone that waits on a relay. It registers a pairing code (shown with
//! a `zajel://` sharing link and its QR code), accepts every pair request, answers every call
//! (audio, and video when offered), sends a tone (or echoes what it hears), and goes on until
//! it has answered the number of calls it was told to.

use std::time::Duration;

use discovery_client::share::{self, ShareLink};
use serde::Serialize;
use url::Url;
use zajel_wire::pairing::PairingCode;

use crate::call::CallEvent;
use crate::client::{TurnPaths, TurnTransport};
use crate::config::{AnswerPolicy, CallConfig};
use crate::line::{LineEvent, PhoneLine};
use crate::line_options::LineOptions;
use crate::report::CallReport;

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
            line: LineOptions::new(660.0),
        }
    }
}

/// A registered answerer, ready to take calls.
pub struct Answerer {
    pub code: PairingCode,
    pub server_id: String,
    /// `zajel://CODE?server=…`
    pub share_uri: String,
    line: PhoneLine,
    options: AnswerOptions,
    turn_paths: TurnPaths,
}

/// One answered (or declined) call.
#[derive(Debug, Clone, Serialize)]
pub struct AnsweredCall {
    pub number: u32,
    pub report: CallReport,
    /// How our media reached TURN, when ICE selected one of our relay candidates.
    pub relayed_media: Option<TurnTransport>,
}

impl Answerer {
    /// Connects, registers and wires the engine.
    pub async fn start(options: AnswerOptions) -> Result<Self, String> {
        let registered = options
            .line
            .register(&options.server, options.code)
            .await
            .map_err(|e| format!("signaling: {e}"))?;
        let (ice_servers, turn_paths) = options
            .line
            .engine_ice_servers(&registered.ice_servers)
            .await?;
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
        let line = PhoneLine::start("answerer", registered.session, code, config, true);
        Ok(Self {
            code,
            server_id,
            share_uri,
            line,
            options,
            turn_paths,
        })
    }

    /// The sharing link as a QR code for a terminal.
    pub fn qr_terminal(&self) -> Result<String, String> {
        share::render_terminal(&self.share_uri).map_err(|e| e.to_string())
    }

    /// Answers calls until `max_calls` have ended (or forever), calling `on_call` with each
    /// call's report. Returns the reports, or an error when the relay goes away.
    pub async fn serve(
        mut self,
        mut on_call: impl FnMut(&AnsweredCall),
    ) -> Result<Vec<AnsweredCall>, String> {
        let mut calls = Vec::new();
        let mut resends_before = 0;
        let forever = Duration::from_secs(365 * 24 * 3600);
        loop {
            if self
                .options
                .max_calls
                .is_some_and(|max| calls.len() as u32 >= max)
            {
                return Ok(calls);
            }
            tokio::select! {
                ended = self.line.phone.ended(forever) => {
                    let mut report = ended?;
                    // The taps serve every call; their resend count is since the start.
                    self.turn_paths.complete(&mut report);
                    let resends = report.dtls.final_flight_resends_through_turn;
                    report.dtls.final_flight_resends_through_turn = resends - resends_before;
                    resends_before = resends;
                    self.line.phone.clear_history();
                    let relayed_media = self.turn_paths.relayed_media(&report);
                    let call = AnsweredCall { number: calls.len() as u32 + 1, report, relayed_media };
                    on_call(&call);
                    calls.push(call);
                }
                event = self.line.events.recv() => match event {
                    Some(LineEvent::Closed) | None => {
                        return Err("the relay closed the connection".into());
                    }
                    Some(LineEvent::PairIncoming { from_code }) => {
                        tracing::info!(%from_code, "pair request accepted");
                    }
                    Some(other) => tracing::debug!(?other, "line event"),
                },
            }
        }
    }

    /// Waits for a call to be connected (tests).
    pub async fn wait_connected(&mut self, limit: Duration) -> Result<(), String> {
        self.line
            .phone
            .wait_for(limit, "a connected call", |e| {
                matches!(e, CallEvent::FirstRtp { .. }).then_some(())
            })
            .await
    }
}
