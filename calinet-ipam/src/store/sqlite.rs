//! The embedded default datastore: one SQLite file (WAL), shared safely by
//! several processes on one host.
//!
//! Each write is one `BEGIN IMMEDIATE` transaction that checks the conditions,
//! bumps the store revision and writes, so a process killed at any moment
//! leaves either all or none of a transaction. `synchronous = NORMAL` in WAL
//! mode survives process crashes; a power loss may lose the last commits but
//! never leaves a torn one.
//!
//! Watch history lives in the same file (table `history`, written in the
//! same transaction as the change), so a watcher in another process sees
//! every committed change. It polls (default every 10 ms) SQLite's
//! `data_version`, which costs no page reads, and reads the history only
//! after another connection committed (see `SqliteWatch`). The
//! last [`SqliteStore::DEFAULT_WATCH_HISTORY`] revisions are kept, older ones
//! are pruned (a compaction, reported to watchers that still need them).
//!
//! The file holds pod names, namespaces and container ids, so a store file
//! this module creates is private to its owner (mode 0600 whatever the umask
//! allows beyond that); SQLite gives the `-wal` and `-shm` files it creates
//! next to it the database file's mode. An existing file's mode is left as
//! it is: its owner chose it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    KeyValue, Listing, Revision, Store, StoreError, StoreResult, TxnOp, WatchError, WatchEvent,
    WatchSource, Watcher, check_distinct_keys, txn_keys,
};

/// A [`Store`] in an SQLite file. Open one per process (or per thread for
/// parallel writers); all of them may share the file.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    busy_timeout: Duration,
    watch_history: Revision,
    watch_poll: Duration,
    /// With [`OpenOptions::one_shot`]: checkpoint on drop only past this WAL size.
    wal_limit: Option<u64>,
}

fn backend(op: &'static str, key: &str, e: rusqlite::Error) -> StoreError {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    if busy {
        StoreError::Unavailable {
            op,
            key: key.to_owned(),
            source: Box::new(e),
        }
    } else {
        StoreError::Backend {
            op,
            key: key.to_owned(),
            source: Box::new(e),
        }
    }
}

/// The smallest string greater than every string starting with `prefix`
/// (None when there is none, i.e. the prefix is empty or all 0xFF).
fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xFF {
            b.push(last + 1);
            return Some(b);
        }
    }
    None
}

/// Creates `path` empty with mode 0600 unless it exists (an empty file is a
/// new SQLite database), so SQLite never creates it with the umask's mode.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The schema this code writes, kept in SQLite's `user_version`: a file
/// already at it is opened without running any DDL (no write lock, no schema
/// statements to parse), which is most of the cost of opening for processes that
/// do one operation and exit.
const SCHEMA_VERSION: i64 = 1;

/// How [`SqliteStore::open_with`] opens the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenOptions {
    busy_timeout: Duration,
    wal_limit: Option<u64>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            busy_timeout: Duration::from_secs(10),
            wal_limit: None,
        }
    }
}

impl OpenOptions {
    /// SQLite's behaviour with a 10 s busy timeout: closing the last connection
    /// to the file checkpoints the WAL into it and deletes the WAL.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a writer waits for another.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// For processes that open the store, do an operation or two and exit
    /// (a CNI plugin): closing does not checkpoint the WAL (four `fsync`s, which
    /// would dominate such a process), unless the WAL has grown past
    /// `wal_limit` bytes, and then without waiting for other processes. Every
    /// process that opens the file reads the whole WAL once, so the limit bounds
    /// that cost too; 512 KiB balances the two on our machines.
    pub fn one_shot(mut self, wal_limit: u64) -> Self {
        self.wal_limit = Some(wal_limit);
        self
    }
}

impl SqliteStore {
    /// Open (creating if needed) the store at `path` with a 10 s busy timeout.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        Self::open_with(path, &OpenOptions::new())
    }

    /// Open with a given busy timeout (how long a writer waits for another).
    pub fn open_with_timeout(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
    ) -> StoreResult<SqliteStore> {
        Self::open_with(path, &OpenOptions::new().busy_timeout(busy_timeout))
    }

    /// Open (creating if needed) the store at `path`.
    pub fn open_with(path: impl AsRef<Path>, options: &OpenOptions) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let ps = path.display().to_string();
        create_private(&path).map_err(|e| StoreError::Backend {
            op: "open",
            key: ps.clone(),
            source: Box::new(e),
        })?;
        let mut conn = Connection::open(&path).map_err(|e| backend("open", &ps, e))?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(|e| backend("open", &ps, e))?;
        if options.wal_limit.is_some() {
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(|e| backend("open", &ps, e))?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| backend("open", &ps, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend {
                op: "open",
                key: ps,
                source: format!("cannot switch to WAL journal mode (got {mode})").into(),
            });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| backend("open", &ps, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| backend("open", &ps, e))?;
        if version != SCHEMA_VERSION {
            create_tables(&mut conn).map_err(|e| backend("open", &ps, e))?;
        }
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
            busy_timeout: options.busy_timeout,
            watch_history: Self::DEFAULT_WATCH_HISTORY,
            watch_poll: Duration::from_millis(10),
            wal_limit: options.wal_limit,
        })
    }

    /// The WAL file next to the store file.
    fn wal_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push("-wal");
        PathBuf::from(p)
    }

    /// Revisions of watch history kept by default: a watcher more than this
    /// far behind re-lists. (A /26 block's JSON is a few KiB, so this bounds
    /// the history to a few MiB of the file.)
    pub const DEFAULT_WATCH_HISTORY: Revision = 1_000;

    /// Keep the last `revisions` revisions of watch history (pruning happens
    /// on writes of this handle; other processes prune with their own setting).
    pub fn with_watch_history(mut self, revisions: Revision) -> SqliteStore {
        self.watch_history = revisions.max(1);
        self
    }

    /// How often watchers created by this handle look for new changes.
    pub fn with_watch_poll(mut self, every: Duration) -> SqliteStore {
        self.watch_poll = every.max(Duration::from_millis(1));
        self
    }

    /// Drop the watch history before `revision` now (as etcd's compaction);
    /// watches that still need it report [`WatchError::Compacted`].
    pub fn compact(&self, revision: Revision) -> StoreResult<()> {
        let ps = self.path.display().to_string();
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend("compact", &ps, e))?;
        prune_history(&tx, revision - 1).map_err(|e| backend("compact", &ps, e))?;
        tx.commit().map_err(|e| backend("compact", &ps, e))
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run SQLite's integrity check; `Ok(())` when the file is sound.
    pub fn integrity_check(&self) -> StoreResult<()> {
        let conn = self.lock();
        let r: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| backend("integrity_check", "", e))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(StoreError::Backend {
                op: "integrity_check",
                key: self.path.display().to_string(),
                source: r.into(),
            })
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite rolls back an unfinished transaction when its statement or
        // transaction object drops during a panic, so the connection stays usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply ops in one immediate transaction. `single` selects the error
    /// style: the precise per-key error for single ops, TxnConflict for txns.
    fn write(&self, op_name: &'static str, ops: &[TxnOp], single: bool) -> StoreResult<Revision> {
        let key0 = ops.first().map(|o| o.key().to_owned()).unwrap_or_default();
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend(op_name, &key0, e))?;
        for op in ops {
            let cur: Option<Revision> = tx
                .prepare_cached("SELECT mod_revision FROM kv WHERE key = ?1")
                .and_then(|mut s| s.query_row(params![op.key()], |r| r.get(0)).optional())
                .map_err(|e| backend(op_name, op.key(), e))?;
            let failed = match (op, cur) {
                (TxnOp::Create { key, .. }, Some(_)) => {
                    Some(StoreError::AlreadyExists { key: key.clone() })
                }
                (TxnOp::Update { key, .. } | TxnOp::Delete { key, .. }, None) => {
                    Some(StoreError::NotFound { key: key.clone() })
                }
                (
                    TxnOp::Update { key, expected, .. } | TxnOp::Delete { key, expected },
                    Some(actual),
                ) if actual != *expected => Some(StoreError::RevisionMismatch {
                    key: key.clone(),
                    expected: *expected,
                    actual,
                }),
                _ => None,
            };
            if let Some(e) = failed {
                // Dropping `tx` rolls back; nothing was written yet anyway.
                return Err(if single {
                    e
                } else {
                    StoreError::TxnConflict {
                        keys: txn_keys(ops),
                    }
                });
            }
        }
        let rev: Revision = tx
            .query_row(
                "UPDATE meta SET revision = revision + 1 WHERE id = 0 RETURNING revision",
                [],
                |r| r.get(0),
            )
            .map_err(|e| backend(op_name, &key0, e))?;
        for op in ops {
            let r = match op {
                TxnOp::Create { key, value } | TxnOp::Update { key, value, .. } => tx
                    .prepare_cached(
                        "INSERT INTO kv (key, value, mod_revision) VALUES (?1, ?2, ?3)
                         ON CONFLICT(key) DO UPDATE SET value = excluded.value, mod_revision = excluded.mod_revision",
                    )
                    .and_then(|mut s| s.execute(params![key, value, rev])),
                TxnOp::Delete { key, .. } => tx
                    .prepare_cached("DELETE FROM kv WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key])),
            };
            r.map_err(|e| backend(op_name, op.key(), e))?;
        }
        for (seq, op) in ops.iter().enumerate() {
            let value = match op {
                TxnOp::Create { value, .. } | TxnOp::Update { value, .. } => Some(value),
                TxnOp::Delete { .. } => None,
            };
            tx.prepare_cached(
                "INSERT INTO history (revision, seq, key, value) VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![rev, seq as i64, op.key(), value]))
            .map_err(|e| backend(op_name, op.key(), e))?;
        }
        // Prune in steps, not on every write, to keep writes cheap.
        if rev % 64 == 0 && rev > self.watch_history {
            prune_history(&tx, rev - self.watch_history).map_err(|e| backend(op_name, &key0, e))?;
        }
        tx.commit().map_err(|e| backend(op_name, &key0, e))?;
        Ok(rev)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let Some(limit) = self.wal_limit else {
            return;
        };
        let big = std::fs::metadata(self.wal_path()).is_ok_and(|m| m.len() > limit);
        if big {
            // Best effort and without waiting: while other processes use the
            // file the checkpoint gives up at once (TRUNCATE would wait for
            // them), and a later process's close checkpoints instead.
            let conn = self.lock();
            let _ = conn.busy_timeout(Duration::ZERO);
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
    }
}

/// Creates what is missing (a file made by an older version may lack the watch
/// history tables; its history starts at its current revision) and records
/// [`SCHEMA_VERSION`], all in one transaction.
fn create_tables(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS kv (
             key TEXT PRIMARY KEY NOT NULL,
             value BLOB NOT NULL,
             mod_revision INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS meta (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             revision INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO meta (id, revision) VALUES (0, 0);
         CREATE TABLE IF NOT EXISTS history (
             revision INTEGER NOT NULL,
             seq INTEGER NOT NULL,
             key TEXT NOT NULL,
             value BLOB,
             PRIMARY KEY (revision, seq)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS history_meta (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             compacted INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO history_meta (id, compacted)
             SELECT 0, revision FROM meta WHERE id = 0;",
    )?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

fn prune_history(tx: &rusqlite::Transaction<'_>, upto: Revision) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE history_meta SET compacted = MAX(compacted, MIN(?1, (SELECT revision FROM meta WHERE id = 0))) WHERE id = 0")?
        .execute(params![upto])?;
    tx.prepare_cached(
        "DELETE FROM history WHERE revision <= (SELECT compacted FROM history_meta WHERE id = 0)",
    )?
    .execute([])?;
    Ok(())
}

fn read_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: r.get(1)?,
        mod_revision: r.get(2)?,
    })
}

/// Keys in `[prefix, prefix_end)` as SQL bounds (None: no upper bound).
fn key_bounds(prefix: &str) -> Option<String> {
    prefix_end(prefix).and_then(|e| String::from_utf8(e).ok())
}

/// A watch over an SQLite file: its own read connection, polling `history`
/// only when the file changed.
///
/// Each poll first asks SQLite's `PRAGMA data_version`, which changes when
/// any other connection (in any process) has committed to the file since this
/// connection last looked; it is answered from the WAL index in shared memory
/// and reads no pages. Only then does the watch open a read transaction and
/// read the history rows from its next revision on (through the history
/// table's `(revision, seq)` key). An idle watch thus costs a shared-memory
/// look per poll instead of a read transaction over the history.
#[derive(Debug)]
struct SqliteWatch {
    conn: Connection,
    prefix: String,
    end: Option<String>,
    next: Revision,
    poll: Duration,
    /// `data_version` at the last scan; `None` before the first.
    seen_version: Option<i64>,
}

impl SqliteWatch {
    fn fail(&self, e: rusqlite::Error) -> WatchError {
        WatchError::Store {
            prefix: self.prefix.clone(),
            next_revision: self.next,
            source: backend("watch", &self.prefix, e),
        }
    }

    /// One look at the file: (compacted, current revision, events >= next).
    fn scan(&mut self) -> rusqlite::Result<(Revision, Revision, Vec<WatchEvent>)> {
        let tx = self.conn.transaction()?;
        let compacted: Revision =
            tx.query_row("SELECT compacted FROM history_meta WHERE id = 0", [], |r| {
                r.get(0)
            })?;
        let current: Revision =
            tx.query_row("SELECT revision FROM meta WHERE id = 0", [], |r| r.get(0))?;
        let mut events = Vec::new();
        if self.next > compacted {
            let mut stmt = tx.prepare_cached(
                "SELECT revision, key, value FROM history WHERE revision >= ?1 ORDER BY revision, seq",
            )?;
            let mut rows = stmt.query(params![self.next])?;
            while let Some(r) = rows.next()? {
                let key: String = r.get(1)?;
                let in_range = key.starts_with(&self.prefix)
                    && self.end.as_ref().is_none_or(|e| key.as_str() < e.as_str());
                if !in_range {
                    continue;
                }
                let revision: Revision = r.get(0)?;
                let value: Option<Vec<u8>> = r.get(2)?;
                events.push(match value {
                    Some(value) => WatchEvent::Put(KeyValue {
                        key,
                        value,
                        mod_revision: revision,
                    }),
                    None => WatchEvent::Delete { key, revision },
                });
            }
        }
        Ok((compacted, current, events))
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

impl WatchSource for SqliteWatch {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<WatchEvent>, WatchError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let version = match self
                .conn
                .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            {
                Ok(v) => Some(v),
                // Busy: look at the history as before (it retries the same way).
                Err(e) if is_busy(&e) => None,
                Err(e) => return Err(self.fail(e)),
            };
            if version.is_some() && version == self.seen_version {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Ok(Vec::new());
                }
                std::thread::sleep(left.min(self.poll));
                continue;
            }
            let (compacted, current, events) = match self.scan() {
                Ok(x) => x,
                // Busy: the version is not recorded, so the next poll scans again.
                Err(e) if is_busy(&e) => (0, 0, Vec::new()),
                Err(e) => return Err(self.fail(e)),
            };
            if !matches!((compacted, current), (0, 0)) {
                self.seen_version = version;
            }
            if self.next <= compacted {
                return Err(WatchError::Compacted {
                    prefix: self.prefix.clone(),
                    requested: self.next,
                    compact_revision: compacted + 1,
                });
            }
            self.next = self.next.max(current + 1);
            if !events.is_empty() {
                return Ok(events);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            std::thread::sleep(left.min(self.poll));
        }
    }
}

impl Store for SqliteStore {
    fn list_with_revision(&self, prefix: &str) -> StoreResult<Listing> {
        let mut conn = self.lock();
        let res = (|| -> rusqlite::Result<Listing> {
            // One read transaction: a WAL snapshot of both tables.
            let tx = conn.transaction()?;
            let revision: Revision =
                tx.query_row("SELECT revision FROM meta WHERE id = 0", [], |r| r.get(0))?;
            let kvs: Vec<KeyValue> = match key_bounds(prefix) {
                Some(end) => tx
                    .prepare_cached("SELECT key, value, mod_revision FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")?
                    .query_map(params![prefix, end], read_kv)?
                    .collect::<rusqlite::Result<_>>()?,
                None => tx
                    .prepare_cached("SELECT key, value, mod_revision FROM kv WHERE key >= ?1 ORDER BY key")?
                    .query_map(params![prefix], read_kv)?
                    .filter(|kv| kv.as_ref().map_or(true, |kv| kv.key.starts_with(prefix)))
                    .collect::<rusqlite::Result<_>>()?,
            };
            tx.commit()?;
            Ok(Listing { kvs, revision })
        })();
        res.map_err(|e| backend("list_with_revision", prefix, e))
    }

    fn watch(&self, prefix: &str, from: Revision) -> StoreResult<Watcher> {
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.busy_timeout(self.busy_timeout)?;
            Ok(c)
        })
        .map_err(|e| backend("watch", prefix, e))?;
        let from = if from <= 0 {
            let current: Revision = conn
                .query_row("SELECT revision FROM meta WHERE id = 0", [], |r| r.get(0))
                .map_err(|e| backend("watch", prefix, e))?;
            current + 1
        } else {
            from
        };
        let source = SqliteWatch {
            conn,
            prefix: prefix.to_owned(),
            end: key_bounds(prefix),
            next: from,
            poll: self.watch_poll,
            seen_version: None,
        };
        Ok(Watcher::new(prefix, from, Box::new(source)))
    }

    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let conn = self.lock();
        conn.prepare_cached("SELECT value, mod_revision FROM kv WHERE key = ?1")
            .and_then(|mut s| {
                s.query_row(params![key], |r| {
                    Ok(KeyValue {
                        key: key.to_owned(),
                        value: r.get(0)?,
                        mod_revision: r.get(1)?,
                    })
                })
                .optional()
            })
            .map_err(|e| backend("get", key, e))
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        let conn = self.lock();
        let map = |r: &rusqlite::Row<'_>| -> rusqlite::Result<KeyValue> {
            Ok(KeyValue {
                key: r.get(0)?,
                value: r.get(1)?,
                mod_revision: r.get(2)?,
            })
        };
        // Keys are compared as TEXT (binary collation) so the primary key index
        // bounds the scan on both ends.
        let res = match prefix_end(prefix).and_then(|e| String::from_utf8(e).ok()) {
            Some(end) => conn
                .prepare_cached("SELECT key, value, mod_revision FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
                .and_then(|mut s| s.query_map(params![prefix, end], map)?.collect()),
            None => conn
                .prepare_cached("SELECT key, value, mod_revision FROM kv WHERE key >= ?1 ORDER BY key")
                .and_then(|mut s| s.query_map(params![prefix], map)?.collect::<rusqlite::Result<Vec<_>>>())
                .map(|v| v.into_iter().filter(|kv| kv.key.starts_with(prefix)).collect()),
        };
        res.map_err(|e| backend("list", prefix, e))
    }

    fn create(&self, key: &str, value: &[u8]) -> StoreResult<Revision> {
        self.write(
            "create",
            &[TxnOp::Create {
                key: key.to_owned(),
                value: value.to_vec(),
            }],
            true,
        )
    }

    fn update(&self, key: &str, value: &[u8], expected: Revision) -> StoreResult<Revision> {
        self.write(
            "update",
            &[TxnOp::Update {
                key: key.to_owned(),
                value: value.to_vec(),
                expected,
            }],
            true,
        )
    }

    fn delete(&self, key: &str, expected: Revision) -> StoreResult<()> {
        self.write(
            "delete",
            &[TxnOp::Delete {
                key: key.to_owned(),
                expected,
            }],
            true,
        )
        .map(|_| ())
    }

    fn txn(&self, ops: &[TxnOp]) -> StoreResult<Revision> {
        check_distinct_keys(ops)?;
        self.write("txn", ops, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/a/b/"), Some(b"/a/b0".to_vec()));
        assert_eq!(prefix_end(""), None);
    }

    fn wal_len(db: &Path) -> u64 {
        let mut p = db.as_os_str().to_owned();
        p.push("-wal");
        std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len())
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_store_file_and_its_wal_and_shm_are_private_and_an_old_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("new.db");
        let store = SqliteStore::open(&db).unwrap();
        store.create("/a", b"pod").unwrap();
        assert_eq!(mode(&db), 0o600);
        for suffix in ["-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            let p = PathBuf::from(p);
            assert!(p.exists(), "{} exists while the store is open", p.display());
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(store);
        // A file someone made readable on purpose stays as they made it.
        let old = dir.path().join("old.db");
        std::fs::write(&old, b"").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
        SqliteStore::open(&old)
            .unwrap()
            .create("/a", b"pod")
            .unwrap();
        assert_eq!(mode(&old), 0o640);
    }

    #[test]
    fn opening_a_current_file_does_not_wait_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        drop(SqliteStore::open(&db).unwrap());
        // Another process is in the middle of a write transaction.
        let writer = Connection::open(&db).unwrap();
        writer.execute_batch("BEGIN IMMEDIATE").unwrap();
        // Before the schema version, every open ran its DDL under a write lock
        // and so waited (here: failed at once) for that writer.
        let store =
            SqliteStore::open_with(&db, &OpenOptions::new().busy_timeout(Duration::ZERO)).unwrap();
        assert_eq!(store.get("/nothing").unwrap(), None);
        writer.execute_batch("ROLLBACK").unwrap();
    }

    #[test]
    fn a_file_from_before_the_schema_version_is_completed_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("old.db");
        {
            // The tables of the first version, without history and user_version.
            let c = Connection::open(&db).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL,
                                  mod_revision INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 0), revision INTEGER NOT NULL);
                 INSERT INTO meta VALUES (0, 7);
                 INSERT INTO kv VALUES ('/k', x'01', 7);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&db).unwrap();
        assert_eq!(store.get("/k").unwrap().unwrap().mod_revision, 7);
        let rev = store.create("/k2", b"v").unwrap();
        assert_eq!(rev, 8);
        let version: i64 = store
            .lock()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn one_shot_keeps_a_small_wal_on_close_and_checkpoints_a_large_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let options = OpenOptions::new().one_shot(64 * 1024);
        {
            let store = SqliteStore::open_with(&db, &options).unwrap();
            store.create("/a", &[1; 100]).unwrap();
        }
        let small = wal_len(&db);
        assert!(
            small > 0 && small <= 64 * 1024,
            "WAL kept on close: {small}"
        );
        {
            let store = SqliteStore::open_with(&db, &options).unwrap();
            // The next process sees the first one's write.
            assert!(store.get("/a").unwrap().is_some());
            let mut i = 0;
            while wal_len(&db) <= 64 * 1024 {
                store.create(&format!("/b{i}"), &[2; 3000]).unwrap();
                i += 1;
                assert!(i < 10_000, "WAL never grew");
            }
        }
        assert_eq!(wal_len(&db), 0, "checkpointed and truncated on close");
        let store = SqliteStore::open(&db).unwrap();
        store.integrity_check().unwrap();
        assert!(store.get("/a").unwrap().is_some());
        // SQLite's default close (no one_shot) deletes the WAL.
        drop(store);
        assert_eq!(wal_len(&db), 0);
    }
}
