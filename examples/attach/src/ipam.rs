//! The real IPAM edge: calinet-ipam's allocator on a [`Store`], optionally
//! under a host-wide lock.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use calinet_ipam::{AutoAssignRequest, HandleId, IpPool, IpPoolSpec, Ipam, Store};
use ipnet::IpNet;

use crate::core::AddressManager;
use crate::error::{Error, Result};
use crate::request::{AssignParams, PoolRef};

/// An exclusive lock on a file (`flock`), released when dropped. Serialises
/// one host's IPAM writers so that parallel ADDs queue instead of retrying
/// CAS conflicts against each other (the datastore's CAS keeps them correct
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
            match file.lock() {
                Ok(()) => return Ok(HostLock { _file: file }),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
}

/// The name given to a pool created for a CIDR (`calinet-172-16-0-0-16`).
pub fn pool_name(cidr: &IpNet) -> String {
    let s: String = cidr
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("calinet-{s}")
}

fn ipam_err(operation: impl Into<String>) -> impl FnOnce(calinet_ipam::Error) -> Error {
    let operation = operation.into();
    move |source| Error::Ipam { operation, source }
}

/// calinet-ipam's allocator on a store, behind an optional host lock.
#[derive(Debug)]
pub struct IpamAddresses<S> {
    ipam: Ipam<S>,
    lock: Option<PathBuf>,
}

impl<S: Store> IpamAddresses<S> {
    /// An allocator on `store`; with `lock`, every write holds that host lock.
    pub fn new(store: S, lock: Option<PathBuf>) -> Self {
        IpamAddresses {
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
                        return Err(Error::UnknownPool { name: n.clone() });
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

impl<S: Store> AddressManager for IpamAddresses<S> {
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
        let mut pools = Vec::new();
        if let Some(f) = &p.ipv4 {
            pools.extend(self.pool_names(&f.pools, f.block_size, now)?);
        }
        if let Some(f) = &p.ipv6 {
            pools.extend(self.pool_names(&f.pools, f.block_size, now)?);
        }
        let mut req = AutoAssignRequest::v4(
            p.handle.clone(),
            p.node.clone(),
            u32::from(p.ipv4.is_some()),
        );
        req.num_v6 = u32::from(p.ipv6.is_some());
        req.node_labels = p.node_labels.clone();
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
