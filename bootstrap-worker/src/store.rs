//! The storage interface the registry runs over, and the SQL both hosts use.
//!
//! Both hosts keep entries in SQLite: the Worker in its Durable Object's
//! SQLite-backed storage, the native host in a file (or in memory). They
//! share the schema and statements below, so they order and expire entries
//! identically.

use zajel_wire::entry::ServerEntry;

/// An entry as stored: the listed fields plus whether it was registered with
/// a proof of possession (then only signed mutations may touch it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub entry: ServerEntry,
    pub signed: bool,
}

/// What the registry needs from storage. Every call is synchronous: both
/// SQLite hosts answer without awaiting. A write returns only once durable.
pub trait Store {
    /// One entry by `serverId`.
    fn get(&self, server_id: &str) -> Result<Option<StoredEntry>, StoreError>;
    /// Inserts or replaces an entry.
    fn put(&mut self, entry: &StoredEntry) -> Result<(), StoreError>;
    /// Removes an entry; true when there was one.
    fn delete(&mut self, server_id: &str) -> Result<bool, StoreError>;
    /// Entries seen at or after `fresh_since` (ms), ordered by `serverId`.
    fn list_fresh(&self, fresh_since: u64) -> Result<Vec<ServerEntry>, StoreError>;
    /// Deletes entries last seen before `fresh_since`; returns how many.
    fn delete_stale(&mut self, fresh_since: u64) -> Result<u64, StoreError>;
    /// How many entries are stored, stale ones included.
    fn count(&self) -> Result<u64, StoreError>;
    /// Records which network (see `registry::network_of`) registered an entry.
    fn set_network(&mut self, server_id: &str, network: &str) -> Result<(), StoreError>;
    /// How many entries seen at or after `fresh_since`, other than `except`,
    /// were registered from `network`.
    fn count_network(
        &self,
        network: &str,
        fresh_since: u64,
        except: &str,
    ) -> Result<u64, StoreError>;
    /// Records a mutation signature as used until `expires_at` (ms). Returns
    /// false when it was already recorded (a replay). Forgets signatures that
    /// expired before `now`.
    fn claim_signature(
        &mut self,
        signature: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, StoreError>;
}

/// A storage failure; the registry answers 500 and logs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// Schema shared by both hosts (idempotent).
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS servers (
        server_id TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        public_key TEXT NOT NULL,
        region TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        signed INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS servers_last_seen ON servers (last_seen)",
    "CREATE TABLE IF NOT EXISTS used_signatures (
        signature TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS used_signatures_expiry ON used_signatures (expires_at)",
    "CREATE TABLE IF NOT EXISTS entry_networks (
        server_id TEXT PRIMARY KEY,
        network TEXT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS entry_networks_network ON entry_networks (network)",
];

// Statements. Placeholders are plain `?`, bound in order, which both the
// Durable Object's `sql.exec` and rusqlite accept. Selects return the
// columns in `ServerEntry` order followed by `signed`.
pub const SELECT_ONE: &str =
    "SELECT server_id, endpoint, public_key, region, registered_at, last_seen, signed FROM servers WHERE server_id = ?";
pub const UPSERT: &str = "INSERT OR REPLACE INTO servers (server_id, endpoint, public_key, region, registered_at, last_seen, signed) VALUES (?, ?, ?, ?, ?, ?, ?)";
pub const DELETE_ONE: &str = "DELETE FROM servers WHERE server_id = ?";
pub const SELECT_FRESH: &str = "SELECT server_id, endpoint, public_key, region, registered_at, last_seen, signed FROM servers WHERE last_seen >= ? ORDER BY server_id";
pub const DELETE_STALE: &str = "DELETE FROM servers WHERE last_seen < ?";
pub const COUNT: &str = "SELECT COUNT(*) FROM servers";
pub const PURGE_SIGNATURES: &str = "DELETE FROM used_signatures WHERE expires_at < ?";
pub const INSERT_SIGNATURE: &str =
    "INSERT OR IGNORE INTO used_signatures (signature, expires_at) VALUES (?, ?)";
pub const UPSERT_NETWORK: &str =
    "INSERT OR REPLACE INTO entry_networks (server_id, network) VALUES (?, ?)";
pub const COUNT_NETWORK: &str = "SELECT COUNT(*) AS count FROM servers JOIN entry_networks USING (server_id) WHERE network = ? AND last_seen >= ? AND server_id != ?";
/// Forgets the networks of entries that are gone (after deletes).
pub const PURGE_NETWORKS: &str =
    "DELETE FROM entry_networks WHERE server_id NOT IN (SELECT server_id FROM servers)";
