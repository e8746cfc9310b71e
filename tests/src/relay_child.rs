//! The `relay-lite` binary as a child process on 127.0.0.1 (a free port), for
//! the suites that run it with other parts (the registry, call-probe, aiortc):
//! started with chosen flags, ready once it has printed its server id and
//! listening address.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::process::ChildProcess;
use crate::registry_host::binary;

/// A running `relay-lite` child.
pub struct RelayChild {
    pub process: ChildProcess,
    pub addr: SocketAddr,
    /// The `ed25519:…` id it printed (its identity key).
    pub server_id: String,
}

impl RelayChild {
    /// Starts `relay-lite --listen 127.0.0.1:0 <args>` and waits for its
    /// server id and listening lines.
    pub fn start(args: &[&str], timeout: Duration) -> Result<Self, String> {
        Self::start_on("127.0.0.1:0", args, timeout)
    }

    /// [`Self::start`] listening on `listen` (to restart a relay on its port).
    pub fn start_on(listen: &str, args: &[&str], timeout: Duration) -> Result<Self, String> {
        let mut command = Command::new(binary("relay-lite")?);
        command.args(["--listen", listen]).args(args);
        let mut process = ChildProcess::spawn("relay-lite", command)?;
        let server_id = process.wait_for(timeout, |line| {
            line.strip_prefix("server id ").map(str::to_string)
        })?;
        // `wss://` when its public endpoint is one, though it listens in plain
        // TCP unless given a certificate.
        let addr = process.wait_for(timeout, |line| {
            line.strip_prefix("listening on ")
                .and_then(|url| url.split("://").nth(1))
                .and_then(|addr| addr.trim().parse().ok())
        })?;
        Ok(Self {
            process,
            addr,
            server_id,
        })
    }

    /// The relay's WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}
