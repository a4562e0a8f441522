//! In-memory store for tests and embedding.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{
    KeyValue, Listing, Revision, Store, StoreError, StoreResult, TxnOp, WatchError, WatchEvent,
    WatchSource, Watcher, check_distinct_keys, txn_keys,
};

/// An in-memory [`Store`] with etcd-like store-wide revisions. Cheap to
/// create; all state is lost on drop.
///
/// Watch history is kept in memory, bounded, and only from the moment it is
/// needed: [`MemStore::new`] starts recording at the first
/// [`Store::watch`] call (so stores that are never watched pay nothing per
/// write), [`MemStore::with_watch_history`] from the start. A watch from a
/// revision before the recorded history reports [`WatchError::Compacted`].
#[derive(Debug, Default)]
pub struct MemStore {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    revision: Revision,
    map: BTreeMap<String, (Vec<u8>, Revision)>,
    history: Option<History>,
}

/// Events of the most recent revisions, oldest first.
#[derive(Debug)]
struct History {
    events: VecDeque<WatchEvent>,
    /// Every revision at or below this one is no longer recorded.
    compacted: Revision,
    capacity: usize,
}

/// Events kept for watchers when no capacity is given.
const DEFAULT_HISTORY: usize = 2_000;

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// An empty store that records the last `events` changes for watchers
    /// from revision 1 on.
    pub fn with_watch_history(events: usize) -> MemStore {
        let s = MemStore::default();
        s.lock().history = Some(History {
            events: VecDeque::new(),
            compacted: 0,
            capacity: events.max(1),
        });
        s
    }

    /// Forget the watch history before `revision` (as etcd's compaction
    /// does); watches that still need it report [`WatchError::Compacted`].
    pub fn compact(&self, revision: Revision) {
        let mut g = self.lock();
        let current = g.revision;
        let h = g.history.get_or_insert_with(|| History {
            events: VecDeque::new(),
            compacted: current,
            capacity: DEFAULT_HISTORY,
        });
        h.compacted = h.compacted.max((revision - 1).min(current));
        let c = h.compacted;
        while h.events.front().is_some_and(|e| e.revision() <= c) {
            h.events.pop_front();
        }
        drop(g);
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// Apply checked ops and wake watchers.
    fn apply(&self, g: &mut Inner, ops: &[TxnOp]) -> Revision {
        let rev = g.apply(ops);
        if g.history.is_some() {
            self.shared.changed.notify_all();
        }
        rev
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write
        // (writes are checked before anything is changed), so poison is harmless.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn check(&self, op: &TxnOp) -> StoreResult<()> {
        match op {
            TxnOp::Create { key, .. } => {
                if self.map.contains_key(key) {
                    return Err(StoreError::AlreadyExists { key: key.clone() });
                }
            }
            TxnOp::Update { key, expected, .. } | TxnOp::Delete { key, expected } => {
                match self.map.get(key) {
                    None => return Err(StoreError::NotFound { key: key.clone() }),
                    Some((_, r)) if r != expected => {
                        return Err(StoreError::RevisionMismatch {
                            key: key.clone(),
                            expected: *expected,
                            actual: *r,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, ops: &[TxnOp]) -> Revision {
        self.revision += 1;
        let rev = self.revision;
        for op in ops {
            match op {
                TxnOp::Create { key, value } | TxnOp::Update { key, value, .. } => {
                    // Reuse the existing key and buffer when updating.
                    if let Some((v, r)) = self.map.get_mut(key) {
                        v.clear();
                        v.extend_from_slice(value);
                        *r = rev;
                    } else {
                        self.map.insert(key.clone(), (value.clone(), rev));
                    }
                }
                TxnOp::Delete { key, .. } => {
                    self.map.remove(key);
                }
            }
        }
        if let Some(h) = &mut self.history {
            for op in ops {
                h.events.push_back(match op {
                    TxnOp::Create { key, value } | TxnOp::Update { key, value, .. } => {
                        WatchEvent::Put(KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            mod_revision: rev,
                        })
                    }
                    TxnOp::Delete { key, .. } => WatchEvent::Delete {
                        key: key.clone(),
                        revision: rev,
                    },
                });
            }
            // Trim whole revisions so a watcher never sees half a transaction.
            while h.events.len() > h.capacity {
                let Some(first) = h.events.pop_front() else {
                    break;
                };
                let r = first.revision();
                while h.events.front().is_some_and(|e| e.revision() == r) {
                    h.events.pop_front();
                }
                h.compacted = h.compacted.max(r);
            }
        }
        rev
    }
}

/// A watch over a [`MemStore`]: scans the shared history, waits on a condvar.
#[derive(Debug)]
struct MemWatch {
    shared: Arc<Shared>,
    prefix: String,
    next: Revision,
}

impl WatchSource for MemWatch {
    fn poll(&mut self, timeout: Duration) -> Result<Vec<WatchEvent>, WatchError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        loop {
            let Some(h) = &g.history else {
                // History is created with the first watch and never removed.
                return Ok(Vec::new());
            };
            if self.next <= h.compacted {
                return Err(WatchError::Compacted {
                    prefix: self.prefix.clone(),
                    requested: self.next,
                    compact_revision: h.compacted + 1,
                });
            }
            let start = h.events.partition_point(|e| e.revision() < self.next);
            let batch: Vec<WatchEvent> = h
                .events
                .range(start..)
                .filter(|e| e.key().starts_with(&self.prefix))
                .cloned()
                .collect();
            // Every revision up to the current one has been looked at.
            self.next = self.next.max(g.revision + 1);
            if !batch.is_empty() {
                return Ok(batch);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            g = self
                .shared
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> StoreResult<Option<KeyValue>> {
        let g = self.lock();
        Ok(g.map.get(key).map(|(v, r)| KeyValue {
            key: key.to_owned(),
            value: v.clone(),
            mod_revision: *r,
        }))
    }

    fn list(&self, prefix: &str) -> StoreResult<Vec<KeyValue>> {
        let g = self.lock();
        Ok(g.map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *r,
            })
            .collect())
    }

    fn create(&self, key: &str, value: &[u8]) -> StoreResult<Revision> {
        let op = [TxnOp::Create {
            key: key.to_owned(),
            value: value.to_vec(),
        }];
        let mut g = self.lock();
        g.check(&op[0])?;
        Ok(self.apply(&mut g, &op))
    }

    fn update(&self, key: &str, value: &[u8], expected: Revision) -> StoreResult<Revision> {
        let op = [TxnOp::Update {
            key: key.to_owned(),
            value: value.to_vec(),
            expected,
        }];
        let mut g = self.lock();
        g.check(&op[0])?;
        Ok(self.apply(&mut g, &op))
    }

    fn delete(&self, key: &str, expected: Revision) -> StoreResult<()> {
        let op = [TxnOp::Delete {
            key: key.to_owned(),
            expected,
        }];
        let mut g = self.lock();
        g.check(&op[0])?;
        self.apply(&mut g, &op);
        Ok(())
    }

    fn list_with_revision(&self, prefix: &str) -> StoreResult<Listing> {
        // Keys and revision under one lock: a consistent snapshot.
        let g = self.lock();
        let kvs = g
            .map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| KeyValue {
                key: k.clone(),
                value: v.clone(),
                mod_revision: *r,
            })
            .collect();
        Ok(Listing {
            kvs,
            revision: g.revision,
        })
    }

    fn watch(&self, prefix: &str, from: Revision) -> StoreResult<Watcher> {
        let mut g = self.lock();
        let current = g.revision;
        g.history.get_or_insert_with(|| History {
            events: VecDeque::new(),
            compacted: current,
            capacity: DEFAULT_HISTORY,
        });
        let from = if from <= 0 { current + 1 } else { from };
        drop(g);
        let source = MemWatch {
            shared: self.shared.clone(),
            prefix: prefix.to_owned(),
            next: from,
        };
        Ok(Watcher::new(prefix, from, Box::new(source)))
    }

    fn txn(&self, ops: &[TxnOp]) -> StoreResult<Revision> {
        check_distinct_keys(ops)?;
        let mut g = self.lock();
        if ops.iter().any(|op| g.check(op).is_err()) {
            return Err(StoreError::TxnConflict {
                keys: txn_keys(ops),
            });
        }
        Ok(self.apply(&mut g, ops))
    }
}
