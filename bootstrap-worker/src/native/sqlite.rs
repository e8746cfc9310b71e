//! The native host's store: SQLite in a file (durable) or in memory.
//!
//! The file runs in WAL mode with `synchronous=FULL`, so a write that
//! returned has reached the disk: a crash or `kill -9` right after an
//! acknowledged registration loses nothing.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Row};
use zajel_wire::entry::ServerEntry;

use crate::store::{self, Store, StoreError, StoredEntry};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    connection: Connection,
}

fn storage_error(error: rusqlite::Error) -> StoreError {
    StoreError(error.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) a durable store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(storage_error)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(storage_error)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(storage_error)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(storage_error)?;
        Self::with_schema(connection)
    }

    /// A throwaway store that lives in memory.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::with_schema(Connection::open_in_memory().map_err(storage_error)?)
    }

    fn with_schema(connection: Connection) -> Result<Self, StoreError> {
        for statement in store::SCHEMA {
            connection.execute(statement, []).map_err(storage_error)?;
        }
        Ok(Self { connection })
    }
}

impl SqliteStore {
    fn purge_networks(&self) -> Result<(), StoreError> {
        self.connection
            .prepare_cached(store::PURGE_NETWORKS)
            .and_then(|mut statement| statement.execute([]))
            .map(|_| ())
            .map_err(storage_error)
    }
}

fn stored_entry(row: &Row<'_>) -> rusqlite::Result<StoredEntry> {
    Ok(StoredEntry {
        entry: ServerEntry {
            server_id: row.get(0)?,
            endpoint: row.get(1)?,
            public_key: row.get(2)?,
            region: row.get(3)?,
            registered_at: row.get::<_, i64>(4)?.max(0) as u64,
            last_seen: row.get::<_, i64>(5)?.max(0) as u64,
        },
        signed: row.get::<_, i64>(6)? != 0,
    })
}

/// SQLite integers are signed; our instants are far below `i64::MAX`.
fn sql_int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn get(&self, server_id: &str) -> Result<Option<StoredEntry>, StoreError> {
        self.connection
            .prepare_cached(store::SELECT_ONE)
            .and_then(|mut statement| statement.query_row([server_id], stored_entry).optional())
            .map_err(storage_error)
    }

    fn put(&mut self, stored: &StoredEntry) -> Result<(), StoreError> {
        let entry = &stored.entry;
        self.connection
            .prepare_cached(store::UPSERT)
            .and_then(|mut statement| {
                statement.execute(params![
                    entry.server_id,
                    entry.endpoint,
                    entry.public_key,
                    entry.region,
                    sql_int(entry.registered_at),
                    sql_int(entry.last_seen),
                    i64::from(stored.signed),
                ])
            })
            .map(|_| ())
            .map_err(storage_error)
    }

    fn delete(&mut self, server_id: &str) -> Result<bool, StoreError> {
        self.connection
            .prepare_cached(store::DELETE_ONE)
            .and_then(|mut statement| statement.execute([server_id]))
            .map(|changed| changed > 0)
            .map_err(storage_error)
            .and_then(|existed| self.purge_networks().map(|()| existed))
    }

    fn list_fresh(&self, fresh_since: u64) -> Result<Vec<ServerEntry>, StoreError> {
        self.connection
            .prepare_cached(store::SELECT_FRESH)
            .and_then(|mut statement| {
                statement
                    .query_map([sql_int(fresh_since)], stored_entry)?
                    .map(|row| row.map(|stored| stored.entry))
                    .collect()
            })
            .map_err(storage_error)
    }

    fn delete_stale(&mut self, fresh_since: u64) -> Result<u64, StoreError> {
        self.connection
            .prepare_cached(store::DELETE_STALE)
            .and_then(|mut statement| statement.execute([sql_int(fresh_since)]))
            .map(|changed| changed as u64)
            .map_err(storage_error)
            .and_then(|deleted| self.purge_networks().map(|()| deleted))
    }

    fn count(&self) -> Result<u64, StoreError> {
        self.connection
            .query_row(store::COUNT, [], |row| row.get::<_, i64>(0))
            .map(|count| count.max(0) as u64)
            .map_err(storage_error)
    }

    fn set_network(&mut self, server_id: &str, network: &str) -> Result<(), StoreError> {
        self.connection
            .prepare_cached(store::UPSERT_NETWORK)
            .and_then(|mut statement| statement.execute([server_id, network]))
            .map(|_| ())
            .map_err(storage_error)
    }

    fn count_network(
        &self,
        network: &str,
        fresh_since: u64,
        except: &str,
    ) -> Result<u64, StoreError> {
        self.connection
            .query_row(
                store::COUNT_NETWORK,
                params![network, sql_int(fresh_since), except],
                |row| row.get::<_, i64>(0),
            )
            .map(|count| count.max(0) as u64)
            .map_err(storage_error)
    }

    fn claim_signature(
        &mut self,
        signature: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.connection
            .prepare_cached(store::PURGE_SIGNATURES)
            .and_then(|mut statement| statement.execute([sql_int(now)]))
            .map_err(storage_error)?;
        self.connection
            .prepare_cached(store::INSERT_SIGNATURE)
            .and_then(|mut statement| statement.execute(params![signature, sql_int(expires_at)]))
            .map(|inserted| inserted == 1)
            .map_err(storage_error)
    }
}
