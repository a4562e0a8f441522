//! BGP in the lab (root, bird2): direct mode with the node-to-node mesh only
//! (same-subnet pods connect, the pair across subnets fails with the request
//! seen leaving the node), the router peering that fixes it, BIRD killed
//! under a running agent, a deleted Node, and a route reflector. Every BIRD
//! the lab started is gone after it.

use std::time::{Duration, Instant};

use calinet_lab::cli::UpArgs;
use calinet_lab::cluster::RunningLab;
use calinet_lab::probe::{ObservedPath, Probe};
use calinet_lab::state::Mode;

fn agent_bin() -> std::path::PathBuf {
    let bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_calinet-lab")).with_file_name("calinet-agent");
    assert!(
        bin.is_file(),
        "{} is missing: build it with cargo build -p calinet-agent",
        bin.display()
    );
    bin
}

fn have_bird() -> bool {
    if testlab::cmd::have("bird") {
        return true;
    }
    testlab::skip::skip("bird (Debian bird2) is not installed");
    false
}

/// Live processes whose command line mentions `dir` (BIRDs of one lab).
fn processes_under(dir: &std::path::Path) -> Vec<u32> {
    let dir = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| testlab::cmdline(*pid).iter().any(|w| w.contains(&dir)))
        .filter(|pid| testlab::is_alive(*pid))
        .collect()
}

fn bird_processes_under(dir: &std::path::Path) -> Vec<u32> {
    processes_under(dir)
        .into_iter()
        .filter(|pid| {
            testlab::cmdline(*pid)
                .first()
                .is_some_and(|c| c.ends_with("bird"))
        })
        .collect()
}

fn up(dir: &std::path::Path, peer_router: bool, rr: Option<&str>) -> RunningLab {
    let mut args = UpArgs::new(Mode::Direct, dir.join("lab"));
    args.agent_bin = Some(agent_bin());
    args.peer_router = peer_router;
    args.route_reflector = rr.map(str::to_owned);
    RunningLab::up(&args).expect("lab up")
}

fn on_w0(p: &Probe) -> bool {
    p.from == "web-k8s-w0" || p.to == "web-k8s-w0"
}

/// The seed's same-node pair (two pods on k8s-w1): only the cali interfaces
/// see it, whatever the mode.
fn same_node(p: &Probe) -> bool {
    p.from.ends_with("k8s-w1") && p.to.ends_with("k8s-w1")
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn router_bird_routes(lab: &RunningLab) -> Vec<String> {
    lab.routes("router")
        .unwrap()
        .lines()
        .filter(|l| l.contains("proto bird"))
        .map(str::to_owned)
        .collect()
}

fn all_pairs_direct(lab: &RunningLab, what: &str) {
    let r = lab.report().expect("report");
    println!("{what}:\n{}", r.text);
    assert_eq!(r.probes.len(), 25, "5 pods x (4 pods + outside)");
    for p in &r.probes {
        assert!(p.reachable, "{what}: {} -> {} unreachable", p.from, p.to);
        let want = if p.to == "outside" {
            ObservedPath::Masqueraded
        } else if same_node(p) {
            ObservedPath::SameNode
        } else {
            ObservedPath::Direct
        };
        assert_eq!(p.path, want, "{what}: {} -> {}", p.from, p.to);
    }
}

#[test]
fn direct_mesh_fails_across_subnets_router_peering_fixes_it_and_bird_faults() {
    testlab::require!(testlab::Feature::Tcpdump, testlab::Feature::Nftables);
    if !have_bird() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = up(dir.path(), false, None);

    // Mesh only: k8s-w0 is alone on 203.0.113.0/24; its BIRD's routes to the
    // other blocks resolve through the router, which knows no block.
    let r = lab.report().expect("report");
    println!("mesh only:\n{}", r.text);
    for p in r.probes.iter().filter(|p| p.to != "outside") {
        if on_w0(p) {
            assert!(!p.reachable, "{} -> {} must fail", p.from, p.to);
            assert_eq!(p.path, ObservedPath::Direct, "request seen leaving");
        } else if same_node(p) {
            assert!(p.reachable, "{} -> {} same node", p.from, p.to);
            assert_eq!(p.path, ObservedPath::SameNode);
        } else {
            assert!(p.reachable, "{} -> {} same subnet", p.from, p.to);
            assert_eq!(p.path, ObservedPath::Direct);
        }
    }
    assert!(
        r.text.contains("FAIL (request left k8s-w1, no reply)"),
        "{}",
        r.text
    );
    assert!(router_bird_routes(&lab).is_empty(), "router not peered");
    // Every route to another block is BIRD's, none the agent's.
    let w1 = lab.routes("k8s-w1").unwrap();
    assert!(
        w1.lines()
            .filter(|l| l.starts_with("172.16.") && !l.contains(" dev cali"))
            .all(|l| l.contains("proto bird")),
        "{w1}"
    );

    // Router peering: the router learns every block and every pair works.
    lab.set_peer_router(true).expect("peer router on");
    assert_eq!(
        router_bird_routes(&lab).len(),
        4,
        "{:?}",
        router_bird_routes(&lab)
    );
    all_pairs_direct(&lab, "router peering");

    // BIRD killed under a running agent: restarted, routes kept meanwhile.
    let old = lab.kill_bird("k8s-w1").expect("kill");
    let t0 = Instant::now();
    let mut pings = 0;
    while lab.bird_pid("k8s-w1").is_none_or(|p| p == old) {
        assert!(lab.ping_pod("web-k8s-w1", "web-k8s-w0").unwrap());
        assert!(lab.ping_pod("web-k8s-m", "web-k8s-w1").unwrap());
        pings += 2;
        assert!(t0.elapsed() < Duration::from_secs(30), "BIRD not restarted");
    }
    println!(
        "BIRD restarted after {:?}; {pings} pings answered meanwhile",
        t0.elapsed()
    );
    assert!(pings > 0, "at least one ping during the restart");
    eventually("sessions back after the restart", 60, || {
        calinet_lab::bgp::sessions_down(&lab.state).is_empty()
    });
    all_pairs_direct(&lab, "after the BIRD restart");

    // A deleted Node: its block's routes are withdrawn everywhere.
    let w2_block = lab
        .view()
        .unwrap()
        .ipam
        .blocks
        .iter()
        .find(|(b, _)| b.affinity() == Some("host:k8s-w2"))
        .map(|(b, _)| b.cidr().to_string())
        .expect("w2's block");
    assert!(lab.routes("router").unwrap().contains(&w2_block));
    lab.remove_node("k8s-w2").expect("remove node");
    for n in ["k8s-m", "k8s-w1", "k8s-w0", "router"] {
        eventually(&format!("{w2_block} withdrawn on {n}"), 30, || {
            !lab.routes(n).unwrap().contains(&w2_block)
        });
    }
    assert!(lab.ping_pod("web-k8s-w1", "web-k8s-w0").unwrap());

    let state_dir = lab.state.state_dir.clone();
    assert!(!bird_processes_under(&state_dir).is_empty());
    drop(lab);
    assert_eq!(
        bird_processes_under(&state_dir),
        Vec::<u32>::new(),
        "every BIRD of the lab is gone"
    );
}

#[test]
fn route_reflector_without_mesh_connects_every_pair_then_vxlan_stops_bird() {
    testlab::require!(testlab::Feature::Tcpdump, testlab::Feature::Nftables);
    if !have_bird() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut lab = up(dir.path(), true, Some("k8s-m"));
    all_pairs_direct(&lab, "route reflector k8s-m");
    let view = lab.view().unwrap();
    assert!(!view.bgp_configs["default"].spec.mesh_enabled(), "mesh off");
    // Clients have one node session (to the reflector) plus the router; the
    // reflector has one per client plus the router.
    let sessions = |node: &str| {
        let dir = calinet_lab::bgp::node_bird_dir(&lab.state, node);
        let ps = calinet_bgp::BirdProcess::new(&dir)
            .connect()
            .and_then(|mut c| c.protocols())
            .unwrap();
        let mut names: Vec<String> = ps
            .into_iter()
            .filter(|p| p.proto == "BGP" && p.is_established())
            .map(|p| p.name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        sessions("k8s-w1"),
        ["Node_198_51_100_1", "Node_198_51_100_10"],
        "a client peers with the reflector and the router only"
    );
    assert_eq!(
        sessions("k8s-m"),
        [
            "Node_198_51_100_1",
            "Node_198_51_100_101",
            "Node_198_51_100_102",
            "Node_203_0_113_100"
        ]
    );

    // To VXLAN: no pool needs BGP any more; every node's BIRD withdraws its
    // kernel routes and stops, the agents program VXLAN routes instead.
    lab.switch_mode(Mode::Vxlan).expect("mode switch");
    for n in ["k8s-m", "k8s-w1", "k8s-w2", "k8s-w0"] {
        eventually(&format!("{n}: BIRD stopped"), 30, || {
            lab.bird_pid(n).is_none()
        });
        let routes = lab.routes(n).unwrap();
        assert!(!routes.contains("proto bird"), "{n}: {routes}");
    }
    let r = lab.report().expect("report");
    println!("after switching to vxlan:\n{}", r.text);
    for p in r.probes.iter().filter(|p| p.to != "outside") {
        assert!(p.reachable, "{} -> {}", p.from, p.to);
        let want = if same_node(p) {
            ObservedPath::SameNode
        } else {
            ObservedPath::Vxlan
        };
        assert_eq!(p.path, want, "{} -> {}", p.from, p.to);
    }
    let state_dir = lab.state.state_dir.clone();
    drop(lab);
    assert!(bird_processes_under(&state_dir).is_empty());
}
