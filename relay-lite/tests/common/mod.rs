//! Helpers of relay-lite's integration tests and benchmarks (each test file
//! and bench takes the whole module; not every one uses every part): a child
//! process that is always cleaned up, the `relay-lite` binary as such a
//! child with a WebSocket client for it, and the TURN tests' relay-only
//! WebRTC call, raw TURN client and test CA.

#![allow(dead_code)]

pub mod child_process;
pub mod relay;
pub mod turn;
