//! Claiming blocks: the two-phase claim of a free block CIDR (a `pending`
//! affinity, then the block and the confirmed affinity in one transaction)
//! and the reclaim of another node's block seen empty for the grace period.

use std::collections::HashMap;
use std::hash::Hasher;
use std::time::{Duration, SystemTime};

use super::cache::Cache;
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

impl<S: Store> Ipam<S> {
    /// Claim a block for `node`: walk each pool's blocks from a start point
    /// derived from the node name (wrapping around) and take the first CIDR
    /// with no block; failing that, reclaim another node's block that has been
    /// seen empty and unchanged for the grace period. Two-phase: a `pending`
    /// affinity first, then one transaction creating the block and confirming
    /// the affinity.
    pub(super) fn claim_block(
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
                if self.try_claim(c, node, cidr)? {
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
                if self.try_reclaim(c, node, block.clone(), *rev)? {
                    c.empty_seen.remove(cidr);
                    return Ok(Some(*cidr));
                }
            }
        }
        Ok(None)
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
