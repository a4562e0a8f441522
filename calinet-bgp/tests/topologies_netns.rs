//! Real BIRD in network namespaces beyond the plain mesh: a route reflector,
//! an IPv6 mesh, an eBGP top-of-rack router with a TCP-MD5 password, and an
//! agent restart that adopts the running BIRD. Needs root and `bird`.

mod common;

use std::collections::BTreeSet;
use std::time::Instant;

use calinet_bgp::{
    Applied, BgpConfiguration, BgpPeer, Bird, BirdProcess, Controller, Input, NodeBgpSpec,
    NodeInfo, Pool, plan, read_secrets, render,
};
use common::{bird_routes, net, wait_established, wait_routes, wait_routes_of};

fn bird(dir: &std::path::Path, name: &str, ns: &testlab::Netns) -> Controller<BirdProcess> {
    Controller::new(BirdProcess::new(dir.join(name)).in_netns(ns.name()))
}

#[test]
fn route_reflector_reflects_between_clients() {
    testlab::require_root!();
    if !common::have_bird() {
        return;
    }
    let lab = testlab::Lab::new("bgp_rr").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let names = ["n1", "n2", "rr"];
    let nodes: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            lab.node(n, &seg, format!("198.51.100.{}", 10 + i).parse().unwrap())
                .unwrap()
        })
        .collect();
    let mut input = Input::new("");
    for (i, n) in names.iter().enumerate() {
        let mut bgp = NodeBgpSpec::ipv4(format!("198.51.100.{}/24", 10 + i).parse().unwrap());
        let mut info = NodeInfo::new(*n, NodeBgpSpec::default());
        if *n == "rr" {
            bgp.route_reflector_cluster_id = Some("224.0.0.1".into());
            info.labels.insert("route-reflector".into(), "true".into());
        }
        info.bgp = Some(bgp);
        input.nodes.push(info);
    }
    let mut config = BgpConfiguration::new("default");
    config.spec.node_to_node_mesh_enabled = Some(false);
    input.config = Some(config);
    let mut peer = BgpPeer::new("peer-with-rr");
    peer.spec.node_selector = Some("all()".into());
    peer.spec.peer_selector = Some("has(route-reflector)".into());
    input.peers.push(peer);
    input.pools.push(Pool::new(net("10.65.0.0/16")));
    let blocks = ["10.65.1.0/26", "10.65.2.0/26", "10.65.3.0/26"];
    let mut birds: Vec<_> = nodes
        .iter()
        .map(|n| bird(runtime.path(), &n.name, n))
        .collect();
    for (i, c) in birds.iter_mut().enumerate() {
        let mut input = input.clone();
        input.node = names[i].into();
        input.blocks = vec![net(blocks[i])];
        let plan = plan(&input).unwrap();
        assert_eq!(plan.sessions.len(), if i == 2 { 2 } else { 1 });
        c.apply(&render(&plan), Instant::now()).unwrap();
    }
    wait_established(&mut birds[2], 2, "reflector's sessions");
    for (i, n) in nodes.iter().enumerate() {
        let want: BTreeSet<_> = blocks.iter().map(|b| net(b)).collect();
        wait_routes(n, &want, &format!("{} routes", names[i]));
    }
    // n1 learns n2's block through the reflector, with n2 as the next hop.
    let routes = nodes[0].routes().unwrap();
    let r = testlab::ipjson::routes_to(&routes, "10.65.2.0/26");
    assert_eq!(r[0].gateway.as_deref(), Some("198.51.100.11"), "{r:?}");
}

#[test]
fn ipv6_mesh_programs_ipv6_routes() {
    testlab::require_root!();
    if !common::have_bird() {
        return;
    }
    let lab = testlab::Lab::new("bgp_v6").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let mut input = Input::new("");
    let mut nodes = Vec::new();
    for i in 0..2 {
        let n = lab
            .node(
                &format!("n{i}"),
                &seg,
                format!("198.51.100.{}", 10 + i).parse().unwrap(),
            )
            .unwrap();
        let v6 = format!("2001:db8::{:x}/64", 10 + i);
        n.ip(&["-6", "addr", "add", &v6, "dev", "eth0", "nodad"])
            .unwrap();
        let mut bgp = NodeBgpSpec::ipv4(format!("198.51.100.{}/24", 10 + i).parse().unwrap());
        bgp.ipv6_address = Some(v6.parse().unwrap());
        input.nodes.push(NodeInfo::new(format!("n{i}"), bgp));
        nodes.push(n);
    }
    input.pools.push(Pool::new(net("10.65.0.0/16")));
    input.pools.push(Pool::new(net("fd00:65::/48")));
    let blocks = [
        ["10.65.1.0/26", "fd00:65:0:1::/122"],
        ["10.65.2.0/26", "fd00:65:0:2::/122"],
    ];
    let mut birds: Vec<_> = nodes
        .iter()
        .map(|n| bird(runtime.path(), &n.name, n))
        .collect();
    for (i, c) in birds.iter_mut().enumerate() {
        let mut input = input.clone();
        input.node = format!("n{i}");
        input.blocks = blocks[i].iter().map(|b| net(b)).collect();
        c.apply(&render(&plan(&input).unwrap()), Instant::now())
            .unwrap();
    }
    for c in &mut birds {
        wait_established(c, 2, "one IPv4 and one IPv6 session");
    }
    let want6: BTreeSet<_> = ["fd00:65:0:1::/122", "fd00:65:0:2::/122"]
        .iter()
        .map(|b| net(b))
        .collect();
    for n in &nodes {
        wait_routes_of(n, "6", &want6, "IPv6 routes");
    }
    let routes = nodes[0].routes6().unwrap();
    let r = testlab::ipjson::routes_to(&routes, "fd00:65:0:2::/122");
    assert_eq!(r[0].gateway.as_deref(), Some("2001:db8::b"), "{r:?}");
}

#[test]
fn ebgp_top_of_rack_with_password() {
    testlab::require_root!();
    if !common::have_bird() {
        return;
    }
    let lab = testlab::Lab::new("bgp_tor").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let n1 = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let tor = lab
        .node("tor", &seg, "198.51.100.50".parse().unwrap())
        .unwrap();

    // The ToR: a plain BIRD with a hand-written config, AS 65001.
    let mut tor_bird = BirdProcess::new(runtime.path().join("tor")).in_netns(tor.name());
    tor_bird
        .write_config(
            "router id 198.51.100.50;\nprotocol device {}\n\
             protocol kernel { ipv4 { import none; export all; }; }\n\
             protocol bgp n1 {\n  local as 65001;\n  neighbor 198.51.100.10 as 64512;\n  \
             password \"rack-secret\";\n  ipv4 { import all; export none; };\n}\n",
        )
        .unwrap();
    tor_bird.start(false).unwrap();

    // The node's side from Calico resources, the password from a secret file.
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir(secrets.path().join("bgp-secrets")).unwrap();
    std::fs::write(secrets.path().join("bgp-secrets/tor"), "rack-secret\n").unwrap();
    let peer: BgpPeer = serde_norway::from_str(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec:\n  peerIP: 198.51.100.50\n  asNumber: 65001\n  password: {secretKeyRef: {name: bgp-secrets, key: tor}}\n",
    )
    .unwrap();
    let mut input = Input::new("n1");
    input.nodes.push(NodeInfo::new(
        "n1",
        NodeBgpSpec::ipv4("198.51.100.10/24".parse().unwrap()),
    ));
    input.pools.push(Pool::new(net("10.65.0.0/16")));
    input.blocks.push(net("10.65.1.0/26"));
    input.secrets = read_secrets(secrets.path(), std::slice::from_ref(&peer)).unwrap();
    input.peers.push(peer);
    let plan = plan(&input).unwrap();
    assert_eq!(plan.sessions[0].name, "Global_198_51_100_50");
    let mut c = bird(runtime.path(), "n1", &n1);
    c.apply(&render(&plan), Instant::now()).unwrap();
    wait_established(&mut c, 1, "eBGP session with the ToR");
    let want: BTreeSet<_> = [net("10.65.1.0/26")].into();
    wait_routes(&tor, &want, "the ToR learns n1's block");
    let routes = tor.routes().unwrap();
    let r = testlab::ipjson::routes_to(&routes, "10.65.1.0/26");
    assert_eq!(r[0].gateway.as_deref(), Some("198.51.100.10"));
    // The node imports nothing from outside its pools: the ToR sends nothing.
    assert_eq!(bird_routes(&n1), want, "only n1's own blackhole");

    // The password is enforced: with another one on the ToR, no session.
    tor_bird
        .write_config(
            &std::fs::read_to_string(tor_bird.config_path())
                .unwrap()
                .replace("rack-secret", "other"),
        )
        .unwrap();
    tor_bird.configure().unwrap();
    testlab::wait_for("session drops", std::time::Duration::from_secs(20), || {
        Ok(!c.protocols().unwrap().iter().any(|p| p.is_established()))
    })
    .unwrap();
    let t = Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(8) {
        assert!(
            !c.protocols().unwrap().iter().any(|p| p.is_established()),
            "established with a wrong password"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Stops an adopted BIRD (which no child handle kills) when the test ends.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let timeout = std::time::Duration::from_secs(5);
        if let Ok(mut s) = calinet_bgp::ControlSocket::connect(&self.0, timeout) {
            let _ = s.down();
        }
    }
}

#[test]
fn a_restarted_agent_adopts_the_running_bird() {
    testlab::require_root!();
    if !common::have_bird() {
        return;
    }
    let lab = testlab::Lab::new("bgp_adopt").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let n1 = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let mut input = Input::new("n1");
    input.nodes.push(NodeInfo::new(
        "n1",
        NodeBgpSpec::ipv4("198.51.100.10/24".parse().unwrap()),
    ));
    input.pools.push(Pool::new(net("10.65.0.0/16")));
    input.blocks.push(net("10.65.1.0/26"));
    let mut first = bird(runtime.path(), "n1", &n1);
    assert_eq!(
        first
            .apply(&render(&plan(&input).unwrap()), Instant::now())
            .unwrap(),
        Applied::Started
    );
    let pid = first.bird_mut().pid().unwrap();
    let _down = Down(first.bird().socket_path());
    first.bird_mut().detach();
    drop(first);

    let mut second = bird(runtime.path(), "n1", &n1);
    assert!(second.bird_mut().is_running(), "the detached BIRD answers");
    assert_eq!(second.bird_mut().pid(), Some(pid));
    input.blocks.push(net("10.65.9.0/26"));
    assert_eq!(
        second
            .apply(&render(&plan(&input).unwrap()), Instant::now())
            .unwrap(),
        Applied::Reconfigured
    );
    assert_eq!(second.bird_mut().pid(), Some(pid), "adopted, not restarted");
    let want: BTreeSet<_> = [net("10.65.1.0/26"), net("10.65.9.0/26")].into();
    wait_routes(&n1, &want, "both blackholes");
    second.stop().unwrap();
    assert!(!second.bird_mut().is_running());
}

#[test]
fn mesh_on_a_custom_listen_port() {
    testlab::require_root!();
    if !common::have_bird() {
        return;
    }
    let lab = testlab::Lab::new("bgp_port").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let mut input = Input::new("");
    let mut config = BgpConfiguration::new("default");
    config.spec.listen_port = Some(1790);
    input.config = Some(config);
    input.pools.push(Pool::new(net("10.65.0.0/16")));
    let mut nodes = Vec::new();
    for i in 0..2 {
        let addr = format!("198.51.100.{}", 10 + i);
        nodes.push(
            lab.node(&format!("n{i}"), &seg, addr.parse().unwrap())
                .unwrap(),
        );
        input.nodes.push(NodeInfo::new(
            format!("n{i}"),
            NodeBgpSpec::ipv4(format!("{addr}/24").parse().unwrap()),
        ));
    }
    let mut birds: Vec<_> = nodes
        .iter()
        .map(|n| bird(runtime.path(), &n.name, n))
        .collect();
    for (i, c) in birds.iter_mut().enumerate() {
        let mut input = input.clone();
        input.node = format!("n{i}");
        input.blocks = vec![net(&format!("10.65.{i}.0/26"))];
        c.apply(&render(&plan(&input).unwrap()), Instant::now())
            .unwrap();
    }
    wait_established(&mut birds[0], 1, "session on port 1790");
    let listening = nodes[0].exec("ss", &["-Htln", "sport = :1790"]).unwrap();
    assert!(!listening.trim().is_empty(), "BIRD listens on 1790");
    let on_179 = nodes[0].exec("ss", &["-Htln", "sport = :179"]).unwrap();
    assert!(on_179.trim().is_empty(), "nothing on 179: {on_179}");
    let want: BTreeSet<_> = [net("10.65.0.0/26"), net("10.65.1.0/26")].into();
    wait_routes(&nodes[0], &want, "routes over port 1790");
}

#[test]
fn pods_reach_each_other_over_bgp_routes_including_borrowed_addresses() {
    testlab::require_root!();
    if !common::have_bird() {
        return;
    }
    let lab = testlab::Lab::new("bgp_pods").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let mut input = Input::new("");
    input.pools.push(Pool::new(net("10.65.0.0/16")));
    let mut nodes = Vec::new();
    for i in 0..3 {
        let addr = format!("198.51.100.{}", 10 + i);
        nodes.push(
            lab.node(&format!("n{i}"), &seg, addr.parse().unwrap())
                .unwrap(),
        );
        input.nodes.push(NodeInfo::new(
            format!("n{i}"),
            NodeBgpSpec::ipv4(format!("{addr}/24").parse().unwrap()),
        ));
    }
    // A VXLAN pool: its routes are calinet-route's; BIRD only carries them.
    input
        .pools
        .push(Pool::new(net("10.66.0.0/16")).vxlan(calinet_bgp::EncapMode::Always));
    // n0 and n1 own a block each (n1 one more in the VXLAN pool); n2 owns
    // none and borrows 10.65.0.9 from n0's.
    let blocks = [
        vec![net("10.65.0.0/26")],
        vec![net("10.65.1.0/26"), net("10.66.1.0/26")],
        vec![],
    ];
    let borrowed = [vec![], vec![], vec![net("10.65.0.9/32")]];
    let pods = [
        ("10.65.0.5", "cali0a"),
        ("10.65.1.5", "cali1a"),
        ("10.65.0.9", "cali2a"),
    ];
    let mut pod_ns = Vec::new();
    for (i, (addr, host_if)) in pods.iter().enumerate() {
        let pod = lab.pod(&format!("p{i}")).unwrap();
        lab.plumb_pod(&nodes[i], &pod, host_if, addr.parse().unwrap())
            .unwrap();
        pod_ns.push(pod);
    }
    let mut birds: Vec<_> = nodes
        .iter()
        .map(|n| bird(runtime.path(), &n.name, n))
        .collect();
    for (i, c) in birds.iter_mut().enumerate() {
        let mut input = input.clone();
        input.node = format!("n{i}");
        input.blocks = blocks[i].clone();
        input.borrowed = borrowed[i].clone();
        c.apply(&render(&plan(&input).unwrap()), Instant::now())
            .unwrap();
    }
    let all: BTreeSet<_> = [
        net("10.65.0.0/26"),
        net("10.65.1.0/26"),
        net("10.65.0.9/32"),
    ]
    .into();
    for (i, n) in nodes.iter().enumerate() {
        // Every node has every BIRD route except its own borrowed /32 (that
        // one is the workload's route, calinet-route's, not BIRD's).
        let mut want = all.clone();
        for b in &borrowed[i] {
            want.remove(b);
        }
        wait_routes(n, &want, &format!("n{i} routes"));
    }
    // BIRD learned the VXLAN pool's block but kept it out of the kernel.
    testlab::wait_for(
        "n0's BIRD learns the VXLAN block",
        std::time::Duration::from_secs(20),
        || {
            let learned = birds[0].routes().unwrap();
            Ok(learned
                .iter()
                .any(|r| r.net == net("10.66.1.0/26") && r.protocol == "Mesh_198_51_100_11"))
        },
    )
    .unwrap();
    assert!(testlab::ipjson::routes_to(&nodes[0].routes().unwrap(), "10.66.1.0/26").is_empty());
    assert!(testlab::ipjson::routes_to(&nodes[1].routes().unwrap(), "10.66.1.0/26").is_empty());
    let timeout = std::time::Duration::from_secs(3);
    // Across nodes over the BGP routes, and to the borrowed address.
    assert!(
        pod_ns[0].ping("10.65.1.5".parse().unwrap(), timeout),
        "p0 -> p1"
    );
    assert!(
        pod_ns[1].ping("10.65.0.9".parse().unwrap(), timeout),
        "p1 -> p2 (borrowed)"
    );
    assert!(
        pod_ns[0].ping("10.65.0.9".parse().unwrap(), timeout),
        "p0 -> p2 (borrowed, in p0's node's block)"
    );
    // The workload route of the borrowed address on n2 is untouched.
    let routes = nodes[2].routes().unwrap();
    let r = testlab::ipjson::routes_to(&routes, "10.65.0.9");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].dev.as_deref(), Some("cali2a"));
}
