//! The datastore: a revisioned key-value store with compare-and-swap writes.
//!
//! The trait is shaped after etcd v3 so an etcd backend maps one to one:
//!
//! | trait            | etcd v3                                                        |
//! |------------------|----------------------------------------------------------------|
//! | [`Revision`]     | `mod_revision` (store-wide, strictly increasing, `i64`)         |
//! | [`Store::get`]   | `Range(key)`                                                   |
//! | [`Store::list`]  | `Range(prefix, prefix_end)` (paged by the backend), key order  |
//! | [`Store::create`]| `Txn(If create_revision(key) == 0 Then Put)`                   |
//! | [`Store::update`]| `Txn(If mod_revision(key) == rev Then Put)`                     |
//! | [`Store::delete`]| `Txn(If mod_revision(key) == rev Then Delete)`                  |
//! | [`Store::txn`]   | one `Txn` with all the compares and all the puts/deletes        |
//! | [`Store::list_with_revision`] | `Range(prefix)` pages at one revision (header revision) |
//! | [`Store::watch`] | `Watch(prefix, start_revision)` (see [`watch`])   |
//!
//! All writes of one call get the same new revision (as in etcd). Keys are
//! Calico's etcd v3 keys (see [`crate::keys`]), values Calico's JSON.
//!
//! The trait is synchronous: the allocator's core is synchronous and an async
//! backend (etcd) can run its client on its own runtime behind this interface.
//!
//! Backends: [`MemStore`], [`SqliteStore`] (feature `sqlite`, default) and
//! `EtcdStore` (feature `etcd`); all pass the
//! same [`conformance`](crate::conformance) suite, watch cases included.

use std::fmt;
use std::sync::Arc;

mod counting;
#[cfg(feature = "etcd")]
pub mod etcd;
mod mem;
#[cfg(feature = "sqlite")]
mod sqlite;
pub mod watch;

pub use counting::{CountingStore, RoundTrips};
#[cfg(feature = "etcd")]
pub use etcd::{Credentials, EtcdConfig, EtcdError, EtcdStore, RetryPolicy, TlsFiles};
pub use mem::MemStore;
#[cfg(feature = "sqlite")]
pub use sqlite::{OpenOptions as SqliteOpenOptions, SqliteStore};
pub use watch::{Listing, WatchError, WatchEvent, WatchSource, Watcher};

/// A store revision (etcd's mod revision). Strictly positive for stored keys.
pub type Revision = i64;

/// A stored key, its value and the revision of its last write.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (Calico JSON for IPAM keys).
    pub value: Vec<u8>,
    /// Revision of the last write of this key.
    pub mod_revision: Revision,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value", &String::from_utf8_lossy(&self.value))
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Create; fails if the key exists.
    Create {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Replace; fails unless the key exists with exactly `expected` revision.
    Update {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Required current revision.
        expected: Revision,
    },
    /// Delete; fails unless the key exists with exactly `expected` revision.
    Delete {
        /// Key.
        key: String,
        /// Required current revision.
        expected: Revision,
    },
}

impl TxnOp {
    /// The key this op writes.
    pub fn key(&self) -> &str {
        match self {
            TxnOp::Create { key, .. } | TxnOp::Update { key, .. } | TxnOp::Delete { key, .. } => {
                key
            }
        }
    }
}

/// Datastore errors. Conflicts are distinct variants so callers can retry them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `create` of a key that exists.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// Key.
        key: String,
    },
    /// `update`/`delete` of a key that does not exist.
    #[error("key {key:?} does not exist")]
    NotFound {
        /// Key.
        key: String,
    },
    /// `update`/`delete` with a stale revision.
    #[error("key {key:?} is at revision {actual}, not the expected {expected}")]
    RevisionMismatch {
        /// Key.
        key: String,
        /// Revision the caller expected.
        expected: Revision,
        /// Revision found.
        actual: Revision,
    },
    /// A transaction's condition failed; nothing was written. `keys` are all
    /// the keys the transaction compared (etcd does not say which one failed).
    #[error("transaction conflict on {keys:?}")]
    TxnConflict {
        /// The keys compared.
        keys: Vec<String>,
    },
    /// A transaction named the same key twice.
    #[error("transaction writes key {key:?} more than once")]
    DuplicateKey {
        /// Key.
        key: String,
    },
    /// The backend is (temporarily) unavailable; retrying may succeed.
    #[error("datastore unavailable during {op} on {key:?}")]
    Unavailable {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend does not implement this operation.
    #[error("{backend} does not support {op}")]
    Unsupported {
        /// Operation.
        op: &'static str,
        /// The backend's type name.
        backend: &'static str,
    },
    /// Any other backend failure.
    #[error("datastore {op} on {key:?} failed")]
    Backend {
        /// Operation.
        op: &'static str,
        /// Key or prefix.
        key: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether this is a compare-and-swap conflict (retry after re-reading).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. }
                | StoreError::RevisionMismatch { .. }
                | StoreError::TxnConflict { .. }
        )
    }
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A revisioned key-value store. Every write is conditional.
pub trait Store: Send + Sync {
    /// Read one key.
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>>;
    /// Read all keys starting with `prefix`, in key order.
    fn list(&self, prefix: &str) -> StoreResult<Vec<KeyValue>>;
    /// Create a key; [`StoreError::AlreadyExists`] if present. Returns the new revision.
    fn create(&self, key: &str, value: &[u8]) -> StoreResult<Revision>;
    /// Replace a key at revision `expected`; [`StoreError::NotFound`] or
    /// [`StoreError::RevisionMismatch`] otherwise. Returns the new revision.
    fn update(&self, key: &str, value: &[u8], expected: Revision) -> StoreResult<Revision>;
    /// Delete a key at revision `expected`.
    fn delete(&self, key: &str, expected: Revision) -> StoreResult<()>;
    /// Apply all ops atomically if every condition holds, else nothing and
    /// [`StoreError::TxnConflict`]. Returns the revision given to every write.
    fn txn(&self, ops: &[TxnOp]) -> StoreResult<Revision>;

    /// Read all keys under `prefix` (as [`Store::list`]) together with the
    /// store revision of the read, so a [`Store::watch`] from `revision + 1`
    /// continues exactly after it. The built-in backends all implement it;
    /// the default reports [`StoreError::Unsupported`].
    fn list_with_revision(&self, prefix: &str) -> StoreResult<Listing> {
        let _ = prefix;
        Err(StoreError::Unsupported {
            op: "list_with_revision",
            backend: std::any::type_name::<Self>(),
        })
    }

    /// Watch the changes under `prefix`, starting with revision `from`
    /// (`0`: only changes after now). A `from` older than the backend's
    /// retained history makes the watcher report [`WatchError::Compacted`].
    /// The built-in backends all implement it; the default reports
    /// [`StoreError::Unsupported`]. See [`watch`] for the design.
    fn watch(&self, prefix: &str, from: Revision) -> StoreResult<Watcher> {
        let _ = (prefix, from);
        Err(StoreError::Unsupported {
            op: "watch",
            backend: std::any::type_name::<Self>(),
        })
    }
}

macro_rules! forward_store {
    ($($t:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $t {
            fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> { (**self).get(key) }
            fn list(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> { (**self).list(prefix) }
            fn create(&self, key: &str, value: &[u8]) -> StoreResult<Revision> { (**self).create(key, value) }
            fn update(&self, key: &str, value: &[u8], expected: Revision) -> StoreResult<Revision> {
                (**self).update(key, value, expected)
            }
            fn delete(&self, key: &str, expected: Revision) -> StoreResult<()> { (**self).delete(key, expected) }
            fn txn(&self, ops: &[TxnOp]) -> StoreResult<Revision> { (**self).txn(ops) }
            fn list_with_revision(&self, prefix: &str) -> StoreResult<Listing> {
                (**self).list_with_revision(prefix)
            }
            fn watch(&self, prefix: &str, from: Revision) -> StoreResult<Watcher> {
                (**self).watch(prefix, from)
            }
        }
    )*};
}
forward_store!(&S, Arc<S>, Box<S>);

/// Check a transaction names each key at most once.
pub(crate) fn check_distinct_keys(ops: &[TxnOp]) -> StoreResult<()> {
    for (i, op) in ops.iter().enumerate() {
        if ops[..i].iter().any(|o| o.key() == op.key()) {
            return Err(StoreError::DuplicateKey {
                key: op.key().to_owned(),
            });
        }
    }
    Ok(())
}

/// The keys of a transaction, for conflict errors.
pub(crate) fn txn_keys(ops: &[TxnOp]) -> Vec<String> {
    ops.iter().map(|o| o.key().to_owned()).collect()
}
