//! call-probe: a WebRTC audio call engine (webrtc-rs, Opus over DTLS-SRTP) driven by Zajel's
//! call messages, with a report of everything a call learnt.
//!
//! - [`call`]: the engine and its state machine ([`call::CallEngine`]).
//! - [`config`]: ICE servers, policy, address filters, timeouts, tone.
//! - [`peer`]: the webrtc-rs peer connection setup.
//! - [`media`]: tone, Opus, Goertzel detection, receive-side RTP figures.
//! - [`tap`]: the engine's own UDP socket (wire counters, SRTP profile, path cut).
//! - [`stats`]: timeline and RTP/RTCP figures.
//! - [`report`]: the call report and its table.
//! - [`selftest`]: one in-process loopback call between two engines.
//! - [`session`]: the client side of a signaling session with a relay.

pub mod call;
pub mod config;
pub mod media;
pub mod peer;
pub mod report;
pub mod selftest;
pub mod session;
pub mod stats;
pub mod tap;

pub use call::{CallEngine, CallEvent, EngineError};
pub use config::{AnswerPolicy, CallConfig, CallTimeouts, IceServer};
pub use report::{CallReport, EndReason, Role};
