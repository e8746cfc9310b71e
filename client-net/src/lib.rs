//! zajel-client-net: the client-side network pieces that several parts of the
//! toolkit share, so that client crates (`discovery-client`, `call-probe`)
//! stand on `zajel-wire` and this crate, never on a server crate.
//!
//! Layout:
//!
//! - [`clock`]: [`now_ms`], the wall clock in Unix milliseconds.
//! - [`errors`]: an error and its sources in one line.
//! - [`terminal`]: printing for the person at the terminal: [`outln!`]/[`out!`] end quietly
//!   on a closed pipe, [`terminal::human_time`] for times in tables.
//! - [`tls`]: the one rustls crypto-provider install (ring) and the client TLS
//!   configurations (webpki roots plus extra PEM CAs).
//! - [`keyfile`]: the Ed25519 key (seed) file, read and written; the registry's
//!   signing key and the relay's identity use the same format.
//! - [`logging`] (feature `logging`): the one logger setup of every binary (text
//!   without colour off a terminal, or JSON lines) and the hint for a port that
//!   cannot be bound.
//! - [`signaling`] (feature `signaling`): the one signaling client — a
//!   WebSocket speaking Zajel's protocol from the client side, opened step by
//!   step with timings ([`signaling::SignalingSession`]), and the steps
//!   themselves for a plain candidate check.
//! - [`registry_http`] (feature `registry-http`): the one registry HTTP client
//!   (reqwest on rustls with ring), for `GET /servers` and relay membership.
//! - [`turn_bridge`] (feature `turn-bridge`): the client-side TURN stream
//!   bridge (UDP on 127.0.0.1 to TCP/TLS), and [`turn_framing`], the RFC 5766
//!   §2.1 stream framing it shares with relay-lite's stream listeners.

pub mod clock;
pub mod errors;
pub mod keyfile;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "registry-http")]
pub mod registry_http;
#[cfg(feature = "signaling")]
pub mod signaling;
pub mod terminal;
pub mod tls;
#[cfg(feature = "turn-bridge")]
pub mod turn_bridge;
#[cfg(feature = "turn-bridge")]
pub mod turn_framing;

pub use clock::now_ms;
