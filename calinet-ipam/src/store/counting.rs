//! A wrapper that counts datastore round trips and the bytes they read.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{KeyValue, Listing, Revision, Store, StoreResult, TxnOp, Watcher};

/// Round-trip counts by operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundTrips {
    /// `get` calls.
    pub get: u64,
    /// `list` calls.
    pub list: u64,
    /// `create` calls.
    pub create: u64,
    /// `update` calls.
    pub update: u64,
    /// `delete` calls.
    pub delete: u64,
    /// `txn` calls.
    pub txn: u64,
}

impl RoundTrips {
    /// All calls (each is one round trip to a remote store).
    pub fn total(&self) -> u64 {
        self.get + self.list + self.create + self.update + self.delete + self.txn
    }
    /// Reads only.
    pub fn reads(&self) -> u64 {
        self.get + self.list
    }
    /// Writes only.
    pub fn writes(&self) -> u64 {
        self.create + self.update + self.delete + self.txn
    }
}

/// Wraps a [`Store`] and counts every call (failed ones too) and the key and
/// value bytes its reads returned.
#[derive(Debug, Default)]
pub struct CountingStore<S> {
    inner: S,
    counts: [AtomicU64; 6],
    read_bytes: AtomicU64,
}

impl<S: Store> CountingStore<S> {
    /// Wrap a store.
    pub fn new(inner: S) -> Self {
        CountingStore {
            inner,
            counts: Default::default(),
            read_bytes: AtomicU64::new(0),
        }
    }
    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
    /// Counts so far.
    pub fn round_trips(&self) -> RoundTrips {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        RoundTrips {
            get: c(0),
            list: c(1),
            create: c(2),
            update: c(3),
            delete: c(4),
            txn: c(5),
        }
    }
    /// Key and value bytes returned by reads (`get`, `list`,
    /// `list_with_revision`) so far: what a remote store would send.
    pub fn bytes_read(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }
    /// Reset the counts (and the bytes read) to zero.
    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.read_bytes.store(0, Ordering::Relaxed);
    }
    fn bump(&self, i: usize) {
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
    fn read<'a>(&self, kvs: impl IntoIterator<Item = &'a KeyValue>) {
        let n: usize = kvs
            .into_iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl<S: Store> Store for CountingStore<S> {
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        self.bump(0);
        let r = self.inner.get(key);
        if let Ok(Some(kv)) = &r {
            self.read([kv]);
        }
        r
    }
    fn list(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        self.bump(1);
        let r = self.inner.list(prefix);
        if let Ok(kvs) = &r {
            self.read(kvs);
        }
        r
    }
    fn create(&self, key: &str, value: &[u8]) -> StoreResult<Revision> {
        self.bump(2);
        self.inner.create(key, value)
    }
    fn update(&self, key: &str, value: &[u8], expected: Revision) -> StoreResult<Revision> {
        self.bump(3);
        self.inner.update(key, value, expected)
    }
    fn delete(&self, key: &str, expected: Revision) -> StoreResult<()> {
        self.bump(4);
        self.inner.delete(key, expected)
    }
    fn txn(&self, ops: &[TxnOp]) -> StoreResult<Revision> {
        self.bump(5);
        self.inner.txn(ops)
    }
    /// Counted as a `list`.
    fn list_with_revision(&self, prefix: &str) -> StoreResult<Listing> {
        self.bump(1);
        let r = self.inner.list_with_revision(prefix);
        if let Ok(l) = &r {
            self.read(&l.kvs);
        }
        r
    }
    /// Not counted: a watch is one long-lived stream, not a round trip per
    /// change.
    fn watch(&self, prefix: &str, from: Revision) -> StoreResult<Watcher> {
        self.inner.watch(prefix, from)
    }
}
