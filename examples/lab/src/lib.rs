//! `calinet-lab`: the seed article's cluster in network namespaces (four
//! nodes on two subnets, a router, an outside host, built with the test lab),
//! one `calinet-agent run` process per node sharing one datastore (a SQLite
//! file, or etcd in the router namespace), a pod per node plus a second on
//! k8s-w1 (the seed's same-node pair), an underlay MTU of choice
//! (`--underlay-mtu 9001` for the seed's numbers), and what a user wants to
//! see: the agent's `ipam show`, `get ippool`, `get node`, `get
//! workloadendpoint` and `node status` tables, each node's links with their
//! MTUs and its routes, and a connectivity matrix whose paths are *observed*
//! with `tcpdump` on the sending node's uplink (for the same-node pair on the
//! pods' `cali` interfaces), not assumed. Mode switches go through the
//! agent's `patch`, as the seed uses `calicoctl patch`.
//!
//! In the modes without VXLAN every agent runs BIRD and the blocks travel
//! over BGP; the router runs BIRD too and learns them only when the nodes
//! peer with it (`--peer-router`), so `direct` without it shows the
//! article's failure across subnets ([`bgp`]).
//!
//! `calinet-lab up` leaves the cluster running (owned by a detached
//! `calinet-lab hold`) and records it in a state file
//! (`/run/calinet-lab/state.json`) so that `mode`, `status` and `down` (other
//! processes) find the namespaces and pids; `calinet-lab run` builds, prints
//! and tears down in one go.
//!
//! The lab drives the agent as a user would: the `calinet-agent` binary runs
//! on every node; the tables come from the agent's library (the functions its
//! own commands call), reading the same datastore.
//!
//! ```
//! use calinet_lab::probe::{ObservedPath, Probe};
//!
//! let probe = |to: &str, addr: &str, path| Probe {
//!     from: "web-k8s-m".into(),
//!     from_node: "k8s-m".into(),
//!     to: to.into(),
//!     addr: addr.parse().unwrap(),
//!     reachable: true,
//!     path,
//! };
//! let matrix = calinet_lab::report::render_matrix(&[
//!     probe("web-k8s-w1", "172.16.198.1", ObservedPath::Vxlan),
//!     probe("outside", "192.0.2.100", ObservedPath::Masqueraded),
//! ]);
//! assert_eq!(matrix.lines().nth(1), Some("web-k8s-m  ok VXLAN    ok direct+SNAT"));
//! ```
//!
//! Layout:
//!
//! - [`cli`]: the commands.
//! - [`bench`](mod@bench): the route latency benchmark (hidden `bench-route-latency`).
//! - [`bgp`]: the router's BIRD, router peering, the route reflector setup.
//! - [`state`]: modes and the state file.
//! - [`cluster`]: building, converging, switching modes, tearing down;
//!   [`cluster::RunningLab`].
//! - [`supervise`]: the agent and etcd processes (detached, in namespaces).
//! - [`store`]: the datastore as the lab process reaches it.
//! - [`probe`]: pings with captures, and the capture's path classification.
//! - [`report`]: the printout and the matrix.

#![forbid(unsafe_code)]

pub mod bench;
pub mod bgp;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod probe;
pub mod prometheus;
pub mod report;
pub mod state;
pub mod store;
pub mod supervise;

pub use error::{Error, Result};
