//! BGP route distribution through BIRD 2, as Calico does it.
//!
//! ```
//! use calinet_bgp::{plan, render, Input, NodeBgpSpec, NodeInfo, Pool};
//!
//! // Three nodes in a node-to-node mesh, one block each from 10.65.0.0/16.
//! let mut input = Input::new("n1");
//! for (name, ip) in [("n1", "198.51.100.10/24"), ("n2", "198.51.100.11/24"), ("n3", "198.51.100.12/24")] {
//!     input.nodes.push(NodeInfo::new(name, NodeBgpSpec::ipv4(ip.parse()?)));
//! }
//! input.pools.push(Pool::new("10.65.0.0/16".parse()?));
//! input.blocks.push("10.65.1.0/26".parse()?);
//!
//! let plan = plan(&input)?;
//! let names: Vec<_> = plan.sessions.iter().map(|s| s.name.as_str()).collect();
//! assert_eq!(names, ["Mesh_198_51_100_11", "Mesh_198_51_100_12"]);
//! assert_eq!(plan.sessions[0].peer_type.label(), "node-to-node mesh");
//!
//! let config = render(&plan);
//! assert!(config.contains("router id 198.51.100.10;"));
//! assert!(config.contains("route 10.65.1.0/26 blackhole;"));
//! assert!(config.contains("neighbor 198.51.100.11 as 64512;"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layers
//!
//! - **Resources** ([`BgpConfiguration`], [`BgpPeer`], [`NodeBgpSpec`]): Calico's
//!   `projectcalico.org/v3` types with Calico's field names and defaults, and
//!   validation whose errors name the resource and the field.
//! - **Plan** ([`plan()`]): pure. From every node (labels, `spec.bgp`), the
//!   BGPConfiguration, the BGPPeers, the IP pools and this node's blocks and
//!   borrowed addresses, it computes the sessions (mesh, global, node-specific,
//!   peer-selected, route reflector clients), what is exported, what is
//!   imported and what reaches the kernel, per family.
//! - **Render** ([`render()`]): the plan as BIRD 2 configuration, deterministic.
//! - **Control** ([`Controller`] over a [`Bird`] backend; [`BirdProcess`] runs
//!   the real `bird`): writes the configuration atomically, starts BIRD,
//!   applies changes with `configure` over BIRD's control socket (no restart),
//!   reads session state (`show protocols all`) and routes (`show route`), and
//!   restarts BIRD when it died (time passed in, with a backoff).
//!
//! # Who programs which route
//!
//! Every route in the kernel has one owner:
//!
//! - Remote blocks and borrowed addresses of pools **without encapsulation**
//!   (`ipipMode` and `vxlanMode` both `Never`) are programmed by BIRD's kernel
//!   protocol, as in Calico, and carry `proto bird`; so are the blackholes of
//!   this node's blocks in those pools. calinet-route must leave `proto bird`
//!   routes alone (they are not its own protocol).
//! - Routes of pools **with IPIP or VXLAN** are calinet-route's (with
//!   calinet-encap's decisions). BIRD still advertises and learns them, but its
//!   kernel filter rejects them. Calico marks IPIP routes for `tunl0` with
//!   `krt_tunnel`, an attribute of its BIRD fork that upstream BIRD 2 lacks,
//!   and leaves VXLAN to Felix; one owner per pool keeps that split without
//!   the fork.
//!
//! BIRD's kernel protocol has `persist` (routes stay in the kernel when BIRD
//! stops) and `graceful restart` (after a restart with `-R`, stale routes are
//! pruned only once the sessions re-sent theirs); BGP sessions negotiate
//! graceful restart, so peers keep this node's routes while its BIRD restarts.
//!
//! # Names and choices
//!
//! - Protocol names follow confd: `Mesh_<ip>`, `Global_<ip>`, `Node_<ip>` with
//!   `.`/`:` as `_`, and `_port_<n>` when the peer's port is not 179.
//! - A mesh pair has one active side: the node whose address is smaller as a
//!   string connects, the other is `passive on`, as Calico does.
//! - Passwords come from `password.secretKeyRef`, resolved by the caller into
//!   [`Input::secrets`] (e.g. with [`read_secrets`] from a directory laid out
//!   like a mounted Kubernetes secret, `<dir>/<secret>/<key>`).
//! - A BGPPeer whose address is already a mesh peer adds nothing (the mesh
//!   session stays); two BGPPeers giving the same address and port to one node
//!   are an error; peer-selected sessions that overlap are merged.
//! - Borrowed addresses are exported only when not inside one of this node's
//!   own blocks; blocks of pools with `disableBGPExport` are not advertised
//!   (their blackhole still reaches the kernel when BIRD owns the pool).
//!   A pool's `disabled` flag does not change routing: existing blocks keep
//!   their routes. Blocks and addresses outside every pool are neither
//!   advertised nor accepted.
//! - iBGP sessions use `gateway recursive`, as Calico's do: next hops resolve
//!   through interface routes (`protocol direct`, without `cali*`) and kernel
//!   routes the kernel protocol learns (`learn; import all`). None of those
//!   leave BIRD: the peer export filter only accepts this node's static
//!   routes and learned pool routes, the kernel filter only pool routes.
//! - Learned routes are re-advertised only inside pools without
//!   `disableBGPExport` (what a route reflector or a transit needs).
//! - Not modelled yet: `nodeMeshPassword`, `nodeMeshMaxRestartTime`,
//!   communities, `prefixAdvertisements`, BGPFilter, `ttlSecurity`,
//!   `numAllowedLocalASNumbers`, `reachableBy`, per-node BGPConfiguration
//!   (`node.<name>`) overrides; unknown fields are ignored when read.
//!
//! # Control socket
//!
//! The controller speaks BIRD's control protocol on the unix socket itself
//! ([`ControlSocket`]) rather than running `birdc`: no process per command,
//! and replies are read as typed codes. BIRD runs as `bird -f -c bird.conf
//! -s bird.ctl -P bird.pid` in the caller's network namespace (or one named
//! with [`BirdProcess::in_netns`]); after a crash it is started with `-R`.
//!
//! Measured here (`cargo bench -p calinet-bgp`, 2 shared cores): plan and
//! render of a 1,000-peer mesh 1.2-1.5 ms, `configure` of it over the socket
//! 15-33 ms without restarting BIRD (writing the file and `birdc configure`:
//! 17-41 ms); 1,000 new blocks reach a peer's kernel in about 130 ms, against
//! about 120 ms for two BIRDs with minimal hand-written configs.

#![forbid(unsafe_code)]

mod control;
mod controller;
mod error;
mod node;
mod plan;
mod render;
mod resources;
mod status;

pub use control::{BirdRoute, ControlSocket, ProtocolStatus, Reply};
pub use controller::{Applied, Bird, BirdProcess, Controller, read_secrets};
pub use error::{ControlError, Error};
pub use node::NodeBgpSpec;
pub use plan::{
    EncapMode, Family, Input, NodeInfo, PeerType, Plan, Pool, Routes, Session, plan, session_name,
};
pub use render::{announce_protocol, blocks_protocol, kernel_protocol, render};
pub use resources::{
    API_VERSION, AsNumber, BgpConfiguration, BgpConfigurationSpec, BgpPassword, BgpPeer,
    BgpPeerSpec, DEFAULT_AS, DEFAULT_PORT, GoDuration, ObjectMeta, Password, PeerAddress,
    SecretKeyRef, ServiceCidr, SourceAddress,
};
pub use status::{PeerStatus, node_status};
