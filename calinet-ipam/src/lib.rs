//! Block-affinity IP address management for pod networks, compatible with
//! Project Calico's IPAM model.
//!
//! Owns: IP pools cut into blocks, block claims (affinities) by nodes, address
//! allocation from a per-block bitmap, handles, reservations, tunnel addresses,
//! and the datastores that hold this state.
//!
//! Does not own: evaluating node selectors (the caller supplies an evaluator),
//! routes or any other kernel state.

pub mod conformance;
mod error;
pub mod keys;
mod selector;
pub mod store;
pub mod types;

pub use error::{Error, Result};
pub use selector::{AllOnlySelector, NodeSelectorEvaluator};
#[cfg(feature = "sqlite")]
pub use store::SqliteStore;
pub use store::{
    CountingStore, KeyValue, MemStore, Revision, RoundTrips, Store, StoreError, TxnOp,
};
#[cfg(feature = "etcd")]
pub use store::{EtcdConfig, EtcdError, EtcdStore, RetryPolicy, TlsFiles};
pub use store::{Listing, WatchError, WatchEvent, Watcher};
pub use types::{
    AffinityState, AllocationAttribute, AllowedUse, AssignmentMode, Attributes, BlockAffinity,
    BlockCidr, EncapMode, Family, HandleId, IpPool, IpPoolSpec, IpReservation, IpReservationSpec,
    IpamBlock, IpamConfigSpec, IpamConfiguration, IpamHandle, NodeName, ObjectMeta, TunnelKind,
    validate_pools,
};
