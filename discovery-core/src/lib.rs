//! zajel-discovery-core: the parts of Zajel discovery that need no I/O, so
//! that native clients and browsers (wasm32-unknown-unknown) share them.
//! Nothing here opens a socket, reads a clock or touches a file: time is
//! always an argument.
//!
//! Layout:
//! - [`txt`]: the signed `_zajel.<domain>` TXT record format: build and sign
//!   records, parse and verify them, and judge one resolver's answer;
//! - [`registry_list`]: verifying a fetched `GET /servers` response
//!   (signature over the exact body, pinned keys, timestamp window);
//! - [`share`]: `zajel://` sharing links (parse and format);
//! - [`address`]: which hosts a candidate may point at;
//! - [`cloudflare_api`]: Cloudflare's API answer envelope and paging, read
//!   by both TXT publishers (native and the Worker's Cron Trigger);
//! - [`report`]: the serde report of a run, and [`report::Candidate`];
//! - [`identity`]: judging a server's identity proof against the key its
//!   entry names (proven, learnt, unproven, mismatch);
//! - [`cache`]: the cache and referral store's model and rules (entries,
//!   bounds, expiry, revocations kept, the cache and referral layers'
//!   reading), kept by discovery-client in a file and by discovery-web in
//!   `localStorage`;
//! - [`discovery`]: the discovery state as a sans-IO machine (layer
//!   stagger and timeouts, merging, admission, check limit, ranking,
//!   handover, run end, report), driven by discovery-client's tokio driver.

pub mod address;
pub mod cache;
pub mod cloudflare_api;
pub mod discovery;
pub mod exit;
pub mod identity;
pub mod registry_list;
pub mod report;
pub mod share;
pub mod txt;

pub use discovery::{DiscoveryState, Event, Found, Input, Output, Rules};
pub use report::{Candidate, Layer, Outcome, Report, Verdict};
