//! Calico's `Node` resource (`projectcalico.org/v3`), with Calico's field names.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::family::Family;
use crate::mac::MacAddr;
use crate::meta::{Extra, ObjectMeta};
use crate::names::NodeName;

/// Calico's API group/version.
pub const CALICO_API_VERSION: &str = "projectcalico.org/v3";

/// Calico `Node`: one host running calinet (or Calico).
///
/// Unknown fields at every level are kept in `extra` maps, so a Node written
/// by Calico survives a read-modify-write by calinet.
///
/// ```
/// use calinet_types::{Family, Node};
/// let yaml = r#"{"apiVersion": "projectcalico.org/v3", "kind": "Node",
///   "metadata": {"name": "k8s-w1"},
///   "spec": {"bgp": {"ipv4Address": "198.51.100.101/24", "asNumber": 64512,
///                    "ipv4IPIPTunnelAddr": "172.16.158.1"},
///            "vxlanTunnelMACAddr": "66:74:91:32:7c:04",
///            "orchRefs": [{"nodeName": "k8s-w1", "orchestrator": "k8s"}]},
///   "status": {"wireguardPublicKey": "rWepcpPRToZHtb563t5AKAhIHT69rMgTOIuCE8o3AgE="}}"#;
/// let node: Node = serde_json::from_str(yaml).unwrap();
/// assert_eq!(node.node_name().unwrap().as_str(), "k8s-w1");
/// assert_eq!(node.spec.address(Family::V4).unwrap().to_string(), "198.51.100.101/24");
/// assert_eq!(node.spec.vxlan_tunnel_mac_addr.unwrap().to_string(), "66:74:91:32:7c:04");
/// assert!(node.spec.extra.contains_key("orchRefs")); // kept, not typed
/// let back: serde_json::Value = serde_json::to_value(&node).unwrap();
/// assert_eq!(back["spec"]["orchRefs"][0]["orchestrator"], "k8s");
/// assert_eq!(back["spec"]["bgp"]["asNumber"], 64512);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Node {
    /// `projectcalico.org/v3`.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// `Node`.
    #[serde(default = "kind")]
    pub kind: String,
    /// Metadata; `metadata.name` is the node name.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: NodeSpec,
    /// Status.
    #[serde(default)]
    pub status: NodeStatus,
    /// Unknown top-level fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

fn api_version() -> String {
    CALICO_API_VERSION.to_owned()
}

fn kind() -> String {
    "Node".to_owned()
}

/// `spec` of a Node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NodeSpec {
    /// BGP configuration (addresses, AS number); absent for policy-only nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgp>,
    /// Address of the node's `vxlan.calico` (system configured).
    #[serde(
        default,
        rename = "ipv4VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_vxlan_tunnel_addr: Option<Ipv4Addr>,
    /// VTEP MAC of `vxlan.calico` (system configured).
    #[serde(
        default,
        rename = "vxlanTunnelMACAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr: Option<MacAddr>,
    /// Address of the node's `vxlan-v6.calico` (system configured).
    #[serde(
        default,
        rename = "ipv6VXLANTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_vxlan_tunnel_addr: Option<Ipv6Addr>,
    /// VTEP MAC of `vxlan-v6.calico` (system configured).
    #[serde(
        default,
        rename = "vxlanTunnelMACAddrV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub vxlan_tunnel_mac_addr_v6: Option<MacAddr>,
    /// WireGuard interface addresses (system configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguard>,
    /// Unknown fields (`orchRefs`, `addresses`, ...), kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.bgp` of a Node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NodeBgp {
    /// The node's IPv4 address with its subnet, e.g. `192.168.10.10/24`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Net>,
    /// The node's IPv6 address with its subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<Ipv6Net>,
    /// Address of the node's `tunl0` (system configured).
    #[serde(
        default,
        rename = "ipv4IPIPTunnelAddr",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_ipip_tunnel_addr: Option<Ipv4Addr>,
    /// The node's AS number; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Makes the node a route reflector of this cluster ID (an IPv4 address).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.wireguard` of a Node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NodeWireguard {
    /// Address of `wireguard.cali`.
    #[serde(
        default,
        rename = "interfaceIPv4Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_ipv4_address: Option<Ipv4Addr>,
    /// Address of `wg-v6.cali`.
    #[serde(
        default,
        rename = "interfaceIPv6Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub interface_ipv6_address: Option<Ipv6Addr>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status` of a Node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node's IPv4 WireGuard public key (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
    /// The node's IPv6 WireGuard public key (base64).
    #[serde(
        default,
        rename = "wireguardPublicKeyV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub wireguard_public_key_v6: Option<String>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Node {
    /// A Node named `name` with an empty spec and status.
    #[must_use]
    pub fn new(name: &NodeName) -> Self {
        Node {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta::named(name.as_str()),
            spec: NodeSpec::default(),
            status: NodeStatus::default(),
            extra: Extra::new(),
        }
    }

    /// `metadata.name`, validated as a node name.
    pub fn node_name(&self) -> Result<NodeName> {
        self.metadata.name.parse()
    }
}

impl NodeSpec {
    /// The node's address (with its subnet) of a family, from `bgp`.
    #[must_use]
    pub fn address(&self, family: Family) -> Option<IpNet> {
        let bgp = self.bgp.as_ref()?;
        match family {
            Family::V4 => bgp.ipv4_address.map(IpNet::V4),
            Family::V6 => bgp.ipv6_address.map(IpNet::V6),
        }
    }

    /// The address of `tunl0`, from `bgp.ipv4IPIPTunnelAddr`.
    #[must_use]
    pub fn ipip_tunnel_addr(&self) -> Option<Ipv4Addr> {
        self.bgp.as_ref()?.ipv4_ipip_tunnel_addr
    }

    /// The VXLAN tunnel address of a family.
    #[must_use]
    pub fn vxlan_tunnel_addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.ipv4_vxlan_tunnel_addr.map(IpAddr::V4),
            Family::V6 => self.ipv6_vxlan_tunnel_addr.map(IpAddr::V6),
        }
    }

    /// The stated VTEP MAC of a family, if any.
    #[must_use]
    pub fn vtep_mac(&self, family: Family) -> Option<MacAddr> {
        match family {
            Family::V4 => self.vxlan_tunnel_mac_addr,
            Family::V6 => self.vxlan_tunnel_mac_addr_v6,
        }
    }

    /// `bgp`, created empty when absent.
    pub fn bgp_mut(&mut self) -> &mut NodeBgp {
        self.bgp.get_or_insert_with(NodeBgp::default)
    }

    /// `wireguard`, created empty when absent.
    pub fn wireguard_mut(&mut self) -> &mut NodeWireguard {
        self.wireguard.get_or_insert_with(NodeWireguard::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_round_trip_at_every_level() {
        let json = serde_json::json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "42", "labels": {"a": "b"}},
            "spec": {
                "bgp": {"ipv4Address": "192.0.2.10/24", "ipv6Address": "2001:db8::10/64",
                        "ipv4IPIPTunnelAddr": "172.16.1.1", "asNumber": 64512,
                        "routeReflectorClusterID": "244.0.0.1", "future": 1},
                "ipv4VXLANTunnelAddr": "172.16.1.0",
                "vxlanTunnelMACAddr": "66:01:02:03:04:05",
                "ipv6VXLANTunnelAddr": "fd00:10::",
                "vxlanTunnelMACAddrV6": "66:01:02:03:04:06",
                "wireguard": {"interfaceIPv4Address": "172.16.1.2", "x": true},
                "addresses": [{"address": "192.0.2.10/24", "type": "InternalIP"}]
            },
            "status": {"wireguardPublicKey": "k", "podCIDRs": ["172.16.1.0/24"]},
            "future": {"top": 1}
        });
        let node: Node = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            node.spec.ipip_tunnel_addr(),
            Some("172.16.1.1".parse().unwrap())
        );
        assert_eq!(
            node.spec.bgp.as_ref().unwrap().route_reflector_cluster_id,
            Some("244.0.0.1".parse().unwrap())
        );
        assert_eq!(
            node.spec.vtep_mac(Family::V6).unwrap().to_string(),
            "66:01:02:03:04:06"
        );
        assert_eq!(
            node.spec.vxlan_tunnel_addr(Family::V6),
            Some("fd00:10::".parse().unwrap())
        );
        assert_eq!(node.metadata.labels["a"], "b");
        assert_eq!(serde_json::to_value(&node).unwrap(), json);
    }

    #[test]
    fn bad_fields_are_refused() {
        let bad_mac = serde_json::json!({"metadata": {"name": "n"},
            "spec": {"vxlanTunnelMACAddr": "66:01"}});
        let err = serde_json::from_value::<Node>(bad_mac).unwrap_err();
        assert!(err.to_string().contains("\"66:01\""), "{err}");
        let node: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "a b"}})).unwrap();
        assert!(node.node_name().is_err());
        assert_eq!(node.kind, "Node");
    }
}
