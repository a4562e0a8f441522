//! Encapsulation decisions for pod networks: for every remote block and borrowed
//! address, a direct, IPIP or VXLAN path; the local blackhole routes; the tunnel
//! devices a node needs (`tunl0`, `vxlan.calico`, `vxlan-v6.calico`) with their
//! VTEP neighbour and FDB entries; and the MTUs of devices and pods.
//!
//! **Owns:** pure decisions as values, computed from an [`Input`] (the local node,
//! the remote nodes, pools, blocks, borrowed addresses) by [`decide`]. No netlink,
//! no I/O, no clock.
//!
//! **Does not own:** applying them (that is `calinet-route`'s job).
//! WireGuard devices and peers are `calinet-wg`'s; only their MTU is here.
//!
//! # Example: the seed article's cluster under each mode
//!
//! Four nodes: `k8s-m`, `k8s-w1`, `k8s-w2` on 192.168.10.0/24 and `k8s-w0` on
//! 192.168.20.0/24, one /24 block each from pool 172.16.0.0/16, host MTU 9001.
//!
//! ```
//! use calinet_encap::{Block, EncapMode, Input, Node, Pool, Uplink, decide};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // (name, uplink address, gateway, block, tunnel address)
//! let seed = [
//!     ("k8s-m", "192.168.10.10/24", "192.168.10.1", "172.16.116.0/24", "172.16.116.0"),
//!     ("k8s-w1", "192.168.10.101/24", "192.168.10.1", "172.16.158.0/24", "172.16.158.0"),
//!     ("k8s-w2", "192.168.10.102/24", "192.168.10.1", "172.16.184.0/24", "172.16.184.0"),
//!     ("k8s-w0", "192.168.20.100/24", "192.168.20.1", "172.16.34.0/24", "172.16.34.0"),
//! ];
//! let input_for = |me: &str, ipip: EncapMode, vxlan: EncapMode| -> Result<Input, Box<dyn std::error::Error>> {
//!     let mut nodes = Vec::new();
//!     let mut local = None;
//!     let mut input_blocks = Vec::new();
//!     for (name, addr, gw, block, tunnel) in seed {
//!         let node = Node::new(name.parse()?)
//!             .with_address(addr.parse()?)
//!             .with_ipip_tunnel(tunnel.parse()?)
//!             .with_vxlan_tunnel(tunnel.parse()?);
//!         input_blocks.push(Block::new(block.parse()?, name.parse()?));
//!         if name == me {
//!             local = Some((node, Uplink::new("ens5".parse()?, 9001).with_gateway(gw.parse()?)));
//!         } else {
//!             nodes.push(node);
//!         }
//!     }
//!     let (local, uplink) = local.expect("me is one of the seed nodes");
//!     let mut input = Input::new(local, uplink);
//!     input.remotes = nodes;
//!     input.blocks = input_blocks;
//!     input.pools = vec![
//!         Pool::new("default-ipv4-ippool", "172.16.0.0/16".parse()?).ipip(ipip).vxlan(vxlan),
//!     ];
//!     Ok(input)
//! };
//!
//! use EncapMode::{Always, CrossSubnet, Never};
//! let modes = [
//!     ("IPIP Always (the article's start)", Always, Never),
//!     ("Never (direct)", Never, Never),
//!     ("IPIP CrossSubnet", CrossSubnet, Never),
//!     ("VXLAN Always", Never, Always),
//!     ("VXLAN CrossSubnet", Never, CrossSubnet),
//! ];
//! for (title, ipip, vxlan) in modes {
//!     println!("=== {title}: ipipMode {ipip}, vxlanMode {vxlan}");
//!     for (me, ..) in seed {
//!         print!("{}", decide(&input_for(me, ipip, vxlan)?)?);
//!     }
//! }
//!
//! // k8s-m under IPIP Always: the routes of the article's `ip route`.
//! let m = decide(&input_for("k8s-m", Always, Never)?)?;
//! let routes: Vec<String> = m.paths.iter().map(ToString::to_string).collect();
//! assert_eq!(routes, [
//!     "172.16.34.0/24 via 192.168.20.100 dev tunl0 onlink",
//!     "172.16.158.0/24 via 192.168.10.101 dev tunl0 onlink",
//!     "172.16.184.0/24 via 192.168.10.102 dev tunl0 onlink",
//! ]);
//! assert_eq!(m.blackholes, ["172.16.116.0/24".parse::<ipnet::IpNet>()?]);
//! assert_eq!((m.mtu.ipip, m.mtu.pod), (Some(8981), 8981)); // tunl0 and cali* MTU 8981
//!
//! // k8s-w1 after `ipipMode: Never`: same subnet direct, k8s-w0 via the router,
//! // as the article's `route -n` shows.
//! let w1 = decide(&input_for("k8s-w1", Never, Never)?)?;
//! assert_eq!(w1.path("172.16.116.0/24".parse()?).unwrap().to_string(),
//!            "172.16.116.0/24 via 192.168.10.10 dev ens5 onlink");
//! assert_eq!(w1.path("172.16.34.0/24".parse()?).unwrap().to_string(),
//!            "172.16.34.0/24 via 192.168.10.1 dev ens5");
//! assert!(w1.devices.is_empty());
//!
//! // CrossSubnet: only k8s-w0 is tunnelled.
//! let w1 = decide(&input_for("k8s-w1", Never, CrossSubnet)?)?;
//! assert_eq!(w1.path_counts(), (2, 0, 1)); // (direct, ipip, vxlan)
//! assert_eq!(w1.path("172.16.34.0/24".parse()?).unwrap().to_string(),
//!            "172.16.34.0/24 via 172.16.34.0 dev vxlan.calico onlink");
//! assert_eq!(w1.mtu.pod, 9001 - 50);
//! # Ok(())
//! # }
//! ```
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

mod decide;
mod error;
mod model;
mod mtu;
mod types;

#[cfg(feature = "proptest")]
pub mod proptest_support;

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
pub use types::{EncapMode, Family, IfName, MacAddr, NodeName};
