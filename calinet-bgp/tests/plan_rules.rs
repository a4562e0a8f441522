//! One test per plan rule and per validation error, on Calico-shaped YAML.

use std::net::IpAddr;

use calinet_bgp::{
    BgpConfiguration, BgpPeer, EncapMode, Error, Family, Input, NodeBgpSpec, NodeInfo, Password,
    PeerType, Pool, SecretKeyRef, plan, render,
};
use ipnet::IpNet;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node(name: &str, yaml: &str) -> NodeInfo {
    let mut n = NodeInfo::new(name, serde_norway::from_str::<NodeBgpSpec>(yaml).unwrap());
    n.labels
        .insert("kubernetes.io/hostname".into(), name.into());
    n
}

fn peer(yaml: &str) -> BgpPeer {
    serde_norway::from_str(yaml).unwrap()
}

/// n1, n2, n3 on 198.51.100.0/24 (IPv4 only) with one pool.
fn cluster(me: &str) -> Input {
    let mut input = Input::new(me);
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        input.nodes.push(node(
            name,
            &format!("ipv4Address: 198.51.100.{}/24", 10 + i),
        ));
    }
    input.pools.push(Pool::new(net("10.65.0.0/16")));
    input
}

fn names(input: &Input) -> Vec<String> {
    plan(input)
        .unwrap()
        .sessions
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

#[test]
fn mesh_peers_every_other_node_with_one_active_side() {
    let p = plan(&cluster("n2")).unwrap();
    let got: Vec<_> = p
        .sessions
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.peer_type,
                s.passive,
                s.peer_node.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("Mesh_198_51_100_10", PeerType::Mesh, false, Some("n1")),
            ("Mesh_198_51_100_12", PeerType::Mesh, true, Some("n3")),
        ]
    );
    let s = &p.sessions[0];
    assert_eq!(s.peer_as.get(), 64512);
    assert!(s.is_internal());
    assert_eq!(s.source_address, Some(ip("198.51.100.11")));
    assert_eq!(p.router_id.to_string(), "198.51.100.11");
    assert_eq!(p.listen_port, 179);
}

#[test]
fn mesh_off_leaves_only_explicit_peers() {
    let mut input = cluster("n1");
    input.config = Some(serde_norway::from_str(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeToNodeMeshEnabled: false, asNumber: 64600}\n",
    ).unwrap());
    assert!(names(&input).is_empty());
    input.peers.push(peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 192.0.2.1, asNumber: 65001}\n",
    ));
    let p = plan(&input).unwrap();
    assert_eq!(p.sessions.len(), 1);
    assert_eq!(p.local_as.get(), 64600);
    assert!(render(&p).contains("  local as 64600;\n"));
    assert!(!p.sessions[0].is_internal());
}

#[test]
fn listen_port_is_bird_local_port_and_mesh_peers_port() {
    let mut input = cluster("n1");
    let mut config = BgpConfiguration::new("default");
    config.spec.listen_port = Some(1790);
    input.config = Some(config);
    let p = plan(&input).unwrap();
    assert_eq!(p.sessions[0].name, "Mesh_198_51_100_11_port_1790");
    let cfg = render(&p);
    assert!(cfg.contains("  local port 1790 as 64512;\n"), "{cfg}");
    assert!(cfg.contains("neighbor 198.51.100.11 port 1790 as 64512;"));
}

#[test]
fn global_peer_with_port_and_its_name() {
    let mut input = cluster("n3");
    input.peers.push(peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: '192.0.2.1:1790', asNumber: 65001, keepOriginalNextHop: true, maxRestartTime: 2m0s}\n",
    ));
    let p = plan(&input).unwrap();
    let s = p
        .session("Global_192_0_2_1_port_1790")
        .expect("global session");
    assert_eq!(s.peer_type.label(), "global");
    assert_eq!(s.port, Some(1790));
    assert_eq!(s.peer_as.get(), 65001);
    assert!(s.keep_original_next_hop);
    assert_eq!(s.restart_time.unwrap().as_secs(), 120);
    // 192.0.2.1 is not on n3's subnet: eBGP needs multihop.
    assert!(s.multihop);
    assert!(
        !p.session("Mesh_198_51_100_10").unwrap().multihop,
        "mesh peers share the subnet"
    );
    let cfg = render(&p);
    assert!(
        cfg.contains(
            "neighbor 192.0.2.1 port 1790 as 65001;\n  source address 198.51.100.12;\n  multihop;"
        ),
        "{cfg}"
    );
    assert!(cfg.contains("graceful restart time 120;"));
    assert!(cfg.contains("next hop keep;"));
}

#[test]
fn node_specific_peer_by_name_and_by_selector() {
    let by_name = peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: n2-tor}\nspec: {node: n2, peerIP: 192.0.2.2, asNumber: 65002}\n",
    );
    let by_selector = peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: rack-a}\nspec: {nodeSelector: rack == 'a', peerIP: 192.0.2.3, asNumber: 65003, sourceAddress: None}\n",
    );
    let mut input = cluster("n1");
    input.nodes[0].labels.insert("rack".into(), "a".into());
    input.peers = vec![by_name, by_selector];
    let p = plan(&input).unwrap();
    assert!(
        p.session("Node_192_0_2_2").is_none(),
        "n2's peer is not n1's"
    );
    let s = p.session("Node_192_0_2_3").expect("selected by rack label");
    assert_eq!(s.peer_type.label(), "node specific");
    assert_eq!(s.source_address, None);
    input.node = "n2".into();
    let p = plan(&input).unwrap();
    assert!(p.session("Node_192_0_2_2").is_some());
    assert!(p.session("Node_192_0_2_3").is_none());
}

#[test]
fn peer_selector_peers_with_selected_nodes() {
    let mut input = cluster("n1");
    input.config = Some(BgpConfiguration::new("default"));
    input
        .config
        .as_mut()
        .unwrap()
        .spec
        .node_to_node_mesh_enabled = Some(false);
    input.nodes[2]
        .labels
        .insert("route-reflector".into(), "true".into());
    input.peers.push(peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: to-rr}\nspec: {nodeSelector: all(), peerSelector: has(route-reflector)}\n",
    ));
    let p = plan(&input).unwrap();
    let got: Vec<_> = p
        .sessions
        .iter()
        .map(|s| (s.name.as_str(), s.peer_node.as_deref()))
        .collect();
    assert_eq!(got, [("Node_198_51_100_12", Some("n3"))]);
    assert_eq!(p.sessions[0].peer_as.get(), 64512);
    // The selected node peers back with every node the BGPPeer applies to.
    input.node = "n3".into();
    let p = plan(&input).unwrap();
    let got: Vec<_> = p
        .sessions
        .iter()
        .map(|s| s.peer_node.as_deref().unwrap())
        .collect();
    assert_eq!(got, ["n1", "n2"]);
    // A node neither side selects has no session.
    input.peers[0].spec.node_selector = Some("kubernetes.io/hostname == 'n1'".into());
    input.node = "n2".into();
    assert!(plan(&input).unwrap().sessions.is_empty());
}

#[test]
fn route_reflector_cluster() {
    let mut input = cluster("n3");
    input.config = Some(BgpConfiguration::new("default"));
    input
        .config
        .as_mut()
        .unwrap()
        .spec
        .node_to_node_mesh_enabled = Some(false);
    // n3 and a second reflector n4 in cluster 224.0.0.1; n1, n2 are clients.
    input.nodes.push(node(
        "n4",
        "ipv4Address: 198.51.100.13/24\nrouteReflectorClusterID: 224.0.0.1",
    ));
    for n in [2, 3] {
        input.nodes[n]
            .labels
            .insert("route-reflector".into(), "true".into());
        input.nodes[n]
            .bgp
            .as_mut()
            .unwrap()
            .route_reflector_cluster_id = Some("224.0.0.1".into());
    }
    input.peers.push(peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: peer-with-rr}\nspec: {nodeSelector: all(), peerSelector: has(route-reflector)}\n",
    ));
    input.peers.push(peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: rr-to-clients}\nspec: {nodeSelector: has(route-reflector), peerSelector: '!has(route-reflector)'}\n",
    ));
    let p = plan(&input).unwrap();
    let got: Vec<_> = p
        .sessions
        .iter()
        .map(|s| (s.peer_node.as_deref().unwrap(), s.rr_client))
        .collect();
    assert_eq!(got, [("n1", true), ("n2", true), ("n4", false)]);
    assert_eq!(p.rr_cluster_id.unwrap().to_string(), "224.0.0.1");
    let cfg = render(&p);
    assert_eq!(cfg.matches("rr client;").count(), 2);
    assert!(cfg.contains("rr cluster id 224.0.0.1;"));
    // A client has no cluster and reflects nothing.
    input.node = "n1".into();
    let p = plan(&input).unwrap();
    assert!(p.sessions.iter().all(|s| !s.rr_client));
    assert_eq!(p.sessions.len(), 2);
}

#[test]
fn exports_blocks_and_borrowed_but_not_from_disable_bgp_export_pools() {
    let mut input = cluster("n1");
    input
        .pools
        .push(Pool::new(net("10.66.0.0/16")).disable_bgp_export(true));
    input
        .pools
        .push(Pool::new(net("10.67.0.0/16")).vxlan(EncapMode::Always));
    input.blocks = vec![
        net("10.65.1.0/26"),
        net("10.66.1.0/26"),
        net("10.67.1.0/26"),
    ];
    input.borrowed = vec![
        net("10.65.2.9/32"),
        net("10.66.2.9/32"),
        net("10.65.1.5/32"),
    ];
    let p = plan(&input).unwrap();
    assert_eq!(p.v4.blocks, [net("10.65.1.0/26"), net("10.67.1.0/26")]);
    // Inside an own block: covered by the aggregate.
    assert_eq!(p.v4.borrowed, [net("10.65.2.9/32")]);
    // The kernel gets blackholes and learned routes of unencapsulated pools only.
    assert_eq!(
        p.v4.kernel_blackholes,
        [net("10.65.1.0/26"), net("10.66.1.0/26")]
    );
    assert_eq!(p.v4.kernel, [net("10.65.0.0/16"), net("10.66.0.0/16")]);
    assert_eq!(p.v4.reexport, [net("10.65.0.0/16"), net("10.67.0.0/16")]);
    let cfg = render(&p);
    assert!(
        cfg.contains("net ~ [ 10.65.1.0/26, 10.67.1.0/26 ] then accept"),
        "{cfg}"
    );
    assert!(cfg.contains("route 10.66.1.0/26 blackhole;"));
}

#[test]
fn service_cidrs_are_exported() {
    let mut input = cluster("n1");
    input.config = Some(serde_norway::from_str(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec:\n  serviceClusterIPs: [{cidr: 10.96.0.0/12}]\n  serviceExternalIPs: [{cidr: 203.0.113.0/24}]\n  serviceLoadBalancerIPs: [{cidr: 2001:db8:5::/112}]\n",
    ).unwrap());
    let p = plan(&input).unwrap();
    assert_eq!(p.v4.services, [net("10.96.0.0/12"), net("203.0.113.0/24")]);
    assert_eq!(p.v6.services, [net("2001:db8:5::/112")]);
    let cfg = render(&p);
    assert!(cfg.contains("route 10.96.0.0/12 blackhole;"));
    assert!(cfg.contains("protocol static calinet_announce6"));
}

#[test]
fn ipv6_sessions_are_separate() {
    let mut input = Input::new("a");
    input.nodes.push(node(
        "a",
        "ipv4Address: 198.51.100.10/24\nipv6Address: 2001:db8::a/64",
    ));
    input.nodes.push(node(
        "b",
        "ipv4Address: 198.51.100.11/24\nipv6Address: 2001:db8::b/64",
    ));
    input.nodes.push(node("c", "ipv4Address: 198.51.100.12/24"));
    input.pools.push(Pool::new(net("fd00:65::/48")));
    input.blocks.push(net("fd00:65:0:1::/122"));
    let p = plan(&input).unwrap();
    let got: Vec<_> = p
        .sessions
        .iter()
        .map(|s| (s.name.as_str(), s.family))
        .collect();
    assert_eq!(
        got,
        [
            ("Mesh_198_51_100_11", Family::V4),
            ("Mesh_198_51_100_12", Family::V4),
            ("Mesh_2001_db8__b", Family::V6),
        ]
    );
    assert_eq!(p.sessions[2].source_address, Some(ip("2001:db8::a")));
    let cfg = render(&p);
    assert!(cfg.contains("protocol kernel calinet_kernel6"));
    assert!(cfg.contains("import filter calinet_from_peers6;"));
    assert!(cfg.contains("route fd00:65:0:1::/122 blackhole;"));
}

#[test]
fn imports_pool_routes_only() {
    let p = plan(&cluster("n1")).unwrap();
    assert_eq!(p.v4.import, [net("10.65.0.0/16")]);
    let cfg = render(&p);
    let filter = cfg
        .split("filter calinet_from_peers4 {")
        .nth(1)
        .unwrap()
        .split('}')
        .next()
        .unwrap();
    assert_eq!(
        filter.trim(),
        "if net ~ [ 10.65.0.0/16+ ] then accept;\n  reject;",
        "only pool routes, never a default route or a node subnet"
    );
    let mut input = cluster("n1");
    input.pools.push(Pool::new(net("0.0.0.0/0")));
    assert!(matches!(
        plan(&input),
        Err(Error::Invalid {
            field: "spec.cidr",
            ..
        })
    ));
}

#[test]
fn passwords_come_from_secrets_and_are_redacted() {
    let mut input = cluster("n1");
    input.peers.push(peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec:\n  peerIP: 192.0.2.1\n  asNumber: 65001\n  password: {secretKeyRef: {name: bgp-secrets, key: tor}}\n",
    ));
    let err = plan(&input).unwrap_err();
    assert_eq!(
        err.to_string(),
        "BGPPeer tor: spec.password.secretKeyRef bgp-secrets/tor was not provided"
    );
    input.secrets.insert(
        SecretKeyRef::new("bgp-secrets", "tor"),
        Password::new("s3cret").unwrap(),
    );
    let p = plan(&input).unwrap();
    let s = p.session("Global_192_0_2_1").unwrap();
    assert!(!format!("{s:?}").contains("s3cret"));
    assert!(render(&p).contains("password \"s3cret\";"));
    assert!(Password::new("bad\"quote").is_err());
}

#[test]
fn rendering_is_deterministic() {
    let mut input = cluster("n1");
    input.blocks = vec![net("10.65.3.0/26"), net("10.65.1.0/26")];
    let a = render(&plan(&input).unwrap());
    input.blocks.reverse();
    input.nodes.reverse();
    assert_eq!(a, render(&plan(&input).unwrap()));
}

fn first_error(input: &Input) -> String {
    plan(input).unwrap_err().to_string()
}

#[test]
fn validation_errors_name_resource_and_field() {
    let base = cluster("n1");
    let with_peer = |spec: &str| {
        let mut i = base.clone();
        i.peers.push(peer(&format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: p}}\nspec: {spec}\n"
        )));
        first_error(&i)
    };
    assert_eq!(
        with_peer("{peerIP: 192.0.2.1, asNumber: 0}"),
        "BGPPeer p: field spec.asNumber = \"0\": AS number 0 is reserved; use 1..=4294967295"
    );
    assert_eq!(
        with_peer("{peerIP: 192.0.2.300, asNumber: 1}"),
        "BGPPeer p: field spec.peerIP = \"192.0.2.300\": must be an IP, IP:port or [IPv6]:port"
    );
    // An IPv6 address without brackets is an address, never address:port.
    let mut v6 = base.clone();
    v6.peers.push(peer(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: '2001:db8::1:1790', asNumber: 1}\n",
    ));
    let s = &plan(&v6).unwrap().sessions[0];
    assert_eq!((s.peer_address, s.port), (ip("2001:db8::1:1790"), None));
    assert_eq!(
        with_peer("{peerSelector: 'has(rr', nodeSelector: all()}"),
        "BGPPeer p: field spec.peerSelector: invalid selector"
    );
    assert!(with_peer("{peerIP: 192.0.2.1}").contains("spec.asNumber"));
    assert!(with_peer("{asNumber: 1}").contains("one of peerIP and peerSelector"));
    // Out of range AS numbers fail while reading the YAML.
    let e = serde_norway::from_str::<BgpPeer>(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 192.0.2.1, asNumber: 4294967296}\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("must be 1..=4294967295"), "{e}");

    let mut dup = base.clone();
    for name in ["a", "b"] {
        dup.peers.push(peer(&format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec: {{peerIP: 192.0.2.1, asNumber: 65001}}\n"
        )));
    }
    assert_eq!(
        first_error(&dup),
        "BGPPeer a and BGPPeer b both peer node n1 with 192.0.2.1"
    );

    let mut rr = base.clone();
    rr.nodes[1].bgp.as_mut().unwrap().route_reflector_cluster_id = Some("not-an-ip".into());
    assert_eq!(
        first_error(&rr),
        "Node n2: field spec.bgp.routeReflectorClusterID = \"not-an-ip\": must be an IPv4 address such as 224.0.0.1"
    );
    let mut cfg = base.clone();
    cfg.config = Some(BgpConfiguration::new("default"));
    cfg.config.as_mut().unwrap().spec.as_number = Some("0".parse().unwrap());
    assert!(first_error(&cfg).starts_with("BGPConfiguration default: field spec.asNumber"));
    let mut none = base.clone();
    none.nodes[0].bgp = None;
    assert!(first_error(&none).contains("spec.bgp.ipv4Address is not set"));
    let mut unknown = base;
    unknown.node = "nx".into();
    assert!(first_error(&unknown).contains("Node nx: not among the 3 nodes"));
}

#[test]
fn calico_yaml_round_trips_with_calico_field_names() {
    let yaml = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: rack1-tor\nspec:\n  nodeSelector: rack == 'rack-1'\n  peerIP: '[2001:db8::1]:1790'\n  asNumber: '1.10'\n  sourceAddress: UseNodeIP\n  maxRestartTime: 90s\n";
    let p: BgpPeer = serde_norway::from_str(yaml).unwrap();
    assert_eq!(p.spec.as_number.unwrap().get(), 65546);
    p.validate().unwrap();
    let back = serde_json::to_value(&p).unwrap();
    assert_eq!(back["spec"]["peerIP"], "[2001:db8::1]:1790");
    assert_eq!(back["spec"]["nodeSelector"], "rack == 'rack-1'");
    assert_eq!(back["spec"]["maxRestartTime"], "90s");
    let n: NodeBgpSpec = serde_norway::from_str(
        "ipv4Address: 192.168.10.10/24\nasNumber: 64513\nrouteReflectorClusterID: 224.0.0.1\n",
    )
    .unwrap();
    let v = serde_json::to_value(&n).unwrap();
    assert_eq!(v["ipv4Address"], "192.168.10.10/24");
    assert_eq!(v["routeReflectorClusterID"], "224.0.0.1");
    let c = BgpConfiguration::new("default");
    assert!(c.spec.mesh_enabled());
    assert_eq!(c.spec.as_number().get(), 64512);
    assert_eq!(c.spec.listen_port(), 179);
}
