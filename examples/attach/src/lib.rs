//! One pod-attach core for calinet's programs: allocate a pod's addresses
//! (IPv4 and/or IPv6), plumb its veth, addresses and routes, undo what a
//! failed attach did, and release. The CNI plugin (`examples/cni`) runs it for
//! ADD and DEL; the node agent (`examples/agent`) runs it for the pods it
//! finds in its datastore.
//!
//! ```
//! use calinet_attach::{FamilyRequest, IpamAddresses, PoolRef, Request, fake::RecordingPlumber};
//! use calinet_ipam::MemStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut ipam = IpamAddresses::new(MemStore::new(), None);
//! let mut kernel = RecordingPlumber::default(); // KernelPlumber::new()? on a host
//! let v6: ipnet::IpNet = "fd00:10::/112".parse()?;
//! let req = Request::new(
//!     "k8s-pod-network.c0ffee".parse()?,
//!     "node-1".parse()?,
//!     calinet_route::IfName::calico_workload("default", "web"),
//!     Some("/run/netns/web".into()),
//!     1450,
//! )
//! .pod("default", "web")
//! .ipv4(Some(FamilyRequest::from_pools(vec![PoolRef::Cidr("172.16.0.0/24".parse()?)], None)))
//! .ipv6(Some(FamilyRequest::from_pools(vec![PoolRef::Cidr(v6)], Some(122))));
//!
//! let attached = calinet_attach::add(&mut ipam, &mut kernel, &req)?;
//! println!("{:?} plumbed as {:?}", attached.allocation.nets, attached.spec);
//! assert_eq!(attached.allocation.nets.len(), 2); // IPv4 first, then IPv6
//! assert!(v6.contains(&attached.allocation.nets[1].addr()));
//!
//! // A retry gets the same addresses; release is idempotent.
//! let again = calinet_attach::add(&mut ipam, &mut kernel, &req)?;
//! assert_eq!(again.allocation.nets, attached.allocation.nets);
//! calinet_attach::release(&mut ipam, Some(&mut kernel), &req.endpoint())?;
//! calinet_attach::release(&mut ipam, Some(&mut kernel), &req.endpoint())?;
//! # Ok(()) }
//! ```
//!
//! Shape: [`Request`] and the results are values; [`plan_allocation`] decides
//! (purely) whether a request reuses what its handle holds or assigns;
//! [`add`], [`allocate`] and [`release`] run the steps against two edge traits,
//! [`AddressManager`] and [`Plumber`]. [`IpamAddresses`] (calinet-ipam on a
//! store) and [`KernelPlumber`] (calinet-route's workload plumbing) are the
//! real edges; [`fake::RecordingPlumber`] records and injects faults for
//! unit tests.
//!
//! Ownership: a request's [`Request::owner`] (the CNI plugin's container id,
//! the agent's `calinet-agent:<handle>`) is recorded on the host veth (its
//! alias); an ADD refuses an interface recorded for another owner, and a
//! release with an owner removes only interfaces recording it. [`wep`] is
//! Calico's WorkloadEndpoint, which both callers write.
//!
//! Does not own: which pods exist (the caller's datastore view or the
//! container runtime), the CNI protocol, routes to other nodes, policy.

#![forbid(unsafe_code)]

mod core;
mod error;
pub mod fake;
mod ipam;
mod kernel;
mod request;
pub mod wep;

pub use crate::core::{
    AddressManager, AllocationPlan, Plumber, Released, add, allocate, plan_allocation, release,
};
pub use error::{Error, Result, Step, chain};
pub use ipam::{HostLock, IpamAddresses, pool_name};
pub use kernel::KernelPlumber;
pub use request::{
    Allocation, AssignParams, Attached, Endpoint, FamilyRequest, Plumbed, PodRef, PoolRef, Request,
};
