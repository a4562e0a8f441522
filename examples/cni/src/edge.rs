//! The real edges: IPAM through calinet-attach's [`StoreIpam`] (calinet-ipam
//! on a [`Store`], the embedded SQLite file by default) under a host-wide
//! lock, plus what GC and STATUS read; the kernel through calinet-attach's
//! [`KernelPlumber`] (calinet-route's workload plumbing).

use std::path::Path;
use std::time::SystemTime;

use calinet_attach::wep::WorkloadEndpoint;
use calinet_ipam::{Attributes, Family, HandleId, NodeName, Store, report};

use crate::config::{IpamConfig, PoolRef};
use crate::error::{Error, Result};
use crate::plugin::AddressManager;

pub use calinet_attach::{HostLock, KernelPlumber, pool_name};

/// calinet-ipam's allocator on a store, behind an optional host lock
/// (calinet-attach's IPAM edge).
pub type StoreIpam<S> = calinet_attach::IpamAddresses<S>;

fn ipam_err(operation: impl Into<String>) -> impl FnOnce(calinet_ipam::Error) -> Error {
    let operation = operation.into();
    move |source| Error::Ipam { operation, source }
}

/// WAL size past which a plugin process checkpoints the SQLite datastore when
/// it closes it ([`calinet_ipam::SqliteOpenOptions::one_shot`]).
///
/// Why: every plugin process is usually the only one with the file open, so
/// SQLite's default close would checkpoint the WAL into the database and delete
/// it on every ADD and DEL: an `fsync` of the WAL and of the database, an unlink,
/// and an `fsync` of the WAL and its directory when the next process creates it
/// again. Under I/O load those four `fsync`s were most of an ADD's time
/// (BENCHMARKS.md). Never checkpointing is no better: each new process rebuilds
/// the WAL index by reading the whole WAL, so open time grows with it. So: one
/// sync-heavy close per few dozen operations, and a small WAL to read at open.
/// Crash safety is WAL mode's either way: committed transactions are in the WAL.
pub const WAL_CHECKPOINT_BYTES: u64 = 512 * 1024;

/// Opens the SQLite datastore the way a plugin process uses it: one operation,
/// then exit (see [`WAL_CHECKPOINT_BYTES`]).
pub fn open_sqlite(path: &Path) -> calinet_ipam::Result<calinet_ipam::SqliteStore> {
    let options = calinet_ipam::SqliteOpenOptions::new().one_shot(WAL_CHECKPOINT_BYTES);
    Ok(calinet_ipam::SqliteStore::open_with(path, &options)?)
}

impl<S: Store> AddressManager for StoreIpam<S> {
    fn handles_on_node(
        &mut self,
        prefix: &str,
        node: &NodeName,
    ) -> Result<Vec<(HandleId, Attributes)>> {
        let d = report::dump(self.ipam().store()).map_err(ipam_err("reading IPAM state for GC"))?;
        let mut out: Vec<(HandleId, Attributes)> = Vec::new();
        for (block, _) in &d.blocks {
            for (_, a) in block.allocations() {
                let Some(h) = a.handle.as_deref() else {
                    continue;
                };
                let attrs = a.secondary.as_deref();
                let on_node = attrs
                    .and_then(|s| s.get("node"))
                    .is_some_and(|n| n == node.as_str());
                if !h.starts_with(prefix) || !on_node {
                    continue;
                }
                if let Ok(h) = h.parse::<HandleId>()
                    && !out.iter().any(|(o, _)| *o == h)
                {
                    out.push((h, attrs.cloned().unwrap_or_default()));
                }
            }
        }
        Ok(out)
    }

    fn put_endpoint(&mut self, key: &str, wep: &WorkloadEndpoint) -> Result<()> {
        let value = serde_json::to_vec(wep).expect("a WorkloadEndpoint serialises");
        let store = self.ipam().store();
        let written = match store.get(key) {
            Ok(None) => store.create(key, &value),
            Ok(Some(kv)) => store.update(key, &value, kv.mod_revision),
            Err(e) => Err(e),
        };
        written
            .map(|_| ())
            .map_err(calinet_ipam::Error::Store)
            .map_err(ipam_err(format!("writing WorkloadEndpoint {key}")))
    }

    fn delete_endpoints(&mut self, namespace: &str, pod: &str, container: &str) -> Result<usize> {
        let prefix = format!("{}{namespace}/", calinet_attach::wep::WEPS_PREFIX);
        let store = self.ipam().store();
        let err = |e| {
            ipam_err(format!("deleting WorkloadEndpoints under {prefix}"))(
                calinet_ipam::Error::Store(e),
            )
        };
        let mut deleted = 0;
        for kv in store.list(&prefix).map_err(err)? {
            // An endpoint that does not parse, or records another container
            // (or none: an agent's), is not this DEL's to remove.
            let Ok(w) = serde_json::from_slice::<WorkloadEndpoint>(&kv.value) else {
                continue;
            };
            if w.spec.pod == pod && w.spec.container_id.as_deref() == Some(container) {
                store.delete(&kv.key, kv.mod_revision).map_err(err)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn status(&mut self, cfg: &IpamConfig) -> Result<()> {
        let snap =
            self.ipam()
                .load_snapshot(SystemTime::now())
                .map_err(|e| Error::NotAvailable {
                    reason: format!("datastore unreadable: {e}"),
                })?;
        for (refs, fam, wanted) in [
            (&cfg.ipv4_pools, Family::V4, cfg.assign_ipv4),
            (&cfg.ipv6_pools, Family::V6, cfg.assign_ipv6),
        ] {
            for r in refs {
                if let PoolRef::Name(n) = r
                    && !snap.pools.iter().any(|p| p.name() == n)
                {
                    return Err(Error::NotAvailable {
                        reason: format!("IPPool {n:?} does not exist"),
                    });
                }
            }
            // With no pool named, some enabled pool of the family must exist.
            if wanted
                && refs.is_empty()
                && !snap.pools.iter().any(|p| p.enabled() && p.family() == fam)
            {
                return Err(Error::NotAvailable {
                    reason: format!("no enabled {} IPPool in the datastore", fam.label()),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calinet_attach::AddressManager as _;
    use calinet_ipam::SqliteStore;

    fn params(id: &str) -> calinet_attach::AssignParams {
        calinet_attach::Request::new(
            format!("k8s-pod-network.{id}").parse().unwrap(),
            "node-1".parse().unwrap(),
            calinet_route::IfName::calico_workload("default", id),
            None,
            1500,
        )
        .ipv4(Some(calinet_attach::FamilyRequest::from_pools(
            vec![PoolRef::Cidr("172.16.0.0/16".parse().unwrap())],
            None,
        )))
        .assign_params()
    }

    fn open(db: &Path) -> StoreIpam<SqliteStore> {
        StoreIpam::new(open_sqlite(db).unwrap(), Some(db.with_extension("lock")))
    }

    #[test]
    fn a_plugin_process_keeps_a_small_wal_and_checkpoints_a_large_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        let wal = dir.path().join("ipam.db-wal");
        {
            let mut ipam = open(&db);
            let got = ipam.assign(&params("a")).unwrap();
            assert_eq!(got.len(), 1);
        }
        // Closed without a checkpoint: the WAL (holding the commit) stays.
        let small = std::fs::metadata(&wal).unwrap().len();
        assert!(small > 0 && small <= WAL_CHECKPOINT_BYTES, "{small}");
        {
            let mut ipam = open(&db);
            // The next process sees the first one's allocation.
            assert_eq!(ipam.held(&params("a").handle).unwrap().len(), 1);
            let mut i = 0;
            while std::fs::metadata(&wal).unwrap().len() <= WAL_CHECKPOINT_BYTES {
                let p = params(&format!("b{i}"));
                ipam.assign(&p).unwrap();
                ipam.release(&p.handle).unwrap();
                i += 1;
                assert!(i < 10_000, "WAL never grew");
            }
        }
        assert_eq!(
            std::fs::metadata(&wal).unwrap().len(),
            0,
            "checkpointed and truncated"
        );
        let store = SqliteStore::open(&db).unwrap();
        store.integrity_check().unwrap();
        let mut ipam = StoreIpam::new(store, None);
        assert_eq!(ipam.held(&params("a").handle).unwrap().len(), 1);
        let report = report::check(ipam.ipam().store(), None).unwrap();
        assert!(report.is_consistent(), "{report:?}");
    }

    /// A plugin process starts with empty caches: its ADD must still read the
    /// pools once (not once for the pool lookup and again for the
    /// assignment) and write once.
    #[test]
    fn a_fresh_process_assigns_with_five_reads_and_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ipam.db");
        let counted = |db: &Path| {
            StoreIpam::new(
                calinet_ipam::CountingStore::new(open_sqlite(db).unwrap()),
                None,
            )
        };
        // The first process creates the pool and claims a block.
        counted(&db).assign(&params("a")).unwrap();
        let mut ipam = counted(&db);
        ipam.assign(&params("b")).unwrap();
        let trips = ipam.ipam().store().round_trips();
        assert_eq!(trips.writes(), 1, "{trips:?}");
        assert!(trips.reads() <= 5, "{trips:?}");
    }
}
