//! Block-affinity IP address management for pod networks, compatible with
//! Project Calico's IPAM model and its etcd v3 data layout.
//!
//! Owns: IP pools cut into blocks, block claims (affinities) by nodes, address
//! allocation from a per-block bitmap, handles, reservations, tunnel addresses,
//! the `ipam show` / `ipam check` reports, and the datastores that hold this
//! state ([`Store`]: [`MemStore`], [`SqliteStore`], etcd in a later feature).
//!
//! Does not own: evaluating node selectors (the caller supplies a
//! [`NodeSelectorEvaluator`]; calinet-policy provides one), routes for blocks
//! or borrowed addresses, or any other kernel state.
//!
//! # Example: a pool, two nodes, `ipam show`
//!
//! ```
//! use std::time::SystemTime;
//! use calinet_ipam::{AutoAssignRequest, Ipam, IpPool, IpPoolSpec, MemStore, report};
//!
//! # fn main() -> Result<(), calinet_ipam::Error> {
//! let ipam = Ipam::new(MemStore::new());
//! let mut spec = IpPoolSpec::with_cidr("172.16.0.0/16".parse().unwrap());
//! spec.block_size = Some(24);
//! ipam.put_pool(&IpPool::new("default-ipv4-ippool", spec))?;
//!
//! let now = SystemTime::now();
//! for (node, pods) in [("node-a", 3), ("node-b", 2)] {
//!     for i in 0..pods {
//!         let handle = format!("k8s-pod-network.{node}-pod{i}").parse()?;
//!         let got = ipam.auto_assign(&AutoAssignRequest::v4(handle, node.parse()?, 1), now)?;
//!         println!("{node} pod{i}: {}", got.v4[0].net());
//!     }
//! }
//!
//! let show = report::show(ipam.store())?;
//! print!("{}", show.render(true));
//! assert_eq!(show.pools[0].in_use, 5);
//! assert_eq!(show.blocks.len(), 2); // one /24 block per node
//! # Ok(()) }
//! ```
//!
//! `cargo run -p calinet-ipam --example ipam_show` does the same on an SQLite
//! file and also prints `--show-borrowed`, `--show-configuration` and `check`.
//!
//! # Design, and where it differs from Calico
//!
//! - **Types -> pure core -> I/O edge.** [`block::Block`] is the working form of
//!   Calico's [`IpamBlock`]: a `bitvec` allocation bitmap, per-address
//!   attributes (handle, owner attributes, sequence number) and the FIFO of free
//!   ordinals. The stored JSON is Calico's; [`block::Block::from_model`] checks
//!   it. Time is always passed in (`now`), never read.
//! - **Reuse order** is Calico's FIFO (`unallocated`): the address free the
//!   longest goes first. An optional cooldown ([`IpamOptions::reuse_cooldown`])
//!   keeps released addresses out of use for a while; the release times are a
//!   calinet extension field `calinetReleasedAt` on the block (absent when unused).
//! - **Every write is one compare-and-swap transaction** ([`Store::txn`], an
//!   etcd `Txn`): the block update and the handle create/update/delete commit
//!   together. Calico writes the handle and the block separately (a crash
//!   between them leaks); here a block and its handles never disagree.
//!   Conflicts are retried up to [`IpamOptions::max_retries`] (100, as Calico)
//!   and then returned as [`Error::Conflict`].
//! - **Round trips.** The allocator keeps, per node, the list of its confirmed
//!   affine blocks and each block with its revision, and the handles it
//!   wrote. The cache is never trusted for correctness: a write's revision
//!   check validates what it was based on, and a conflict drops and re-reads
//!   the entries involved. Answers that no write confirms ("address in use",
//!   "already free", "no such handle", "handle mismatch") are re-read from
//!   the store before they are given, and a cached handle *absence* is never
//!   kept. In the steady state (a node whose affine block has room) AutoAssign
//!   is **one** round trip (the transaction), and releasing a handle this
//!   allocator assigned is one more; [`CountingStore`] measures it (see
//!   BENCHMARKS.md). Calico needs at least four (read affinities, read block,
//!   write block, write handle). New handles are created optimistically (no
//!   read first); if the handle exists the transaction fails and the retry
//!   reads it. A handle's count for a block only changes in a transaction that
//!   also writes that block, so the block's revision check also covers
//!   handle reads.
//! - **Several allocators** (threads with their own [`Ipam`], processes on one
//!   [`SqliteStore`] file) may share a store; one [`Ipam`] serialises its own
//!   callers with a mutex around its cache.
//! - **Pools, IPAMConfiguration and IPReservations** are read together and
//!   cached for [`IpamOptions::config_ttl`] (10 s) or until [`Ipam::refresh`];
//!   Calico reads pools on every request. Writes through [`Ipam::put_pool`]
//!   etc. drop the cache at once.
//! - **Claims** are two-phase as in Calico (a `pending` affinity, then the
//!   block), but phase two creates the block and confirms the affinity in one
//!   transaction, so a crash leaves at most a pending affinity, which
//!   [`Ipam::release_empty_affinities`] removes. The walk over a pool's block
//!   CIDRs starts at an FNV-1a hash of the node name (the `fnv` crate: the
//!   same start in every process and version) and wraps around.
//! - **Reclaiming** another node's empty block needs this allocator to have
//!   seen the block empty at the same revision at least
//!   [`IpamOptions::reclaim_grace`] (60 s) earlier (Calico: claimed over a
//!   minute ago and unchanged since). A fresh process therefore waits one
//!   grace period before reclaiming.
//! - **Windows reserved addresses** (first three and last of each new block)
//!   are an [`IpamOptions::windows_reserved`] switch of the allocator; Calico
//!   decides it per node operating system.
//! - **AutoAssign is all or nothing**: when a family cannot be satisfied, the
//!   addresses already taken by the call are released and
//!   [`Error::Exhausted`] returned (Calico returns the partial result).
//! - `maxBlocksPerHost: 0` means the default cap of 20 blocks per node and
//!   family; `>0` requires `strictAffinity` (validated).
//! - **The datastore trait** ([`Store`]) is synchronous and shaped after etcd
//!   v3 (mod revisions, create = "create revision is 0", CAS on mod revision,
//!   multi-key `Txn`); [`conformance::run_all`] is the suite every backend
//!   must pass. Keys ([`keys`]) and values are what Calico's etcd v3 backend
//!   writes for them (libcalico-go's `AllocationBlock`, `BlockAffinity`
//!   `{"state","deleted":false}`, `IPAMHandle` `{"block","deleted"}`, the v1
//!   `IPAMConfig`, whole v3 `IPPool` / `IPReservation` objects); values in
//!   the shapes older calinet versions wrote (e.g. `"deleted":"false"`)
//!   still decode.
//! - **Testing helpers** (feature `proptest`): module `proptest_support` exports
//!   the op strategies, the reference-model runner and
//!   `proptest_support::check_invariants` for downstream stores.
//! - Garbage collection is explicit: [`Ipam::release_empty_affinities`] (two
//!   observations, never a node's last block) and [`Ipam::release_leaked`]
//!   (allocations of handles the caller says are dead).

#![forbid(unsafe_code)]
pub mod block;
pub mod conformance;
mod encoding;
mod error;
mod ipam;
pub mod keys;
#[cfg(feature = "proptest")]
pub mod proptest_support;
pub mod report;
mod selector;
pub mod store;
pub mod types;

pub use error::{Error, Result};
pub use ipam::{Assigned, AssignedAddr, AutoAssignRequest, GcReport, Ipam, IpamOptions, Snapshot};
pub use selector::{AllOnlySelector, NodeSelectorEvaluator};
pub use store::{
    CountingStore, KeyValue, MemStore, Revision, RoundTrips, Store, StoreError, TxnOp,
};
#[cfg(feature = "etcd")]
pub use store::{Credentials, EtcdConfig, EtcdError, EtcdStore, RetryPolicy, TlsFiles};
pub use store::{Listing, WatchError, WatchEvent, Watcher};
#[cfg(feature = "sqlite")]
pub use store::{SqliteOpenOptions, SqliteStore};
pub use types::{
    AffinityState, AllocationAttribute, AllowedUse, AssignmentMode, Attributes, BlockAffinity,
    BlockCidr, EncapMode, Family, HandleId, IpPool, IpPoolSpec, IpReservation, IpReservationSpec,
    IpamBlock, IpamConfigSpec, IpamConfiguration, IpamHandle, NodeName, ObjectMeta, TunnelKind,
    validate_pools,
};
