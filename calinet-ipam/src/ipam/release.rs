//! Releasing addresses (one address, all of a handle) and garbage
//! collection (empty or stale affinities, leaked allocations).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::SystemTime;

use super::cache::Cache;
use super::commit::Attempt;
use super::{Ipam, host_affinity, unix_secs};
use crate::block::Block;
use crate::encoding;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{Revision, Store, TxnOp};
use crate::types::{AffinityState, BlockCidr, Family, HandleId, NodeName};

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

impl<S: Store> Ipam<S> {
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

    pub(super) fn release_locked(
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
        self.retry(
            c,
            || format!("release_ip {addr}"),
            |c| {
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
                    return Ok(Attempt::Again);
                }
                let Some((block, rev)) = block else {
                    return Ok(Attempt::Done(false));
                };
                let Some(a) = block.allocation(ord) else {
                    return Ok(Attempt::Done(false));
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
                let res =
                    self.commit_block(c, Box::new(nb), rev, owner.as_ref(), -1, Vec::new())?;
                Ok(res.map(|()| true))
            },
        )
    }

    /// Release every address of a handle and delete the handle. Idempotent:
    /// returns the addresses released by this call (empty if none).
    pub fn release_handle(&self, handle: &HandleId, now: SystemTime) -> Result<Vec<IpAddr>> {
        let mut c = self.lock();
        let mut released = Vec::new();
        // "No such handle" is only believed from the store, not the cache.
        if matches!(c.handles.get(handle), Some(None)) {
            c.handles.remove(handle);
        }
        // Each attempt releases the handle's addresses in one of its blocks.
        self.retry(
            &mut c,
            || format!("release_handle {handle}"),
            |c| {
                let Some((h, hrev)) = self.load_handle(c, handle)? else {
                    return Ok(Attempt::Done(std::mem::take(&mut released)));
                };
                let Some(bstr) = h.block.keys().next().cloned() else {
                    // An empty handle record: just delete it.
                    let op = TxnOp::Delete {
                        key: keys::handle(handle),
                        expected: hrev,
                    };
                    return Ok(match self.txn(&[op])? {
                        Attempt::Done(_) => {
                            Self::cache_handle(c, handle, None);
                            Attempt::Done(std::mem::take(&mut released))
                        }
                        other => {
                            c.handles.remove(handle);
                            other.map(|_| Vec::new())
                        }
                    });
                };
                let cidr: BlockCidr = bstr.parse()?;
                // Remove the whole count for this block from the handle, also
                // when the block disagrees with it.
                let delta = -i64::from(h.block[&bstr]);
                let Some((mut block, rev)) = self.take_block(c, cidr)? else {
                    // The block is gone: drop it from the handle.
                    let (op, newh) = self.handle_op(c, handle, &bstr, delta)?;
                    return Ok(match self.txn(&op.into_iter().collect::<Vec<_>>())? {
                        Attempt::Done(r) => {
                            Self::cache_handle(c, handle, newh.map(|h| (h, r)));
                            Attempt::Again
                        }
                        other => {
                            c.handles.remove(handle);
                            other.map(|_| Vec::new())
                        }
                    });
                };
                let ords = block.release_handle(
                    handle.as_str(),
                    unix_secs(now),
                    self.opts.reuse_cooldown.as_secs(),
                );
                Ok(
                    match self.commit_block(c, block, rev, Some(handle), delta, Vec::new())? {
                        Attempt::Done(()) => {
                            released.extend(ords.into_iter().map(|o| cidr.addr(o)));
                            if h.block.len() == 1 {
                                // That was the handle's last block: the same
                                // transaction deleted the handle.
                                Attempt::Done(std::mem::take(&mut released))
                            } else {
                                Attempt::Again
                            }
                        }
                        other => other.map(|()| Vec::new()),
                    },
                )
            },
        )
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
            let a = encoding::decode_affinity(&kv.key, &node, cidr, &kv.value)?;
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
            match self.txn(&ops)? {
                Attempt::Done(_) => {
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
                Attempt::Conflict(_) | Attempt::Again => {}
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
