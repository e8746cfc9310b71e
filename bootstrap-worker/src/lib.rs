//! The Zajel server registry.
//!
//! One implementation ([`registry`]) over a small storage interface
//! ([`store`]), with two hosts: a Cloudflare Worker whose Durable Object keeps
//! entries in its SQLite storage (built for `wasm32`), and a native server
//! with SQLite in a file ([`native`]), the self-hosted default.

pub mod admission;
pub mod config;
pub mod limiter;
pub mod list_cache;
pub mod registry;
pub mod store;
pub mod txt_cron;

#[cfg(not(target_arch = "wasm32"))]
pub mod native;

#[cfg(target_arch = "wasm32")]
pub mod worker_host;
