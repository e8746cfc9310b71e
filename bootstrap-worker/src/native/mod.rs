//! The native, self-hosted registry: SQLite storage, a hyper server and key files.

pub mod keyfile;
pub mod server;
pub mod sqlite;
