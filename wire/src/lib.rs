//! Wire types shared by every part of the Zajel toolkit.
//!
//! Everything here is plain data plus pure functions: no I/O, no clock, no
//! async runtime, so the crate builds for the host and for
//! `wasm32-unknown-unknown` (the Worker). Callers pass the current time in.
//!
//! The shapes follow `shared/reference/zajel-wire.md`; additions of our own are
//! marked as extensions where they are declared.

pub mod call;
pub mod endpoint;
pub mod entry;
pub mod federation;
pub mod keys;
pub mod pairing;
pub mod peer_keys;
pub mod rendezvous;
pub mod rendezvous_link;
pub mod signaling;
pub mod signature;
