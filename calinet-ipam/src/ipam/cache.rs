//! What one allocator remembers between operations: the snapshot of pools
//! and configuration, blocks with their revisions, handles, each node's
//! confirmed affine blocks and reservation masks. Nothing here is trusted for
//! correctness: every write's revision check validates what it was based on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bitvec::prelude::*;
use ipnet::IpNet;

use super::{Ipam, Snapshot};
use crate::block::Block;
use crate::encoding;
use crate::error::Result;
use crate::keys;
use crate::store::{Revision, Store};
use crate::types::{AffinityState, Attributes, BlockCidr, Family, HandleId, IpamHandle, NodeName};

pub(super) type Mask = Option<Arc<BitVec<u64, Lsb0>>>;

#[derive(Debug, Default)]
pub(super) struct Cache {
    pub(super) snapshot: Option<Arc<Snapshot>>,
    /// Boxed: blocks move in and out of the cache on every write.
    pub(super) blocks: FastMap<BlockCidr, (Box<Block>, Revision)>,
    pub(super) node_blocks: FastMap<NodeName, NodeBlocks>,
    /// `{node: <name>}` attributes per node, shared by its allocations.
    pub(super) node_attrs: FastMap<NodeName, Arc<Attributes>>,
    /// `Some(None)` = known absent; missing = unknown.
    pub(super) handles: FastMap<HandleId, Option<(IpamHandle, Revision)>>,
    pub(super) masks: FastMap<BlockCidr, Mask>,
    /// Reused buffer for block JSON.
    pub(super) scratch: Vec<u8>,
    /// Other nodes' empty blocks seen: block revision and first time seen.
    pub(super) empty_seen: HashMap<BlockCidr, (Revision, SystemTime)>,
    /// GC candidates: affinity key -> (affinity revision, block revision).
    pub(super) gc_seen: HashMap<String, (Revision, Option<Revision>)>,
    /// Per pool CIDR: which of its block positions are known to be taken.
    pub(super) pool_index: FastMap<IpNet, PoolIndex>,
}

/// Which block positions (0 .. `IpPool::block_count()`) of one pool are
/// taken (a block exists, or every address is reserved), as disjoint,
/// non-adjacent inclusive intervals, so the next free position from any start
/// is found in O(log intervals) however many blocks are claimed, also in IPv6
/// pools with 2^70 positions. A hint only: the claim's create of the block key
/// decides, so a position wrongly thought free costs one failed claim (and is
/// then marked), and one wrongly thought taken is found by the rebuild the
/// claim does before it concludes the pool is full.
#[derive(Debug, Default)]
pub(super) struct PoolIndex {
    taken: BTreeMap<u128, u128>,
    /// Built from a listing of the family's block keys (else it holds only
    /// what this allocator learned by probing and claiming).
    pub(super) complete: bool,
}

impl PoolIndex {
    /// The interval holding `i`, if any.
    fn interval(&self, i: u128) -> Option<(u128, u128)> {
        self.taken
            .range(..=i)
            .next_back()
            .filter(|(_, e)| **e >= i)
            .map(|(s, e)| (*s, *e))
    }

    pub(super) fn is_taken(&self, i: u128) -> bool {
        self.interval(i).is_some()
    }

    /// Mark position `i` taken, merging it with its neighbours.
    pub(super) fn insert(&mut self, i: u128) {
        if self.is_taken(i) {
            return;
        }
        let (mut start, mut end) = (i, i);
        if let Some(prev) = i.checked_sub(1).and_then(|p| self.interval(p)) {
            self.taken.remove(&prev.0);
            start = prev.0;
        }
        if let Some(next_end) = i.checked_add(1).and_then(|n| self.taken.remove(&n)) {
            end = next_end;
        }
        self.taken.insert(start, end);
    }

    /// The first position at or after `from` (wrapping at `count`) that is not
    /// known to be taken; `None` when all `count` are.
    pub(super) fn next_free(&self, from: u128, count: u128) -> Option<u128> {
        let after = |i: u128| self.interval(i).map_or(i, |(_, e)| e.saturating_add(1));
        let i = after(from % count);
        if i < count {
            return Some(i);
        }
        // Wrapped: the intervals are coalesced, so the first position after the
        // one holding 0 is free unless it runs into the interval we came from.
        let i = after(0);
        (i < count && !self.is_taken(i)).then_some(i)
    }
}

pub(super) const HANDLE_CACHE_CAP: usize = 16_384;

/// The in-process caches hash with FNV-1a (the `fnv` crate): keys are short
/// (node names, block CIDRs, handle ids) and not chosen across a trust
/// boundary, and std's SipHash showed up in profiles of the steady state.
type FastMap<K, V> = HashMap<K, V, fnv::FnvBuildHasher>;

/// A node's confirmed affine blocks per family; `None` = not loaded.
#[derive(Debug, Default)]
pub(super) struct NodeBlocks {
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

impl<S: Store> Ipam<S> {
    pub(super) fn snapshot(&self, c: &mut Cache, now: SystemTime) -> Result<Arc<Snapshot>> {
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

    pub(super) fn mask(c: &mut Cache, snap: &Snapshot, cidr: BlockCidr) -> Mask {
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

    // ----- cached reads ----------------------------------------------------

    pub(super) fn load_block(
        &self,
        c: &mut Cache,
        cidr: BlockCidr,
    ) -> Result<Option<(Block, Revision)>> {
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
    pub(super) fn take_block(
        &self,
        c: &mut Cache,
        cidr: BlockCidr,
    ) -> Result<Option<(Box<Block>, Revision)>> {
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

    pub(super) fn load_handle(
        &self,
        c: &mut Cache,
        id: &HandleId,
    ) -> Result<Option<(IpamHandle, Revision)>> {
        if let Some(h) = c.handles.get(id) {
            return Ok(h.clone());
        }
        let key = keys::handle(id);
        let h = match self.store.get(&key)? {
            None => None,
            Some(kv) => Some((encoding::decode_handle(&key, &kv.value)?, kv.mod_revision)),
        };
        Self::cache_handle(c, id, h.clone());
        Ok(h)
    }

    pub(super) fn cache_handle(c: &mut Cache, id: &HandleId, h: Option<(IpamHandle, Revision)>) {
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
    pub(super) fn node_blocks(
        &self,
        c: &mut Cache,
        node: &NodeName,
        fam: Family,
    ) -> Result<Vec<BlockCidr>> {
        if let Some(v) = c
            .node_blocks
            .get_mut(node)
            .and_then(|n| n.slot(fam).as_ref())
        {
            return Ok(v.clone());
        }
        let mut v = Vec::new();
        for kv in self.store.list(&keys::affinities_prefix(node, fam))? {
            let Some((n, cidr)) = keys::parse_affinity(&kv.key) else {
                continue;
            };
            let a = encoding::decode_affinity(&kv.key, &n, cidr, &kv.value)?;
            if a.state == AffinityState::Confirmed && !a.deleted.0 {
                v.push(cidr);
            }
        }
        *c.node_blocks.entry(node.clone()).or_default().slot(fam) = Some(v.clone());
        Ok(v)
    }

    /// The `i`-th confirmed affine block of a node (loading the list if needed).
    pub(super) fn node_block_at(
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

    pub(super) fn forget_node(c: &mut Cache, node: &NodeName, fam: Family) {
        if let Some(v) = c.node_blocks.get_mut(node).and_then(|n| n.slot(fam).take()) {
            for b in v {
                c.blocks.remove(&b);
            }
        }
    }

    /// Record a new affine block, if the node's list is loaded (else the
    /// next load reads it from the store).
    pub(super) fn add_node_block(c: &mut Cache, node: &NodeName, cidr: BlockCidr) {
        if let Some(v) = c
            .node_blocks
            .get_mut(node)
            .and_then(|n| n.slot(cidr.family()).as_mut())
            && !v.contains(&cidr)
        {
            v.push(cidr);
        }
    }

    pub(super) fn drop_node_list(c: &mut Cache, node: &NodeName, fam: Family) {
        if let Some(n) = c.node_blocks.get_mut(node) {
            *n.slot(fam) = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PoolIndex;

    /// The interval index answers as a plain "taken" array does, for every
    /// start, as positions are taken in a scattered order.
    #[test]
    fn pool_index_matches_a_brute_force_model() {
        for count in [1u128, 2, 3, 7, 64, 100] {
            let mut index = PoolIndex::default();
            let mut model = vec![false; count as usize];
            // A fixed permutation-ish order: multiples of a stride coprime to most counts.
            for k in 0..count {
                let i = (k * 37 + 11) % count;
                index.insert(i);
                model[i as usize] = true;
                for from in 0..count {
                    let want = (0..count)
                        .map(|d| (from + d) % count)
                        .find(|&p| !model[p as usize]);
                    assert_eq!(
                        index.next_free(from, count),
                        want,
                        "count {count} from {from}"
                    );
                }
                for p in 0..count {
                    assert_eq!(index.is_taken(p), model[p as usize]);
                }
            }
            assert_eq!(index.next_free(0, count), None, "all {count} taken");
            assert!(index.taken.len() == 1, "coalesced into one interval");
        }
    }

    #[test]
    fn pool_index_handles_the_ends_of_a_huge_ipv6_pool() {
        let count = 1u128 << 74;
        let mut index = PoolIndex::default();
        index.insert(count - 1);
        index.insert(0);
        assert_eq!(index.next_free(count - 1, count), Some(1));
        assert_eq!(index.next_free(5, count), Some(5));
    }
}
