//! call-probe: a WebRTC audio call engine (webrtc-rs, Opus over DTLS-SRTP) driven by Zajel's
//! call messages, with a report of everything a call learnt.
//!
//! - [`call`]: the engine ([`call::CallEngine`]), a tokio/webrtc-rs driver of the call rules,
//!   which live sans-IO in [`call::machine`] ([`call::machine::CallMachine`]).
//! - [`error`]: [`error::ErrorKind`], the machine-readable name of every failure.
//! - [`config`]: ICE servers, policy, address filters, timeouts, tone.
//! - [`peer`]: the webrtc-rs peer connection setup.
//! - [`media`]: tone, Opus, Goertzel detection, receive-side RTP figures.
//! - [`video`]: the test pattern (a frame counter in big luma blocks), reading it back, VP8
//!   frame assembly from RTP, keyframe requests, receive figures (sans-IO); `vpx`: VP8 through
//!   libvpx (cargo feature `video`, the one place with `unsafe` code).
//! - [`tap`]: the engine's own UDP socket (wire counters, SRTP profile, path cut);
//!   [`turn_tap`]: the same for relayed calls, a hop in front of each TURN server;
//!   [`last_flight`]: the DTLS final-flight retransmission webrtc-rs lacks.
//! - [`stats`]: timeline and RTP/RTCP figures.
//! - [`report`]: the call report and its table; [`table`]: the rows of the modes' tables.
//! - [`selftest`]: one in-process loopback call between two engines.
//! - [`identity`]: the X25519 pairing identity (state folder or ephemeral) and the per-peer
//!   keys; [`contacts`]: the paired contacts (`contacts.json`); [`rendezvous`]: finding a
//!   contact again through rendezvous (sans-IO, as Zajel's app does).
//! - [`client`]: registering on a relay, ICE servers from the relay, TURN bridges.
//! - [`line`]: a registered session wired to an engine (pairing, call routing);
//!   [`line_options`]: what `call`, `answer` and `demo` share, and the one builder of their
//!   [`CallConfig`].
//! - [`probe_call`]: `call` (pair, call, report); [`answer`]: `answer`.
//! - [`choose`]: where the relay comes from; [`check`]: `check`, with [`relay_probe`] (a
//!   datagram through a TURN relay and back) and [`netcheck`] (IPv6, the NAT mapping).
//! - `world`: registry + relay + TURN + DoH in-process; `demo`: `demo` (both behind the
//!   default-on cargo feature `demo`, the one place this crate depends on the servers).
//!
//! The signaling session, TLS settings and TURN stream bridges come from `zajel_client_net`.

pub mod answer;
pub mod call;
pub mod check;
pub mod choose;
pub mod client;
pub mod config;
pub mod contacts;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
pub mod identity;
pub mod interrupt;
pub mod last_flight;
pub mod line;
pub mod line_options;
pub mod media;
pub mod netcheck;
pub mod peer;
pub mod probe_call;
pub mod relay_probe;
pub mod rendezvous;
pub mod report;
pub mod script;
pub mod selftest;
pub mod stats;
pub mod table;
pub mod tap;
pub mod turn_tap;
pub mod video;
#[cfg(feature = "video")]
pub mod vpx;
#[cfg(feature = "demo")]
pub mod world;

pub use call::{CallEngine, CallEvent, Control, EngineError, MediaControls};
pub use config::{AnswerPolicy, CallConfig, CallTimeouts, IceServer};
pub use error::ErrorKind;
pub use report::{CallReport, EndReason, Role};
