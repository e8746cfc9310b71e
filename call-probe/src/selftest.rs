//! In-process calls: a [`Switchboard`] that routes call messages between engines by `callId`
//! (a stand-in for the relay, with no network in between), [`Phone`]s with an event history
//! to await events on, and [`run_selftest`], one loopback call with audio both ways.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use zajel_wire::call::CallPayload;

use crate::call::{CallEngine, CallEvent, EngineError};
use crate::config::{AnswerPolicy, CallConfig};
use crate::error::ErrorKind;
use crate::report::CallReport;

/// Why a wait on a [`Phone`]'s events failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// The engine's event stream ended.
    #[error("{phone}: engine stopped before {what}")]
    EngineStopped { phone: String, what: String },
    /// The event did not come in time (`events`: what came, as [`event_name`]s).
    #[error("{phone}: no {what} within {within:?}; events: {events:?}")]
    TimedOut {
        phone: String,
        what: String,
        within: Duration,
        events: Vec<String>,
    },
}

impl PhoneError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::EngineStopped { .. } => ErrorKind::EngineStopped,
            Self::TimedOut { .. } => ErrorKind::Timeout,
        }
    }
}

/// Why [`run_selftest`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SelftestError {
    #[error("placing the call: {0}")]
    Place(#[source] EngineError),
    #[error("hanging up: {0}")]
    Hangup(#[source] EngineError),
    #[error(transparent)]
    Phone(#[from] PhoneError),
}

impl SelftestError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Place(_) => ErrorKind::PlaceCall,
            Self::Hangup(_) => ErrorKind::Hangup,
            Self::Phone(error) => error.kind(),
        }
    }
}

/// An engine with its events, remembering every event it has seen.
pub struct Phone {
    pub name: String,
    pub engine: CallEngine,
    events: mpsc::UnboundedReceiver<CallEvent>,
    history: Vec<CallEvent>,
}

impl Phone {
    /// Wraps an engine and its event stream.
    pub fn new(name: &str, engine: CallEngine, events: mpsc::UnboundedReceiver<CallEvent>) -> Self {
        Self {
            name: name.to_string(),
            engine,
            events,
            history: Vec::new(),
        }
    }

    /// Waits up to `within` for an event `pick` accepts, looking at past events first.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&CallEvent) -> Option<T>,
    ) -> Result<T, PhoneError> {
        if let Some(found) = self.history.iter().find_map(&mut pick) {
            return Ok(found);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    let found = pick(&event);
                    self.history.push(event);
                    if let Some(found) = found {
                        return Ok(found);
                    }
                }
                Ok(None) => {
                    return Err(PhoneError::EngineStopped {
                        phone: self.name.clone(),
                        what: what.into(),
                    })
                }
                Err(_) => {
                    return Err(PhoneError::TimedOut {
                        phone: self.name.clone(),
                        what: what.into(),
                        within,
                        events: self.history.iter().map(event_name).collect(),
                    })
                }
            }
        }
    }

    /// Waits for the end of a call and returns its report.
    pub async fn ended(&mut self, within: Duration) -> Result<CallReport, PhoneError> {
        self.wait_for(within, "end of the call", |e| match e {
            CallEvent::Ended(report) => Some((**report).clone()),
            _ => None,
        })
        .await
    }

    /// Forgets past events (so the next waits only see new ones).
    pub fn clear_history(&mut self) {
        self.history.clear();
    }

    /// Every event seen so far.
    pub fn history(&self) -> &[CallEvent] {
        &self.history
    }
}

/// A short name for an event, for error messages.
pub fn event_name(event: &CallEvent) -> String {
    match event {
        CallEvent::State { state, .. } => format!("state:{}", state.as_str()),
        CallEvent::Incoming { .. } => "incoming".into(),
        CallEvent::IceConnected { .. } => "ice-connected".into(),
        CallEvent::DtlsConnected { .. } => "dtls-connected".into(),
        CallEvent::FirstRtp { .. } => "first-rtp".into(),
        CallEvent::ToneDetected { reading, .. } => format!("tone:{:.0}", reading.frequency_hz),
        CallEvent::FirstVideoFrame { .. } => "first-video-frame".into(),
        CallEvent::RttAvailable { .. } => "rtt".into(),
        CallEvent::Reconnecting { .. } => "reconnecting".into(),
        CallEvent::Reconnected { .. } => "reconnected".into(),
        CallEvent::RejectedBusy { .. } => "rejected-busy".into(),
        CallEvent::Ended(report) => format!("ended:{:?}", report.end),
    }
}

#[derive(Default)]
struct Routes {
    inboxes: HashMap<String, mpsc::Sender<CallPayload>>,
    dial: HashMap<String, String>,
    calls: HashMap<String, (String, String)>,
}

/// Routes call messages between in-process engines: an offer goes to the sender's dial target
/// and binds its `callId` to the two phones; everything else follows the `callId`.
#[derive(Clone, Default)]
pub struct Switchboard {
    routes: Arc<Mutex<Routes>>,
}

impl Switchboard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts an engine named `name` connected to the switchboard.
    pub fn add_phone(&self, name: &str, config: CallConfig) -> Phone {
        let (inbox_tx, inbox_rx) = mpsc::channel(256);
        let (out_tx, mut out_rx) = mpsc::channel::<CallPayload>(256);
        let (engine, events) = CallEngine::spawn(config, inbox_rx, out_tx);
        self.lock().inboxes.insert(name.to_string(), inbox_tx);
        let routes = Arc::clone(&self.routes);
        let from = name.to_string();
        tokio::spawn(async move {
            while let Some(payload) = out_rx.recv().await {
                let target = {
                    let mut routes = routes.lock().unwrap_or_else(|e| e.into_inner());
                    let call_id = payload.call_id().to_ascii_lowercase();
                    let target = match routes.calls.get(&call_id) {
                        Some((a, b)) => Some(if *a == from { b.clone() } else { a.clone() }),
                        None => routes.dial.get(&from).cloned(),
                    };
                    if let Some(target) = &target {
                        routes
                            .calls
                            .entry(call_id)
                            .or_insert_with(|| (from.clone(), target.clone()));
                    }
                    target.and_then(|t| routes.inboxes.get(&t).cloned())
                };
                match target {
                    Some(inbox) => {
                        let _ = inbox.send(payload).await;
                    }
                    None => {
                        tracing::warn!("{from}: nowhere to send a {}", payload.kind().type_name())
                    }
                }
            }
        });
        Phone {
            name: name.to_string(),
            engine,
            events,
            history: Vec::new(),
        }
    }

    /// New calls placed by `from` ring `to`.
    pub fn dial(&self, from: &str, to: &str) {
        self.lock().dial.insert(from.to_string(), to.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Options of [`run_selftest`].
#[derive(Debug, Clone)]
pub struct SelftestOptions {
    pub caller_hz: f64,
    pub callee_hz: f64,
    pub with_video: bool,
    /// The callee echoes what it hears instead of sending `callee_hz`.
    pub echo: bool,
    /// How long each step may take.
    pub step_timeout: Duration,
    /// Wait for the first RTCP round-trip time before hanging up.
    pub wait_for_rtt: bool,
}

impl Default for SelftestOptions {
    fn default() -> Self {
        Self {
            caller_hz: 440.0,
            callee_hz: 660.0,
            with_video: false,
            echo: false,
            step_timeout: Duration::from_secs(15),
            wait_for_rtt: true,
        }
    }
}

/// One in-process loopback call: the caller sends `caller_hz`, the callee (auto-accepting)
/// `callee_hz`; once both heard the other's tone (and the RTT is known), the caller hangs up.
/// Returns the caller's and the callee's reports.
pub async fn run_selftest(
    options: &SelftestOptions,
) -> Result<(CallReport, CallReport), SelftestError> {
    let board = Switchboard::new();
    let mut caller = board.add_phone(
        "caller",
        CallConfig {
            tone_hz: options.caller_hz,
            ..CallConfig::loopback()
        },
    );
    let mut callee = board.add_phone(
        "callee",
        CallConfig {
            tone_hz: options.callee_hz,
            echo: options.echo,
            answer_policy: AnswerPolicy::Accept,
            ..CallConfig::loopback()
        },
    );
    board.dial("caller", "callee");
    let step = options.step_timeout;
    caller
        .engine
        .place_call(options.with_video)
        .await
        .map_err(SelftestError::Place)?;
    let tone = |e: &CallEvent| match e {
        CallEvent::ToneDetected { reading, .. } => Some(*reading),
        _ => None,
    };
    caller.wait_for(step, "tone", tone).await?;
    callee.wait_for(step, "tone", tone).await?;
    if options.wait_for_rtt {
        let rtt = |e: &CallEvent| matches!(e, CallEvent::RttAvailable { .. }).then_some(());
        caller.wait_for(step, "RTCP round-trip time", rtt).await?;
        callee.wait_for(step, "RTCP round-trip time", rtt).await?;
    }
    caller
        .engine
        .hangup()
        .await
        .map_err(SelftestError::Hangup)?;
    let caller_report = caller.ended(step).await?;
    let callee_report = callee.ended(step).await?;
    Ok((caller_report, callee_report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_that_sees_nothing_times_out_naming_the_phone() {
        let board = Switchboard::new();
        let mut phone = board.add_phone("caller", CallConfig::loopback());
        let within = Duration::from_millis(20);
        let error = phone
            .wait_for(within, "tone", |_| None::<()>)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Timeout);
        assert_eq!(
            error.to_string(),
            format!("caller: no tone within {within:?}; events: []")
        );
    }

    #[tokio::test]
    async fn a_selftest_with_no_time_for_a_step_fails_as_a_timeout() {
        let options = SelftestOptions {
            step_timeout: Duration::from_millis(1),
            ..SelftestOptions::default()
        };
        let error = run_selftest(&options).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Timeout);
        assert!(
            error.to_string().starts_with("caller: no tone within 1ms"),
            "{error}"
        );
    }
}
