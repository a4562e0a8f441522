//! The pure core: from node states to the desired device.
//!
//! Nothing here reads the kernel, files or the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::model::{DeviceConfig, DeviceSettings, Family, NodeName, NodeState, PeerConfig};

/// Why a node's ranges are not routed through the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FallbackReason {
    /// The local node itself (its borrowed addresses may sit inside a remote block).
    Local,
    /// The node has published no public key.
    NoPublicKey,
    /// The node has no endpoint address of the device's family.
    NoEndpoint,
    /// The node's public key is claimed by another node too.
    DuplicatePublicKey,
    /// The range is claimed by more than one peer.
    DuplicateAllowedIp,
}

/// Ranges that must take the normal (unencrypted) path: the routing table gets
/// a `throw` route for each so a wider peer route cannot capture them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The node.
    pub node: NodeName,
    /// Its ranges.
    pub ranges: Vec<IpNet>,
    /// Why.
    pub reason: FallbackReason,
}

/// Something the operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// Several nodes publish the same public key; none of them gets a peer.
    DuplicatePublicKey {
        /// The key.
        key: PublicKey,
        /// Every node claiming it (the local node included, if it does).
        nodes: Vec<NodeName>,
    },
    /// The same range appears on several nodes; no peer gets it.
    DuplicateAllowedIp {
        /// The range.
        range: IpNet,
        /// The nodes claiming it.
        nodes: Vec<NodeName>,
    },
    /// A node name appears twice in the input; the first entry wins.
    DuplicateNodeName {
        /// The node.
        node: NodeName,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |nodes: &[NodeName]| {
            nodes
                .iter()
                .map(NodeName::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Warning::DuplicatePublicKey { key, nodes } => write!(
                f,
                "nodes {} all publish WireGuard public key {key}; none of them is configured as a peer",
                join(nodes)
            ),
            Warning::DuplicateAllowedIp { range, nodes } => write!(
                f,
                "range {range} is claimed by nodes {}; it is routed to none of them",
                join(nodes)
            ),
            Warning::DuplicateNodeName { node } => {
                write!(
                    f,
                    "node {node} appears more than once; using the first entry"
                )
            }
        }
    }
}

/// Result of [`compute_device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computed {
    /// The device to program.
    pub device: DeviceConfig,
    /// Which node each peer stands for, in peer order.
    pub peer_nodes: Vec<(NodeName, PublicKey)>,
    /// Ranges that take the normal path (throw routes).
    pub fallback: Vec<Fallback>,
    /// Problems to report.
    pub warnings: Vec<Warning>,
}

impl Computed {
    /// The node a peer key belongs to.
    pub fn node_of(&self, key: &PublicKey) -> Option<&NodeName> {
        self.peer_nodes
            .iter()
            .find(|(_, k)| k == key)
            .map(|(n, _)| n)
    }
}

fn host_net(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

/// A node's AllowedIPs for a device of `family`: its blocks, then borrowed
/// addresses as host routes, then tunnel addresses; exact duplicates dropped,
/// first occurrence kept (the seed shows this order).
pub fn node_ranges(node: &NodeState, family: Family) -> Vec<IpNet> {
    let mut seen = BTreeSet::new();
    node.blocks
        .iter()
        .map(IpNet::trunc)
        .chain(node.borrowed.iter().copied().map(host_net))
        .chain(node.tunnel_addresses.iter().copied().map(host_net))
        .filter(|net| family.contains(net.addr()))
        .filter(|net| seen.insert(*net))
        .collect()
}

/// Compute the desired device for `local` from every node's state.
///
/// - one peer per remote node with a key and an endpoint of the family, endpoint
///   `<node IP>:<listen port>`, AllowedIPs from [`node_ranges`];
/// - nodes without key or endpoint get no peer and appear in `fallback`;
/// - nodes sharing a public key (with each other or with the local node) get no
///   peer and one [`Warning::DuplicatePublicKey`] names them all;
/// - a range claimed by two peers is given to neither, with a warning;
/// - `preshared_keys` optionally gives a pre-shared key per remote node.
///
/// Peers come out sorted by node name, so equal inputs give equal devices.
pub fn compute_device(
    local: &NodeName,
    private_key: &PrivateKey,
    settings: &DeviceSettings,
    nodes: &[NodeState],
    preshared_keys: &BTreeMap<NodeName, PresharedKey>,
) -> Computed {
    let mut warnings = Vec::new();
    let mut by_name: BTreeMap<&NodeName, &NodeState> = BTreeMap::new();
    for node in nodes {
        // The first entry wins; later ones are reported.
        if by_name.contains_key(&node.name) {
            warnings.push(Warning::DuplicateNodeName {
                node: node.name.clone(),
            });
        } else {
            by_name.insert(&node.name, node);
        }
    }

    let local_key = private_key.public_key();
    let mut claims: BTreeMap<PublicKey, Vec<NodeName>> = BTreeMap::new();
    claims.entry(local_key).or_default().push(local.clone());
    for node in by_name.values().filter(|n| &n.name != local) {
        if let Some(key) = node.public_key {
            claims.entry(key).or_default().push(node.name.clone());
        }
    }
    for (key, claimants) in &claims {
        if claimants.len() > 1 {
            let mut nodes = claimants.clone();
            nodes.sort();
            warnings.push(Warning::DuplicatePublicKey { key: *key, nodes });
        }
    }

    let mut fallback = Vec::new();
    let mut candidates: Vec<(NodeName, PeerConfig)> = Vec::new();
    for node in by_name.values() {
        let ranges = node_ranges(node, settings.family);
        if &node.name == local {
            fallback.push(Fallback {
                node: node.name.clone(),
                ranges,
                reason: FallbackReason::Local,
            });
            continue;
        }
        let reason = match (node.public_key, node.endpoint) {
            (None, _) => Some(FallbackReason::NoPublicKey),
            (Some(k), _) if claims.get(&k).is_some_and(|c| c.len() > 1) => {
                Some(FallbackReason::DuplicatePublicKey)
            }
            (Some(_), None) => Some(FallbackReason::NoEndpoint),
            (Some(_), Some(ip)) if !settings.family.contains(ip) => {
                Some(FallbackReason::NoEndpoint)
            }
            _ => None,
        };
        match (reason, node.public_key, node.endpoint) {
            (None, Some(public_key), Some(ip)) => candidates.push((
                node.name.clone(),
                PeerConfig {
                    public_key,
                    preshared_key: preshared_keys.get(&node.name).cloned(),
                    endpoint: Some(SocketAddr::new(ip, settings.listen_port)),
                    allowed_ips: ranges,
                    persistent_keepalive: settings.persistent_keepalive,
                },
            )),
            (reason, _, _) => fallback.push(Fallback {
                node: node.name.clone(),
                ranges,
                reason: reason.unwrap_or(FallbackReason::NoPublicKey),
            }),
        }
    }

    // A range on two peers would flap between them on every update.
    let mut owners: BTreeMap<IpNet, Vec<NodeName>> = BTreeMap::new();
    for (name, peer) in &candidates {
        for net in &peer.allowed_ips {
            owners.entry(*net).or_default().push(name.clone());
        }
    }
    let contested: BTreeMap<IpNet, Vec<NodeName>> =
        owners.into_iter().filter(|(_, n)| n.len() > 1).collect();
    for (range, nodes) in &contested {
        warnings.push(Warning::DuplicateAllowedIp {
            range: *range,
            nodes: nodes.clone(),
        });
    }
    let mut peers = Vec::with_capacity(candidates.len());
    let mut peer_nodes = Vec::with_capacity(candidates.len());
    for (name, mut peer) in candidates {
        let lost: Vec<IpNet> = peer
            .allowed_ips
            .iter()
            .filter(|n| contested.contains_key(n))
            .copied()
            .collect();
        if !lost.is_empty() {
            peer.allowed_ips.retain(|n| !contested.contains_key(n));
            fallback.push(Fallback {
                node: name.clone(),
                ranges: lost,
                reason: FallbackReason::DuplicateAllowedIp,
            });
        }
        peer_nodes.push((name, peer.public_key));
        peers.push(peer);
    }

    Computed {
        device: DeviceConfig {
            private_key: Some(private_key.clone()),
            listen_port: settings.listen_port,
            fwmark: settings.fwmark,
            peers,
        },
        peer_nodes,
        fallback,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed;

    fn names(v: &[&str]) -> Vec<NodeName> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn seed_master_gets_three_peers_like_the_article() {
        let (nodes, key) = seed::nodes();
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &BTreeMap::new(),
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.device.peers.len(), 3);
        assert_eq!(c.device.listen_port, 51820);
        assert_eq!(c.device.fwmark, 0x100000);
        let w1 = c.device.peer(&seed::W1_KEY.parse().unwrap()).unwrap();
        let ips: Vec<String> = w1.allowed_ips.iter().map(ToString::to_string).collect();
        assert_eq!(
            ips,
            ["172.16.158.0/24", "172.16.158.7/32", "172.16.158.9/32"]
        );
        assert_eq!(w1.endpoint.unwrap().to_string(), "192.168.10.101:51820");
        let order: Vec<&str> = c.peer_nodes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["k8s-w0", "k8s-w1", "k8s-w2"]);
        assert_eq!(c.fallback.len(), 1);
        assert_eq!(c.fallback[0].reason, FallbackReason::Local);
    }

    #[test]
    fn node_without_key_or_endpoint_gets_no_peer_but_a_fallback() {
        let (mut nodes, key) = seed::nodes();
        nodes[1].public_key = None; // k8s-w0
        nodes[2].endpoint = None; // k8s-w1
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &BTreeMap::new(),
        );
        assert_eq!(c.device.peers.len(), 1);
        let reasons: Vec<(&str, FallbackReason)> = c
            .fallback
            .iter()
            .map(|f| (f.node.as_str(), f.reason))
            .collect();
        assert!(reasons.contains(&("k8s-w0", FallbackReason::NoPublicKey)));
        assert!(reasons.contains(&("k8s-w1", FallbackReason::NoEndpoint)));
        let w0 = c
            .fallback
            .iter()
            .find(|f| f.node.as_str() == "k8s-w0")
            .unwrap();
        assert_eq!(w0.ranges, node_ranges(&nodes[1], Family::V4));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn two_nodes_with_one_key_get_neither_and_a_warning_naming_both() {
        let (mut nodes, key) = seed::nodes();
        nodes[3].public_key = nodes[2].public_key; // k8s-w2 copies k8s-w1
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &BTreeMap::new(),
        );
        assert_eq!(c.device.peers.len(), 1);
        assert_eq!(c.peer_nodes[0].0.as_str(), "k8s-w0");
        assert_eq!(
            c.warnings,
            vec![Warning::DuplicatePublicKey {
                key: nodes[2].public_key.unwrap(),
                nodes: names(&["k8s-w1", "k8s-w2"]),
            }]
        );
        let text = c.warnings[0].to_string();
        assert!(text.contains("k8s-w1") && text.contains("k8s-w2"), "{text}");
    }

    #[test]
    fn a_remote_node_claiming_the_local_key_is_refused() {
        let (mut nodes, key) = seed::nodes();
        nodes[1].public_key = Some(key.public_key());
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &BTreeMap::new(),
        );
        assert_eq!(c.device.peers.len(), 2);
        assert!(
            matches!(&c.warnings[0], Warning::DuplicatePublicKey { nodes, .. } if nodes == &names(&["k8s-m", "k8s-w0"]))
        );
    }

    #[test]
    fn contested_range_goes_to_nobody() {
        let (mut nodes, key) = seed::nodes();
        let addr: IpAddr = "172.16.34.77".parse().unwrap();
        nodes[2].borrowed.push(addr);
        nodes[3].borrowed.push(addr);
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &BTreeMap::new(),
        );
        let net = IpNet::from(addr);
        assert!(c.device.peers.iter().all(|p| !p.allowed_ips.contains(&net)));
        assert!(
            c.warnings
                .iter()
                .any(|w| matches!(w, Warning::DuplicateAllowedIp { range, .. } if *range == net))
        );
    }

    #[test]
    fn family_filters_ranges_and_endpoints() {
        let (mut nodes, key) = seed::nodes();
        nodes[2].blocks.push("fd00:10::/122".parse().unwrap());
        let mut v6 = DeviceSettings::calico_v6();
        v6.ifname = "wg-v6.cali".parse().unwrap();
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &v6,
            &nodes,
            &BTreeMap::new(),
        );
        // No node has an IPv6 endpoint, so no IPv6 peers.
        assert!(c.device.peers.is_empty());
        let w1 = c
            .fallback
            .iter()
            .find(|f| f.node.as_str() == "k8s-w1")
            .unwrap();
        assert_eq!(w1.ranges, vec!["fd00:10::/122".parse::<IpNet>().unwrap()]);
        assert_eq!(w1.reason, FallbackReason::NoEndpoint);
    }

    #[test]
    fn duplicate_node_entries_keep_the_first_and_warn() {
        let (mut nodes, key) = seed::nodes();
        let mut copy = nodes[2].clone();
        copy.endpoint = Some("192.0.2.99".parse().unwrap());
        nodes.push(copy);
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &BTreeMap::new(),
        );
        assert_eq!(c.device.peers.len(), 3);
        let w1 = c.device.peer(&seed::W1_KEY.parse().unwrap()).unwrap();
        assert_eq!(w1.endpoint.unwrap().to_string(), "192.168.10.101:51820");
        assert_eq!(
            c.warnings,
            vec![Warning::DuplicateNodeName {
                node: "k8s-w1".parse().unwrap()
            }]
        );
    }

    #[test]
    fn preshared_key_is_attached_per_node() {
        let (nodes, key) = seed::nodes();
        let psk = PresharedKey::from_bytes([7; 32]);
        let map = BTreeMap::from([("k8s-w2".parse().unwrap(), psk.clone())]);
        let c = compute_device(
            &"k8s-m".parse().unwrap(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &map,
        );
        let with: Vec<bool> = c
            .device
            .peers
            .iter()
            .map(|p| p.preshared_key.is_some())
            .collect();
        assert_eq!(with, [false, false, true]);
    }
}
