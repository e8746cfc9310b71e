//! `call-probe demo`: the whole chain in one process, offline, on 127.0.0.1.
//!
//! Starts a [`LocalWorld`] (registry, relay-lite with embedded TURN registered with it, the
//! registry's list published as signed `_zajel` TXT records behind an in-process DoH server),
//! an answerer on the relay, then runs discovery through the registry and DoH layers, calls
//! the answerer on the server discovery chose, and reports both (per-layer discovery results,
//! the caller's and the answerer's call reports).

use std::time::{Duration, Instant};

use discovery_client::discovery::Discovery;
use discovery_client::report::Report as DiscoveryReport;
use serde::Serialize;
use url::Url;

use crate::answer::{AnswerError, AnswerOptions, Answerer};
use crate::error::ErrorKind;
use crate::line_options::LineOptions;
use crate::probe_call::{
    media_flowed_both_ways, run_call, video_flowed_both_ways, CallOptions, ProbeCallReport,
};
use crate::report::CallReport;
use crate::world::{LocalWorld, WorldAddresses, WorldOptions, WorldTimings};

/// What `demo` does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long audio flows.
    pub duration: Duration,
    pub with_video: bool,
    /// Serve the relay on plain `ws://` instead of `wss://`.
    pub plain_ws: bool,
    /// The caller's line: TURN, addresses (loopback by default), tone (440 Hz) and timeouts;
    /// the world's throwaway CA is trusted besides its `extra_roots`. The answerer's line is
    /// the same but for its tone.
    pub line: LineOptions,
    /// The tone the answerer sends, in Hz.
    pub answerer_hz: f64,
    /// Call controls the caller carries out once connected (`--script`).
    pub script: crate::script::Script,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(2),
            with_video: false,
            plain_ws: false,
            line: LineOptions {
                loopback: true,
                ..LineOptions::new(440.0)
            },
            answerer_hz: 660.0,
            script: crate::script::Script::default(),
        }
    }
}

/// Everything the demo learnt.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub world: WorldAddresses,
    pub startup: WorldTimings,
    /// The full discovery report (every layer, every candidate).
    pub discovery: DiscoveryReport,
    /// The layers that named the server the call used.
    pub found_by: Vec<String>,
    pub answerer_code: String,
    pub share_uri: String,
    pub call: ProbeCallReport,
    /// The answerer's report of the same call.
    pub answerer: Option<CallReport>,
    /// Both sides sent and received audio and each heard the other's tone.
    pub media_both_ways: bool,
    /// Both sides authenticated the call (each verified the other's `auth` and DTLS
    /// certificate).
    pub authenticated: bool,
    pub caller_heard_hz: Option<f64>,
    pub answerer_heard_hz: Option<f64>,
    /// With `--video`: both sides decoded the other's frames and read its pattern's counter
    /// with none missing or out of order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_both_ways: Option<bool>,
    pub total_ms: f64,
    pub error: Option<String>,
    /// What failed, machine-readable (absent when nothing did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
}

/// Why the demo could not run (a failed call is in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The local world did not start.
    #[error(transparent)]
    World(#[from] crate::world::WorldError),
    #[error(transparent)]
    Answer(#[from] AnswerError),
    /// Discovery could not be set up.
    #[error(transparent)]
    Discovery(#[from] discovery_client::discovery::DiscoveryError),
    #[error("discovered URL {url}: {source}")]
    DiscoveredUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    /// `layers`: the discovery layers as JSON.
    #[error("discovery found no server: {layers}")]
    NothingFound { layers: String },
}

impl DemoError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::World(_) => ErrorKind::World,
            Self::Answer(error) => error.kind(),
            Self::Discovery(_) => ErrorKind::DiscoveryConfig,
            Self::DiscoveredUrl { .. } => ErrorKind::BadServer,
            Self::NothingFound { .. } => ErrorKind::NoServerFound,
        }
    }
}

impl DemoReport {
    /// The report for a person.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        out.push_str("== local world (127.0.0.1) ==\n");
        out.push_str(&format!("registry            {}\n", self.world.registry));
        out.push_str(&format!(
            "relay               {} ({})\n",
            self.world.relay, self.world.relay_server_id
        ));
        let port = |a: Option<std::net::SocketAddr>| a.map_or("-".into(), |a| a.to_string());
        out.push_str(&format!(
            "TURN                udp {}, tcp {}, tls {}\n",
            port(self.world.turn_udp),
            port(self.world.turn_tcp),
            port(self.world.turn_tls)
        ));
        out.push_str(&format!(
            "DoH                 {} (_zajel.{}, {} signed TXT record(s))\n",
            self.world.doh, self.world.domain, self.world.txt_records
        ));
        out.push_str("== discovery ==\n");
        for layer in &self.discovery.layers {
            out.push_str(&layer.table_row());
            out.push('\n');
        }
        out.push_str(&format!(
            "verdict             {:?}, first verified server after {}\n",
            self.discovery.verdict,
            self.discovery
                .first_verified_ms
                .map_or("-".into(), |v| format!("{v:.1} ms"))
        ));
        out.push_str(&format!(
            "chosen server       {} (found by {})\n",
            self.call.server,
            self.found_by.join(", ")
        ));
        out.push_str(&format!(
            "answerer            {}  {}\n",
            self.answerer_code, self.share_uri
        ));
        out.push_str("== call (caller) ==\n");
        out.push_str(&self.call.to_table());
        if let Some(answerer) = &self.answerer {
            out.push_str("== call (answerer) ==\n");
            out.push_str(&answerer.to_table());
        }
        out.push_str("== result ==\n");
        let hz = |v: Option<f64>| v.map_or("nothing".into(), |v| format!("{v:.0} Hz"));
        out.push_str(&format!(
            "caller heard        {}\nanswerer heard      {}\nmedia both ways     {}\nauthenticated       {}\ntotal               {:.0} ms\n",
            hz(self.caller_heard_hz),
            hz(self.answerer_heard_hz),
            if self.media_both_ways { "yes" } else { "NO" },
            self.authenticated,
            self.total_ms
        ));
        if let Some(both) = self.video_both_ways {
            let side = |report: Option<&CallReport>| {
                report
                    .and_then(|r| r.video.as_ref())
                    .map_or("nothing".to_string(), |v| video_line(&v.received))
            };
            out.push_str(&format!(
                "caller saw          {}\nanswerer saw        {}\nvideo both ways     {}\n",
                side(self.call.call.as_ref()),
                side(self.answerer.as_ref()),
                if both { "yes" } else { "NO" },
            ));
        }
        if let Some(error) = &self.error {
            out.push_str(&format!("error               {error}\n"));
        }
        out
    }
}

/// One line about the video a side received.
fn video_line(rx: &crate::video::VideoReceiveReport) -> String {
    let size = match (rx.width, rx.height) {
        (Some(w), Some(h)) => format!("{w}x{h}"),
        _ => "-".into(),
    };
    let counters = match (rx.first_counter, rx.last_counter) {
        (Some(first), Some(last)) => format!(
            "counter {first}..{last} {}",
            if rx.counter_continuous() {
                "continuous".to_string()
            } else {
                format!(
                    "NOT continuous ({} missing, {} out of order)",
                    rx.counters_missing, rx.counters_out_of_order
                )
            }
        ),
        _ => "no counter read".into(),
    };
    format!(
        "{} frames decoded ({size}, {:.1} fps, {} freezes), {counters}",
        rx.frames_decoded,
        rx.frame_rate.unwrap_or(0.0),
        rx.freezes
    )
}

/// A side decoded video and read a continuous counter.
fn saw_video(report: Option<&CallReport>) -> bool {
    report.is_some_and(|r| {
        video_flowed_both_ways(r)
            && r.video
                .as_ref()
                .is_some_and(|v| v.received.counter_continuous())
    })
}

fn heard(report: Option<&CallReport>, hz: f64) -> bool {
    report
        .and_then(|r| r.tone.detected)
        .is_some_and(|d| (d.frequency_hz - hz).abs() <= 5.0)
}

/// Runs the demo. `Err` only when the world could not be started.
pub async fn run_demo(options: &DemoOptions) -> Result<DemoReport, DemoError> {
    let start = Instant::now();
    let world = LocalWorld::start_with(WorldOptions {
        relay_tls: !options.plain_ws,
    })
    .await?;

    let mut roots = options.line.extra_roots.clone();
    roots.push(world.ca.ca_der.clone());
    let caller_line = options.line.clone().trusting(roots);
    let mut answer_options = AnswerOptions::new(world.relay_url());
    answer_options.max_calls = Some(1);
    answer_options.line = LineOptions {
        tone_hz: options.answerer_hz,
        ..caller_line.clone()
    };
    let answerer = Answerer::start(answer_options).await?;
    let answerer_code = answerer.code;
    let share_uri = answerer.share_uri.clone();
    let answering = tokio::spawn(answerer.serve(|_| {}));

    let discovery = Discovery::new(world.discovery_config()?)?;
    let discovery_report = discovery.run().finish().await;
    let best = discovery_report.best.clone();
    let (server, found_by) = match &best {
        Some(best) => (
            Url::parse(&best.url).map_err(|source| DemoError::DiscoveredUrl {
                url: best.url.clone(),
                source,
            })?,
            best.sources
                .iter()
                .map(|l| l.as_str().to_string())
                .collect(),
        ),
        None => {
            answering.abort();
            world.stop().await;
            return Err(DemoError::NothingFound {
                layers: serde_json::to_string(&discovery_report.layers).unwrap_or_default(),
            });
        }
    };

    let mut call_options = CallOptions::new(server, answerer_code);
    call_options.duration = options.duration;
    call_options.with_video = options.with_video;
    call_options.script = options.script.clone();
    call_options.line = caller_line;
    let call = run_call(&call_options).await;

    let answerer_report = match tokio::time::timeout(options.line.step_timeout, answering).await {
        Ok(Ok(Ok(mut calls))) => calls.pop().map(|c| c.report),
        Ok(Ok(Err(error))) => {
            tracing::warn!(%error, "answerer");
            None
        }
        _ => None,
    };
    let world_addresses = world.addresses.clone();
    let startup = world.timings.clone();
    world.stop().await;

    let caller_heard = heard(call.call.as_ref(), options.answerer_hz);
    let answerer_heard = heard(answerer_report.as_ref(), options.line.tone_hz);
    let media_both_ways = call.media_both_ways
        && answerer_report.as_ref().is_some_and(media_flowed_both_ways)
        && caller_heard
        && answerer_heard;
    let authenticated =
        call.authenticated && answerer_report.as_ref().is_some_and(|r| r.authenticated);
    let video_both_ways = options
        .with_video
        .then(|| saw_video(call.call.as_ref()) && saw_video(answerer_report.as_ref()));
    let (error, error_kind) = if let Some(error) = &call.error {
        (Some(error.clone()), call.error_kind)
    } else if !media_both_ways {
        (
            Some("media did not flow both ways (see the tones heard)".into()),
            Some(ErrorKind::OneWayAudio),
        )
    } else if video_both_ways == Some(false) {
        (
            Some("video did not flow both ways with a continuous counter".into()),
            Some(ErrorKind::OneWayVideo),
        )
    } else {
        (None, None)
    };
    Ok(DemoReport {
        world: world_addresses,
        startup,
        discovery: discovery_report,
        found_by,
        answerer_code: answerer_code.as_str().to_string(),
        share_uri,
        caller_heard_hz: call
            .call
            .as_ref()
            .and_then(|c| c.tone.detected)
            .map(|d| d.frequency_hz),
        answerer_heard_hz: answerer_report
            .as_ref()
            .and_then(|c| c.tone.detected)
            .map(|d| d.frequency_hz),
        call,
        answerer: answerer_report,
        media_both_ways,
        authenticated,
        video_both_ways,
        total_ms: start.elapsed().as_secs_f64() * 1000.0,
        error,
        error_kind,
    })
}
