//! Inputs: nodes, pools, blocks and borrowed addresses, with Calico's field names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use calinet_types::{EncapMode, Family, IfName, MacAddr, NodeName, NodeSpec};

/// A node as the decisions see it (local or remote): its validated name and
/// its Calico `Node` spec ([`NodeSpec`], Calico's field names:
/// `bgp.ipv4Address`, `ipv4VXLANTunnelAddr`, `vxlanTunnelMACAddr`, ...),
/// built from the resource with [`Node::from_calico`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node name.
    pub name: NodeName,
    /// The node's Calico spec (addresses, tunnel addresses, stated VTEP MACs).
    #[serde(flatten)]
    pub spec: NodeSpec,
}

impl Node {
    /// A node with a name and no addresses yet.
    #[must_use]
    pub fn new(name: NodeName) -> Self {
        Self {
            name,
            spec: NodeSpec::default(),
        }
    }

    /// The decision input of a Calico `Node` resource: its name and spec.
    ///
    /// # Errors
    ///
    /// When `metadata.name` is not a valid node name.
    pub fn from_calico(node: &calinet_types::Node) -> Result<Self, crate::Error> {
        Ok(Self {
            name: node.node_name()?,
            spec: node.spec.clone(),
        })
    }

    /// Sets the uplink address of the family of `addr`.
    #[must_use]
    pub fn with_address(mut self, addr: IpNet) -> Self {
        let bgp = self.spec.bgp_mut();
        match addr {
            IpNet::V4(a) => bgp.ipv4_address = Some(a),
            IpNet::V6(a) => bgp.ipv6_address = Some(a),
        }
        self
    }

    /// Sets the `tunl0` address.
    #[must_use]
    pub fn with_ipip_tunnel(mut self, addr: Ipv4Addr) -> Self {
        self.spec.bgp_mut().ipv4_ipip_tunnel_addr = Some(addr);
        self
    }

    /// Sets the VXLAN tunnel address of the family of `addr`.
    #[must_use]
    pub fn with_vxlan_tunnel(mut self, addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => self.spec.ipv4_vxlan_tunnel_addr = Some(a),
            IpAddr::V6(a) => self.spec.ipv6_vxlan_tunnel_addr = Some(a),
        }
        self
    }

    /// States the VTEP MAC of one family instead of deriving it.
    #[must_use]
    pub fn with_vtep_mac(mut self, family: Family, mac: MacAddr) -> Self {
        match family {
            Family::V4 => self.spec.vxlan_tunnel_mac_addr = Some(mac),
            Family::V6 => self.spec.vxlan_tunnel_mac_addr_v6 = Some(mac),
        }
        self
    }

    /// The uplink address (with prefix) of a family.
    #[must_use]
    pub fn address(&self, family: Family) -> Option<IpNet> {
        self.spec.address(family)
    }

    /// The VXLAN tunnel address of a family.
    #[must_use]
    pub fn vxlan_tunnel_addr(&self, family: Family) -> Option<IpAddr> {
        self.spec.vxlan_tunnel_addr(family)
    }

    /// The VTEP MAC of a family: the stated one, else Calico's derived one.
    #[must_use]
    pub fn vtep_mac(&self, family: Family) -> MacAddr {
        self.spec
            .vtep_mac(family)
            .unwrap_or_else(|| MacAddr::calico_vtep(&self.name, family))
    }
}

/// The local node's uplink: the interface direct routes use and VXLAN rides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Uplink {
    /// Interface name, e.g. `ens5` or `eth0`.
    pub name: IfName,
    /// Host MTU: the smallest MTU of the up uplinks.
    pub mtu: u32,
    /// IPv4 next hop for destinations outside the uplink subnet, if any.
    ///
    /// Used only by direct paths to nodes in another subnet: Linux cannot send
    /// to a gateway it cannot reach on the link, so such a route goes via the
    /// subnet's router (as BIRD's routes do in the seed article:
    /// `172.16.34.0/24 via 192.168.10.1 dev ens5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v4: Option<Ipv4Addr>,
    /// IPv6 next hop for destinations outside the uplink subnet, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6: Option<Ipv6Addr>,
}

impl Uplink {
    /// An uplink with a name and MTU and no gateways.
    #[must_use]
    pub fn new(name: IfName, mtu: u32) -> Self {
        Self {
            name,
            mtu,
            gateway_v4: None,
            gateway_v6: None,
        }
    }

    /// Sets the gateway of the family of `gw`.
    #[must_use]
    pub fn with_gateway(mut self, gw: IpAddr) -> Self {
        match gw {
            IpAddr::V4(g) => self.gateway_v4 = Some(g),
            IpAddr::V6(g) => self.gateway_v6 = Some(g),
        }
        self
    }

    /// The gateway of a family.
    #[must_use]
    pub fn gateway(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.gateway_v4.map(IpAddr::V4),
            Family::V6 => self.gateway_v6.map(IpAddr::V6),
        }
    }
}

/// An IP pool's encapsulation settings (Calico `IPPool` spec field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// The pool's name (Calico `metadata.name`), used in error messages.
    pub name: String,
    /// The pool's CIDR.
    pub cidr: IpNet,
    /// `ipipMode`.
    #[serde(default)]
    pub ipip_mode: EncapMode,
    /// `vxlanMode`.
    #[serde(default)]
    pub vxlan_mode: EncapMode,
}

impl Pool {
    /// A pool with both encapsulations `Never`.
    #[must_use]
    pub fn new(name: impl Into<String>, cidr: IpNet) -> Self {
        Self {
            name: name.into(),
            cidr: cidr.trunc(),
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
        }
    }

    /// Sets `ipipMode`.
    #[must_use]
    pub fn ipip(mut self, mode: EncapMode) -> Self {
        self.ipip_mode = mode;
        self
    }

    /// Sets `vxlanMode`.
    #[must_use]
    pub fn vxlan(mut self, mode: EncapMode) -> Self {
        self.vxlan_mode = mode;
        self
    }
}

/// An IPAM block and the node it is affine to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block CIDR.
    pub cidr: IpNet,
    /// The node the block is affine to (`host:<node>`).
    pub node: NodeName,
}

impl Block {
    /// A block affine to `node`.
    #[must_use]
    pub fn new(cidr: IpNet, node: NodeName) -> Self {
        Self {
            cidr: cidr.trunc(),
            node,
        }
    }
}

/// An address allocated from another node's block, in use on `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Borrowed {
    /// The borrowed address.
    pub addr: IpAddr,
    /// The borrowing node (where the workload runs).
    pub node: NodeName,
}

/// WireGuard as it affects MTUs (the device itself is `calinet-wg`'s business).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wireguard {
    /// `wireguardEnabled`: `wireguard.cali` exists (overhead 60).
    #[serde(default)]
    pub ipv4: bool,
    /// `wireguardEnabledV6`: `wg-v6.cali` exists (overhead 80).
    #[serde(default)]
    pub ipv6: bool,
}

/// Everything the decisions for one node depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    /// The node the decisions are for.
    pub local: Node,
    /// Its uplink.
    pub uplink: Uplink,
    /// Every other node.
    #[serde(default)]
    pub remotes: Vec<Node>,
    /// All pools.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// All blocks with their affinity.
    #[serde(default)]
    pub blocks: Vec<Block>,
    /// Addresses used on a node other than their block's owner.
    #[serde(default)]
    pub borrowed: Vec<Borrowed>,
    /// WireGuard settings (for MTUs only).
    #[serde(default)]
    pub wireguard: Wireguard,
}

impl Input {
    /// An input with the local node and uplink and nothing else yet.
    #[must_use]
    pub fn new(local: Node, uplink: Uplink) -> Self {
        Self {
            local,
            uplink,
            remotes: Vec::new(),
            pools: Vec::new(),
            blocks: Vec::new(),
            borrowed: Vec::new(),
            wireguard: Wireguard::default(),
        }
    }

    /// Looks a node (local or remote) up by name.
    #[must_use]
    pub fn node(&self, name: &NodeName) -> Option<&Node> {
        std::iter::once(&self.local)
            .chain(&self.remotes)
            .find(|n| &n.name == name)
    }

    /// The pool that contains `net`, if any.
    #[must_use]
    pub fn pool_of(&self, net: IpNet) -> Option<&Pool> {
        self.pools.iter().find(|p| p.cidr.contains(&net))
    }
}
