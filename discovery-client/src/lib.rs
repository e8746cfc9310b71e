//! discovery-client: finds working Zajel signaling servers on censored networks.
//!
//! Six layers run at once and feed one list of candidates:
//!
//! 1. [`registry`]: `GET /servers` from the registries, signature and freshness checked;
//! 2. [`doh`] + [`txt`]: signed `_zajel.<domain>` TXT records over DNS-over-HTTPS;
//! 3. [`store`]: the local cache of servers that worked;
//! 4. [`store`] again: friend referrals (servers that paired contacts shared);
//! 5. [`share`]: `zajel://` links from QR codes;
//! 6. manual URLs typed by the user.
//!
//! [`discovery::Discovery`] merges them, checks each candidate with a WebSocket
//! `ping`/`pong` ([`probe`], on `zajel_client_net::signaling`), ranks them, streams [`discovery::Event`]s and
//! ends every run with a serde-serialisable [`report::Report`]. [`cli`] holds the discovery
//! flags both command lines (`zajel-discover`, call-probe) flatten.
//!
//! What needs no I/O lives in `zajel_discovery_core` (it builds for the
//! browser) and is re-exported here: the TXT format ([`txt`]), the registry
//! list checks (used by [`registry`]), sharing links (in [`share`]), the
//! report ([`report`]) and the discovery state machine that
//! [`discovery`] drives.

pub mod cli;
pub mod cloudflare;
pub mod discovery;
pub mod dns_update;
pub mod doh;
pub mod doh_server;
pub mod freshness;
pub mod net;
pub mod probe;
pub mod publish;
pub mod registry;
pub mod share;
pub mod store;

pub use zajel_discovery_core::{exit, identity, report, txt};

pub use discovery::{Candidate, Config, Discovery, Event, Run};
pub use report::{Layer, Outcome, Report, Verdict};

/// Milliseconds since the Unix epoch (the toolkit's one clock reader).
pub use zajel_client_net::now_ms;
