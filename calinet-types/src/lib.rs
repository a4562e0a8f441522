//! Shared vocabulary and spec types of calinet: the words every calinet crate
//! uses, defined once, below all of them.
//!
//! **Owns:** node and interface names ([`NodeName`], [`IfName`]), MAC addresses
//! ([`MacAddr`]), address families ([`Family`]), encapsulation modes
//! ([`EncapMode`]), Calico object metadata ([`ObjectMeta`]) and the Calico
//! [`Node`] resource, and the desired-state specs that calinet-encap,
//! calinet-wg and the CNI plugin produce and calinet-route programs
//! ([`RouteSpec`], [`NeighbourSpec`], [`FdbSpec`], [`LinkSpec`],
//! [`WorkloadSpec`] and their parts).
//!
//! **Does not own:** anything that does I/O. There is no netlink, no tokio and
//! no clock here: deciding which specs a node needs is calinet-encap's and
//! calinet-wg's, programming them is calinet-route's, and which routes a
//! reconciler owns is calinet-route's `Ownership`.
//!
//! Every type is validated once, at construction or deserialisation; a bad
//! value is an [`Error`] naming the input and the rule it broke. Resource types
//! serialise with Calico's field names and keep unknown fields.
//!
//! # Example: from a Calico Node to the route towards it
//!
//! ```
//! use calinet_types::{Family, IfName, MacAddr, Node, RouteProtocol, RouteSpec};
//!
//! let node: Node = serde_json::from_str(r#"{
//!     "apiVersion": "projectcalico.org/v3", "kind": "Node",
//!     "metadata": {"name": "k8s-w1"},
//!     "spec": {"bgp": {"ipv4Address": "198.51.100.101/24"}}
//! }"#)?;
//! let name = node.node_name()?;
//! let uplink: IfName = "eth0".parse()?;
//! let via = node.spec.address(Family::V4).expect("stated").addr();
//! let route = RouteSpec::via("172.16.158.0/24".parse().unwrap(), via)
//!     .device(uplink)
//!     .onlink()
//!     .protocol(RouteProtocol::CALICO);
//! route.validate()?;
//! assert_eq!(route.to_string(), "172.16.158.0/24 via 198.51.100.101 dev eth0 proto 80 onlink");
//! // Calico's VTEP MAC for the node, unless the Node states one.
//! let mac = node.spec.vtep_mac(Family::V4).unwrap_or_else(|| MacAddr::calico_vtep(&name, Family::V4));
//! assert_eq!(mac.to_string(), "66:74:91:32:7c:04");
//! // Bad input names itself and the rule.
//! let err = "vxlan.calico.long".parse::<IfName>().unwrap_err();
//! assert_eq!(err.to_string(), r#"invalid interface name "vxlan.calico.long": longer than 15 bytes"#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Cargo features
//!
//! - `proptest`: the `proptest_support` module exports strategies for
//!   interface names, destinations, protocols, scopes and routes.
//!
//! Serde is always on: these types exist to be read from and written to
//! Calico documents and datastores, and every calinet crate serialises them.

#![forbid(unsafe_code)]

mod error;
mod family;
mod mac;
mod meta;
mod names;
mod node;
#[cfg(feature = "proptest")]
pub mod proptest_support;
mod rule;
mod spec;

pub use error::{Error, Result};
pub use family::{EncapMode, Family};
pub use mac::MacAddr;
pub use meta::{Extra, ObjectMeta};
pub use names::{DEFAULT_WORKLOAD_PREFIX, IFNAME_MAX_LEN, IfName, NodeName};
pub use node::{CALICO_API_VERSION, Node, NodeBgp, NodeSpec, NodeStatus, NodeWireguard};
pub use rule::RuleSpec;
pub use spec::{
    CALICO_VNI, FdbSpec, IpipSpec, LinkKind, LinkSpec, MAIN_TABLE, NeighbourSpec, POD_GATEWAY_V4,
    RouteKey, RouteProtocol, RouteScope, RouteSpec, RouteType, TUNL0, VXLAN_PORT, VxlanSpec,
    WorkloadSpec,
};
