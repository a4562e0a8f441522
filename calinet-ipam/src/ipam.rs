//! The allocator: AutoAssign, specific assignment, release, garbage collection.
//!
//! Every decision is made on an in-memory view (blocks, handles, pools) and
//! committed as one compare-and-swap transaction; a conflict means another
//! writer got there first, so the view is re-read and the step retried, at most
//! [`IpamOptions::max_retries`] times, then [`Error::Conflict`] is returned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitvec::prelude::*;
use ipnet::IpNet;

use crate::block::{Block, Pick};
use crate::error::{Error, Result};
use crate::keys;
use crate::selector::NodeSelectorEvaluator;
use crate::store::{Revision, Store, StoreError, TxnOp};
use crate::types::{
    AffinityState, AllowedUse, Attributes, BlockAffinity, BlockCidr, Family, HandleId, IpPool,
    IpReservation, IpamConfigSpec, IpamHandle, NodeName, StringBool, WINDOWS_RESERVED_HANDLE,
    validate_pools,
};

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

/// What one garbage-collection pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Empty blocks whose affinity was released (and the block deleted).
    pub released_blocks: Vec<(NodeName, BlockCidr)>,
    /// Affinities removed because no matching block exists (crashed claims).
    pub stale_affinities: Vec<(NodeName, BlockCidr)>,
    /// Candidates seen for the first time; released on the next pass if unchanged.
    pub pending_candidates: usize,
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

type Mask = Option<Arc<BitVec<u64, Lsb0>>>;

#[derive(Debug, Default)]
struct Cache {
    snapshot: Option<Arc<Snapshot>>,
    /// Boxed: blocks move in and out of the cache on every write.
    blocks: FastMap<BlockCidr, (Box<Block>, Revision)>,
    node_blocks: FastMap<NodeName, NodeBlocks>,
    /// `{node: <name>}` attributes per node, shared by its allocations.
    node_attrs: FastMap<NodeName, Arc<Attributes>>,
    /// `Some(None)` = known absent; missing = unknown.
    handles: FastMap<HandleId, Option<(IpamHandle, Revision)>>,
    masks: FastMap<BlockCidr, Mask>,
    /// Reused buffer for block JSON.
    scratch: Vec<u8>,
    /// Other nodes' empty blocks seen: block revision and first time seen.
    empty_seen: HashMap<BlockCidr, (Revision, SystemTime)>,
    /// GC candidates: affinity key -> (affinity revision, block revision).
    gc_seen: HashMap<String, (Revision, Option<Revision>)>,
}

const HANDLE_CACHE_CAP: usize = 16_384;

/// FNV-1a for the in-process caches: keys are short and not attacker-chosen
/// across a trust boundary, and SipHash showed up in profiles.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// A node's confirmed affine blocks per family; `None` = not loaded.
#[derive(Debug, Default)]
struct NodeBlocks {
    v4: Option<Vec<BlockCidr>>,
    v6: Option<Vec<BlockCidr>>,
}

impl NodeBlocks {
    fn slot(&mut self, fam: Family) -> &mut Option<Vec<BlockCidr>> {
        match fam {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }
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

/// Calico's IPAMHandle JSON, written by hand (it is on every allocation's
/// path); same document as serialising the struct.
fn handle_json(h: &IpamHandle) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + h.handle_id.len());
    let w = |out: &mut Vec<u8>, v: &dyn erased::Json| v.write(out);
    out.extend_from_slice(b"{\"handleID\":");
    w(&mut out, &h.handle_id.as_str());
    out.extend_from_slice(b",\"block\":{");
    for (i, (k, n)) in h.block.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        w(&mut out, &k.as_str());
        out.push(b':');
        w(&mut out, n);
    }
    out.extend_from_slice(if h.deleted {
        b"},\"deleted\":true"
    } else {
        b"},\"deleted\":false"
    });
    for (k, v) in &h.extra {
        out.push(b',');
        w(&mut out, &k.as_str());
        out.push(b':');
        w(&mut out, v);
    }
    out.push(b'}');
    out
}

mod erased {
    /// Write one JSON value (strings escaped by serde_json).
    pub(super) trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }
    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            serde_json::to_writer(out, self).expect("JSON value serialises");
        }
    }
}

/// Whether a block's affinity is `host:<node>` (without formatting it).
fn affine_to(block: &Block, node: &NodeName) -> bool {
    block.affinity().and_then(|a| a.strip_prefix("host:")) == Some(node.as_str())
}

fn host_affinity(node: &NodeName) -> String {
    format!("host:{node}")
}

/// FNV-1a: a stable start point for a node's walk over a pool's blocks.
fn node_hash(node: &NodeName) -> u64 {
    node.as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn affinity_json(node: &NodeName, cidr: &BlockCidr, state: AffinityState) -> Vec<u8> {
    let a = BlockAffinity {
        state,
        node: node.to_string(),
        affinity_type: "host".into(),
        cidr: Some(cidr.net()),
        deleted: StringBool(false),
        extra: Default::default(),
    };
    serde_json::to_vec(&a).expect("affinity serialises")
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, key: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| Error::Decode {
        what,
        key: key.to_owned(),
        source,
    })
}

enum Step {
    Done,
    Retry(Vec<String>),
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
        let v = serde_json::to_vec(pool).expect("pool serialises");
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
        let v = serde_json::to_vec(cfg).expect("config serialises");
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
        let v = serde_json::to_vec(r).expect("reservation serialises");
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
            Some(kv) => decode("IPAMConfiguration", &kv.key, &kv.value)?,
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

    fn snapshot(&self, c: &mut Cache, now: SystemTime) -> Result<Arc<Snapshot>> {
        if let Some(s) = &c.snapshot {
            let age = now.duration_since(s.loaded_at).unwrap_or(Duration::ZERO);
            if age < self.opts.config_ttl {
                return Ok(s.clone());
            }
        }
        let s = Arc::new(self.load_snapshot(now)?);
        c.snapshot = Some(s.clone());
        c.masks.clear();
        Ok(s)
    }

    fn mask(c: &mut Cache, snap: &Snapshot, cidr: BlockCidr) -> Mask {
        c.masks
            .entry(cidr)
            .or_insert_with(|| {
                let net = cidr.net();
                let overlapping: Vec<&IpNet> = snap
                    .reservations
                    .iter()
                    .filter(|r| r.contains(&net.network()) || net.contains(&r.network()))
                    .collect();
                if overlapping.is_empty() {
                    return None;
                }
                let mut m = bitvec![u64, Lsb0; 0; cidr.size() as usize];
                for o in 0..cidr.size() {
                    let a = cidr.addr(o);
                    if overlapping.iter().any(|r| r.contains(&a)) {
                        m.set(o as usize, true);
                    }
                }
                Some(Arc::new(m))
            })
            .clone()
    }

    fn usable_pools(
        &self,
        snap: &Snapshot,
        req: &AutoAssignRequest,
        fam: Family,
    ) -> Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, p) in snap.pools.iter().enumerate() {
            if p.family() != fam || !p.enabled() || !p.automatic() || !p.allows(req.ip_use) {
                continue;
            }
            if !req.pools.is_empty() && !req.pools.iter().any(|n| n == p.name()) {
                continue;
            }
            let sel = p.node_selector();
            let ok = self
                .selector
                .matches(sel, &req.node_labels)
                .map_err(|reason| Error::Selector {
                    pool: p.name().into(),
                    selector: sel.into(),
                    reason,
                })?;
            if ok {
                out.push(i);
            }
        }
        Ok(out)
    }

    // ----- cached reads ----------------------------------------------------

    fn load_block(&self, c: &mut Cache, cidr: BlockCidr) -> Result<Option<(Block, Revision)>> {
        if let Some(b) = c.blocks.get(&cidr) {
            return Ok(Some(((*b.0).clone(), b.1)));
        }
        let key = keys::block(&cidr);
        match self.store.get(&key)? {
            None => Ok(None),
            Some(kv) => {
                let b = Block::from_json(&key, &kv.value)?;
                c.blocks
                    .insert(cidr, (Box::new(b.clone()), kv.mod_revision));
                Ok(Some((b, kv.mod_revision)))
            }
        }
    }

    /// Like `load_block` but moves the block out of the cache (no clone). The
    /// caller puts it back or commits a successor.
    fn take_block(&self, c: &mut Cache, cidr: BlockCidr) -> Result<Option<(Box<Block>, Revision)>> {
        if let Some(b) = c.blocks.remove(&cidr) {
            return Ok(Some(b));
        }
        let key = keys::block(&cidr);
        match self.store.get(&key)? {
            None => Ok(None),
            Some(kv) => Ok(Some((
                Box::new(Block::from_json(&key, &kv.value)?),
                kv.mod_revision,
            ))),
        }
    }

    fn load_handle(&self, c: &mut Cache, id: &HandleId) -> Result<Option<(IpamHandle, Revision)>> {
        if let Some(h) = c.handles.get(id) {
            return Ok(h.clone());
        }
        let key = keys::handle(id);
        let h = match self.store.get(&key)? {
            None => None,
            Some(kv) => Some((
                decode::<IpamHandle>("IPAMHandle", &key, &kv.value)?,
                kv.mod_revision,
            )),
        };
        Self::cache_handle(c, id, h.clone());
        Ok(h)
    }

    fn cache_handle(c: &mut Cache, id: &HandleId, h: Option<(IpamHandle, Revision)>) {
        // Absence is not cached: no caller may trust it without a read
        // anyway, and released pod handles never come back.
        let Some(h) = h else {
            c.handles.remove(id);
            return;
        };
        if c.handles.len() >= HANDLE_CACHE_CAP {
            c.handles.clear();
        }
        c.handles.insert(id.clone(), Some(h));
    }

    /// The node's confirmed affine blocks of a family (cached).
    fn node_blocks(&self, c: &mut Cache, node: &NodeName, fam: Family) -> Result<Vec<BlockCidr>> {
        if let Some(v) = c
            .node_blocks
            .get_mut(node)
            .and_then(|n| n.slot(fam).as_ref())
        {
            return Ok(v.clone());
        }
        let mut v = Vec::new();
        for kv in self.store.list(&keys::affinities_prefix(node, fam))? {
            let a: BlockAffinity = decode("BlockAffinity", &kv.key, &kv.value)?;
            if a.state != AffinityState::Confirmed || a.deleted.0 {
                continue;
            }
            if let Some((_, cidr)) = keys::parse_affinity(&kv.key) {
                v.push(cidr);
            }
        }
        *c.node_blocks.entry(node.clone()).or_default().slot(fam) = Some(v.clone());
        Ok(v)
    }

    /// The `i`-th confirmed affine block of a node (loading the list if needed).
    fn node_block_at(
        &self,
        c: &mut Cache,
        node: &NodeName,
        fam: Family,
        i: usize,
    ) -> Result<Option<BlockCidr>> {
        if let Some(v) = c
            .node_blocks
            .get_mut(node)
            .and_then(|n| n.slot(fam).as_ref())
        {
            return Ok(v.get(i).copied());
        }
        Ok(self.node_blocks(c, node, fam)?.get(i).copied())
    }

    fn forget_node(c: &mut Cache, node: &NodeName, fam: Family) {
        if let Some(v) = c.node_blocks.get_mut(node).and_then(|n| n.slot(fam).take()) {
            for b in v {
                c.blocks.remove(&b);
            }
        }
    }

    /// Record a new affine block, if the node's list is loaded (else the
    /// next load reads it from the store).
    fn add_node_block(c: &mut Cache, node: &NodeName, cidr: BlockCidr) {
        if let Some(v) = c
            .node_blocks
            .get_mut(node)
            .and_then(|n| n.slot(cidr.family()).as_mut())
            && !v.contains(&cidr)
        {
            v.push(cidr);
        }
    }

    fn drop_node_list(c: &mut Cache, node: &NodeName, fam: Family) {
        if let Some(n) = c.node_blocks.get_mut(node) {
            *n.slot(fam) = None;
        }
    }

    // ----- the write path ----------------------------------------------------

    /// Handle op for a change of `delta` addresses of `id` in `cidr`, and the
    /// handle's state after it.
    fn handle_op(
        &self,
        c: &mut Cache,
        id: &HandleId,
        cidr_text: &str,
        delta: i64,
    ) -> Result<(Option<TxnOp>, Option<IpamHandle>)> {
        let key = keys::handle(id);
        // Optimistic for new handles: assume absent (Create) without reading;
        // if it exists the transaction fails and the retry reads it.
        // A cached record is validated by the Update/Delete revision check, a
        // cached absence by Create. A cached absence cannot validate a
        // decrement, so that case reads the store. (A handle's count for a block
        // only changes in a transaction that also writes that block, so the
        // block's revision check covers the handle read here.)
        // Moved out of the cache, not cloned: a successful commit caches the
        // new state, a failed one re-reads.
        let current = match c.handles.remove(id) {
            Some(Some(h)) => Some(h),
            Some(None) | None if delta > 0 => None,
            _ => {
                let h = self.load_handle(c, id)?;
                c.handles.remove(id);
                h
            }
        };
        let bkey = cidr_text.to_owned();
        match current {
            None if delta <= 0 => Ok((None, None)),
            None => {
                let h = IpamHandle {
                    handle_id: id.to_string(),
                    block: [(bkey, delta as u32)].into(),
                    deleted: false,
                    extra: Default::default(),
                };
                let v = handle_json(&h);
                Ok((Some(TxnOp::Create { key, value: v }), Some(h)))
            }
            Some((mut h, rev)) => {
                let n = i64::from(h.block.get(&bkey).copied().unwrap_or(0)) + delta;
                if n > 0 {
                    h.block.insert(bkey, n as u32);
                } else {
                    h.block.remove(&bkey);
                }
                if h.block.is_empty() {
                    Ok((Some(TxnOp::Delete { key, expected: rev }), None))
                } else {
                    let v = handle_json(&h);
                    Ok((
                        Some(TxnOp::Update {
                            key,
                            value: v,
                            expected: rev,
                        }),
                        Some(h),
                    ))
                }
            }
        }
    }

    /// Commit a changed block (at `rev`) plus the handle change, atomically.
    /// On success the caches hold the new state; on conflict they are dropped.
    #[allow(clippy::too_many_arguments)]
    fn commit_block(
        &self,
        c: &mut Cache,
        block: Box<Block>,
        rev: Revision,
        handle: Option<&HandleId>,
        delta: i64,
        mut extra: Vec<TxnOp>,
    ) -> Result<Step> {
        let cidr = block.cidr();
        let bkey = block.key().to_owned();
        // Reuse one buffer for block documents: a fresh ~600-byte allocation
        // per write showed up in profiles.
        let mut value = std::mem::take(&mut c.scratch);
        value.clear();
        block.write_json(&mut value);
        let mut ops = vec![TxnOp::Update {
            key: bkey,
            value,
            expected: rev,
        }];
        let mut new_handle = None;
        if let Some(id) = handle
            && delta != 0
        {
            let (op, h) = self.handle_op(c, id, block.cidr_text(), delta)?;
            ops.extend(op);
            new_handle = Some(h);
        }
        ops.append(&mut extra);
        let res = self.store.txn(&ops);
        if let TxnOp::Update { value, .. } = ops.swap_remove(0) {
            c.scratch = value;
        }
        match res {
            Ok(new_rev) => {
                c.blocks.insert(cidr, (block, new_rev));
                if let (Some(id), Some(h)) = (handle, new_handle) {
                    Self::cache_handle(c, id, h.map(|h| (h, new_rev)));
                }
                Ok(Step::Done)
            }
            Err(StoreError::TxnConflict { keys }) => {
                c.blocks.remove(&cidr);
                if let Some(id) = handle {
                    // Read the handle now: leaving it unknown would make the
                    // next attempt optimistically create it again.
                    c.handles.remove(id);
                    self.load_handle(c, id)?;
                }
                Ok(Step::Retry(keys))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn give_up(&self, operation: String, attempts: u32, keys: Vec<String>) -> Error {
        Error::Conflict {
            operation,
            attempts,
            keys,
        }
    }

    // ----- AutoAssign ----------------------------------------------------------

    /// Assign `num_v4` IPv4 and `num_v6` IPv6 addresses to a handle on a node.
    /// All or nothing: if a family cannot be satisfied, everything this call
    /// assigned is released again and [`Error::Exhausted`] (or the cause) returned.
    pub fn auto_assign(&self, req: &AutoAssignRequest, now: SystemTime) -> Result<Assigned> {
        let mut c = self.lock();
        let mut out = Assigned::default();
        let mut res = Ok(());
        for (fam, n) in [(Family::V4, req.num_v4), (Family::V6, req.num_v6)] {
            if n == 0 {
                continue;
            }
            let dst = if fam == Family::V4 {
                &mut out.v4
            } else {
                &mut out.v6
            };
            res = self.assign_family(&mut c, req, fam, n, now, dst);
            if res.is_err() {
                break;
            }
        }
        match res {
            Ok(()) => Ok(out),
            Err(e) => {
                for a in out.v4.iter().chain(&out.v6) {
                    // Best effort; a failure here leaves an allocation the
                    // leak check finds, and the original error matters more.
                    let _ = self.release_locked(
                        &mut c,
                        a.addr,
                        Some(&req.handle),
                        Some(a.sequence),
                        now,
                    );
                }
                Err(e)
            }
        }
    }

    fn assign_family(
        &self,
        c: &mut Cache,
        req: &AutoAssignRequest,
        fam: Family,
        n: u32,
        now: SystemTime,
        out: &mut Vec<AssignedAddr>,
    ) -> Result<()> {
        let snap = self.snapshot(c, now)?;
        let pools = self.usable_pools(&snap, req, fam)?;
        if pools.is_empty() {
            return Err(Error::NoPool {
                node: req.node.to_string(),
                family: fam.label(),
                ip_use: req.ip_use,
            });
        }
        let in_pools = |cidr: &BlockCidr| {
            pools
                .iter()
                .any(|&i| snap.pools[i].spec.cidr.contains(&cidr.net().network()))
        };
        let secs = unix_secs(now);
        let cooldown = self.opts.reuse_cooldown.as_secs();
        // Record the node with each allocation (as Calico's CNI plugin does),
        // so borrowed addresses can be reported.
        let attrs = if req.attributes.is_empty() {
            match c.node_attrs.get(&req.node) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(Attributes::from([(
                        "node".to_owned(),
                        req.node.to_string(),
                    )]));
                    c.node_attrs.insert(req.node.clone(), a.clone());
                    a
                }
            }
        } else {
            let mut attrs = req.attributes.clone();
            attrs
                .entry("node".to_owned())
                .or_insert_with(|| req.node.to_string());
            Arc::new(attrs)
        };
        let owner: Arc<str> = Arc::from(req.handle.as_str());
        let mut need = n - out.len() as u32;
        let mut attempts = 0u32;
        let mut refreshed = false;
        let mut claimed_nothing = false;
        let op_name = || format!("auto_assign of {} for node {}", req.handle, req.node);
        'outer: loop {
            if attempts > self.opts.max_retries {
                return Err(self.give_up(op_name(), attempts - 1, Vec::new()));
            }
            // 1. Blocks affine to this node.
            let mut next = 0;
            // Indexing instead of iterating a copy of the list: no allocation
            // on the hot path (the list is re-read after any change).
            while let Some(cidr) = self.node_block_at(c, &req.node, fam, next)? {
                next += 1;
                if !in_pools(&cidr) {
                    continue;
                }
                let Some((block, rev)) = self.take_block(c, cidr)? else {
                    // Affinity without block: the list is stale.
                    Self::forget_node(c, &req.node, fam);
                    attempts += 1;
                    continue 'outer;
                };
                if !affine_to(&block, &req.node) {
                    Self::forget_node(c, &req.node, fam);
                    attempts += 1;
                    continue 'outer;
                }
                let mask = Self::mask(c, &snap, cidr);
                let pick = Pick {
                    reserved: mask.as_deref().map(|m| m.as_bitslice()),
                    now: secs,
                    cooldown,
                };
                if block.available(&pick) == 0 {
                    c.blocks.insert(cidr, (block, rev));
                    continue;
                }
                let mut nb = block;
                let ords = nb.allocate(need, &owner, Some(&attrs), &pick);
                let seq = nb.sequence_number();
                let k = ords.len() as i64;
                match self.commit_block(c, nb, rev, Some(&req.handle), k, Vec::new())? {
                    Step::Done => {
                        out.extend(ords.iter().map(|&o| AssignedAddr {
                            addr: cidr.addr(o),
                            block: cidr,
                            sequence: seq,
                            borrowed: false,
                        }));
                        need -= k as u32;
                        if need == 0 {
                            return Ok(());
                        }
                    }
                    Step::Retry(keys) => {
                        attempts += 1;
                        if attempts > self.opts.max_retries {
                            return Err(self.give_up(op_name(), attempts, keys));
                        }
                        continue 'outer;
                    }
                }
            }
            // The cached view may be stale (another process released
            // addresses or claimed for this node): re-read once before
            // claiming or borrowing.
            if !refreshed {
                refreshed = true;
                Self::forget_node(c, &req.node, fam);
                continue;
            }
            // 2. Claim a new block.
            let cfg = &snap.config;
            let owned = self.node_blocks(c, &req.node, fam)?.len() as u32;
            if !claimed_nothing && cfg.auto_allocate_blocks && owned < cfg.effective_max_blocks() {
                let pool_refs: Vec<&IpPool> = pools.iter().map(|&i| &snap.pools[i]).collect();
                match self.claim_block(c, &snap, &pool_refs, &req.node, fam, now)? {
                    Some(_) => {
                        // Retry from the affine blocks, which now include it.
                        continue;
                    }
                    None => claimed_nothing = true,
                }
            }
            // 3. Borrow from other nodes' blocks.
            if !cfg.strict_affinity {
                let prefix = keys::blocks_prefix(fam);
                for kv in self.store.list(&prefix)? {
                    let block = Block::from_json(&kv.key, &kv.value)?;
                    let cidr = block.cidr();
                    if !in_pools(&cidr) || affine_to(&block, &req.node) {
                        continue;
                    }
                    c.blocks
                        .insert(cidr, (Box::new(block.clone()), kv.mod_revision));
                    let mask = Self::mask(c, &snap, cidr);
                    let pick = Pick {
                        reserved: mask.as_deref().map(|m| m.as_bitslice()),
                        now: secs,
                        cooldown,
                    };
                    if block.available(&pick) == 0 {
                        continue;
                    }
                    let mut nb = Box::new(block);
                    let ords = nb.allocate(need, &owner, Some(&attrs), &pick);
                    let seq = nb.sequence_number();
                    let k = ords.len() as i64;
                    match self.commit_block(
                        c,
                        nb,
                        kv.mod_revision,
                        Some(&req.handle),
                        k,
                        Vec::new(),
                    )? {
                        Step::Done => {
                            out.extend(ords.iter().map(|&o| AssignedAddr {
                                addr: cidr.addr(o),
                                block: cidr,
                                sequence: seq,
                                borrowed: true,
                            }));
                            need -= k as u32;
                            if need == 0 {
                                return Ok(());
                            }
                        }
                        Step::Retry(keys) => {
                            attempts += 1;
                            if attempts > self.opts.max_retries {
                                return Err(self.give_up(op_name(), attempts, keys));
                            }
                            continue 'outer;
                        }
                    }
                }
            }
            return Err(Error::Exhausted {
                node: req.node.to_string(),
                handle: req.handle.to_string(),
                family: fam.label(),
                requested: n as usize,
                available: n as usize - need as usize,
            });
        }
    }

    /// Claim a block for `node`: walk each pool's blocks from a start point
    /// derived from the node name (wrapping around) and take the first CIDR
    /// with no block; failing that, reclaim another node's block that has been
    /// seen empty and unchanged for the grace period. Two-phase: a `pending`
    /// affinity first, then one transaction creating the block and confirming
    /// the affinity.
    fn claim_block(
        &self,
        c: &mut Cache,
        snap: &Snapshot,
        pools: &[&IpPool],
        node: &NodeName,
        fam: Family,
        now: SystemTime,
    ) -> Result<Option<BlockCidr>> {
        let listed = self.store.list(&keys::blocks_prefix(fam))?;
        let mut existing: HashMap<BlockCidr, (Block, Revision)> = HashMap::new();
        for kv in &listed {
            let b = Block::from_json(&kv.key, &kv.value)?;
            existing.insert(b.cidr(), (b, kv.mod_revision));
        }
        for pool in pools {
            let count = pool.block_count();
            let start = u128::from(node_hash(node)) % count;
            // At most every existing block plus one free CIDR (plus fully
            // reserved ones) is visited, even in huge IPv6 pools.
            let limit = count.min(existing.len() as u128 + 1 + 4096);
            for i in 0..limit {
                let cidr = pool.block((start + i) % count);
                if existing.contains_key(&cidr) {
                    continue;
                }
                let mask = Self::mask(c, snap, cidr);
                if mask.as_ref().is_some_and(|m| m.all()) {
                    continue;
                }
                if self.try_claim(c, node, cidr, snap.config.strict_affinity)? {
                    return Ok(Some(cidr));
                }
            }
        }
        // Reclaim an empty block of another node.
        let grace = self.opts.reclaim_grace;
        let aff = host_affinity(node);
        for pool in pools {
            for (cidr, (block, rev)) in &existing {
                if !pool.spec.cidr.contains(&cidr.net().network())
                    || block.affinity() == Some(aff.as_str())
                {
                    continue;
                }
                if !block.is_empty() {
                    c.empty_seen.remove(cidr);
                    continue;
                }
                let seen = c.empty_seen.entry(*cidr).or_insert((*rev, now));
                if seen.0 != *rev {
                    *seen = (*rev, now);
                    continue;
                }
                if now.duration_since(seen.1).unwrap_or(Duration::ZERO) < grace {
                    continue;
                }
                if self.try_reclaim(c, node, block.clone(), *rev, snap.config.strict_affinity)? {
                    c.empty_seen.remove(cidr);
                    return Ok(Some(*cidr));
                }
            }
        }
        Ok(None)
    }

    /// Two-phase claim of a CIDR that has no block. Ok(false) = lost the race.
    fn try_claim(
        &self,
        c: &mut Cache,
        node: &NodeName,
        cidr: BlockCidr,
        strict: bool,
    ) -> Result<bool> {
        let akey = keys::affinity(node, &cidr);
        let pending = affinity_json(node, &cidr, AffinityState::Pending);
        let arev = match self.store.create(&akey, &pending) {
            Ok(r) => r,
            Err(StoreError::AlreadyExists { .. }) => match self.store.get(&akey)? {
                Some(kv) => {
                    let a: BlockAffinity = decode("BlockAffinity", &akey, &kv.value)?;
                    if a.state != AffinityState::Pending {
                        // Another allocator (same node) completed this claim:
                        // the node owns the block; re-read its block list.
                        Self::drop_node_list(c, node, cidr.family());
                        return Ok(true);
                    }
                    // A pending leftover of ours (e.g. a crashed claim): take it
                    // over. If a live claim holds it, one of us loses the
                    // block creation below.
                    kv.mod_revision
                }
                None => return Ok(false),
            },
            Err(e) => return Err(e.into()),
        };
        let mut block = Block::new(cidr, Some(host_affinity(node)), self.opts.windows_reserved);
        block.set_strict_affinity(strict);
        let ops = [
            TxnOp::Create {
                key: keys::block(&cidr),
                value: block.to_json(),
            },
            TxnOp::Update {
                key: akey.clone(),
                value: affinity_json(node, &cidr, AffinityState::Confirmed),
                expected: arev,
            },
        ];
        match self.store.txn(&ops) {
            Ok(rev) => {
                c.blocks.insert(cidr, (Box::new(block), rev));
                Self::add_node_block(c, node, cidr);
                Ok(true)
            }
            Err(StoreError::TxnConflict { .. }) => {
                // Lost the race for the block: withdraw the pending affinity
                // (if it is still ours as written; else GC removes it).
                let _ = self.store.delete(&akey, arev);
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn try_reclaim(
        &self,
        c: &mut Cache,
        node: &NodeName,
        block: Block,
        rev: Revision,
        strict: bool,
    ) -> Result<bool> {
        let cidr = block.cidr();
        let mut ops = Vec::new();
        if let Some(other) = block
            .affinity()
            .and_then(|a| a.strip_prefix("host:"))
            .and_then(|n| n.parse::<NodeName>().ok())
        {
            let okey = keys::affinity(&other, &cidr);
            if let Some(kv) = self.store.get(&okey)? {
                ops.push(TxnOp::Delete {
                    key: okey,
                    expected: kv.mod_revision,
                });
            }
            Self::drop_node_list(c, &other, cidr.family());
        }
        let mut nb = block;
        nb.set_affinity(Some(host_affinity(node)));
        nb.set_strict_affinity(strict);
        let akey = keys::affinity(node, &cidr);
        // A leftover affinity of ours for this CIDR would make Create fail; replace it.
        match self.store.get(&akey)? {
            Some(kv) => ops.push(TxnOp::Update {
                key: akey,
                value: affinity_json(node, &cidr, AffinityState::Confirmed),
                expected: kv.mod_revision,
            }),
            None => ops.push(TxnOp::Create {
                key: akey,
                value: affinity_json(node, &cidr, AffinityState::Confirmed),
            }),
        }
        match self.commit_block(c, Box::new(nb), rev, None, 0, ops)? {
            Step::Done => {
                Self::add_node_block(c, node, cidr);
                Ok(true)
            }
            Step::Retry(_) => Ok(false),
        }
    }

    // ----- specific assignment -----------------------------------------------

    /// Assign one specific address to a handle on a node. Idempotent for the
    /// same handle. Claims the address's block for the node if it has none.
    pub fn assign_ip(
        &self,
        addr: IpAddr,
        handle: &HandleId,
        attributes: &Attributes,
        node: &NodeName,
        now: SystemTime,
    ) -> Result<AssignedAddr> {
        let mut c = self.lock();
        let snap = self.snapshot(&mut c, now)?;
        let pool = snap
            .pools
            .iter()
            .find(|p| p.spec.cidr.contains(&addr))
            .ok_or(Error::NotInPool { addr })?;
        if snap.reservations.iter().any(|r| r.contains(&addr)) {
            return Err(Error::AddressReserved { addr });
        }
        let cidr = pool.block_of(addr).ok_or(Error::NotInPool { addr })?;
        let ord = cidr.ordinal(addr).expect("address is in its block");
        let aff = host_affinity(node);
        // Answers not confirmed by a write (in use, already ours) are only
        // given after re-reading the block, never from the cache alone.
        let mut verified = false;
        for attempt in 0..=self.opts.max_retries {
            let Some((block, rev)) = self.load_block(&mut c, cidr)? else {
                self.try_claim(&mut c, node, cidr, snap.config.strict_affinity)?;
                continue;
            };
            if !verified
                && (block.allocation(ord).is_some() || block.affinity() != Some(aff.as_str()))
            {
                verified = true;
                c.blocks.remove(&cidr);
                continue;
            }
            let borrowed = block.affinity() != Some(aff.as_str());
            if borrowed
                && snap.config.strict_affinity
                && let Some(owner) = block.affinity()
            {
                return Err(Error::StrictAffinity {
                    addr,
                    block: cidr.net(),
                    owner: owner.into(),
                });
            }
            if let Some(a) = block.allocation(ord) {
                if a.handle.as_deref() == Some(WINDOWS_RESERVED_HANDLE) {
                    return Err(Error::AddressReserved { addr });
                }
                if a.handle.as_deref() == Some(handle.as_str()) {
                    return Ok(AssignedAddr {
                        addr,
                        block: cidr,
                        sequence: a.sequence.unwrap_or(0),
                        borrowed,
                    });
                }
                return Err(Error::AddressInUse {
                    addr,
                    handle: a.handle.as_deref().map(str::to_owned),
                });
            }
            let mut nb = block;
            nb.assign(
                ord,
                &Arc::from(handle.as_str()),
                Some(&Arc::new(attributes.clone())),
            )
            .map_err(|_| Error::AddressInUse { addr, handle: None })?;
            let seq = nb.sequence_number();
            match self.commit_block(&mut c, Box::new(nb), rev, Some(handle), 1, Vec::new())? {
                Step::Done => {
                    return Ok(AssignedAddr {
                        addr,
                        block: cidr,
                        sequence: seq,
                        borrowed,
                    });
                }
                Step::Retry(keys) if attempt == self.opts.max_retries => {
                    return Err(self.give_up(
                        format!("assign_ip {addr} for {handle}"),
                        attempt + 1,
                        keys,
                    ));
                }
                Step::Retry(_) => {}
            }
        }
        Err(self.give_up(
            format!("assign_ip {addr} for {handle}"),
            self.opts.max_retries + 1,
            Vec::new(),
        ))
    }

    /// Assign a node's tunnel address (handle `vxlan-tunnel-addr-<node>` etc.)
    /// from pools that allow `Tunnel`; returns the existing one if present.
    pub fn assign_tunnel_addr(
        &self,
        kind: crate::types::TunnelKind,
        node: &NodeName,
        node_labels: &BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<AssignedAddr> {
        use crate::types::TunnelKind;
        let handle = HandleId::tunnel(kind, node);
        let v6 = matches!(kind, TunnelKind::VxlanV6 | TunnelKind::WireguardV6);
        if let Some(a) = self
            .addresses_of(&handle)?
            .into_iter()
            .find(|a| a.addr.is_ipv6() == v6)
        {
            return Ok(a);
        }
        let req = AutoAssignRequest {
            handle,
            node: node.clone(),
            node_labels: node_labels.clone(),
            num_v4: u32::from(!v6),
            num_v6: u32::from(v6),
            attributes: [
                ("node".to_string(), node.to_string()),
                ("type".to_string(), format!("{kind:?}")),
            ]
            .into(),
            ip_use: AllowedUse::Tunnel,
            pools: Vec::new(),
        };
        let a = self.auto_assign(&req, now)?;
        Ok(a.v4
            .into_iter()
            .chain(a.v6)
            .next()
            .expect("one address assigned"))
    }

    /// The addresses currently held by a handle (read from the store).
    pub fn addresses_of(&self, handle: &HandleId) -> Result<Vec<AssignedAddr>> {
        let mut c = self.lock();
        c.handles.remove(handle);
        let Some((h, _)) = self.load_handle(&mut c, handle)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for cidr in h.block.keys() {
            let Ok(cidr) = cidr.parse::<BlockCidr>() else {
                continue;
            };
            c.blocks.remove(&cidr);
            if let Some((b, _)) = self.load_block(&mut c, cidr)? {
                for o in b.ordinals_of(handle.as_str()) {
                    let a = b.allocation(o).expect("allocated");
                    out.push(AssignedAddr {
                        addr: cidr.addr(o),
                        block: cidr,
                        sequence: a.sequence.unwrap_or(0),
                        borrowed: false,
                    });
                }
            }
        }
        Ok(out)
    }

    // ----- release -----------------------------------------------------------

    /// Release one address. With `handle` and/or `sequence`, the allocation
    /// must match them. Returns false if the address was already free.
    pub fn release_ip(
        &self,
        addr: IpAddr,
        handle: Option<&HandleId>,
        sequence: Option<u64>,
        now: SystemTime,
    ) -> Result<bool> {
        let mut c = self.lock();
        self.release_locked(&mut c, addr, handle, sequence, now)
    }

    fn block_for_addr(
        &self,
        c: &mut Cache,
        addr: IpAddr,
        now: SystemTime,
    ) -> Result<Option<BlockCidr>> {
        let snap = self.snapshot(c, now)?;
        if let Some(p) = snap.pools.iter().find(|p| p.spec.cidr.contains(&addr)) {
            return Ok(p.block_of(addr));
        }
        // The pool may be gone while its blocks remain.
        for kv in self.store.list(&keys::blocks_prefix(Family::of(addr)))? {
            let b = Block::from_json(&kv.key, &kv.value)?;
            if b.cidr().net().contains(&addr) {
                return Ok(Some(b.cidr()));
            }
        }
        Ok(None)
    }

    fn release_locked(
        &self,
        c: &mut Cache,
        addr: IpAddr,
        handle: Option<&HandleId>,
        sequence: Option<u64>,
        now: SystemTime,
    ) -> Result<bool> {
        let Some(cidr) = self.block_for_addr(c, addr, now)? else {
            return Ok(false);
        };
        let ord = cidr.ordinal(addr).expect("address is in its block");
        // Negative answers (already free, wrong handle or sequence) are only
        // given after re-reading the block, never from the cache alone.
        let mut verified = false;
        for attempt in 0..=self.opts.max_retries {
            let block = self.load_block(c, cidr)?;
            let problem = match &block {
                None => true,
                Some((b, _)) => match b.allocation(ord) {
                    None => true,
                    Some(a) => {
                        handle.is_some_and(|h| a.handle.as_deref() != Some(h.as_str()))
                            || sequence.is_some_and(|s| a.sequence != Some(s))
                    }
                },
            };
            if problem && !verified {
                verified = true;
                c.blocks.remove(&cidr);
                continue;
            }
            let Some((block, rev)) = block else {
                return Ok(false);
            };
            let Some(a) = block.allocation(ord) else {
                return Ok(false);
            };
            if let Some(h) = handle
                && a.handle.as_deref() != Some(h.as_str())
            {
                return Err(Error::HandleMismatch {
                    addr,
                    expected: h.to_string(),
                    actual: a.handle.as_deref().map(str::to_owned),
                });
            }
            if let Some(s) = sequence
                && a.sequence != Some(s)
            {
                return Err(Error::SequenceMismatch {
                    addr,
                    expected: s,
                    actual: a.sequence,
                });
            }
            let owner = a.handle.as_deref().and_then(|h| h.parse::<HandleId>().ok());
            let mut nb = block;
            nb.release(ord, unix_secs(now), self.opts.reuse_cooldown.as_secs());
            match self.commit_block(c, Box::new(nb), rev, owner.as_ref(), -1, Vec::new())? {
                Step::Done => return Ok(true),
                Step::Retry(keys) if attempt == self.opts.max_retries => {
                    return Err(self.give_up(format!("release_ip {addr}"), attempt + 1, keys));
                }
                Step::Retry(_) => {}
            }
        }
        unreachable!("loop returns on its last attempt")
    }

    /// Release every address of a handle and delete the handle. Idempotent:
    /// returns the addresses released by this call (empty if none).
    pub fn release_handle(&self, handle: &HandleId, now: SystemTime) -> Result<Vec<IpAddr>> {
        let mut c = self.lock();
        let mut released = Vec::new();
        let mut attempts = 0;
        // "No such handle" is only believed from the store, not the cache.
        if matches!(c.handles.get(handle), Some(None)) {
            c.handles.remove(handle);
        }
        loop {
            let Some((h, hrev)) = self.load_handle(&mut c, handle)? else {
                return Ok(released);
            };
            let Some(bstr) = h.block.keys().next().cloned() else {
                // An empty handle record: just delete it.
                match self.store.txn(&[TxnOp::Delete {
                    key: keys::handle(handle),
                    expected: hrev,
                }]) {
                    Ok(_) => {
                        Self::cache_handle(&mut c, handle, None);
                        return Ok(released);
                    }
                    Err(StoreError::TxnConflict { keys }) => {
                        c.handles.remove(handle);
                        attempts += 1;
                        if attempts > self.opts.max_retries {
                            return Err(self.give_up(
                                format!("release_handle {handle}"),
                                attempts,
                                keys,
                            ));
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let cidr: BlockCidr = bstr.parse()?;
            let step = match self.take_block(&mut c, cidr)? {
                None => {
                    // The block is gone: drop it from the handle.
                    let (op, newh) =
                        self.handle_op(&mut c, handle, &bstr, -i64::from(h.block[&bstr]))?;
                    match self.store.txn(&op.into_iter().collect::<Vec<_>>()) {
                        Ok(r) => {
                            Self::cache_handle(&mut c, handle, newh.map(|h| (h, r)));
                            Step::Done
                        }
                        Err(StoreError::TxnConflict { keys }) => {
                            c.handles.remove(handle);
                            Step::Retry(keys)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some((block, rev)) => {
                    let mut nb = block;
                    let ords = nb.release_handle(
                        handle.as_str(),
                        unix_secs(now),
                        self.opts.reuse_cooldown.as_secs(),
                    );
                    // Remove the whole count for this block from the handle,
                    // also when the block disagrees with it.
                    let delta = -i64::from(h.block[&bstr]);
                    let step =
                        self.commit_block(&mut c, nb, rev, Some(handle), delta, Vec::new())?;
                    if matches!(step, Step::Done) {
                        released.extend(ords.into_iter().map(|o| cidr.addr(o)));
                        if h.block.len() == 1 {
                            // That was the handle's last block: the same
                            // transaction deleted the handle.
                            return Ok(released);
                        }
                    }
                    step
                }
            };
            if let Step::Retry(keys) = step {
                attempts += 1;
                if attempts > self.opts.max_retries {
                    return Err(self.give_up(format!("release_handle {handle}"), attempts, keys));
                }
            }
        }
    }

    // ----- garbage collection --------------------------------------------------

    /// Release block affinities that are no longer needed, as an explicit step:
    /// empty blocks (never a node's last block of a family), pending
    /// affinities of crashed claims and affinities whose block is gone. A
    /// candidate is acted on only when a previous pass saw it unchanged (two
    /// observations), so a claim in progress is never disturbed.
    pub fn release_empty_affinities(&self) -> Result<GcReport> {
        let mut c = self.lock();
        let mut report = GcReport::default();
        let affs = self.store.list(keys::HOSTS_PREFIX)?;
        let mut blocks: HashMap<BlockCidr, (Block, Revision)> = HashMap::new();
        for fam in [Family::V4, Family::V6] {
            for kv in self.store.list(&keys::blocks_prefix(fam))? {
                let b = Block::from_json(&kv.key, &kv.value)?;
                blocks.insert(b.cidr(), (b, kv.mod_revision));
            }
        }
        // Confirmed, non-empty-or-kept blocks per (node, family).
        let mut per_node: HashMap<(NodeName, Family), u32> = HashMap::new();
        let mut parsed = Vec::new();
        for kv in &affs {
            let Some((node, cidr)) = keys::parse_affinity(&kv.key) else {
                continue;
            };
            let a: BlockAffinity = decode("BlockAffinity", &kv.key, &kv.value)?;
            if a.state == AffinityState::Confirmed {
                *per_node.entry((node.clone(), cidr.family())).or_default() += 1;
            }
            parsed.push((kv, node, cidr, a));
        }
        let mut seen_now: HashMap<String, (Revision, Option<Revision>)> = HashMap::new();
        for (kv, node, cidr, a) in parsed {
            let aff = host_affinity(&node);
            let block = blocks.get(&cidr);
            let block_is_ours = block.is_some_and(|(b, _)| b.affinity() == Some(aff.as_str()));
            let stale = !block_is_ours;
            let empty_release = a.state == AffinityState::Confirmed
                && block_is_ours
                && block.is_some_and(|(b, _)| b.is_empty())
                && per_node
                    .get(&(node.clone(), cidr.family()))
                    .copied()
                    .unwrap_or(0)
                    > 1;
            if !stale && !empty_release {
                continue;
            }
            let sig = (kv.mod_revision, block.map(|(_, r)| *r));
            if c.gc_seen.get(&kv.key) != Some(&sig) {
                seen_now.insert(kv.key.clone(), sig);
                report.pending_candidates += 1;
                continue;
            }
            let mut ops = vec![TxnOp::Delete {
                key: kv.key.clone(),
                expected: kv.mod_revision,
            }];
            if empty_release && let Some((_, brev)) = block {
                ops.push(TxnOp::Delete {
                    key: keys::block(&cidr),
                    expected: *brev,
                });
            }
            match self.store.txn(&ops) {
                Ok(_) => {
                    c.blocks.remove(&cidr);
                    Self::drop_node_list(&mut c, &node, cidr.family());
                    if empty_release {
                        *per_node
                            .get_mut(&(node.clone(), cidr.family()))
                            .expect("counted") -= 1;
                        report.released_blocks.push((node, cidr));
                    } else {
                        report.stale_affinities.push((node, cidr));
                    }
                }
                // Changed since: not a candidate any more this pass.
                Err(StoreError::TxnConflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        c.gc_seen = seen_now;
        Ok(report)
    }

    /// Release every allocation whose handle is not in `live` (leaks, e.g.
    /// from processes killed after allocating). Windows-reserved addresses are
    /// kept. Returns the released addresses.
    pub fn release_leaked(&self, live: &HashSet<HandleId>, now: SystemTime) -> Result<Vec<IpAddr>> {
        let report = crate::report::check(&self.store, Some(live))?;
        let mut handles: Vec<HandleId> = Vec::new();
        for l in &report.leaked {
            if let Ok(h) = l.handle.parse::<HandleId>()
                && !handles.contains(&h)
            {
                handles.push(h);
            }
        }
        for h in &report.orphan_handles {
            if let Ok(h) = h.parse::<HandleId>()
                && !handles.contains(&h)
            {
                handles.push(h);
            }
        }
        let mut out = Vec::new();
        for h in handles {
            out.extend(self.release_handle(&h, now)?);
        }
        for m in &report.allocations_without_handle {
            if !live.iter().any(|h| Some(h.as_str()) == m.handle.as_deref())
                && self.release_ip(m.addr, None, None, now)?
            {
                out.push(m.addr);
            }
        }
        self.refresh();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_handle_json_matches_serde() {
        let mut h = IpamHandle {
            handle_id: "k8s-pod-network.a\"b".into(),
            block: [
                ("10.0.0.0/26".to_string(), 2),
                ("10.0.0.64/26".to_string(), 1),
            ]
            .into(),
            deleted: false,
            extra: Default::default(),
        };
        h.extra
            .insert("future".into(), serde_json::json!({"x": [1, 2]}));
        let mine: serde_json::Value = serde_json::from_slice(&handle_json(&h)).expect("valid JSON");
        assert_eq!(mine, serde_json::to_value(&h).expect("serde"));
        let back: IpamHandle = serde_json::from_slice(&handle_json(&h)).expect("decodes");
        assert_eq!(back, h);
    }
}
