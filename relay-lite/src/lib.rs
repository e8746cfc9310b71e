//! relay-lite: a lightweight signaling relay that speaks Zajel's WebSocket
//! protocol, registers itself with the bootstrap registry, and relays media
//! (TURN) for peers whose UDP is blocked.
//!
//! In-process use:
//!
//! ```no_run
//! # async fn demo() -> Result<(), relay_lite::Error> {
//! let relay = relay_lite::Relay::start(relay_lite::RelayConfig {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     ..Default::default()
//! })
//! .await?;
//! println!("ws://{} as {}", relay.local_addr(), relay.server_id());
//! relay.shutdown().await;
//! # Ok(()) }
//! ```

pub mod bindings;
pub mod config;
pub mod credentials;
pub mod federation;
pub mod http;
pub mod hub;
pub mod ice;
pub mod limits;
mod linking;
pub mod membership;
pub mod metrics;
mod outbox;
pub mod ownership;
pub mod pairing;
mod peer_relays;
pub mod relay;
mod relay_requests;
pub mod rendezvous;
mod rendezvous_store;
pub mod ring;
pub mod session;
pub mod tls;
pub mod turn;

pub use config::{
    IceConfig, Limits, MembershipConfig, RelayConfig, RendezvousConfig, Timeouts, TlsFiles,
};
pub use metrics::{Metrics, Refusal, TurnMetrics};
pub use relay::{Error, Relay, RunningRelay};
