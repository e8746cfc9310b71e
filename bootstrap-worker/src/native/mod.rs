//! The native, self-hosted registry: SQLite storage and a hyper server (its
//! signing-key file is `zajel_client_net::keyfile`).

pub mod checker;
pub mod forwarded;
pub mod metrics;
pub mod server;
pub mod sqlite;
