//! Self-test of the lab: the seed article's topology with hand-made pod routes,
//! captures, helper processes, kernel feature skips, and teardown.

use std::net::IpAddr;
use std::time::Duration;

use testlab::seed::{self, SeedCluster};
use testlab::{Feature, Lab, Netns, Node, leftover_namespaces};

const PING: Duration = Duration::from_secs(3);

fn pod_ip(node: &Node) -> IpAddr {
    let block = SeedCluster::spec(&node.name).expect("seed node").block;
    IpAddr::V4(block.hosts().nth(1).expect("block has hosts"))
}

fn seed_with_pods(lab: &Lab) -> (SeedCluster, Vec<(String, Netns)>) {
    let cluster = SeedCluster::build(lab).expect("build seed cluster");
    let pods = cluster.plumb_pods_by_hand(lab).expect("plumb pods");
    cluster.route_blocks_directly(lab).expect("direct routes");
    (cluster, pods.into_iter().map(|p| (p.name, p.ns)).collect())
}

#[test]
fn seed_topology_pods_reach_each_other_within_and_across_subnets() {
    testlab::require!(Feature::Tcpdump);
    let lab = Lab::new("seed_topology").expect("lab");
    let (cluster, pods) = seed_with_pods(&lab);

    let targets: Vec<(String, IpAddr)> = cluster
        .nodes
        .iter()
        .map(|n| (format!("pod@{}", n.name), pod_ip(n)))
        .collect();
    let matrix = seed::ping_matrix(&pods, &targets, PING);
    println!("{matrix}");
    assert!(
        matrix.failures().is_empty(),
        "unreachable pairs: {:?}",
        matrix.failures()
    );

    // Same subnet: the pod packets cross lan1's bridge directly, pod addresses visible.
    let m = cluster.node("k8s-m").unwrap();
    let w1 = cluster.node("k8s-w1").unwrap();
    let w0 = cluster.node("k8s-w0").unwrap();
    let capture = cluster
        .router
        .capture(&cluster.lan1.bridge, "icmp")
        .unwrap();
    assert!(pods[0].1.ping(pod_ip(w1), PING));
    let seen = capture.stop().unwrap();
    println!("lan1 capture:\n{seen}");
    let request = format!("{} > {}: ICMP echo request", pod_ip(m), pod_ip(w1));
    assert!(seen.any(&[&request]), "no `{request}` on lan1:\n{seen}");

    // Across subnets: the packet arrives on lan2 after the router.
    let capture = cluster
        .router
        .capture(&cluster.lan2.bridge, "icmp")
        .unwrap();
    assert!(pods[0].1.ping(pod_ip(w0), PING));
    let seen = capture.stop().unwrap();
    let request = format!("{} > {}: ICMP echo request", pod_ip(m), pod_ip(w0));
    assert!(seen.any(&[&request]), "no `{request}` on lan2:\n{seen}");
    // ... and not on lan1's peers: w1 never sees traffic for w0's pod.
    let names = lab.namespaces();
    drop(lab);
    let left = leftover_namespaces();
    for ns in names {
        assert!(
            !left.contains(&ns.name().to_owned()),
            "{} left behind",
            ns.name()
        );
    }
}

#[test]
fn router_without_pod_routes_blocks_cross_subnet_traffic() {
    testlab::require_root!();
    let lab = Lab::new("no_router_routes").expect("lab");
    let cluster = SeedCluster::build(&lab).unwrap();
    let m = cluster.node("k8s-m").unwrap();
    let w0 = cluster.node("k8s-w0").unwrap();
    // Node addresses route through the router...
    assert!(m.ping(w0.address().into(), PING));
    // ... but a pod block the router does not know is unreachable.
    let pod = lab.pod("pod").unwrap();
    let IpAddr::V4(addr) = pod_ip(w0) else {
        unreachable!()
    };
    lab.plumb_pod(w0, &pod, "calitest0", addr).unwrap();
    assert!(!m.ping(addr.into(), Duration::from_secs(1)));
    lab.router_route(
        &SeedCluster::spec("k8s-w0").unwrap().block.to_string(),
        w0.address().into(),
    )
    .unwrap();
    assert!(m.ping(addr.into(), PING));
}

#[test]
fn tcp_probes_connect_and_echo() {
    testlab::require_root!();
    let lab = Lab::new("tcp").expect("lab");
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let a = lab
        .node("a", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let b = lab
        .node("b", &seg, "198.51.100.11".parse().unwrap())
        .unwrap();
    let server = b.tcp_listen(b.address().into(), 8080).unwrap();
    assert!(a.tcp_connect(b.address().into(), 8080, PING));
    assert!(
        !a.tcp_connect(b.address().into(), 8081, PING),
        "nothing listens on 8081"
    );
    let mut stream = a.tcp_stream(b.address().into(), 8080, PING).unwrap();
    use std::io::{Read, Write};
    stream.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(server.accepted(), 2);
}

#[test]
fn typed_ip_json_matches_what_the_lab_configured() {
    testlab::require_root!();
    let lab = Lab::new("ipjson").expect("lab");
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n = lab
        .node("n", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let routes = n.routes().unwrap();
    let default = testlab::ipjson::routes_to(&routes, "default");
    assert_eq!(default.len(), 1);
    assert_eq!(default[0].gateway.as_deref(), Some("198.51.100.1"));
    let addrs = n.addrs().unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.ifname == "eth0" && a.local == "198.51.100.10" && a.prefixlen == 24)
    );
    let eth0 = n.link("eth0").unwrap().expect("eth0");
    assert_eq!(eth0.kind(), Some("veth"));
    assert!(eth0.is_up());
    let bridge = lab
        .router()
        .unwrap()
        .link(&seg.bridge)
        .unwrap()
        .expect("bridge");
    assert_eq!(bridge.kind(), Some("bridge"));
}

#[test]
fn vxlan_fdb_and_neighbours_are_observable() {
    testlab::require!(Feature::Vxlan);
    let lab = Lab::new("vxlan_observe").expect("lab");
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n = lab
        .node("n", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    n.ip(&[
        "link",
        "add",
        "vxlan.calico",
        "type",
        "vxlan",
        "id",
        "4096",
        "dstport",
        "4789",
        "local",
        "198.51.100.10",
        "dev",
        "eth0",
        "nolearning",
    ])
    .unwrap();
    n.ip(&[
        "neigh",
        "add",
        "172.16.158.0",
        "lladdr",
        "66:00:00:00:00:01",
        "dev",
        "vxlan.calico",
        "nud",
        "permanent",
    ])
    .unwrap();
    n.run(&[
        "bridge",
        "fdb",
        "append",
        "66:00:00:00:00:01",
        "dev",
        "vxlan.calico",
        "dst",
        "198.51.100.101",
        "self",
        "permanent",
    ])
    .unwrap();
    let link = n.link("vxlan.calico").unwrap().expect("vxlan link");
    assert_eq!(link.info("id").and_then(|v| v.as_u64()), Some(4096));
    assert_eq!(link.info("port").and_then(|v| v.as_u64()), Some(4789));
    let neigh = n.neighbours().unwrap();
    assert!(
        neigh
            .iter()
            .any(|e| e.dst == "172.16.158.0" && e.is_permanent())
    );
    let fdb = n.fdb().unwrap();
    assert!(
        fdb.iter()
            .any(|e| e.mac == "66:00:00:00:00:01" && e.dst.as_deref() == Some("198.51.100.101"))
    );
}

#[test]
fn ipip_tunnel_device_in_lab() {
    // This kernel has no IPIP: the test must say SKIPPED, never pass silently.
    testlab::require!(Feature::Ipip);
    let lab = Lab::new("ipip").expect("lab");
    let ns = lab.netns("n").unwrap();
    ns.ip(&[
        "link",
        "add",
        "tunl9",
        "type",
        "ipip",
        "remote",
        "198.51.100.1",
    ])
    .unwrap();
    assert_eq!(
        ns.link("tunl9")
            .unwrap()
            .and_then(|l| l.kind().map(str::to_owned))
            .as_deref(),
        Some("ipip")
    );
}

#[test]
fn teardown_happens_on_panic() {
    testlab::require_root!();
    let made = std::panic::catch_unwind(|| {
        let lab = Lab::new("panics").expect("lab");
        let names: Vec<String> = ["a", "b"]
            .iter()
            .map(|r| lab.netns(r).unwrap().name().to_owned())
            .collect();
        std::panic::panic_any(names);
    });
    let names = made
        .expect_err("the closure panics")
        .downcast::<Vec<String>>()
        .expect("names as payload");
    assert_eq!(names.len(), 2);
    let left = leftover_namespaces();
    for name in names.iter() {
        assert!(!left.contains(name), "{name} survived the panic");
    }
}

#[test]
fn wireguard_go_runs_in_a_node_and_stops_on_drop() {
    testlab::require!(Feature::WireguardGo);
    let lab = Lab::new("wggo").expect("lab");
    let ns = lab.netns("n").unwrap();
    let device = format!("wgt{}", std::process::id() % 100_000);
    let wg = lab.wireguard_go(&ns, &device).unwrap();
    assert!(wg.is_running());
    let link = ns
        .link(&device)
        .unwrap()
        .expect("tun device in the node's namespace");
    assert_eq!(link.kind(), Some("tun"));
    let pid = wg.pid();
    drop(wg);
    // SAFETY: signal 0 only checks existence.
    let alive = unsafe { libc_kill(pid as i32, 0) } == 0;
    assert!(!alive, "wireguard-go {pid} still running after drop");
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn etcd_starts_stops_and_restarts_with_its_data() {
    testlab::require!(Feature::Etcd);
    let lab = Lab::new("etcd").expect("lab");
    let etcd = lab.etcd().unwrap();
    let endpoint = etcd.endpoint();
    let put = testlab::cmd::run(
        "etcdctl",
        &["--endpoints", &endpoint, "put", "/calinet/probe", "v1"],
    );
    assert!(put.is_ok(), "{put:?}");
    etcd.stop();
    assert!(!etcd.is_healthy());
    etcd.start().unwrap();
    let got = testlab::cmd::run(
        "etcdctl",
        &[
            "--endpoints",
            &endpoint,
            "get",
            "--print-value-only",
            "/calinet/probe",
        ],
    )
    .unwrap();
    assert_eq!(got.trim(), "v1");
}

/// An etcd inside a lab namespace: served on that namespace's loopback only,
/// data kept across stop/start, process and data gone on drop, and stopped by
/// the lab's teardown before its namespace is deleted.
#[test]
fn etcd_in_a_namespace_serves_only_that_namespace() {
    testlab::require_root!();
    testlab::require!(Feature::Etcd);
    let lab = Lab::new("etcd_in").expect("lab");
    let ns = lab.netns("etcdhost").unwrap();
    let etcd = lab.etcd_in(&ns).unwrap();
    assert_eq!(etcd.netns(), Some(&ns));
    assert!(etcd.is_healthy());
    etcd.ctl(&["put", "/calinet/probe", "v1"]).unwrap();
    let got = ns
        .run(&[
            "etcdctl",
            "--endpoints",
            &etcd.endpoint(),
            "get",
            "--print-value-only",
            "/calinet/probe",
        ])
        .unwrap();
    assert_eq!(got.trim(), "v1");
    // The root namespace's loopback is another one: nothing answers there.
    let from_root = testlab::cmd::run(
        "etcdctl",
        &[
            "--endpoints",
            &etcd.endpoint(),
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
            "get",
            "/calinet/probe",
        ],
    );
    assert!(
        from_root.is_err(),
        "reached from the root namespace: {from_root:?}"
    );

    etcd.stop();
    assert!(!etcd.is_healthy());
    assert_eq!(etcd.pid(), None);
    etcd.start().unwrap();
    let got = etcd
        .ctl(&["get", "--print-value-only", "/calinet/probe"])
        .unwrap();
    assert_eq!(got.trim(), "v1", "data kept across stop/start");

    let pid = etcd.pid().expect("running");
    let data = etcd.data_dir().to_path_buf();
    drop(etcd);
    // SAFETY: signal 0 only checks existence.
    assert!(
        unsafe { libc_kill(pid as i32, 0) } != 0,
        "etcd {pid} survived drop"
    );
    assert!(!data.exists(), "data dir {} left", data.display());

    // The lab's teardown stops a server whose handle is still alive.
    let etcd = lab.etcd_in(&ns).unwrap();
    let pid = etcd.pid().expect("running");
    drop(lab);
    // SAFETY: as above.
    assert!(
        unsafe { libc_kill(pid as i32, 0) } != 0,
        "etcd {pid} survived the lab"
    );
    assert!(!etcd.is_healthy());
    let data = etcd.data_dir().to_path_buf();
    drop(etcd);
    assert!(!data.exists(), "data dir {} left", data.display());
}

#[test]
fn etcd_in_refuses_a_namespace_of_another_lab() {
    testlab::require_root!();
    let lab = Lab::new("etcd_in_foreign").expect("lab");
    let other = Lab::new("etcd_in_other").expect("lab");
    let ns = other.netns("elsewhere").unwrap();
    let err = lab.etcd_in(&ns).unwrap_err().to_string();
    assert!(
        err.contains(ns.name()) && err.contains(lab.prefix()),
        "{err}"
    );
}

/// A test that panics with an etcd running in a lab namespace leaves neither
/// the process, nor its data, nor the namespace.
#[test]
fn etcd_in_a_namespace_is_gone_after_a_panic() {
    testlab::require_root!();
    testlab::require!(Feature::Etcd);
    let made = std::panic::catch_unwind(|| {
        let lab = Lab::new("etcd_panics").expect("lab");
        let ns = lab.netns("etcdhost").unwrap();
        let etcd = lab.etcd_in(&ns).unwrap();
        let pid = etcd.pid().expect("running");
        std::panic::panic_any((pid, etcd.data_dir().to_path_buf(), ns.name().to_owned()));
    });
    let (pid, data, ns) = *made
        .expect_err("the closure panics")
        .downcast::<(u32, std::path::PathBuf, String)>()
        .expect("pid, data dir and namespace as payload");
    // SAFETY: signal 0 only checks existence.
    assert!(
        unsafe { libc_kill(pid as i32, 0) } != 0,
        "etcd {pid} survived the panic"
    );
    assert!(
        !data.exists(),
        "data dir {} survived the panic",
        data.display()
    );
    assert!(
        !leftover_namespaces().contains(&ns),
        "{ns} survived the panic"
    );
}

/// A namespace found again by name (as a program reading a state file does),
/// a long-lived thread inside it, and a detached process inside it that is
/// stopped by pid.
#[test]
fn namespaces_by_name_threads_and_detached_processes_inside() {
    testlab::require_root!();
    let lab = Lab::new("netns_by_name").unwrap();
    let made = lab.netns("n").unwrap();
    let ns = Netns::existing(made.name()).unwrap();
    assert_eq!(ns, made);
    assert!(Netns::existing("calinet-no-such-netns").is_err());
    let err = Netns::existing("../etc").unwrap_err().to_string();
    assert!(err.contains("not a namespace name"), "{err}");

    let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let inside = ns
        .enter(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    assert_ne!(here, inside);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = ns
        .spawn(move || {
            // Still inside after waiting for the caller.
            rx.recv().unwrap();
            std::fs::read_link("/proc/thread-self/ns/net").unwrap()
        })
        .unwrap();
    tx.send(()).unwrap();
    assert_eq!(thread.join().unwrap(), inside);

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let child = testlab::DetachedCommand::new("sh", &log)
        .args(["-c", "readlink /proc/self/ns/net; exec sleep 60"])
        .in_netns(&ns)
        .spawn()
        .unwrap();
    let pid = child.pid();
    drop(child);
    testlab::wait_for("the detached process's log", Duration::from_secs(5), || {
        Ok(!std::fs::read_to_string(&log).unwrap_or_default().is_empty())
    })
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().trim(),
        inside.to_string_lossy()
    );
    assert!(testlab::is_alive(pid));
    assert!(testlab::stop_pid(pid, true, Duration::from_secs(5)));
    assert!(!testlab::is_alive(pid));
}
