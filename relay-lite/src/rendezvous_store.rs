//! The rendezvous tables in SQLite: `daily_points` and `hourly_tokens`,
//! one row per (point or token, peerId), UNIQUE on that pair as in Zajel's
//! `migrations/001_initial.sql`; re-registering upserts (dead drop, relay
//! id and expiry replaced, the row keeps its place so matches come back in
//! first-registration order). A file database (WAL journal) keeps every
//! committed entry across a relay restart or crash; without a file the
//! tables live in memory. Plain storage: [`crate::rendezvous`] decides what
//! to read and write, with its own clock.

use std::path::Path;

use rusqlite::{params, Connection, Transaction};

/// A storage failure (logged by the caller; clients get a generic error).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rendezvous storage: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("rendezvous storage file: {0}")]
    File(#[from] std::io::Error),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS daily_points (
    point TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    dead_drop TEXT NOT NULL,
    relay_id TEXT,
    expires_at INTEGER NOT NULL,
    UNIQUE (point, peer_id)
);
CREATE INDEX IF NOT EXISTS daily_points_peer ON daily_points (peer_id);
CREATE INDEX IF NOT EXISTS daily_points_expiry ON daily_points (expires_at);
CREATE TABLE IF NOT EXISTS hourly_tokens (
    token TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    relay_id TEXT,
    expires_at INTEGER NOT NULL,
    UNIQUE (token, peer_id)
);
CREATE INDEX IF NOT EXISTS hourly_tokens_peer ON hourly_tokens (peer_id);
CREATE INDEX IF NOT EXISTS hourly_tokens_expiry ON hourly_tokens (expires_at);
";

/// Most other peers read at one point or token: the ones registered most
/// recently (latest expiry), in first-registration order. Two contacts
/// share a point; stale entries under the codes of a contact's earlier
/// app runs add a few more; only a flood of made-up peerIds reaches this,
/// and it would otherwise multiply every registration's reply and pushes.
pub(crate) const MAX_PEERS_PER_POINT: usize = 32;

/// Another peer's row at a point or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEntry {
    pub peer_id: String,
    /// Empty for hourly tokens.
    pub dead_drop: String,
    pub relay_id: Option<String>,
}

/// The rendezvous database.
pub(crate) struct RendezvousStore {
    connection: Connection,
}

impl RendezvousStore {
    /// Opens (creating if needed) the database at `path`, or an in-memory one.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let connection = match path {
            Some(path) => {
                create_private(path)?;
                let connection = Connection::open(path)?;
                connection.pragma_update(None, "journal_mode", "WAL")?;
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                connection
            }
            None => Connection::open_in_memory()?,
        };
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self { connection })
    }

    /// Runs `work` in one transaction: committed if it returns `Ok`, rolled back otherwise.
    pub fn transaction<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&Tables<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = self.connection.transaction().map_err(StoreError::from)?;
        let result = work(&Tables { tx: &tx })?;
        tx.commit().map_err(StoreError::from)?;
        Ok(result)
    }

    /// Deletes every row of `peer_id`.
    pub fn delete_peer(&mut self, peer_id: &str) -> Result<usize, StoreError> {
        self.transaction(|tables: &Tables<'_>| {
            let daily = tables
                .tx
                .execute("DELETE FROM daily_points WHERE peer_id = ?1", [peer_id])?;
            let hourly = tables
                .tx
                .execute("DELETE FROM hourly_tokens WHERE peer_id = ?1", [peer_id])?;
            Ok::<_, StoreError>(daily + hourly)
        })
    }

    /// Deletes every row that expired at or before `now_ms`.
    pub fn delete_expired(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        let now = now_ms as i64;
        self.transaction(|tables: &Tables<'_>| {
            let daily = tables
                .tx
                .execute("DELETE FROM daily_points WHERE expires_at <= ?1", [now])?;
            let hourly = tables
                .tx
                .execute("DELETE FROM hourly_tokens WHERE expires_at <= ?1", [now])?;
            Ok::<_, StoreError>(daily + hourly)
        })
    }

    /// Rows stored now (expired or not): (daily points, hourly tokens).
    pub fn row_counts(&self) -> Result<(usize, usize), StoreError> {
        let count = |table: &str| -> Result<usize, StoreError> {
            Ok(self
                .connection
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get::<_, i64>(0)
                })? as usize)
        };
        Ok((count("daily_points")?, count("hourly_tokens")?))
    }
}

/// Creates the database file readable by its owner only (SQLite gives its
/// `-wal` and `-shm` files the same mode): it links pairing codes to
/// meeting points. An existing file is left as it is.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The tables inside one transaction.
pub(crate) struct Tables<'a> {
    tx: &'a Transaction<'a>,
}

impl Tables<'_> {
    /// Other peers' unexpired rows at daily `point` (at most
    /// [`MAX_PEERS_PER_POINT`], the latest), oldest first.
    pub fn daily_others(
        &self,
        point: &str,
        peer_id: &str,
        now_ms: u64,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let mut statement = self.tx.prepare_cached(
            "SELECT peer_id, dead_drop, relay_id FROM (
                SELECT rowid AS r, peer_id, dead_drop, relay_id FROM daily_points
                WHERE point = ?1 AND peer_id <> ?2 AND expires_at > ?3
                ORDER BY expires_at DESC LIMIT ?4
             ) ORDER BY r",
        )?;
        let limit = MAX_PEERS_PER_POINT as i64;
        let rows = statement.query_map(params![point, peer_id, now_ms as i64, limit], |row| {
            Ok(StoredEntry {
                peer_id: row.get(0)?,
                dead_drop: row.get(1)?,
                relay_id: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Other peers' unexpired rows at hourly `token` (at most
    /// [`MAX_PEERS_PER_POINT`], the latest), oldest first.
    pub fn hourly_others(
        &self,
        token: &str,
        peer_id: &str,
        now_ms: u64,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let mut statement = self.tx.prepare_cached(
            "SELECT peer_id, relay_id FROM (
                SELECT rowid AS r, peer_id, relay_id FROM hourly_tokens
                WHERE token = ?1 AND peer_id <> ?2 AND expires_at > ?3
                ORDER BY expires_at DESC LIMIT ?4
             ) ORDER BY r",
        )?;
        let limit = MAX_PEERS_PER_POINT as i64;
        let rows = statement.query_map(params![token, peer_id, now_ms as i64, limit], |row| {
            Ok(StoredEntry {
                peer_id: row.get(0)?,
                dead_drop: String::new(),
                relay_id: row.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts or replaces `peer_id`'s row at daily `point`.
    pub fn upsert_daily(
        &self,
        point: &str,
        peer_id: &str,
        dead_drop: &str,
        relay_id: Option<&str>,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO daily_points (point, peer_id, dead_drop, relay_id, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (point, peer_id) DO UPDATE SET
                   dead_drop = excluded.dead_drop, relay_id = excluded.relay_id,
                   expires_at = excluded.expires_at",
            )?
            .execute(params![
                point,
                peer_id,
                dead_drop,
                relay_id,
                expires_at_ms as i64
            ])?;
        Ok(())
    }

    /// Inserts or replaces `peer_id`'s row at hourly `token`.
    pub fn upsert_hourly(
        &self,
        token: &str,
        peer_id: &str,
        relay_id: Option<&str>,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO hourly_tokens (token, peer_id, relay_id, expires_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (token, peer_id) DO UPDATE SET
                   relay_id = excluded.relay_id, expires_at = excluded.expires_at",
            )?
            .execute(params![token, peer_id, relay_id, expires_at_ms as i64])?;
        Ok(())
    }

    /// Unexpired rows of `peer_id` in both tables.
    pub fn live_rows_of(&self, peer_id: &str, now_ms: u64) -> Result<usize, StoreError> {
        let count: i64 = self.tx.query_row(
            "SELECT (SELECT COUNT(*) FROM daily_points WHERE peer_id = ?1 AND expires_at > ?2)
                  + (SELECT COUNT(*) FROM hourly_tokens WHERE peer_id = ?1 AND expires_at > ?2)",
            params![peer_id, now_ms as i64],
            |row| row.get(0),
        )?;
        Ok(count as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_new_database_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rendezvous.sqlite3");
        let store = RendezvousStore::open(Some(&path)).unwrap();
        assert_eq!(store.row_counts().unwrap(), (0, 0));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Reopening an existing file works and keeps its mode.
        drop(store);
        RendezvousStore::open(Some(&path)).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
