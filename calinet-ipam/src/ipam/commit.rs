//! The one write path and the one retry loop.
//!
//! Every allocation write is a compare-and-swap transaction sent by
//! [`Ipam::txn`]; a block change and the handle change that goes with it are
//! built and sent by [`Ipam::commit_block`]. Every operation that retries on
//! conflict does so through [`Ipam::retry`], which owns the policy: at most
//! [`IpamOptions::max_retries`](super::IpamOptions::max_retries) conflicting
//! attempts after the first, then [`Error::Conflict`] naming the operation and
//! the keys of the last conflict.

use super::Ipam;
use super::cache::Cache;
use crate::block::Block;
use crate::encoding;
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{Revision, Store, StoreError, TxnOp};
use crate::types::{HandleId, IpamHandle};

/// What one attempt of an operation came to.
#[derive(Debug)]
pub(super) enum Attempt<T> {
    /// Finished with this result.
    Done(T),
    /// A revision check failed on these keys (another writer got there
    /// first); counts against `max_retries`.
    Conflict(Vec<String>),
    /// Not finished, without a conflict: the step made progress (released one
    /// of a handle's blocks, claimed a block) or re-reads a stale view once
    /// before answering. Not counted; a step returns it only when it cannot
    /// do so forever.
    Again,
}

impl<T> Attempt<T> {
    /// The same outcome with the result mapped (conflicts and `Again` as they are).
    pub(super) fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Done(v) => Attempt::Done(f(v)),
            Attempt::Conflict(keys) => Attempt::Conflict(keys),
            Attempt::Again => Attempt::Again,
        }
    }
}

/// Conflicts in one operation after which a warning is logged: a few are
/// normal under contention, this many means nodes are fighting over a key.
const CONFLICT_WARN_AFTER: u32 = 10;

impl<S: Store> Ipam<S> {
    /// Run `step` until it is done, retrying conflicts as the options say.
    pub(super) fn retry<T>(
        &self,
        c: &mut Cache,
        operation: impl FnOnce() -> String,
        mut step: impl FnMut(&mut Cache) -> Result<Attempt<T>>,
    ) -> Result<T> {
        let mut conflicts = 0u32;
        loop {
            match step(c)? {
                Attempt::Done(v) => return Ok(v),
                Attempt::Again => {}
                Attempt::Conflict(keys) => {
                    conflicts += 1;
                    if conflicts == CONFLICT_WARN_AFTER {
                        tracing::warn!(
                            conflicts,
                            max_retries = self.opts.max_retries,
                            key = keys.first().map(String::as_str),
                            "IPAM write keeps conflicting; still retrying"
                        );
                    }
                    if conflicts > self.opts.max_retries {
                        tracing::error!(
                            conflicts,
                            key = keys.first().map(String::as_str),
                            "IPAM write gave up after conflicts"
                        );
                        return Err(Error::Conflict {
                            operation: operation(),
                            attempts: conflicts,
                            keys,
                        });
                    }
                }
            }
        }
    }

    /// Send one compare-and-swap transaction; a failed revision check is
    /// [`Attempt::Conflict`], not an error.
    pub(super) fn txn(&self, ops: &[TxnOp]) -> Result<Attempt<Revision>> {
        match self.store.txn(ops) {
            Ok(rev) => Ok(Attempt::Done(rev)),
            Err(StoreError::TxnConflict { keys }) => Ok(Attempt::Conflict(keys)),
            Err(e) => Err(e.into()),
        }
    }

    /// Handle op for a change of `delta` addresses of `id` in `cidr`, and the
    /// handle's state after it.
    pub(super) fn handle_op(
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
                let v = encoding::handle_value(&h);
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
                    let v = encoding::handle_value(&h);
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
    pub(super) fn commit_block(
        &self,
        c: &mut Cache,
        block: Box<Block>,
        rev: Revision,
        handle: Option<&HandleId>,
        delta: i64,
        mut extra: Vec<TxnOp>,
    ) -> Result<Attempt<()>> {
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
        let res = self.txn(&ops)?;
        if let TxnOp::Update { value, .. } = ops.swap_remove(0) {
            c.scratch = value;
        }
        match res {
            Attempt::Done(new_rev) => {
                c.blocks.insert(cidr, (block, new_rev));
                if let (Some(id), Some(h)) = (handle, new_handle) {
                    Self::cache_handle(c, id, h.map(|h| (h, new_rev)));
                }
                Ok(Attempt::Done(()))
            }
            Attempt::Conflict(keys) => {
                c.blocks.remove(&cidr);
                if let Some(id) = handle {
                    // Read the handle now: leaving it unknown would make the
                    // next attempt optimistically create it again.
                    c.handles.remove(id);
                    self.load_handle(c, id)?;
                }
                Ok(Attempt::Conflict(keys))
            }
            Attempt::Again => Ok(Attempt::Again),
        }
    }
}
