//! The aiortc side of an interop call: the Zajel peer
//! (`tests/interop/zajel_peer.py`, run by the venv that `scripts/py-interop`
//! builds in `target/py-interop`) as a child process. relay-lite, the other
//! child of an interop call, is `crate::relay_child`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::ChildProcess;

/// The workspace root (the `tests` crate's parent).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

/// The Python that has aiortc: `$ZAJEL_PYTHON`, else `target/py-interop/bin/python`.
pub fn python() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ZAJEL_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    let path = workspace_root().join("target/py-interop/bin/python");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} does not exist: run `bash scripts/py-interop` first (scripts/test does), \
             or point ZAJEL_PYTHON at a Python with tests/interop/requirements.txt installed",
            path.display()
        ))
    }
}

/// The aiortc peer's script.
pub fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/zajel_peer.py")
}

/// Which side of the call the aiortc peer takes.
#[derive(Clone, Debug)]
pub enum AiortcRole {
    /// Pairs with this code and places the call.
    Call { peer: String },
    /// Waits for a pair request and answers the call.
    Answer,
}

/// Options of one aiortc peer run.
#[derive(Clone, Debug)]
pub struct AiortcOptions {
    pub role: AiortcRole,
    pub server: String,
    /// The code to register (random when `None`).
    pub code: Option<String>,
    pub tone_hz: f64,
    /// The tone the other side sends; the peer exits 1 unless it hears it within 5 Hz.
    pub expect_hz: Option<f64>,
    /// Caller: keep talking this long after hearing the other side's tone.
    pub hold: Duration,
    /// Each wait of the peer (pairing, ringing, tone, hangup).
    pub step_timeout: Duration,
    /// Send call messages in Zajel's web client form (`targetId`, fields at the top level).
    pub flat: bool,
    /// Also send the test pattern (VP8) and read the other side's (`--video`).
    pub video: bool,
}

impl AiortcOptions {
    pub fn new(role: AiortcRole, server: &str) -> Self {
        Self {
            role,
            server: server.to_string(),
            code: None,
            tone_hz: 520.0,
            expect_hz: None,
            hold: Duration::from_millis(1500),
            step_timeout: Duration::from_secs(15),
            flat: false,
            video: false,
        }
    }
}

/// A running aiortc peer.
pub struct AiortcPeer {
    pub process: ChildProcess,
}

impl AiortcPeer {
    /// Starts the peer (loopback candidates only).
    pub fn spawn(options: &AiortcOptions) -> Result<Self, String> {
        let mut command = Command::new(python()?);
        command.arg(peer_script());
        match &options.role {
            AiortcRole::Call { peer } => command.args(["call", "--peer", peer]),
            AiortcRole::Answer => command.arg("answer"),
        };
        let step = format!("{}", options.step_timeout.as_secs_f64());
        command
            .args(["--server", &options.server, "--loopback"])
            .args(["--tone-hz", &options.tone_hz.to_string()])
            .args(["--hold", &options.hold.as_secs_f64().to_string()])
            .args(["--step-timeout", &step, "--pair-timeout", &step])
            .args(["--ring-timeout", &step, "--tone-timeout", &step])
            .args(["--hangup-timeout", &step]);
        if let Some(code) = &options.code {
            command.args(["--code", code]);
        }
        if options.flat {
            command.arg("--flat");
        }
        if options.video {
            command.arg("--video");
        }
        if let Some(hz) = options.expect_hz {
            command.args(["--expect-hz", &hz.to_string()]);
        }
        let process = ChildProcess::spawn("aiortc peer", command)?;
        Ok(Self { process })
    }

    /// Waits for the `registered` line; returns the peer's pairing code.
    pub fn registered(&mut self, timeout: Duration) -> Result<String, String> {
        self.process.wait_for(timeout, |line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["event"] == "registered")
                .then(|| value["code"].as_str().map(str::to_string))
                .flatten()
        })
    }

    /// Waits for the final `result` line (the JSON object described in the script).
    pub fn result(&mut self, timeout: Duration) -> Result<Value, String> {
        self.process.wait_for(timeout, |line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["event"] == "result").then_some(value)
        })
    }

    /// Everything the peer printed (its logs are on stderr).
    pub fn output(&self) -> String {
        self.process.output()
    }
}

/// A milestone of an aiortc result, in ms since `origin` (another milestone).
pub fn aiortc_since(result: &Value, origin: &str, mark: &str) -> Option<f64> {
    let timings = &result["timings_ms"];
    Some(timings[mark].as_f64()? - timings[origin].as_f64()?)
}
