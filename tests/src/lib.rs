//! Shared harness for the end-to-end tests: child processes that are always
//! cleaned up, and the registry hosts (native and under workerd) started
//! with a chosen configuration; a test CA, a real DoH server (unbound) and a
//! stand-in signaling server for the discovery tests; relay-lite as a child; the
//! interop parts (the aiortc peer as a child, call-probe's engine as a relay
//! client); a hostile relay that attacks calls (issue 13). Suites that test
//! one part alone live beside that part.

pub mod blackhole;
pub mod browser;
pub mod censorship_world;
pub mod cloudflare_standin;
pub mod discovery_world;
pub mod doh_inprocess;
pub mod hostile_relay;
pub mod interop;
pub mod knot_auth;
pub mod netem;
pub mod netns;
pub mod probe_peer;
pub mod process;
pub mod registry_host;
pub mod relay_child;
pub mod rendezvous_client;
pub mod test_ca;
pub mod unbound_doh;
pub mod ws_echo;
