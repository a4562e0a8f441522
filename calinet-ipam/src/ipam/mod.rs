//! The allocator: AutoAssign, specific assignment, release, garbage collection.
//!
//! Every decision is made on an in-memory view (blocks, handles, pools) and
//! committed as one compare-and-swap transaction; a conflict means another
//! writer got there first, so the view is re-read and the step retried, at most
//! [`IpamOptions::max_retries`] times, then [`Error::Conflict`] is returned.
//!
//! By responsibility:
//! - this module: the types, construction and the configuration documents
//!   (pools, IPAMConfiguration, IPReservations);
//! - `cache`: the snapshot of pools and configuration, cached blocks,
//!   handles and per-node block lists;
//! - `commit`: the one write path, [`Ipam::commit_block`] / `Ipam::txn`,
//!   and the one retry loop, `Ipam::retry`, every allocation write goes through;
//! - `assign`: AutoAssign, specific assignment, tunnel addresses;
//! - `claim`: block affinity claims and reclaiming empty blocks;
//! - `release`: release by address and handle, garbage collection.
//!
//! Stored values are encoded and decoded by `crate::encoding`.

mod assign;
mod cache;
mod claim;
mod commit;
mod release;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::block::Block;
use crate::encoding::{self, decode};
use crate::error::{Error, Result};
use crate::keys;
use crate::selector::NodeSelectorEvaluator;
use crate::store::Store;
use crate::types::{
    AllowedUse, Attributes, BlockCidr, HandleId, IpPool, IpReservation, IpamConfigSpec, NodeName,
    validate_pools,
};

use cache::Cache;
pub use release::GcReport;

/// Tuning of the allocator.
#[derive(Debug, Clone)]
pub struct IpamOptions {
    /// Conflicting CAS attempts before [`Error::Conflict`] (Calico: 100).
    pub max_retries: u32,
    /// Keep a released address unused for this long (0 = only FIFO order).
    pub reuse_cooldown: Duration,
    /// Reserve the first three and the last address of every new block (Windows nodes).
    pub windows_reserved: bool,
    /// An empty block of another node may be reclaimed once it has been seen
    /// empty and unchanged for this long (Calico: one minute).
    pub reclaim_grace: Duration,
    /// Pools, IPAMConfiguration and IPReservations are re-read when the cached
    /// copy is older than this (also on [`Ipam::refresh`]).
    pub config_ttl: Duration,
}

impl Default for IpamOptions {
    fn default() -> Self {
        IpamOptions {
            max_retries: 100,
            reuse_cooldown: Duration::ZERO,
            windows_reserved: false,
            reclaim_grace: Duration::from_secs(60),
            config_ttl: Duration::from_secs(10),
        }
    }
}

/// An AutoAssign request.
#[derive(Debug, Clone)]
pub struct AutoAssignRequest {
    /// The handle the addresses belong to.
    pub handle: HandleId,
    /// The node asking.
    pub node: NodeName,
    /// The node's labels (for pool node selectors).
    pub node_labels: BTreeMap<String, String>,
    /// IPv4 addresses wanted.
    pub num_v4: u32,
    /// IPv6 addresses wanted.
    pub num_v6: u32,
    /// Owner attributes stored with each allocation.
    pub attributes: Attributes,
    /// Workload or Tunnel.
    pub ip_use: AllowedUse,
    /// Restrict to these pools (names); empty = any pool that fits.
    pub pools: Vec<String>,
}

impl AutoAssignRequest {
    /// A request for `num_v4` workload IPv4 addresses, no labels or attributes.
    pub fn v4(handle: HandleId, node: NodeName, num_v4: u32) -> Self {
        AutoAssignRequest {
            handle,
            node,
            node_labels: BTreeMap::new(),
            num_v4,
            num_v6: 0,
            attributes: Attributes::new(),
            ip_use: AllowedUse::Workload,
            pools: Vec::new(),
        }
    }
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedAddr {
    /// The address.
    pub addr: IpAddr,
    /// Its block.
    pub block: BlockCidr,
    /// The allocation's sequence number (for checked release).
    pub sequence: u64,
    /// True when taken from another node's block (needs a /32 or /128 route).
    pub borrowed: bool,
}

impl AssignedAddr {
    /// The address with the block's prefix length, as Calico returns it.
    pub fn net(&self) -> IpNet {
        IpNet::new(self.addr, self.block.net().prefix_len()).expect("block prefix is valid")
    }
}

/// Result of AutoAssign.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    /// IPv4 addresses.
    pub v4: Vec<AssignedAddr>,
    /// IPv6 addresses.
    pub v6: Vec<AssignedAddr>,
}

/// Pools, configuration and reservations as last read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// All pools.
    pub pools: Vec<IpPool>,
    /// IPAM configuration.
    pub config: IpamConfigSpec,
    /// Reserved CIDRs of all IPReservations.
    pub reservations: Vec<IpNet>,
    loaded_at: SystemTime,
}

/// The allocator over a [`Store`].
pub struct Ipam<S> {
    store: S,
    selector: Box<dyn NodeSelectorEvaluator>,
    opts: IpamOptions,
    cache: Mutex<Cache>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Ipam<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipam")
            .field("store", &self.store)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a block's affinity is `host:<node>` (without formatting it).
fn affine_to(block: &Block, node: &NodeName) -> bool {
    block.affinity().and_then(|a| a.strip_prefix("host:")) == Some(node.as_str())
}

fn host_affinity(node: &NodeName) -> String {
    format!("host:{node}")
}

impl<S: Store> Ipam<S> {
    /// An allocator with the built-in `all()`-only selector evaluator.
    pub fn new(store: S) -> Self {
        Self::with_options(
            store,
            Box::new(crate::selector::AllOnlySelector),
            IpamOptions::default(),
        )
    }

    /// An allocator with a selector evaluator and options.
    pub fn with_options(
        store: S,
        selector: Box<dyn NodeSelectorEvaluator>,
        opts: IpamOptions,
    ) -> Self {
        Ipam {
            store,
            selector,
            opts,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The options.
    pub fn options(&self) -> &IpamOptions {
        &self.opts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache only holds copies of stored state validated by CAS, so a
        // panic mid-update cannot make it unsafe; at worst it is stale.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop every cached view; the next operation re-reads the store.
    pub fn refresh(&self) {
        let mut c = self.lock();
        *c = Cache {
            empty_seen: std::mem::take(&mut c.empty_seen),
            gc_seen: std::mem::take(&mut c.gc_seen),
            ..Default::default()
        };
    }

    // ----- configuration ---------------------------------------------------

    /// Create or replace a pool after validating it against the others.
    /// A pool's `cidr` and `blockSize` cannot change.
    pub fn put_pool(&self, pool: &IpPool) -> Result<()> {
        pool.validate()?;
        let key = keys::pool(pool.name());
        let existing = self.store.list(keys::POOLS_PREFIX)?;
        let mut others = Vec::new();
        let mut current = None;
        for kv in &existing {
            let p: IpPool = decode("IPPool", &kv.key, &kv.value)?;
            if kv.key == key {
                if p.spec.cidr != pool.spec.cidr || p.block_size() != pool.block_size() {
                    return Err(Error::InvalidPool {
                        pool: pool.name().into(),
                        rule: "cidr and blockSize are immutable".into(),
                    });
                }
                current = Some(kv.mod_revision);
            } else {
                others.push(p);
            }
        }
        others.push(pool.clone());
        validate_pools(&others)?;
        let v = encoding::pool_value(pool);
        match current {
            Some(r) => self.store.update(&key, &v, r)?,
            None => self.store.create(&key, &v)?,
        };
        self.lock().snapshot = None;
        Ok(())
    }

    /// Write the IPAM configuration after validating it.
    pub fn put_config(&self, cfg: &IpamConfigSpec) -> Result<()> {
        cfg.validate()?;
        let v = encoding::config_value(cfg);
        match self.store.get(keys::IPAM_CONFIG)? {
            Some(kv) => self.store.update(keys::IPAM_CONFIG, &v, kv.mod_revision)?,
            None => self.store.create(keys::IPAM_CONFIG, &v)?,
        };
        self.lock().snapshot = None;
        Ok(())
    }

    /// Create or replace an IPReservation.
    pub fn put_reservation(&self, r: &IpReservation) -> Result<()> {
        r.validate()?;
        let key = keys::reservation(r.name());
        let v = encoding::reservation_value(r);
        match self.store.get(&key)? {
            Some(kv) => self.store.update(&key, &v, kv.mod_revision)?,
            None => self.store.create(&key, &v)?,
        };
        let mut c = self.lock();
        c.snapshot = None;
        c.masks.clear();
        Ok(())
    }

    /// Read pools, configuration and reservations from the store.
    pub fn load_snapshot(&self, now: SystemTime) -> Result<Snapshot> {
        let mut pools = Vec::new();
        for kv in self.store.list(keys::POOLS_PREFIX)? {
            pools.push(decode::<IpPool>("IPPool", &kv.key, &kv.value)?);
        }
        let config = match self.store.get(keys::IPAM_CONFIG)? {
            Some(kv) => encoding::decode_config(&kv.key, &kv.value)?,
            None => IpamConfigSpec::default(),
        };
        let mut reservations = Vec::new();
        for kv in self.store.list(keys::RESERVATIONS_PREFIX)? {
            let r: IpReservation = decode("IPReservation", &kv.key, &kv.value)?;
            reservations.extend(r.spec.reserved_cidrs);
        }
        Ok(Snapshot {
            pools,
            config,
            reservations,
            loaded_at: now,
        })
    }

    /// Pools, configuration and reservations as operations see them: the
    /// cached copy while younger than [`IpamOptions::config_ttl`], else read
    /// (and cached). Callers that look pools up before assigning share the
    /// read the assignment then makes.
    pub fn cached_snapshot(&self, now: SystemTime) -> Result<Arc<Snapshot>> {
        let mut c = self.lock();
        self.snapshot(&mut c, now)
    }
}
