//! relay-lite: a lightweight signaling relay that speaks Zajel's WebSocket
//! protocol, registers itself with the bootstrap registry, and relays media
//! (TURN) for peers whose UDP is blocked.

pub mod credentials;
pub mod turn;
