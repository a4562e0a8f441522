//! Proptest strategies, a reference model and the invariant checker, for
//! this crate's tests and for downstream stores (feature `proptest`).
//!
//! [`run_model`] drives two allocators (two processes with separate caches)
//! over one store with a random sequence of [`Op`]s and compares every
//! result with a simple reference model (a map address -> handle), checking
//! [`check_invariants`] after each step.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use crate::error::Error;
use crate::report::{check_dump, dump};
use crate::store::Store;
use crate::types::{HandleId, IpPool, IpPoolSpec, NodeName};
use crate::{AutoAssignRequest, Ipam, IpamOptions};

/// One step of a model test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// AutoAssign `n` IPv4 addresses for `handle` on `node` via allocator `via`.
    Assign {
        /// Allocator index (0 or 1).
        via: u8,
        /// Node index.
        node: u8,
        /// Handle index.
        handle: u8,
        /// Count.
        n: u8,
    },
    /// Assign the address at `index` (modulo pool size) of the first pool.
    AssignIp {
        /// Allocator index.
        via: u8,
        /// Node index.
        node: u8,
        /// Handle index.
        handle: u8,
        /// Address index.
        index: u16,
    },
    /// Release a handle.
    ReleaseHandle {
        /// Allocator index.
        via: u8,
        /// Handle index.
        handle: u8,
    },
    /// Release the address at `index` (modulo pool size) of the first pool.
    ReleaseIp {
        /// Allocator index.
        via: u8,
        /// Address index.
        index: u16,
    },
    /// One garbage-collection pass.
    Gc {
        /// Allocator index.
        via: u8,
    },
    /// Let time pass.
    Advance {
        /// Seconds.
        secs: u16,
    },
}

/// A random op over `nodes` nodes and `handles` handles.
pub fn op_strategy(nodes: u8, handles: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u8, 0..nodes, 0..handles, 1..4u8).prop_map(|(via, node, handle, n)| Op::Assign { via, node, handle, n }),
        1 => (0..2u8, 0..nodes, 0..handles, any::<u16>())
            .prop_map(|(via, node, handle, index)| Op::AssignIp { via, node, handle, index }),
        2 => (0..2u8, 0..handles).prop_map(|(via, handle)| Op::ReleaseHandle { via, handle }),
        1 => (0..2u8, any::<u16>()).prop_map(|(via, index)| Op::ReleaseIp { via, index }),
        1 => (0..2u8).prop_map(|via| Op::Gc { via }),
        1 => (1..90u16).prop_map(|secs| Op::Advance { secs }),
    ]
}

/// A sequence of up to `len` ops.
pub fn ops_strategy(nodes: u8, handles: u8, len: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op_strategy(nodes, handles), 1..len)
}

/// The pools the model test uses: 10.0.0.0/27 in /30 blocks and
/// 10.0.1.0/28 in /29 blocks (48 addresses, 10 blocks).
pub fn model_pools() -> Vec<IpPool> {
    let mk = |name: &str, cidr: &str, bs: u8| {
        let mut s = IpPoolSpec::with_cidr(cidr.parse().expect("static CIDR"));
        s.block_size = Some(bs);
        IpPool::new(name, s)
    };
    vec![
        mk("model-a", "10.0.0.0/27", 30),
        mk("model-b", "10.0.1.0/28", 29),
    ]
}

/// The invariants every IPAM store must hold: every document decodes, no
/// address twice, blocks agree with handles (bitmap vs handle counts),
/// affinities agree with blocks, free lists agree with bitmaps.
pub fn check_invariants<S: Store + ?Sized>(store: &S) -> Result<(), String> {
    let d = dump(store).map_err(|e| format!("reading the store: {e}"))?;
    let r = check_dump(&d, None);
    if !r.is_consistent() {
        return Err(format!("inconsistent store: {r:#?}"));
    }
    for (b, _) in &d.blocks {
        let free: BTreeSet<u32> = b.free_order().collect();
        if free.len() as u32 != b.free_count() || b.free_count() + b.allocated_count() != b.size() {
            return Err(format!("block {}: free list and bitmap disagree", b.cidr()));
        }
        if free.iter().any(|o| b.bitmap()[*o as usize]) {
            return Err(format!(
                "block {}: an allocated ordinal is in the free list",
                b.cidr()
            ));
        }
    }
    Ok(())
}

/// All allocations in the store: address -> handle.
pub fn allocations<S: Store + ?Sized>(store: &S) -> Result<BTreeMap<IpAddr, String>, String> {
    let d = dump(store).map_err(|e| e.to_string())?;
    let mut m = BTreeMap::new();
    for (b, _) in &d.blocks {
        for (o, a) in b.allocations() {
            m.insert(
                b.addr(o),
                a.handle.as_deref().unwrap_or_default().to_owned(),
            );
        }
    }
    Ok(m)
}

/// Run `ops` against two allocators sharing `store` (which must be empty)
/// and compare with the reference model. Non-strict affinity, so an
/// AutoAssign must succeed exactly when enough addresses are free.
pub fn run_model<S: Store + Clone>(store: S, ops: &[Op]) -> Result<(), String> {
    let opts = IpamOptions {
        max_retries: 100,
        ..Default::default()
    };
    let ipams = [
        Ipam::with_options(
            store.clone(),
            Box::new(crate::AllOnlySelector),
            opts.clone(),
        ),
        Ipam::with_options(store.clone(), Box::new(crate::AllOnlySelector), opts),
    ];
    let pools = model_pools();
    for p in &pools {
        ipams[0].put_pool(p).map_err(|e| e.to_string())?;
    }
    let capacity: usize = 48;
    let first_pool = pools[0].spec.cidr;
    let pool_addr = |i: u16| -> IpAddr {
        match first_pool.network() {
            IpAddr::V4(n) => IpAddr::V4((u32::from(n) + u32::from(i) % 32).into()),
            IpAddr::V6(_) => unreachable!("IPv4 model pool"),
        }
    };
    let node = |i: u8| -> NodeName { format!("node-{i}").parse().expect("static name") };
    let handle = |i: u8| -> HandleId { format!("h{i}").parse().expect("static name") };
    let mut model: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    for (step, op) in ops.iter().enumerate() {
        let ctx = |m: String| format!("step {step} {op:?}: {m}");
        match op {
            Op::Assign {
                via,
                node: n,
                handle: h,
                n: count,
            } => {
                let req = AutoAssignRequest::v4(handle(*h), node(*n), u32::from(*count));
                let free = capacity - model.len();
                match ipams[*via as usize % 2].auto_assign(&req, now) {
                    Ok(got) => {
                        if got.v4.len() != *count as usize {
                            return Err(ctx(format!("asked {count}, got {}", got.v4.len())));
                        }
                        let mut distinct = HashSet::new();
                        for a in &got.v4 {
                            if let Some(owner) = model.get(&a.addr) {
                                return Err(ctx(format!(
                                    "{} handed out again (owned by {owner})",
                                    a.addr
                                )));
                            }
                            if !distinct.insert(a.addr) {
                                return Err(ctx(format!(
                                    "{} handed out twice in one call",
                                    a.addr
                                )));
                            }
                        }
                        for a in got.v4 {
                            model.insert(a.addr, handle(*h).to_string());
                        }
                    }
                    Err(Error::Exhausted { .. }) if free < *count as usize => {}
                    Err(e) => return Err(ctx(format!("unexpected error with {free} free: {e:?}"))),
                }
            }
            Op::AssignIp {
                via,
                node: n,
                handle: h,
                index,
            } => {
                let addr = pool_addr(*index);
                let r = ipams[*via as usize % 2].assign_ip(
                    addr,
                    &handle(*h),
                    &BTreeMap::new(),
                    &node(*n),
                    now,
                );
                match (model.get(&addr), r) {
                    (None, Ok(_)) => {
                        model.insert(addr, handle(*h).to_string());
                    }
                    (Some(o), Ok(_)) if *o == handle(*h).as_str() => {}
                    (Some(o), Err(Error::AddressInUse { .. })) if *o != handle(*h).as_str() => {}
                    (m, r) => return Err(ctx(format!("model owner {m:?}, allocator said {r:?}"))),
                }
            }
            Op::ReleaseHandle { via, handle: h } => {
                let id = handle(*h);
                let got = ipams[*via as usize % 2]
                    .release_handle(&id, now)
                    .map_err(|e| ctx(e.to_string()))?;
                let got: BTreeSet<IpAddr> = got.into_iter().collect();
                let want: BTreeSet<IpAddr> = model
                    .iter()
                    .filter(|(_, o)| o.as_str() == id.as_str())
                    .map(|(a, _)| *a)
                    .collect();
                if got != want {
                    return Err(ctx(format!("released {got:?}, model expected {want:?}")));
                }
                model.retain(|_, o| o.as_str() != id.as_str());
            }
            Op::ReleaseIp { via, index } => {
                let addr = pool_addr(*index);
                let got = ipams[*via as usize % 2]
                    .release_ip(addr, None, None, now)
                    .map_err(|e| ctx(e.to_string()))?;
                if got != model.remove(&addr).is_some() {
                    return Err(ctx(format!("release said {got}, model disagrees")));
                }
            }
            Op::Gc { via } => {
                ipams[*via as usize % 2]
                    .release_empty_affinities()
                    .map_err(|e| ctx(e.to_string()))?;
            }
            Op::Advance { secs } => now += Duration::from_secs(u64::from(*secs)),
        }
        check_invariants(&store).map_err(ctx)?;
        let actual = allocations(&store).map_err(ctx)?;
        if actual != model {
            return Err(ctx(format!(
                "store allocations {actual:?} differ from model {model:?}"
            )));
        }
    }
    Ok(())
}

/// A time far from the epoch, for tests.
pub fn test_epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}
