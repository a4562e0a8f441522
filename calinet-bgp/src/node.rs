//! A Node's `spec.bgp`, as Calico's Node resource carries it.

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::resources::AsNumber;

/// `Node.spec.bgp`: the node's BGP addresses (with their subnet's prefix
/// length, e.g. `192.168.10.10/24`), its AS when it differs from the cluster's,
/// and the route reflector cluster it reflects for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NodeBgpSpec {
    /// The node's IPv4 address and subnet; also BIRD's router id.
    #[serde(
        default,
        rename = "ipv4Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv4_address: Option<Ipv4Net>,
    /// The node's IPv6 address and subnet.
    #[serde(
        default,
        rename = "ipv6Address",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_address: Option<Ipv6Net>,
    /// The node's AS; the cluster's (`BGPConfiguration.spec.asNumber`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// Makes the node a route reflector for this cluster id (an IPv4 address).
    #[serde(
        default,
        rename = "routeReflectorClusterID",
        skip_serializing_if = "Option::is_none"
    )]
    pub route_reflector_cluster_id: Option<String>,
}

impl NodeBgpSpec {
    /// A spec with only an IPv4 address.
    pub fn ipv4(address: Ipv4Net) -> Self {
        NodeBgpSpec {
            ipv4_address: Some(address),
            ..Default::default()
        }
    }

    /// Checks every field; the error names the node and the field.
    pub fn validate(&self, node: &str) -> Result<(), Error> {
        self.cluster_id(node).map(|_| ())?;
        if let Some(asn) = self.as_number
            && AsNumber::new(asn.get()).is_none()
        {
            return Err(Error::Invalid {
                resource: format!("Node {node}"),
                field: "spec.bgp.asNumber",
                value: asn.to_string(),
                rule: "AS number 0 is reserved; use 1..=4294967295",
            });
        }
        for (field, bad) in [
            (
                "spec.bgp.ipv4Address",
                self.ipv4_address
                    .filter(|a| a.addr().is_unspecified() || a.addr().is_multicast())
                    .map(|a| a.to_string()),
            ),
            (
                "spec.bgp.ipv6Address",
                self.ipv6_address
                    .filter(|a| a.addr().is_unspecified() || a.addr().is_multicast())
                    .map(|a| a.to_string()),
            ),
        ] {
            if let Some(value) = bad {
                return Err(Error::Invalid {
                    resource: format!("Node {node}"),
                    field,
                    value,
                    rule: "must be a unicast address",
                });
            }
        }
        Ok(())
    }

    /// The parsed `routeReflectorClusterID`.
    pub(crate) fn cluster_id(&self, node: &str) -> Result<Option<std::net::Ipv4Addr>, Error> {
        self.route_reflector_cluster_id
            .as_deref()
            .map(|id| {
                id.parse().map_err(|_| Error::Invalid {
                    resource: format!("Node {node}"),
                    field: "spec.bgp.routeReflectorClusterID",
                    value: id.to_owned(),
                    rule: "must be an IPv4 address such as 224.0.0.1",
                })
            })
            .transpose()
    }
}
