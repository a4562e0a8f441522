//! In-memory store for tests and embedding.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{
    KeyValue, Revision, Store, StoreError, StoreResult, TxnOp, check_distinct_keys, txn_keys,
};

/// An in-memory [`Store`] with etcd-like store-wide revisions. Cheap to
/// create; all state is lost on drop.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    revision: Revision,
    map: BTreeMap<String, (Vec<u8>, Revision)>,
}

impl MemStore {
    /// An empty store at revision 0.
    pub fn new() -> MemStore {
        MemStore::default()
    }

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
        rev
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
        Ok(g.apply(&op))
    }

    fn update(&self, key: &str, value: &[u8], expected: Revision) -> StoreResult<Revision> {
        let op = [TxnOp::Update {
            key: key.to_owned(),
            value: value.to_vec(),
            expected,
        }];
        let mut g = self.lock();
        g.check(&op[0])?;
        Ok(g.apply(&op))
    }

    fn delete(&self, key: &str, expected: Revision) -> StoreResult<()> {
        let op = [TxnOp::Delete {
            key: key.to_owned(),
            expected,
        }];
        let mut g = self.lock();
        g.check(&op[0])?;
        g.apply(&op);
        Ok(())
    }

    fn txn(&self, ops: &[TxnOp]) -> StoreResult<Revision> {
        check_distinct_keys(ops)?;
        let mut g = self.lock();
        if ops.iter().any(|op| g.check(op).is_err()) {
            return Err(StoreError::TxnConflict {
                keys: txn_keys(ops),
            });
        }
        Ok(g.apply(ops))
    }
}
