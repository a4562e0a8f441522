//! Pure planning: from a [`ClusterView`], the local node's facts and the pod
//! addresses IPAM handed out, to the desired dataplane of one node. No I/O and
//! no clock here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use calinet_encap as encap;
use calinet_encap::route::RouteSpecs;
use calinet_types::{EncapMode, IfName, RouteProtocol, RouteSpec, WorkloadSpec};

use crate::datastore::{ClusterView, PeerStatus};
use crate::error::{Error, Result};
use crate::resources::{NodeExt as _, Pod};

/// What the agent observed about its own node (read from the kernel by the
/// caller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    /// The uplink interface (the default route's device).
    pub uplink: String,
    /// The uplink's MTU.
    pub mtu: u32,
    /// The default gateway, if any.
    pub gateway_v4: Option<Ipv4Addr>,
}

/// One pod on this node, ready to plumb.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalWorkload {
    /// The pod.
    pub pod: Pod,
    /// Its veth and addresses.
    pub spec: WorkloadSpec,
}

/// The whole desired dataplane of one node.
#[derive(Debug, Clone)]
pub struct Desired {
    /// calinet-encap's decisions (paths, devices, VTEPs, MTUs).
    pub decisions: encap::Decisions,
    /// The decisions as calinet-route specs.
    pub specs: RouteSpecs,
    /// Pods to plumb.
    pub workloads: Vec<LocalWorkload>,
    /// Every route the agent owns (encapsulation and workload routes).
    pub routes: Vec<RouteSpec>,
    /// The path to each remote node, for `node status`.
    pub peers: Vec<PeerStatus>,
    /// Remote nodes left out until they publish what their path needs.
    pub waiting_for: Vec<String>,
}

fn node_of_affinity(aff: Option<&str>) -> Option<&str> {
    aff.and_then(|a| a.strip_prefix("host:"))
}

/// The pods scheduled to `node`, by `namespace/name`.
pub fn local_pods<'a>(view: &'a ClusterView, node: &str) -> Vec<&'a Pod> {
    view.pods
        .values()
        .filter(|p| p.spec.node_name.as_deref() == Some(node))
        .collect()
}

/// Whether any enabled IPv4 pool wants VXLAN (the node then needs a tunnel address).
pub fn wants_vxlan(view: &ClusterView) -> bool {
    view.ipam.pools.iter().any(|p| {
        p.enabled()
            && p.spec.cidr.addr().is_ipv4()
            && p.spec.vxlan_mode.unwrap_or_default() != EncapMode::Never
    })
}

/// Whether any enabled IPv4 pool wants IPIP (the node then needs `tunl0`'s address).
pub fn wants_ipip(view: &ClusterView) -> bool {
    view.ipam.pools.iter().any(|p| {
        p.enabled()
            && p.spec.cidr.addr().is_ipv4()
            && p.spec.ipip_mode.unwrap_or_default() != EncapMode::Never
    })
}

/// Builds calinet-encap's input for `node`, leaving out remote nodes in `skip`.
pub fn encap_input(
    view: &ClusterView,
    node: &str,
    facts: &LocalFacts,
    skip: &BTreeSet<String>,
) -> Result<encap::Input> {
    let to_encap = |name: &str| -> Result<Option<encap::Node>> {
        let Some((n, _)) = view.nodes.get(name) else {
            return Ok(None);
        };
        if n.ipv4().is_none() {
            return Ok(None);
        }
        encap::Node::from_calico(n)
            .map(Some)
            .map_err(|e| Error::Usage(format!("node {name}: {e}")))
    };
    let local = to_encap(node)?.ok_or_else(|| {
        Error::Usage(format!(
            "node {node} has no Node resource with spec.bgp.ipv4Address in the datastore"
        ))
    })?;
    let uplink_name: IfName = facts
        .uplink
        .parse()
        .map_err(|e: calinet_types::Error| Error::Usage(format!("uplink {}: {e}", facts.uplink)))?;
    let mut uplink = encap::Uplink::new(uplink_name, facts.mtu);
    if let Some(gw) = facts.gateway_v4 {
        uplink = uplink.with_gateway(IpAddr::V4(gw));
    }
    let mut input = encap::Input::new(local, uplink);
    let mut known = BTreeSet::from([node.to_owned()]);
    for name in view.nodes.keys() {
        if name == node || skip.contains(name) {
            continue;
        }
        if let Some(n) = to_encap(name)? {
            input.remotes.push(n);
            known.insert(name.clone());
        }
    }
    input.pools = view
        .ipam
        .pools
        .iter()
        .filter(|p| p.spec.cidr.addr().is_ipv4())
        .map(|p| {
            encap::Pool::new(p.name(), p.spec.cidr)
                .ipip(p.spec.ipip_mode.unwrap_or_default())
                .vxlan(p.spec.vxlan_mode.unwrap_or_default())
        })
        .collect();
    for (b, _) in &view.ipam.blocks {
        let Some(owner) = node_of_affinity(b.affinity()) else {
            continue;
        };
        if !known.contains(owner) || b.cidr().net().addr().is_ipv6() {
            continue;
        }
        input.blocks.push(encap::Block::new(
            b.cidr().net(),
            owner.parse().expect("known nodes have valid names"),
        ));
        for (o, a) in b.allocations() {
            let user = a.secondary.as_ref().and_then(|s| s.get("node"));
            if let Some(user) = user
                && user != owner
                && known.contains(user.as_str())
            {
                input.borrowed.push(encap::Borrowed {
                    addr: b.addr(o),
                    node: user.parse().expect("known nodes have valid names"),
                });
            }
        }
    }
    input.wireguard.ipv4 = view.wireguard_enabled(node);
    Ok(input)
}

/// Plans the node. `addrs` are the pods' addresses (by `namespace/name`) that
/// IPAM assigned; pods without one (or without a sandbox) are not plumbed yet.
pub fn plan(
    view: &ClusterView,
    node: &str,
    facts: &LocalFacts,
    addrs: &BTreeMap<String, Ipv4Addr>,
) -> Result<Desired> {
    // A remote node that has not published its tunnel address yet cannot be
    // reached over VXLAN: leave it out (and say so) rather than fail the node.
    let mut skip = BTreeSet::new();
    let decisions = loop {
        let input = encap_input(view, node, facts, &skip)?;
        match encap::decide(&input) {
            Ok(d) => break d,
            Err(encap::Error::NoUsableAddress { node: n, .. }) if n.as_str() != node => {
                if !skip.insert(n.as_str().to_owned()) {
                    return Err(Error::Usage(format!("node {n} keeps lacking an address")));
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let specs = decisions.route_specs(RouteProtocol::CALICO);
    let mut routes = specs.routes.clone();
    let mut workloads = Vec::new();
    for pod in local_pods(view, node) {
        let (Some(netns), Some(addr)) = (pod.netns(), addrs.get(&pod.key())) else {
            continue;
        };
        let ifname = IfName::calico_workload(pod.namespace(), &pod.metadata.name);
        let spec = WorkloadSpec::new(ifname, netns, decisions.mtu.pod).ipv4(*addr);
        routes.extend(spec.host_routes(RouteProtocol::CALICO));
        workloads.push(LocalWorkload {
            pod: pod.clone(),
            spec,
        });
    }
    // Endpoints a CNI plugin plumbed on this node (a containerID says so):
    // their host routes are part of the node's, so that reconciling the
    // routes of Calico's protocol keeps them.
    for (w, _) in view.weps.values() {
        if w.spec.node != node || w.spec.container_id.is_none() {
            continue;
        }
        let Ok(ifname) = IfName::new(&w.spec.interface_name) else {
            continue;
        };
        for n in &w.spec.ip_networks {
            routes.push(
                calinet_route::RouteSpec::workload(n.addr(), ifname.clone())
                    .protocol(RouteProtocol::CALICO),
            );
        }
    }
    routes.sort_by_key(|r| r.destination);
    let mut peers = Vec::new();
    for (name, (n, _)) in &view.nodes {
        if name == node {
            continue;
        }
        let kind = decisions
            .paths
            .iter()
            .find(|p| p.node.as_str() == name && !p.dst.addr().is_ipv6())
            .map(|p| match p.kind {
                encap::PathKind::Vxlan => "vxlan",
                encap::PathKind::Ipip => "ipip",
                _ => "direct",
            })
            .unwrap_or("none (no block yet)");
        peers.push(PeerStatus {
            node: name.clone(),
            address: n.ipv4().map(|a| a.addr().to_string()).unwrap_or_default(),
            // The agent marks WireGuard peers once calinet-wg made them.
            path: kind.to_owned(),
        });
    }
    Ok(Desired {
        decisions,
        specs,
        workloads,
        routes,
        peers,
        waiting_for: skip.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{apply, read_view};
    use crate::resources::parse_documents;
    use calinet_ipam::{Ipam, MemStore, TunnelKind};
    use std::time::SystemTime;

    fn cluster(mode: &str) -> (MemStore, ClusterView) {
        let text = format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\nspec: {{cidr: 172.16.0.0/16, blockSize: 24, vxlanMode: {mode}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: a}}\nspec: {{bgp: {{ipv4Address: 198.51.100.10/24}}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: b}}\nspec: {{bgp: {{ipv4Address: 198.51.100.11/24}}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: c}}\nspec: {{bgp: {{ipv4Address: 203.0.113.12/24}}}}\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web, annotations: {{calinet.io/netns: /run/netns/x}}}}\nspec: {{nodeName: a}}\n"
        );
        let store = MemStore::new();
        apply(&store, &parse_documents("t", &text).unwrap()).unwrap();
        let ipam = Ipam::new(&store);
        for n in ["a", "b", "c"] {
            ipam.assign_tunnel_addr(
                TunnelKind::Vxlan,
                &n.parse().unwrap(),
                &BTreeMap::new(),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        }
        let view = read_view(&store).unwrap();
        (store, view)
    }

    fn facts() -> LocalFacts {
        LocalFacts {
            uplink: "eth0".into(),
            mtu: 1500,
            gateway_v4: Some("198.51.100.1".parse().unwrap()),
        }
    }

    #[test]
    fn remote_without_tunnel_address_waits_instead_of_failing() {
        let (_, mut view) = cluster("Always");
        // Only the local node has published its tunnel address.
        let local_block = view
            .ipam
            .blocks
            .iter()
            .find(|(b, _)| b.affinity() == Some("host:a"))
            .map(|(b, _)| b.cidr().net())
            .unwrap();
        view.nodes
            .get_mut("a")
            .unwrap()
            .0
            .spec
            .ipv4_vxlan_tunnel_addr = match local_block.addr() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        };
        let addrs = BTreeMap::from([("default/web".to_owned(), "172.16.9.9".parse().unwrap())]);
        let d = plan(&view, "a", &facts(), &addrs).unwrap();
        assert_eq!(d.waiting_for, ["b", "c"]);
        assert_eq!(d.decisions.blackholes.len(), 1);
        assert_eq!(d.workloads.len(), 1);
        assert_eq!(d.workloads[0].spec.mtu, 1450);
        assert!(
            d.routes
                .iter()
                .any(|r| r.to_string().starts_with("172.16.9.9/32 dev cali"))
        );
    }

    #[test]
    fn borrowed_addresses_get_a_host_path_and_show_as_borrowed() {
        let (store, _) = cluster("Never");
        let ipam = Ipam::new(&store);
        let view = read_view(&store).unwrap();
        let b_block = view
            .ipam
            .blocks
            .iter()
            .find(|(b, _)| b.affinity() == Some("host:b"))
            .map(|(b, _)| b.cidr())
            .unwrap();
        // A pod on node a takes an address from b's block.
        let addr = b_block.addr(7);
        let attrs = BTreeMap::from([
            ("node".to_owned(), "a".to_owned()),
            ("namespace".to_owned(), "default".to_owned()),
            ("pod".to_owned(), "web".to_owned()),
        ]);
        let got = ipam
            .assign_ip(
                addr,
                &"k8s-pod-network.default.web".parse().unwrap(),
                &attrs,
                &"a".parse().unwrap(),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        assert!(got.borrowed);
        let view = read_view(&store).unwrap();
        // Node c routes the borrowed /32 to a, the rest of the block to b.
        let d = plan(&view, "c", &facts(), &BTreeMap::new()).unwrap();
        let host = d
            .decisions
            .paths
            .iter()
            .find(|p| p.dst == ipnet::IpNet::from(addr))
            .expect("a /32 path for the borrowed address");
        assert_eq!(host.node.as_str(), "a");
        let text = crate::show::ipam_show(
            &view,
            crate::show::IpamShowFlags {
                borrowed: true,
                ..Default::default()
            },
            crate::show::Output::Table,
        )
        .unwrap();
        assert!(
            text.contains(&format!("| {addr} "))
                && text.contains("| a ")
                && text.contains("default/web"),
            "{text}"
        );
    }

    #[test]
    fn ipip_plans_tunl0_and_routes_through_it() {
        let (_, mut view) = cluster("Never");
        for p in &mut view.ipam.pools {
            p.spec.ipip_mode = Some(EncapMode::Always);
        }
        assert!(wants_ipip(&view) && !wants_vxlan(&view));
        for (i, (_, (n, _))) in view.nodes.iter_mut().enumerate() {
            n.spec.bgp_mut().ipv4_ipip_tunnel_addr = Some(Ipv4Addr::new(172, 16, 200, i as u8));
        }
        let d = plan(&view, "a", &facts(), &BTreeMap::new()).unwrap();
        assert_eq!(d.specs.links[0].name.as_str(), "tunl0");
        assert_eq!(d.decisions.mtu.pod, 1480);
        assert!(d.peers.iter().all(|p| p.path == "ipip"), "{:?}", d.peers);
        let text: Vec<String> = d.routes.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|r| r.contains("via 198.51.100.11 dev tunl0") && r.contains("onlink")),
            "{text:?}"
        );
    }

    #[test]
    fn crosssubnet_paths_follow_subnets() {
        let (_, mut view) = cluster("CrossSubnet");
        for (name, (n, _)) in view.nodes.iter_mut() {
            let block = view
                .ipam
                .blocks
                .iter()
                .find(|(b, _)| b.affinity() == Some(&format!("host:{name}")))
                .unwrap();
            n.spec.ipv4_vxlan_tunnel_addr = match block.0.cidr().net().addr() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            };
        }
        let d = plan(&view, "a", &facts(), &BTreeMap::new()).unwrap();
        let kinds: BTreeMap<&str, &str> = d
            .peers
            .iter()
            .map(|p| (p.node.as_str(), p.path.as_str()))
            .collect();
        assert_eq!(kinds, BTreeMap::from([("b", "direct"), ("c", "vxlan")]));
        assert!(d.waiting_for.is_empty());
    }
}
