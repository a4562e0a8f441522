//! Encapsulation decisions for pod networks: for every remote block and borrowed
//! address, a direct, IPIP or VXLAN path; the local blackhole routes; the tunnel
//! devices a node needs (`tunl0`, `vxlan.calico`, `vxlan-v6.calico`) with their
//! VTEP neighbour and FDB entries; and the MTUs of devices and pods.
//!
//! **Owns:** pure decisions as values, computed from an [`Input`] (the local node,
//! the remote nodes, pools, blocks, borrowed addresses) by [`decide`]. No netlink,
//! no I/O, no clock.
//!
//! **Does not own:** applying them. The `route` module turns the decisions into
//! calinet-types' spec types ([`RouteSpec`], [`LinkSpec`], ...), which
//! calinet-route's reconciler applies; this crate does not depend on it.
//! WireGuard devices and peers are `calinet-wg`'s; only their MTU is here.
//!
//! # Example: the seed article's cluster under each mode
//!
//! Four nodes: `k8s-m`, `k8s-w1`, `k8s-w2` on 192.168.10.0/24 and `k8s-w0` on
//! 192.168.20.0/24, one /24 block each from pool 172.16.0.0/16, host MTU 9001.
//!
//! (`examples/seed_modes.rs`, also run as this doctest:
//! `cargo run -p calinet-encap --example seed_modes` prints the listings.)
//!
#![doc = concat!("```\n", include_str!("../examples/seed_modes.rs"), "```\n")]
//!
//! `Decisions` prints as an `ip`-style listing, e.g. for `k8s-w1` under VXLAN
//! CrossSubnet:
//!
//! ```text
//! node k8s-w1
//!   route 172.16.34.0/24 via 172.16.34.0 dev vxlan.calico onlink
//!   route 172.16.116.0/24 via 192.168.10.10 dev ens5 onlink
//!   route blackhole 172.16.158.0/24
//!   route 172.16.184.0/24 via 192.168.10.102 dev ens5 onlink
//!   link  vxlan.calico vxlan id 4096 dstport 4789 dev ens5 local 192.168.10.101 mac 66:74:91:32:7c:04 nolearning mtu 8951 address 172.16.158.0/32
//!   neigh 172.16.34.0 lladdr 66:8d:da:b4:58:1a dev vxlan.calico nud permanent
//!   ...
//!   fdb   66:8d:da:b4:58:1a dev vxlan.calico dst 192.168.20.100 self permanent
//!   ...
//!   mtu   host 9001 vxlan.calico 8951 pod 8951
//! ```
//!
//! # Cargo features
//!
//! - `proptest`: the `proptest_support` module exports a whole-cluster strategy
//!   and the invariant checkers this crate's property tests use.
//!
//! # Rules
//!
//! - A pool's `ipipMode` / `vxlanMode` decides the path to each block in it:
//!   `Always` tunnels, `Never` routes directly, `CrossSubnet` routes directly when
//!   the local node's uplink CIDR (e.g. `192.168.10.10/24`) contains the remote
//!   node's address and tunnels otherwise.
//! - Direct: `via <node IP> dev <uplink> onlink`. IPIP: `via <node IP> dev tunl0
//!   onlink`. VXLAN: `via <remote tunnel IP> dev vxlan.calico onlink` plus a
//!   permanent neighbour (tunnel IP -> VTEP MAC) and a permanent FDB entry
//!   (VTEP MAC -> node IP). Local blocks get `blackhole <block>`. An address
//!   borrowed by a remote node gets its own /32 (/128) path to the borrower,
//!   more specific than the owner's block route or blackhole.
//! - Devices: `tunl0` when a pool enables IPIP; `vxlan.calico` /
//!   `vxlan-v6.calico` when a pool of that family enables VXLAN (VNI 4096, port
//!   4789, parent = uplink, local = node IP, learning off, VTEP MAC stated or
//!   `66:` + SHA-1(name)[..5], of `"<name>-v6"` for IPv6).
//! - MTU: each device is the host MTU minus its overhead (IPIP 20, VXLAN 50/70,
//!   WireGuard 60/80); pods get the host MTU minus the largest overhead in use.
//! - IPv4 and IPv6 are decided alike (IPIP is IPv4 only); VXLAN over IPv6 uses
//!   the node's IPv6 address as underlay.
//! - Impossible inputs are refused with an [`Error`] naming the pool, block,
//!   node or device and the rule: IPIP and VXLAN both on in one pool, IPIP on
//!   an IPv6 pool, overlapping pools or blocks, a remote node without the
//!   address its path needs, a local node without the tunnel address its
//!   device needs, unknown nodes, an MTU too small for the overhead.
//!
//! # Where calinet differs from Calico (deliberately)
//!
//! - A direct path to a node outside the uplink subnet goes via the uplink's
//!   gateway when one is given (what BIRD installs in the article, and the only
//!   route the kernel can use), otherwise `via <node IP> onlink`.
//! - A block in no pool is routed directly (no pool asks for a tunnel) instead
//!   of being left to whatever BGP would do.
//! - With `CrossSubnet`, a local node without an address of the family counts
//!   every remote as "another subnet" and tunnels.
//! - Errors are returned for the whole input; nothing is decided from a bad input.

#![forbid(unsafe_code)]
mod decide;
mod error;
mod model;
mod mtu;

#[cfg(feature = "proptest")]
pub mod proptest_support;
pub mod route;

pub use calinet_types::{
    EncapMode, Family, FdbSpec, IfName, LinkSpec, MacAddr, NeighbourSpec, NodeName, RouteProtocol,
    RouteSpec,
};
pub use decide::{
    Decisions, Device, FdbEntry, IPIP_DEVICE, IpipDevice, Neighbour, Path, PathKind,
    VXLAN_DEVICE_V4, VXLAN_DEVICE_V6, VXLAN_PORT, VXLAN_VNI, VxlanDevice, decide, same_subnet,
    vxlan_device_name,
};
pub use error::Error;
pub use model::{Block, Borrowed, Input, Node, Pool, Uplink, Wireguard};
pub use mtu::{
    EncapsInUse, IPIP_OVERHEAD, Mtus, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6, WIREGUARD_OVERHEAD_V4,
    WIREGUARD_OVERHEAD_V6,
};
