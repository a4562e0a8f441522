//! Real BIRD in network namespaces: a three-node mesh built with testlab, each
//! node's BIRD run by the controller with the rendered configuration.
//! Needs root and `bird` (Debian `bird2`); skips visibly otherwise.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{bird_routes, net, wait_established, wait_routes};

use calinet_bgp::{
    Applied, Bird, BirdProcess, Controller, Input, NodeBgpSpec, NodeInfo, PeerType, Pool,
    node_status, plan, render,
};
use ipnet::IpNet;

const POOL: &str = "10.65.0.0/16";

struct Cluster {
    nodes: Vec<(String, String)>, // (name, CIDR on the underlay)
    blocks: Vec<Vec<IpNet>>,
}

impl Cluster {
    fn config(&self, i: usize) -> String {
        render(&self.plan(i))
    }

    fn plan(&self, i: usize) -> calinet_bgp::Plan {
        let mut input = Input::new(self.nodes[i].0.clone());
        for (name, addr) in &self.nodes {
            input.nodes.push(NodeInfo::new(
                name.clone(),
                NodeBgpSpec::ipv4(addr.parse().unwrap()),
            ));
        }
        input.pools.push(Pool::new(POOL.parse().unwrap()));
        input.blocks = self.blocks[i].clone();
        plan(&input).expect("valid plan")
    }
}

#[test]
fn three_node_mesh_in_namespaces() {
    testlab::require_root!();
    if !common::have_bird() {
        return;
    }
    let lab = testlab::Lab::new("three_node_mesh").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let runtime = tempfile::tempdir().unwrap();
    let mut cluster = Cluster {
        nodes: Vec::new(),
        blocks: Vec::new(),
    };
    let mut netns = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].into_iter().enumerate() {
        let addr = format!("198.51.100.{}", 10 + i);
        let node = lab.node(name, &seg, addr.parse().unwrap()).unwrap();
        cluster.nodes.push((name.into(), format!("{addr}/24")));
        cluster
            .blocks
            .push(vec![net(&format!("10.65.{}.0/26", i + 1))]);
        netns.push(node.ns.clone());
    }
    // Declared after the lab: dropped (BIRD killed) before its namespaces go.
    let mut birds: Vec<Controller<BirdProcess>> = netns
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            Controller::new(
                BirdProcess::new(runtime.path().join(format!("n{}", i + 1))).in_netns(ns.name()),
            )
        })
        .collect();
    for (i, c) in birds.iter_mut().enumerate() {
        assert_eq!(
            c.apply(&cluster.config(i), Instant::now()).unwrap(),
            Applied::Started
        );
    }

    // Every session comes up and every node learns the others' blocks.
    for (i, c) in birds.iter_mut().enumerate() {
        wait_established(c, 2, &format!("n{} sessions", i + 1));
        let protocols = c.protocols().unwrap();
        let mut names: Vec<_> = protocols
            .iter()
            .filter(|p| p.proto == "BGP")
            .map(|p| p.name.clone())
            .collect();
        names.sort();
        let want: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("Mesh_198_51_100_{}", 10 + j))
            .collect();
        assert_eq!(names, want);
        // What `calicoctl node status` shows.
        let rows = node_status(&cluster.plan(i), &protocols);
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert_eq!(
                (row.peer_type, row.state.as_str(), row.info.as_str()),
                (PeerType::Mesh, "up", "Established")
            );
        }
    }
    let expect = |i: usize, cluster: &Cluster, without: &[usize]| -> BTreeSet<IpNet> {
        let mut want: BTreeSet<IpNet> = cluster.blocks[i].iter().copied().collect(); // own blackholes
        for (j, blocks) in cluster.blocks.iter().enumerate() {
            if j != i && !without.contains(&j) {
                want.extend(blocks.iter().copied());
            }
        }
        want
    };
    for (i, ns) in netns.iter().enumerate() {
        wait_routes(
            ns,
            &expect(i, &cluster, &[]),
            &format!("n{} kernel routes", i + 1),
        );
    }
    let remote = netns[0].routes().unwrap();
    let r = testlab::ipjson::routes_to(&remote, "10.65.2.0/26");
    assert_eq!(r[0].gateway.as_deref(), Some("198.51.100.11"), "{r:?}");
    assert_eq!(r[0].dev.as_deref(), Some("eth0"));

    // A new block on n1 is applied with `configure`, BIRD keeps running.
    let pid = birds[0].bird_mut().pid().unwrap();
    cluster.blocks[0].push(net("10.65.4.0/26"));
    let cfg = cluster.config(0);
    assert_eq!(
        birds[0].apply(&cfg, Instant::now()).unwrap(),
        Applied::Reconfigured
    );
    assert_eq!(
        birds[0].apply(&cfg, Instant::now()).unwrap(),
        Applied::Unchanged
    );
    for (i, ns) in netns.iter().enumerate() {
        wait_routes(
            ns,
            &expect(i, &cluster, &[]),
            &format!("n{} sees the new block", i + 1),
        );
    }
    assert_eq!(
        birds[0].bird_mut().pid(),
        Some(pid),
        "configure must not restart BIRD"
    );
    wait_established(&mut birds[0], 2, "n1 sessions after configure");

    // BIRD on n2 crashes: its kernel routes stay, and so do its routes on the
    // others (graceful restart); the controller restarts it.
    birds[1].bird_mut().kill();
    assert!(!birds[1].bird_mut().is_running());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            bird_routes(&netns[1]),
            expect(1, &cluster, &[]),
            "n2 kernel during outage"
        );
        assert_eq!(
            bird_routes(&netns[0]),
            expect(0, &cluster, &[]),
            "n1 kernel during outage"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        birds[1].ensure_running(Instant::now()).unwrap(),
        Applied::Restarted
    );
    wait_established(&mut birds[1], 2, "n2 sessions after restart");
    for (i, ns) in netns.iter().enumerate() {
        wait_routes(
            ns,
            &expect(i, &cluster, &[]),
            &format!("n{} after n2 restart", i + 1),
        );
    }

    // n3 is deleted: its BIRD stops and the others drop its peer; its routes
    // are withdrawn everywhere.
    let before = bird_routes(&netns[2]);
    birds[2].stop().unwrap();
    // `persist`: a clean shutdown leaves BIRD's kernel routes in place.
    assert!(!birds[2].bird_mut().is_running());
    assert_eq!(
        bird_routes(&netns[2]),
        before,
        "n3 keeps its routes after BIRD stops"
    );
    cluster.nodes.truncate(2);
    cluster.blocks.truncate(2);
    for (i, c) in birds.iter_mut().take(2).enumerate() {
        assert_eq!(
            c.apply(&cluster.config(i), Instant::now()).unwrap(),
            Applied::Reconfigured
        );
    }
    for (i, ns) in netns.iter().take(2).enumerate() {
        wait_routes(
            ns,
            &expect(i, &cluster, &[]),
            &format!("n{} after n3 left", i + 1),
        );
        assert!(!bird_routes(ns).contains(&net("10.65.3.0/26")));
    }
    for c in birds.iter_mut().take(2) {
        wait_established(c, 1, "one session left");
    }
}
