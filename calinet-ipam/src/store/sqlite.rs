//! The embedded default datastore: one SQLite file (WAL), shared safely by
//! several processes on one host.
//!
//! Each write is one `BEGIN IMMEDIATE` transaction that checks the conditions,
//! bumps the store revision and writes, so a process killed at any moment
//! leaves either all or none of a transaction. `synchronous = NORMAL` in WAL
//! mode survives process crashes; a power loss may lose the last commits but
//! never leaves a torn one.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    KeyValue, Revision, Store, StoreError, StoreResult, TxnOp, check_distinct_keys, txn_keys,
};

/// A [`Store`] in an SQLite file. Open one per process (or per thread for
/// parallel writers); all of them may share the file.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
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

impl SqliteStore {
    /// Open (creating if needed) the store at `path` with a 10 s busy timeout.
    pub fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        Self::open_with_timeout(path, Duration::from_secs(10))
    }

    /// Open with a given busy timeout (how long a writer waits for another).
    pub fn open_with_timeout(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
    ) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        let ps = path.display().to_string();
        let mut conn = Connection::open(&path).map_err(|e| backend("open", &ps, e))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| backend("open", &ps, e))?;
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
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| backend("open", &ps, e))?;
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
             INSERT OR IGNORE INTO meta (id, revision) VALUES (0, 0);",
        )
        .map_err(|e| backend("open", &ps, e))?;
        tx.commit().map_err(|e| backend("open", &ps, e))?;
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
        })
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
        tx.commit().map_err(|e| backend(op_name, &key0, e))?;
        Ok(rev)
    }
}

impl Store for SqliteStore {
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
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/a/b/"), Some(b"/a/b0".to_vec()));
        assert_eq!(prefix_end(""), None);
    }
}
