//! Netlink programming for pod networks.
//!
//! Owns: workload veth pairs into a pod's network namespace, addresses, sysctls,
//! a route-table reconciler that only touches routes it owns, neighbour and FDB
//! entries, and tunnel links.
//!
//! Does not own: deciding which routes or tunnels a node needs (see
//! `calinet-encap`), address allocation (see `calinet-ipam`).

pub mod backend;
mod error;
pub mod kernel;
pub mod link;
pub mod netns;
pub mod nl;
pub mod plan;
#[cfg(feature = "proptest")]
pub mod proptest_support;
pub mod reconcile;
pub mod spec;
pub mod workload;

pub use backend::{Backend, EntryOp, MemoryBackend, NetlinkBackend, RouteOp};
pub use error::{Error, Result};
pub use kernel::{LinkIndex, LinkState, ObservedVxlan};
pub use netns::Netns;
pub use plan::{
    ObservedFdb, ObservedNeighbour, Plan, Replacement, plan_fdb, plan_neighbours, plan_routes,
};
pub use reconcile::{Pending, PendingReason, Reconciler, Report, ResyncTimer};
pub use spec::{
    CALICO_VNI, DEFAULT_WORKLOAD_PREFIX, FdbSpec, IfName, IpipSpec, LinkKind, LinkSpec, MAIN_TABLE,
    MacAddr, NeighbourSpec, Ownership, POD_GATEWAY_V4, RouteKey, RouteProtocol, RouteScope,
    RouteSpec, RouteType, TUNL0, VXLAN_PORT, VxlanSpec, WorkloadSpec,
};
