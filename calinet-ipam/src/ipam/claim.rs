//! Claiming blocks: the two-phase claim of a free block CIDR (a `pending`
//! affinity, then the block and the confirmed affinity in one transaction)
//! and the reclaim of another node's block seen empty for the grace period.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::cache::{Cache, PoolIndex};
use super::commit::Attempt;
use super::{Ipam, Snapshot, host_affinity};
use crate::block::Block;
use crate::encoding;
use crate::error::Result;
use crate::keys;
use crate::store::{Revision, Store, TxnOp};
use crate::types::{AffinityState, BlockCidr, Family, IpPool, NodeName};

/// Where a node's walk over a pool's block CIDRs starts: FNV-1a of the node
/// name. It must be the same in every process and every calinet version (a
/// node restarting, or another allocator claiming for it, walks from the same
/// place), so it is a fixed, specified function (the `fnv` crate, the same
/// hasher as the caches), not std's unspecified `DefaultHasher`.
fn node_hash(node: &NodeName) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(node.as_str().as_bytes());
    h.finish()
}

/// Block positions of a pool read one by one before the allocator lists the
/// family's block keys to build the pool's index: in a sparsely claimed pool
/// (the usual case: the walk starts at a hashed point) the first read finds a
/// free CIDR, so a one-shot process never lists.
const PROBES: usize = 8;

/// CIDRs found fully reserved that one claim may step over (as many as the
/// walk visited before the index existed), so a huge IPv6 pool covered by a
/// reservation ends the walk instead of stepping through 2^70 positions.
const MAX_STEPS: usize = 4096;

/// The position of `cidr` among `pool`'s blocks (the inverse of
/// `IpPool::block`), if it is one of them.
fn position(pool: &IpPool, cidr: &BlockCidr) -> Option<u128> {
    let net = cidr.net();
    let bs = pool.block_size();
    if net.prefix_len() != bs || !pool.spec.cidr.contains(&net.network()) {
        return None;
    }
    let (addr, base, bits) = match (net.network(), pool.spec.cidr.network()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b)), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return None,
    };
    Some((addr - base) >> (bits - bs))
}

impl<S: Store> Ipam<S> {
    /// Claim a block for `node`: walk each pool's blocks from a start point
    /// derived from the node name (wrapping around) and take the first CIDR
    /// with no block; failing that, reclaim another node's block that has been
    /// seen empty and unchanged for the grace period. Two-phase: a `pending`
    /// affinity first, then one transaction creating the block and confirming
    /// the affinity.
    ///
    /// # Finding a free CIDR
    ///
    /// The walk asks the pool's [`PoolIndex`] (kept in the cache) for the next
    /// position not known to be taken, so its cost does not grow with the
    /// number of claimed blocks. The index is in-process on purpose: a
    /// datastore-side "claimed" key per pool, written in every claim's
    /// transaction, would be one key every node's claim contends on (and
    /// Calico, which does not know it, would leave it wrong). The create of
    /// the block key stays the only arbiter; the index is a hint:
    ///
    /// - until it is built, up to [`PROBES`] positions are checked with a
    ///   point read of the block key (one-shot processes in a sparse pool
    ///   stop at the first);
    /// - then it is built from one listing of the family's block keys (the
    ///   CIDR is in the key; no block is decoded) and kept by this
    ///   allocator's claims and lost races;
    /// - a CIDR another allocator claimed since costs one failed claim, after
    ///   which it is marked; a CIDR freed since is found when the index says
    ///   the pool is full: it is then rebuilt once before reclaiming.
    pub(super) fn claim_block(
        &self,
        c: &mut Cache,
        snap: &Snapshot,
        pools: &[&IpPool],
        node: &NodeName,
        fam: Family,
        now: SystemTime,
    ) -> Result<Option<BlockCidr>> {
        let mut rebuilt = false;
        for pool in pools {
            let count = pool.block_count();
            let start = u128::from(node_hash(node)) % count;
            let mut pos = start;
            let mut probes = 0;
            let mut steps = 0;
            loop {
                let index = c.pool_index.entry(pool.spec.cidr).or_default();
                let Some(i) = index.next_free(pos, count) else {
                    if rebuilt {
                        break;
                    }
                    self.build_index(c, pools, fam)?;
                    rebuilt = true;
                    pos = start;
                    continue;
                };
                let complete = index.complete;
                pos = i;
                let cidr = pool.block(i);
                if Self::mask(c, snap, cidr).as_ref().is_some_and(|m| m.all()) {
                    Self::mark_taken(c, pool, i);
                    steps += 1;
                    if steps > MAX_STEPS {
                        break;
                    }
                    continue;
                }
                if !complete {
                    if probes == PROBES {
                        self.build_index(c, pools, fam)?;
                        rebuilt = true;
                        continue;
                    }
                    probes += 1;
                    // A point read is cheaper than a pending affinity that
                    // then fails to become a block.
                    if self.store.get(&keys::block(&cidr))?.is_some() {
                        Self::mark_taken(c, pool, i);
                        continue;
                    }
                }
                let won = self.try_claim(c, node, cidr)?;
                Self::mark_taken(c, pool, i);
                if won {
                    return Ok(Some(cidr));
                }
                steps += 1;
                if steps > MAX_STEPS {
                    break;
                }
            }
        }
        // Reclaim an empty block of another node: only when no CIDR is free,
        // so reading and decoding every block is acceptable here.
        let listed = self.store.list(&keys::blocks_prefix(fam))?;
        let mut existing: HashMap<BlockCidr, (Block, Revision)> = HashMap::new();
        for kv in &listed {
            let b = Block::from_json(&kv.key, &kv.value)?;
            existing.insert(b.cidr(), (b, kv.mod_revision));
        }
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
                if self.try_reclaim(c, node, block.clone(), *rev)? {
                    c.empty_seen.remove(cidr);
                    return Ok(Some(*cidr));
                }
            }
        }
        Ok(None)
    }

    fn mark_taken(c: &mut Cache, pool: &IpPool, i: u128) {
        c.pool_index.entry(pool.spec.cidr).or_default().insert(i);
    }

    /// (Re)build the index of every pool in `pools` from one listing of the
    /// family's block keys; only the keys are parsed.
    fn build_index(&self, c: &mut Cache, pools: &[&IpPool], fam: Family) -> Result<()> {
        let listed = self.store.list(&keys::blocks_prefix(fam))?;
        let mut fresh: Vec<PoolIndex> = pools.iter().map(|_| PoolIndex::default()).collect();
        for kv in &listed {
            let Some(cidr) = keys::parse_block(&kv.key) else {
                continue;
            };
            for (pool, index) in pools.iter().zip(&mut fresh) {
                if let Some(i) = position(pool, &cidr) {
                    index.insert(i);
                }
            }
        }
        for (pool, mut index) in pools.iter().zip(fresh) {
            index.complete = true;
            c.pool_index.insert(pool.spec.cidr, index);
        }
        Ok(())
    }

    /// Two-phase claim of a CIDR that has no block. Ok(false) = lost the race.
    pub(super) fn try_claim(
        &self,
        c: &mut Cache,
        node: &NodeName,
        cidr: BlockCidr,
    ) -> Result<bool> {
        let akey = keys::affinity(node, &cidr);
        let pending = TxnOp::Create {
            key: akey.clone(),
            value: encoding::affinity_value(AffinityState::Pending),
        };
        let arev = match self.txn(&[pending])? {
            Attempt::Done(r) => r,
            // The affinity exists.
            Attempt::Conflict(_) | Attempt::Again => match self.store.get(&akey)? {
                Some(kv) => {
                    let a = encoding::decode_affinity(&akey, node, cidr, &kv.value)?;
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
        };
        let block = Block::new(cidr, Some(host_affinity(node)), self.opts.windows_reserved);
        let ops = [
            TxnOp::Create {
                key: keys::block(&cidr),
                value: block.to_json(),
            },
            TxnOp::Update {
                key: akey.clone(),
                value: encoding::affinity_value(AffinityState::Confirmed),
                expected: arev,
            },
        ];
        match self.txn(&ops)? {
            Attempt::Done(rev) => {
                c.blocks.insert(cidr, (Box::new(block), rev));
                Self::add_node_block(c, node, cidr);
                Ok(true)
            }
            Attempt::Conflict(_) | Attempt::Again => {
                // Lost the race for the block: withdraw the pending affinity
                // if it is still ours as written (else GC removes it). Best
                // effort: a failure leaves what GC cleans up anyway.
                let _ = self.txn(&[TxnOp::Delete {
                    key: akey,
                    expected: arev,
                }]);
                Ok(false)
            }
        }
    }

    fn try_reclaim(
        &self,
        c: &mut Cache,
        node: &NodeName,
        block: Block,
        rev: Revision,
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
        let akey = keys::affinity(node, &cidr);
        // A leftover affinity of ours for this CIDR would make Create fail; replace it.
        match self.store.get(&akey)? {
            Some(kv) => ops.push(TxnOp::Update {
                key: akey,
                value: encoding::affinity_value(AffinityState::Confirmed),
                expected: kv.mod_revision,
            }),
            None => ops.push(TxnOp::Create {
                key: akey,
                value: encoding::affinity_value(AffinityState::Confirmed),
            }),
        }
        match self.commit_block(c, Box::new(nb), rev, None, 0, ops)? {
            Attempt::Done(()) => {
                Self::add_node_block(c, node, cidr);
                Ok(true)
            }
            Attempt::Conflict(_) | Attempt::Again => Ok(false),
        }
    }
}
