//! Netlink programming for pod networks: workload veths, and a reconciler that
//! keeps routes, neighbours and FDB entries exactly as desired without disturbing
//! anything it does not own.
//!
//! **Owns:** route ownership ([`Ownership`]); the pure planner ([`plan_routes`],
//! [`plan_neighbours`], [`plan_fdb`]); the netlink edge ([`NetlinkBackend`],
//! [`nl::Conn`]) and the [`Reconciler`] over any [`Backend`]; routing rules
//! ([`RuleSpec`], reconciled by [`reconcile_rules`], which owns the rules tagged
//! with its protocol); workload plumbing ([`workload`]); tunnel links, addresses
//! and host-MTU detection ([`link`]).
//!
//! **Does not own:** the spec types it programs ([`RouteSpec`],
//! [`NeighbourSpec`], [`FdbSpec`], [`LinkSpec`], [`WorkloadSpec`], [`IfName`]):
//! they are `calinet-types`', re-exported here, so that crates which only
//! produce specs need no netlink stack. Nor deciding which routes, tunnels,
//! neighbours or FDB entries a node needs (`calinet-encap`, `calinet-wg`),
//! address allocation (`calinet-ipam`) or policy rules (`calinet-policy`).
//!
//! Every kernel operation names the namespace it works in: a [`Netns`] (an open
//! `/run/netns/NAME` or `/proc/PID/ns/net`). Sockets are created by the calling
//! thread while [`Netns::run`] has it inside that namespace, and stay bound to
//! it; the thread is back in its own namespace before `run` returns.
//!
//! # Example: plan, apply, converge (runs without root)
//!
//! ```
//! use calinet_route::{plan_routes, MemoryBackend, Ownership, Reconciler, RouteProtocol, RouteSpec};
//!
//! // What the node should have: a local block blackholed, a remote block via its node.
//! let eth0 = "eth0".parse().unwrap();
//! let desired = vec![
//!     RouteSpec::blackhole("172.16.101.0/26".parse().unwrap()),
//!     RouteSpec::via("172.16.158.0/26".parse().unwrap(), "198.51.100.11".parse().unwrap())
//!         .device(eth0)
//!         .onlink(),
//! ];
//! // What the kernel has: a stale route of ours, and BIRD's route (not ours).
//! let observed = vec![
//!     RouteSpec::blackhole("172.16.9.0/26".parse().unwrap()),
//!     RouteSpec::blackhole("10.0.0.0/8".parse().unwrap()).protocol(RouteProtocol::BIRD),
//! ];
//! let own = Ownership::default(); // protocol 80, main table
//! let plan = plan_routes(&desired, &observed, &own).unwrap();
//! assert_eq!(plan.adds.len(), 2);
//! assert_eq!(plan.deletions, vec![observed[0].clone()]); // BIRD's route is untouched
//! print!("{plan}");
//!
//! // The same through the reconciler, on the in-memory kernel used by unit tests.
//! tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//!     let mut kernel = MemoryBackend::new();
//!     kernel.add_link("eth0", true);
//!     kernel.routes = observed.clone();
//!     let mut rec = Reconciler::new(kernel, own);
//!     assert_eq!(rec.reconcile_routes(&desired).await.unwrap().writes, 3);
//!     assert_eq!(rec.reconcile_routes(&desired).await.unwrap().writes, 0); // converged
//! });
//! ```
//!
//! # Example: a pod and the node's routes in real namespaces (needs root)
//!
//! ```no_run
//! # async fn demo() -> calinet_route::Result<()> {
//! use calinet_route::nl::Conn;
//! use calinet_route::workload::setup_workload;
//! use calinet_route::*;
//!
//! let node = Netns::named("node1")?;
//! let mut host = Conn::open(&node).await?;
//! let pod = WorkloadSpec::new(IfName::calico_workload("default", "nginx"), "/run/netns/pod1", 1440)
//!     .ipv4("172.16.101.5".parse().unwrap())
//!     .ipv6("fd00:10:244::5".parse().unwrap());
//! setup_workload(&mut host, &pod, RouteProtocol::CALICO).await?;
//!
//! let mut rec = Reconciler::new(
//!     NetlinkBackend::open(&node).await?,
//!     Ownership::default().interface_prefix("cali"),
//! );
//! let mut desired = pod.host_routes(RouteProtocol::CALICO);
//! desired.push(RouteSpec::blackhole("172.16.101.0/26".parse().unwrap()));
//! let report = rec.reconcile_routes(&desired).await?.into_result()?;
//! println!("{} writes, {} pending", report.writes, report.pending.len());
//! # Ok(()) }
//! ```
//!
//! # How it behaves
//!
//! - **Ownership** ([`Ownership`]): a route in a managed table is owned when its
//!   protocol is the configured one (default 80, Calico's) or its device starts with
//!   a configured prefix (except `proto kernel` routes and IPv6 link-local ones).
//!   Foreign routes are never deleted or replaced; when one shares a key with a
//!   desired route, ours is added beside it and later deleted exactly (by
//!   protocol, type, device and gateway), never by key alone.
//! - **Every owned attribute is compared** (device, gateway, onlink, scope, type,
//!   protocol, MTU, source, metric, TOS, table), so `ip route change` by hand is
//!   repaired by the next reconcile. Desired routes are normalised like the kernel
//!   stores them (IPv6 metric 0 is 1024, IPv6 routes have no scope, IPv6
//!   blackholes report `dev lo`).
//! - **Bad input** (an invalid route, a desired route the ownership would not own,
//!   two desired routes with one key) is rejected before anything is written.
//! - **Dumps** are consistent snapshots: a dump flagged `NLM_F_DUMP_INTR` is
//!   discarded and redone; a socket overrun (`ENOBUFS`) replaces the socket and
//!   redumps.
//! - **Writes** are pipelined: several hundred requests per `send`, without
//!   per-request acks (the kernel answers only failures), closed by one
//!   acknowledged `NLMSG_NOOP`. Each failure is an [`Error::Netlink`] with the errno
//!   and the request written like the `ip` command.
//! - **Pending**: routes whose device is missing or down are held back
//!   ([`Report::pending`]) and retried by [`Reconciler::retry_pending`], e.g. when
//!   [`nl::LinkEvents`] reports a link change; full resyncs follow the caller's clock
//!   ([`ResyncTimer`], Calico's 90 s).
//!
//! # Where calinet differs from Calico
//!
//! - Workload setup on an existing, already correct workload writes nothing
//!   (Calico's CNI ADD always deletes and rebuilds); an existing workload that
//!   differs is rebuilt as in Calico, and [`workload::check_workload`] says why;
//!   an MTU-only difference is changed in place on the host side (the pod side
//!   keeps its MTU until it is re-created, as Calico leaves running pods alone).
//! - Host routes to workloads get the protocol the caller chooses (Calico's CNI
//!   plugin uses the kernel default, and Felix later takes them over by interface).
//! - `tunl0` is the kernel's fallback IPIP device: a parameter mismatch there is an
//!   error rather than a recreate. (This machine's kernel has no IPIP; that test is
//!   reported as skipped.)

#![forbid(unsafe_code)]
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
pub mod rule;
pub mod spec;
pub mod workload;

pub use backend::{Backend, EntryOp, MemoryBackend, NetlinkBackend, RouteOp};
pub use calinet_types::Family;
pub use error::{Error, Result};
pub use kernel::{LinkIndex, LinkState, ObservedVxlan};
pub use netns::Netns;
pub use plan::{
    ObservedFdb, ObservedNeighbour, Plan, Replacement, plan_fdb, plan_neighbours, plan_routes,
};
pub use reconcile::{Pending, PendingReason, Reconciler, Report, ResyncTimer};
pub use rule::{RulePlan, RuleReport, RuleSpec, plan_rules, reconcile_rules};
pub use spec::{
    CALICO_VNI, DEFAULT_WORKLOAD_PREFIX, FdbSpec, IfName, IpipSpec, LinkKind, LinkSpec, MAIN_TABLE,
    MacAddr, NeighbourSpec, Ownership, POD_GATEWAY_V4, RouteKey, RouteProtocol, RouteScope,
    RouteSpec, RouteType, TUNL0, VXLAN_PORT, VxlanSpec, WorkloadSpec,
};
