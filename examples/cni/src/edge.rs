//! The real edges: IPAM through calinet-ipam on a [`Store`] (the embedded
//! SQLite file by default) under a host-wide lock, and the kernel through
//! calinet-route's workload plumbing.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use calinet_ipam::{
    Attributes, AutoAssignRequest, Family, HandleId, IpPool, IpPoolSpec, Ipam, NodeName, Store,
    report,
};
use calinet_route::nl::Conn;
use calinet_route::{IfName, MacAddr, Netns, RouteProtocol, WorkloadSpec, workload};
use ipnet::IpNet;

use crate::config::{IpamConfig, PoolRef};
use crate::error::{Error, Result};
use crate::plugin::{AddressManager, AssignParams, Plumbed, Plumber};

/// An exclusive `flock` on a file, released when dropped. Serialises this
/// host's IPAM writers so that parallel ADDs queue instead of retrying CAS
/// conflicts against each other (the datastore's CAS keeps them correct
/// either way, and across hosts).
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

impl HostLock {
    /// Blocks until the lock at `path` is held (creating file and directory).
    pub fn acquire(path: &Path) -> Result<HostLock> {
        let err = |source| Error::Lock {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(err)?;
        loop {
            // SAFETY: flock on an fd we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(HostLock { _file: file });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(err(e));
            }
        }
    }
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

/// calinet-ipam's allocator on a store, behind an optional host lock.
#[derive(Debug)]
pub struct StoreIpam<S> {
    ipam: Ipam<S>,
    lock: Option<PathBuf>,
}

fn ipam_err(operation: impl Into<String>) -> impl FnOnce(calinet_ipam::Error) -> Error {
    let operation = operation.into();
    move |source| Error::Ipam { operation, source }
}

/// The name given to a pool the plugin creates for a CIDR (`calinet-172-16-0-0-16`).
pub fn pool_name(cidr: &IpNet) -> String {
    let s: String = cidr
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("calinet-{s}")
}

impl<S: Store> StoreIpam<S> {
    /// An allocator on `store`; with `lock`, every operation holds that host lock.
    pub fn new(store: S, lock: Option<PathBuf>) -> Self {
        StoreIpam {
            ipam: Ipam::new(store),
            lock,
        }
    }

    /// The allocator.
    pub fn ipam(&self) -> &Ipam<S> {
        &self.ipam
    }

    fn guard(&self) -> Result<Option<HostLock>> {
        self.lock.as_deref().map(HostLock::acquire).transpose()
    }

    /// Names of the pools `refs` denote; CIDRs without a pool get one.
    fn pool_names(
        &self,
        refs: &[PoolRef],
        block_size: Option<u8>,
        now: SystemTime,
    ) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for r in refs {
            match r {
                PoolRef::Name(n) => {
                    let snap = self
                        .ipam
                        .cached_snapshot(now)
                        .map_err(ipam_err("reading pools"))?;
                    if !snap.pools.iter().any(|p| p.name() == n) {
                        return Err(Error::InvalidConfig {
                            field: "ipam.ipv4_pools/ipv6_pools".into(),
                            value: n.clone(),
                            rule: "no IPPool of this name exists in the datastore".into(),
                        });
                    }
                    names.push(n.clone());
                }
                PoolRef::Cidr(cidr) => names.push(self.pool_for(*cidr, block_size, now)?),
            }
        }
        Ok(names)
    }

    fn pool_for(&self, cidr: IpNet, block_size: Option<u8>, now: SystemTime) -> Result<String> {
        let find = |snap: &calinet_ipam::Snapshot| {
            snap.pools
                .iter()
                .find(|p| p.spec.cidr == cidr)
                .map(|p| p.name().to_owned())
        };
        // Cached: the assignment that follows uses the same read.
        let snap = self
            .ipam
            .cached_snapshot(now)
            .map_err(ipam_err("reading pools"))?;
        if let Some(n) = find(&snap) {
            return Ok(n);
        }
        let mut spec = IpPoolSpec::with_cidr(cidr);
        spec.block_size = block_size;
        let pool = IpPool::new(&pool_name(&cidr), spec);
        match self.ipam.put_pool(&pool) {
            Ok(()) => Ok(pool.name().to_owned()),
            // Another host may have created it between our read and write.
            Err(e) => match self.ipam.load_snapshot(now).map(|s| find(&s)) {
                Ok(Some(n)) => Ok(n),
                _ => Err(ipam_err(format!("creating IPPool for {cidr}"))(e)),
            },
        }
    }
}

impl<S: Store> AddressManager for StoreIpam<S> {
    fn held(&mut self, handle: &HandleId) -> Result<Vec<IpNet>> {
        let got = self
            .ipam
            .addresses_of(handle)
            .map_err(ipam_err(format!("reading handle {handle}")))?;
        Ok(got.iter().map(|a| a.net()).collect())
    }

    fn assign(&mut self, p: &AssignParams) -> Result<Vec<IpNet>> {
        let _g = self.guard()?;
        let now = SystemTime::now();
        let mut pools = self.pool_names(&p.ipv4_pools, p.ipv4_block_size, now)?;
        pools.extend(self.pool_names(&p.ipv6_pools, p.ipv6_block_size, now)?);
        let mut req = AutoAssignRequest::v4(p.handle.clone(), p.node.clone(), u32::from(p.ipv4));
        req.num_v6 = u32::from(p.ipv6);
        req.pools = pools;
        req.attributes = p.attributes.clone();
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        req.attributes
            .insert("timestamp".into(), now_secs.to_string());
        let got = self
            .ipam
            .auto_assign(&req, now)
            .map_err(ipam_err(format!("assign for handle {}", p.handle)))?;
        Ok(got.v4.iter().chain(&got.v6).map(|a| a.net()).collect())
    }

    fn release(&mut self, handle: &HandleId) -> Result<Vec<IpAddr>> {
        let _g = self.guard()?;
        self.ipam
            .release_handle(handle, SystemTime::now())
            .map_err(ipam_err(format!("release of handle {handle}")))
    }

    fn handles_on_node(
        &mut self,
        prefix: &str,
        node: &NodeName,
    ) -> Result<Vec<(HandleId, Attributes)>> {
        let d = report::dump(self.ipam.store()).map_err(ipam_err("reading IPAM state for GC"))?;
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

    fn status(&mut self, cfg: &IpamConfig) -> Result<()> {
        let snap = self
            .ipam
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

/// The kernel edge: calinet-route's workload setup, check and teardown, run on
/// a single-threaded tokio runtime in the caller's (the host's) namespace.
#[derive(Debug)]
pub struct KernelPlumber {
    rt: tokio::runtime::Runtime,
    protocol: RouteProtocol,
}

impl KernelPlumber {
    /// A plumber whose host routes carry Calico's protocol number (80).
    pub fn new() -> Result<KernelPlumber> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Plumbing {
                what: "tokio runtime".into(),
                source: calinet_route::Error::Transport {
                    context: "starting the runtime".into(),
                    source,
                },
            })?;
        Ok(KernelPlumber {
            rt,
            protocol: RouteProtocol::CALICO,
        })
    }
}

fn plumb_err(what: String) -> impl FnOnce(calinet_route::Error) -> Error {
    move |source| Error::Plumbing { what, source }
}

impl Plumber for KernelPlumber {
    fn netns_exists(&mut self, path: &Path) -> Result<()> {
        match std::fs::metadata(path) {
            Ok(_) => Ok(()),
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NetnsMissing {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(e) => Err(Error::InvalidEnv {
                var: "CNI_NETNS",
                value: path.display().to_string(),
                rule: format!("cannot be accessed: {e}"),
            }),
        }
    }

    fn setup(&mut self, spec: &WorkloadSpec) -> Result<Plumbed> {
        let what = format!(
            "{} <-> {}:{}",
            spec.host_ifname,
            spec.pod_netns.display(),
            spec.pod_ifname
        );
        let protocol = self.protocol;
        self.rt
            .block_on(async {
                let host_ns = Netns::current()?;
                let mut host = Conn::open(&host_ns).await?;
                let report = workload::setup_workload(&mut host, spec, protocol).await?;
                Ok(Plumbed {
                    host_mac: Some(MacAddr::WORKLOAD_HOST.to_string()),
                    // setup_workload created the pod side with this MAC, or
                    // read it when it found the workload unchanged.
                    pod_mac: report.pod_mac.map(|m| m.to_string()),
                    host_link_local: report.host_link_local,
                })
            })
            .map_err(plumb_err(what))
    }

    fn check(&mut self, spec: &WorkloadSpec) -> Result<Vec<String>> {
        let what = format!("check of {}", spec.host_ifname);
        let protocol = self.protocol;
        self.rt
            .block_on(async {
                let host_ns = Netns::current()?;
                let mut host = Conn::open(&host_ns).await?;
                workload::check_workload(&mut host, spec, protocol).await
            })
            .map(|d| d.iter().map(ToString::to_string).collect())
            .map_err(plumb_err(what))
    }

    fn teardown(&mut self, host: &IfName, netns: Option<&Path>, pod: &IfName) -> Result<()> {
        let what = format!("teardown of {host}");
        self.rt
            .block_on(async {
                let host_ns = Netns::current()?;
                let mut conn = Conn::open(&host_ns).await?;
                workload::teardown_workload(&mut conn, host, netns, pod).await
            })
            .map(|_| ())
            .map_err(plumb_err(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use calinet_ipam::SqliteStore;

    fn params(id: &str) -> AssignParams {
        AssignParams {
            handle: format!("k8s-pod-network.{id}").parse().unwrap(),
            node: "node-1".parse().unwrap(),
            ipv4: true,
            ipv6: false,
            ipv4_pools: vec![PoolRef::Cidr("172.16.0.0/16".parse().unwrap())],
            ipv6_pools: vec![],
            ipv4_block_size: None,
            ipv6_block_size: None,
            attributes: Default::default(),
        }
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

    #[test]
    fn the_host_lock_excludes_a_second_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("ipam.lock");
        let first = HostLock::acquire(&path).unwrap();
        let released = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (path, released) = (path.clone(), released.clone());
            std::thread::spawn(move || {
                let _second = HostLock::acquire(&path).unwrap();
                released.load(std::sync::atomic::Ordering::SeqCst)
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        released.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(first);
        assert!(
            waiter.join().unwrap(),
            "second holder got the lock while the first held it"
        );
    }

    #[test]
    fn pool_names_are_store_key_safe() {
        assert_eq!(
            pool_name(&"172.16.0.0/16".parse().unwrap()),
            "calinet-172-16-0-0-16"
        );
        assert_eq!(
            pool_name(&"fd00:10::/64".parse().unwrap()),
            "calinet-fd00-10---64"
        );
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
