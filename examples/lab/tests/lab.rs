//! The lab end to end (root): the seed cluster with one agent process per node,
//! every mode available on this machine, the connectivity matrix and the path
//! observed with tcpdump asserted per pair; then an agent restart that must not
//! write to the dataplane once converged (read from its metrics).

use std::time::{Duration, Instant};

use calinet_agent::metrics::sample;
use calinet_lab::cli::UpArgs;
use calinet_lab::cluster::RunningLab;
use calinet_lab::probe::{ObservedPath, Probe};
use calinet_lab::state::Mode;

/// The agent binary cargo built next to `calinet-lab` (in
/// `target/<profile>/`): the lab runs it on every node.
fn agent_bin() -> std::path::PathBuf {
    let bin =
        std::path::Path::new(env!("CARGO_BIN_EXE_calinet-lab")).with_file_name("calinet-agent");
    assert!(
        bin.is_file(),
        "{} is missing: build it with cargo build -p calinet-agent \
         (cargo test -p calinet-lab -p calinet-agent builds it too)",
        bin.display()
    );
    bin
}

fn same_subnet(a: &str, b: &str) -> bool {
    // k8s-w0 is the only node on 203.0.113.0/24.
    a.ends_with("k8s-w0") == b.ends_with("k8s-w0")
}

fn expected(mode: Mode, p: &Probe) -> ObservedPath {
    if p.from.ends_with("k8s-w1") && p.to.ends_with("k8s-w1") {
        // The seed article's same-node pair: only the cali interfaces see it.
        return ObservedPath::SameNode;
    }
    if p.to == "outside" {
        // natOutgoing: the pod's packets leave with the node's address.
        return ObservedPath::Masqueraded;
    }
    match mode {
        Mode::Vxlan => ObservedPath::Vxlan,
        Mode::Crosssubnet if same_subnet(&p.from, &p.to) => ObservedPath::Direct,
        Mode::Crosssubnet => ObservedPath::Vxlan,
        Mode::Wireguard => ObservedPath::Wireguard,
        Mode::Ipip => ObservedPath::Ipip,
        _ => ObservedPath::Direct,
    }
}

fn check(lab: &RunningLab, mode: Mode) {
    let r = lab.report().expect("report");
    println!("mode {mode}:\n{}", r.text);
    assert_eq!(r.probes.len(), 25, "5 pods x (4 pods + outside)");
    for p in &r.probes {
        assert!(
            p.reachable,
            "mode {mode}: {} -> {} unreachable",
            p.from, p.to
        );
        assert_eq!(
            p.path,
            expected(mode, p),
            "mode {mode}: {} -> {} took the wrong path",
            p.from,
            p.to
        );
    }
}

const POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: w1-only-from-m
  namespace: default
spec:
  podSelector:
    matchLabels: {run: web-k8s-w1}
  ingress:
  - from:
    - podSelector:
        matchLabels: {run: web-k8s-m}
";

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what}: not within 15 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Kubernetes NetworkPolicy applied to the datastore is compiled and
/// installed by the agent of the selected pod's node, and removed again.
fn policy_is_enforced(lab: &RunningLab) {
    assert!(lab.ping_pod("web-k8s-w2", "web-k8s-w1").unwrap());
    lab.apply(POLICY).unwrap();
    eventually("w2 -> w1 denied by the policy", || {
        !lab.ping_pod("web-k8s-w2", "web-k8s-w1").unwrap()
    });
    assert!(
        lab.ping_pod("web-k8s-m", "web-k8s-w1").unwrap(),
        "m -> w1 allowed"
    );
    assert!(
        lab.ping_pod("web-k8s-w1", "web-k8s-w2").unwrap(),
        "egress of w1 not limited"
    );
    let rules = metric(lab, "k8s-w1", "calinet_policy_rules").unwrap();
    assert!(rules > 0.0);
    lab.delete(POLICY).unwrap();
    eventually("w2 -> w1 allowed again", || {
        lab.ping_pod("web-k8s-w2", "web-k8s-w1").unwrap()
    });
}

/// While its datastore is unreachable an agent keeps the dataplane and
/// retries with backoff; afterwards it catches up (a pod added meanwhile gets
/// its address and connectivity), and a deleted pod's address is released.
fn datastore_outage_keeps_the_dataplane(lab: &mut RunningLab) {
    let errors = "calinet_errors_total{kind=\"datastore\"}";
    let writes = metric(lab, "k8s-w1", "calinet_dataplane_writes_total").unwrap();
    lab.datastore_outage("k8s-w1", true).unwrap();
    eventually("the agent sees the outage", || {
        metric(lab, "k8s-w1", errors).unwrap_or(0.0) >= 3.0
    });
    assert_eq!(metric(lab, "k8s-w1", "calinet_converged"), Some(0.0));
    // A pod scheduled to the node during the outage.
    let yaml = lab.add_pod("late-k8s-w1", "k8s-w1").unwrap();
    for (from, to) in [("web-k8s-m", "web-k8s-w1"), ("web-k8s-w1", "web-k8s-w0")] {
        assert!(
            lab.ping_pod(from, to).unwrap(),
            "{from} -> {to} during the outage"
        );
    }
    assert_eq!(
        metric(lab, "k8s-w1", "calinet_dataplane_writes_total"),
        Some(writes),
        "nothing written during the outage"
    );
    // Backoff: the error count grows slower than the 300 ms poll would.
    let e1 = metric(lab, "k8s-w1", errors).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let e2 = metric(lab, "k8s-w1", errors).unwrap();
    assert!(e2 - e1 < 6.0, "retries back off: {e1} -> {e2} in 3 s");
    lab.datastore_outage("k8s-w1", false).unwrap();
    let t0 = Instant::now();
    while !lab.ping_pod("web-k8s-m", "late-k8s-w1").unwrap_or(false) {
        if t0.elapsed() > Duration::from_secs(20) {
            let log = &lab
                .state
                .agents
                .iter()
                .find(|a| a.node == "k8s-w1")
                .unwrap()
                .log;
            let text = std::fs::read_to_string(log).unwrap();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            panic!(
                "the late pod is not reachable within 20 s; k8s-w1's log (newest first):\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        metric(lab, "k8s-w1", "calinet_workload_endpoints"),
        Some(3.0)
    );
    lab.remove_pod("late-k8s-w1", &yaml).unwrap();
    eventually("the late pod's endpoint and address are gone", || {
        let view = lab.view().unwrap();
        view.weps.len() == 5
            && calinet_agent::show::ipam_check(&view).1 == 0
            && calinet_agent::show::ipam_show(
                &view,
                Default::default(),
                calinet_agent::show::Output::Json,
            )
            .unwrap()
            .contains("\"ipsInUse\": 9")
    });
}

/// Restarts `node`'s agent once converged and returns its metrics after it
/// converged again, asserting it wrote nothing to the dataplane.
fn restart_without_writes(lab: &mut RunningLab, node: &str) -> String {
    let before = metric(lab, node, "calinet_dataplane_writes_total").unwrap();
    assert!(before > 0.0, "the first agent programmed the node");
    lab.restart_agent(node).unwrap();
    let log = lab
        .state
        .agents
        .iter()
        .find(|a| a.node == node)
        .map(|a| std::fs::read_to_string(&a.log).unwrap())
        .unwrap();
    assert!(
        log.contains("SIGTERM: shutting down, dataplane left as is"),
        "the old agent stopped cleanly on SIGTERM:\n{log}"
    );
    eventually("the restarted agent converges", || {
        metric(lab, node, "calinet_reconciles_total").unwrap_or(0.0) >= 1.0
            && metric(lab, node, "calinet_converged") == Some(1.0)
    });
    // The lab resyncs every 8 s: wait for one full resync (which re-checks
    // every workload against the kernel) after the start-up reconcile.
    let t0 = Instant::now();
    while metric(lab, node, "calinet_reconciles_total").unwrap_or(0.0) < 2.0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no periodic resync");
        std::thread::sleep(Duration::from_millis(300));
    }
    let m = lab.metrics(node).unwrap();
    assert_eq!(
        sample(&m, "calinet_dataplane_writes_total"),
        Some(0.0),
        "a restarted agent on a converged node writes nothing:\n{m}"
    );
    m
}

/// Each pod's interfaces: (pod, host-side cali index, pod-side eth0 index).
fn pod_interfaces(lab: &RunningLab) -> Vec<(String, u32, u32)> {
    let view = lab.view().unwrap();
    lab.state
        .pods
        .iter()
        .map(|p| {
            let node = lab.state.nodes.iter().find(|n| n.name == p.node).unwrap();
            let cali = calinet_lab::probe::pod_interface(&view, &p.name).unwrap();
            let host = testlab::Netns::existing(&node.netns).unwrap();
            let pod = testlab::Netns::existing(&p.netns).unwrap();
            (
                p.name.clone(),
                host.link(&cali).unwrap().unwrap().ifindex,
                pod.link("eth0").unwrap().unwrap().ifindex,
            )
        })
        .collect()
}

/// The MTU of `ifname` on `node` (`None`: no such link).
fn mtu(lab: &RunningLab, node: &str, ifname: &str) -> Option<u32> {
    let n = lab.state.nodes.iter().find(|n| n.name == node).unwrap();
    testlab::Netns::existing(&n.netns)
        .unwrap()
        .link(ifname)
        .unwrap()
        .and_then(|l| l.mtu)
}

/// The host-side MTUs of every pod on `node` and of its pods' eth0.
fn pod_mtus(lab: &RunningLab, node: &str) -> (Vec<u32>, Vec<u32>) {
    let view = lab.view().unwrap();
    let mut host = Vec::new();
    let mut pod = Vec::new();
    for p in lab.state.pods.iter().filter(|p| p.node == node) {
        let cali = calinet_lab::probe::pod_interface(&view, &p.name).unwrap();
        host.push(mtu(lab, node, &cali).unwrap());
        let ns = testlab::Netns::existing(&p.netns).unwrap();
        pod.push(ns.link("eth0").unwrap().unwrap().mtu.unwrap());
    }
    (host, pod)
}

fn metric(lab: &RunningLab, node: &str, name: &str) -> Option<f64> {
    lab.metrics(node).ok().and_then(|m| sample(&m, name))
}

#[test]
fn lab_modes_matrix_observed_paths_and_restart_without_writes() {
    testlab::require!(
        testlab::Feature::Vxlan,
        testlab::Feature::Tcpdump,
        testlab::Feature::Nftables
    );
    let dir = tempfile::tempdir().unwrap();
    let mut args = UpArgs::new(Mode::Vxlan, dir.path().join("lab"));
    args.agent_bin = Some(agent_bin());
    // The seed article's jumbo underlay.
    args.underlay_mtu = 9001;
    let mut lab = RunningLab::up(&args).expect("lab up");
    check(&lab, Mode::Vxlan);
    assert_eq!(mtu(&lab, "k8s-w1", "eth0"), Some(9001));
    assert_eq!(mtu(&lab, "k8s-w1", "vxlan.calico"), Some(8951));
    assert_eq!(
        pod_mtus(&lab, "k8s-w1"),
        (vec![8951, 8951], vec![8951, 8951])
    );
    let interfaces = pod_interfaces(&lab);
    // Restart a converged agent: it must find everything in place.
    let m = restart_without_writes(&mut lab, "k8s-w1");
    assert_eq!(sample(&m, "calinet_routes"), Some(6.0), "{m}");
    assert_eq!(sample(&m, "calinet_workload_endpoints"), Some(2.0), "{m}");
    assert_eq!(sample(&m, "calinet_vxlan_neighbours"), Some(3.0), "{m}");
    check(&lab, Mode::Vxlan);

    datastore_outage_keeps_the_dataplane(&mut lab);
    check(&lab, Mode::Vxlan);

    lab.switch_mode(Mode::Crosssubnet).expect("mode switch");
    check(&lab, Mode::Crosssubnet);
    assert_eq!(
        pod_interfaces(&lab),
        interfaces,
        "crosssubnet: no pod interface rebuilt"
    );
    // Direct: BIRD distributes the blocks; across subnets the router must
    // learn them too (tests/bgp.rs checks the failure without it).
    lab.switch_mode(Mode::Direct).expect("mode switch");
    lab.set_peer_router(true).expect("router peering");
    assert_eq!(
        pod_interfaces(&lab),
        interfaces,
        "direct: no pod interface rebuilt"
    );
    // Direct: no overhead, the host sides follow in place, the pods keep theirs.
    assert_eq!(
        pod_mtus(&lab, "k8s-w1"),
        (vec![9001, 9001], vec![8951, 8951])
    );
    // The agent follows its uplink's MTU at run time.
    let w1 = lab.state.nodes.iter().find(|n| n.name == "k8s-w1").unwrap();
    testlab::Netns::existing(&w1.netns)
        .unwrap()
        .ip(&["link", "set", "eth0", "mtu", "9000"])
        .unwrap();
    eventually("the host sides follow the uplink's MTU", || {
        pod_mtus(&lab, "k8s-w1").0 == vec![9000, 9000]
    });
    assert_eq!(
        pod_interfaces(&lab),
        interfaces,
        "an MTU change rebuilds nothing"
    );
    check(&lab, Mode::Direct);
    policy_is_enforced(&lab);
    if testlab::Feature::check(testlab::Feature::WireguardGo).is_ok() {
        lab.switch_mode(Mode::Wireguard).expect("mode switch");
        check(&lab, Mode::Wireguard);
        assert_eq!(
            pod_interfaces(&lab),
            interfaces,
            "wireguard: no pod interface rebuilt"
        );
        // Calico's device name and MTU (the seed's 8941 on a 9001 underlay).
        assert_eq!(mtu(&lab, "k8s-m", "wireguard.cali"), Some(8941));
        assert_eq!(mtu(&lab, "k8s-w1", "wireguard.cali"), Some(8940));
        let r = lab.report().unwrap();
        assert!(r.text.contains("wg showconf wireguard.cali"), "{}", r.text);
        // Every peer's AllowedIPs: its block and its WireGuard address.
        let view = lab.view().unwrap();
        for n in lab.state.nodes.iter().filter(|n| n.name != "k8s-m") {
            let (node, _) = &view.nodes[&n.name];
            let a = node
                .spec
                .wireguard
                .as_ref()
                .and_then(|w| w.interface_ipv4_address)
                .expect("a WireGuard address published on the Node");
            assert!(
                r.text.contains(&format!("{a}/32")),
                "{n:?} {a}:\n{}",
                r.text
            );
        }
        // WireGuard too: device, peers, table 1 and the rule are found in place.
        let m = restart_without_writes(&mut lab, "k8s-m");
        assert_eq!(sample(&m, "calinet_wireguard_peers"), Some(3.0), "{m}");
        check(&lab, Mode::Wireguard);
        lab.switch_mode(Mode::Vxlan).expect("mode switch");
        check(&lab, Mode::Vxlan);
        assert_eq!(
            pod_interfaces(&lab),
            interfaces,
            "vxlan again: no pod interface rebuilt"
        );
    } else {
        eprintln!("wireguard mode not checked: wireguard-go missing");
    }
    // IPIP only where the kernel has it (not on the CI kernel: the refusal is
    // tested in tests/apply.rs).
    if testlab::Feature::check(testlab::Feature::Ipip).is_ok() {
        lab.switch_mode(Mode::Ipip).expect("mode switch");
        check(&lab, Mode::Ipip);
    } else {
        eprintln!("ipip mode not checked: this kernel has no IPIP");
    }
}

/// etcd killed and restarted under a running etcd-backed lab: pods keep
/// connectivity, the agents see the outage and recover, and a pod added after
/// the restart gets an address and connectivity.
#[test]
fn etcd_restart_under_a_running_lab() {
    testlab::require!(
        testlab::Feature::Vxlan,
        testlab::Feature::Tcpdump,
        testlab::Feature::Nftables,
        testlab::Feature::Etcd
    );
    let dir = tempfile::tempdir().unwrap();
    let mut args = UpArgs::new(Mode::Vxlan, dir.path().join("lab"));
    args.agent_bin = Some(agent_bin());
    args.etcd = true;
    let mut lab = RunningLab::up(&args).expect("etcd-backed lab up");
    check(&lab, Mode::Vxlan);

    let errors = "calinet_errors_total{kind=\"datastore\"}";
    let writes: Vec<f64> = ["k8s-m", "k8s-w0"]
        .iter()
        .map(|n| metric(&lab, n, "calinet_dataplane_writes_total").unwrap())
        .collect();
    lab.etcd_running(false).unwrap();
    eventually("every agent sees the outage", || {
        ["k8s-m", "k8s-w1", "k8s-w2", "k8s-w0"]
            .iter()
            .all(|n| metric(&lab, n, errors).unwrap_or(0.0) >= 1.0)
    });
    for (from, to) in [("web-k8s-m", "web-k8s-w0"), ("web-k8s-w0", "web-k8s-w2")] {
        assert!(
            lab.ping_pod(from, to).unwrap(),
            "{from} -> {to} while etcd is down"
        );
    }
    for (n, w) in ["k8s-m", "k8s-w0"].iter().zip(&writes) {
        assert_eq!(
            metric(&lab, n, "calinet_dataplane_writes_total"),
            Some(*w),
            "{n} wrote nothing while etcd was down"
        );
    }
    lab.etcd_running(true).unwrap();
    eventually("the agents recover", || {
        ["k8s-m", "k8s-w1", "k8s-w2", "k8s-w0"]
            .iter()
            .all(|n| metric(&lab, n, "calinet_converged") == Some(1.0))
    });
    lab.add_pod("after-etcd", "k8s-w2").unwrap();
    eventually("the new pod has an address and connectivity", || {
        lab.ping_pod("web-k8s-w0", "after-etcd").unwrap_or(false)
    });
    let view = lab.view().unwrap();
    assert_eq!(view.weps.len(), 6);
    assert_eq!(
        calinet_agent::show::ipam_check(&view).1,
        0,
        "ipam check clean"
    );
}
