//! Root tests on the seed article's topology (three nodes on 198.51.100.0/24,
//! one on 203.0.113.0/24, the lab's router between, one pod per node): the
//! decisions of every node are applied through calinet-route (links, routes,
//! neighbours, FDB), the kernel is checked with `ip -j` / `bridge -j`, and
//! pod-to-pod pings are captured with tcpdump in the underlay namespace.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use calinet_encap::route::RouteSpecs;
use calinet_encap::{Decisions, Device, EncapMode, Input, Node, PathKind, Pool, Uplink, decide};
use calinet_route::link::{delete_link, get_link, reconcile_link};
use calinet_route::{LinkKind, NetlinkBackend, Ownership, Reconciler, RouteProtocol};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use testlab::seed::{LAN1, NODES, POOL, SeedCluster, SeedPod, ping_matrix};
use testlab::{Feature, Lab, Packets};

use EncapMode::{Always, CrossSubnet, Never};

const PING: Duration = Duration::from_secs(3);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The seed cluster with one pod per node, plus what the test applied.
struct Overlay {
    lab: Lab,
    seed: SeedCluster,
    pods: Vec<SeedPod>,
}

/// The tunnel address Calico would give a node: here the first address of its block.
fn tunnel_addr(block: Ipv4Net) -> Ipv4Addr {
    block.network()
}

impl Overlay {
    fn build(test: &str) -> Self {
        let lab = Lab::new(test).expect("lab");
        let seed = SeedCluster::build(&lab).expect("seed cluster");
        let pods = seed.plumb_pods_by_hand(&lab).expect("pods");
        Self { lab, seed, pods }
    }

    /// Node `me`'s view of the cluster under the given pool modes.
    fn input_for(&self, me: &str, ipip: EncapMode, vxlan: EncapMode) -> Input {
        let mut local = None;
        let mut remotes = Vec::new();
        let mut blocks = Vec::new();
        for spec in NODES {
            let node = Node::new(spec.name.parse().unwrap())
                .with_address(IpNet::V4(Ipv4Net::new(spec.addr, 24).unwrap()))
                .with_ipip_tunnel(tunnel_addr(spec.block))
                .with_vxlan_tunnel(IpAddr::V4(tunnel_addr(spec.block)));
            blocks.push(calinet_encap::Block::new(
                IpNet::V4(spec.block),
                node.name.clone(),
            ));
            if spec.name == me {
                local = Some(node);
            } else {
                remotes.push(node);
            }
        }
        let lab_node = self.seed.node(me).unwrap();
        let mtu = lab_node
            .link(&lab_node.uplink)
            .unwrap()
            .and_then(|l| l.mtu)
            .expect("uplink MTU");
        let uplink = Uplink::new(lab_node.uplink.parse().unwrap(), mtu)
            .with_gateway(IpAddr::V4(lab_node.segment.router));
        let mut input = Input::new(local.unwrap(), uplink);
        input.remotes = remotes;
        input.blocks = blocks;
        input.pools = vec![
            Pool::new("default-ipv4-ippool", IpNet::V4(POOL))
                .ipip(ipip)
                .vxlan(vxlan),
        ];
        input
    }

    /// Decides for every node and applies the result through calinet-route;
    /// returns each node's decisions and the writes the apply issued.
    fn apply(&self, ipip: EncapMode, vxlan: EncapMode) -> Vec<(Decisions, u64)> {
        NODES
            .iter()
            .map(|spec| {
                let d = decide(&self.input_for(spec.name, ipip, vxlan)).expect("valid input");
                let specs = d.route_specs(RouteProtocol::CALICO);
                let node = self.seed.node(spec.name).unwrap();
                let writes = rt().block_on(apply_node(node, &specs));
                check_kernel(node, &d);
                (d, writes)
            })
            .collect()
    }

    /// Pings every pod's IPv4 address from every pod; returns the matrix.
    fn ping_all(&self) -> testlab::seed::Matrix {
        ping_matrix(&self.pod_sources(), &self.pod_targets_v4(), PING)
    }

    fn pod_sources(&self) -> Vec<(String, testlab::Netns)> {
        self.pods
            .iter()
            .map(|p| (p.node.clone(), p.ns.clone()))
            .collect()
    }

    fn pod_targets_v4(&self) -> Vec<(String, IpAddr)> {
        self.pods
            .iter()
            .map(|p| (p.node.clone(), IpAddr::V4(p.addr)))
            .collect()
    }

    /// Pings every pod's IPv4 address from every pod, captured on the underlay.
    fn ping_all_captured(&self) -> (testlab::seed::Matrix, Packets) {
        self.ping_captured(&self.pod_targets_v4())
    }

    /// All pings at once (a capture may then miss packets, see `ping_captured`).
    fn ping_all_captured_in_parallel(&self) -> (testlab::seed::Matrix, Packets) {
        let caps = [&self.seed.lan1.bridge, &self.seed.lan2.bridge].map(|bridge| {
            self.seed
                .router
                .capture(bridge, "udp port 4789 or icmp")
                .expect("tcpdump")
        });
        let matrix = self.ping_all();
        let mut packets = Packets::default();
        for cap in caps {
            packets
                .lines
                .extend(cap.stop().expect("capture output").lines);
        }
        (matrix, packets)
    }

    /// Pings `targets` from every pod, one ping at a time, with tcpdump
    /// running on both underlay bridges (in the router namespace; a bridge in
    /// promiscuous mode sees every frame it forwards).
    ///
    /// One at a time because the lab's tcpdump runs with the default snap
    /// length (262144): its 2 MB capture ring then holds about 8 frames, and a
    /// burst of parallel pings overflows it ("packets dropped by kernel": 36 of
    /// 96 in a hand check with 24 parallel pings; none with `-s 256`).
    fn ping_captured(&self, targets: &[(String, IpAddr)]) -> (testlab::seed::Matrix, Packets) {
        let filter = "udp port 4789 or icmp or icmp6";
        let caps = [&self.seed.lan1.bridge, &self.seed.lan2.bridge]
            .map(|bridge| self.seed.router.capture(bridge, filter).expect("tcpdump"));
        let sources = self.pod_sources();
        let reachable = sources
            .iter()
            .map(|(source, ns)| {
                targets
                    .iter()
                    .map(|(target, addr)| source == target || ns.ping(*addr, PING))
                    .collect()
            })
            .collect();
        let matrix = testlab::seed::Matrix {
            sources: sources.iter().map(|(n, _)| n.clone()).collect(),
            targets: targets.iter().map(|(n, _)| n.clone()).collect(),
            reachable,
        };
        let mut packets = Packets::default();
        for cap in caps {
            packets
                .lines
                .extend(cap.stop().expect("capture output").lines);
        }
        (matrix, packets)
    }

    fn pod(&self, node: &str) -> &SeedPod {
        self.pods.iter().find(|p| p.node == node).unwrap()
    }

    fn node_ip(&self, node: &str) -> Ipv4Addr {
        self.seed.node(node).unwrap().address()
    }

    /// Gives the router a route to every pod block (what BGP would teach it).
    fn teach_router_blocks(&self) {
        for spec in NODES {
            self.lab
                .router_route(&spec.block.to_string(), IpAddr::V4(spec.addr))
                .unwrap();
        }
    }
}

/// Applies one node's specs: wanted links, routes, VTEP neighbours and FDB
/// entries, then removes the links the mode no longer wants.
async fn apply_node(node: &testlab::Node, specs: &RouteSpecs) -> u64 {
    let netns = calinet_route::Netns::open(node.path()).unwrap();
    let mut backend = NetlinkBackend::open(&netns).await.unwrap();
    for link in &specs.links {
        reconcile_link(backend.conn(), link)
            .await
            .unwrap_or_else(|e| panic!("{}: link {}: {e}", node.name, link.name));
    }
    let mut rec = Reconciler::new(backend, Ownership::default());
    let routes = rec.reconcile_routes(&specs.routes).await.unwrap();
    assert!(
        routes.converged(),
        "{}: routes pending {:?} failures {:?}",
        node.name,
        routes.pending,
        routes.failures
    );
    let vxlan_devices: BTreeSet<calinet_route::IfName> = specs
        .links
        .iter()
        .filter(|l| matches!(l.kind, LinkKind::Vxlan(_)))
        .map(|l| l.name.clone())
        .collect();
    let (neigh, fdb) = rec
        .reconcile_neighbours(&specs.neighbours, &specs.fdb, &vxlan_devices)
        .await
        .unwrap();
    assert!(
        neigh.converged() && fdb.converged(),
        "{}: neighbours {:?} / fdb {:?}",
        node.name,
        neigh.failures,
        fdb.failures
    );
    let mut writes = routes.writes + neigh.writes + fdb.writes;
    for link in &specs.quiesce_links {
        if get_link(rec.backend_mut().conn(), &link.name)
            .await
            .unwrap()
            .is_some()
        {
            let report = reconcile_link(rec.backend_mut().conn(), link)
                .await
                .unwrap();
            writes += u64::from(!report.unchanged());
        }
    }
    for name in &specs.remove_links {
        if delete_link(rec.backend_mut().conn(), name).await.unwrap() {
            writes += 1;
        }
    }
    writes
}

/// The kernel (read with `ip -j` / `bridge -j`) matches the decisions exactly:
/// our routes (proto 80), the tunnel links, VTEP neighbours and FDB entries.
fn check_kernel(node: &testlab::Node, d: &Decisions) {
    let who = &node.name;
    let mut want: Vec<String> = d
        .paths
        .iter()
        .map(|p| {
            let onlink = if p.onlink { " onlink" } else { "" };
            format!("{} via {} dev {}{onlink}", p.dst, p.via, p.dev)
        })
        .chain(d.blackholes.iter().map(|b| format!("blackhole {b}")))
        .collect();
    want.sort();
    let mut got: Vec<String> = node
        .routes()
        .unwrap()
        .into_iter()
        .chain(node.routes6().unwrap())
        .filter(|r| r.protocol.as_deref() == Some("80"))
        .map(|r| match r.kind.as_deref() {
            Some("blackhole") => format!("blackhole {}", r.dst),
            _ => format!(
                "{} via {} dev {}{}",
                r.dst,
                r.gateway.clone().unwrap_or_default(),
                r.dev.clone().unwrap_or_default(),
                if r.has_flag("onlink") { " onlink" } else { "" }
            ),
        })
        .collect();
    got.sort();
    assert_eq!(got, want, "{who}: proto 80 routes");

    for dev in &d.devices {
        let Device::Vxlan(vx) = dev else { continue };
        let link = node
            .link(vx.name.as_str())
            .unwrap()
            .unwrap_or_else(|| panic!("{who}: {} missing", vx.name));
        assert_eq!(link.kind(), Some("vxlan"), "{who}");
        assert!(link.is_up(), "{who}: {} down", vx.name);
        assert_eq!(link.mtu, Some(vx.mtu), "{who}");
        assert_eq!(link.address.as_deref(), Some(vx.mac.to_string().as_str()));
        assert_eq!(
            link.info("id").and_then(|v| v.as_u64()),
            Some(4096),
            "{who}"
        );
        assert_eq!(
            link.info("port").and_then(|v| v.as_u64()),
            Some(4789),
            "{who}"
        );
        // `ip -j` calls an IPv6 local address `local6`.
        let local = link
            .info("local")
            .or_else(|| link.info("local6"))
            .and_then(|v| v.as_str().map(str::to_owned));
        assert_eq!(local, Some(vx.local.to_string()), "{who}");
        let addrs: Vec<String> = node
            .addrs()
            .unwrap()
            .into_iter()
            .filter(|a| a.ifname == vx.name.as_str() && !a.local.starts_with("fe80:"))
            .map(|a| format!("{}/{}", a.local, a.prefixlen))
            .collect();
        assert_eq!(addrs, [IpNet::from(vx.address).to_string()], "{who}");
    }
    for gone in d.unwanted_devices() {
        match node.link(gone.as_str()).unwrap() {
            None => {}
            // The kernel's own tunl0 cannot be deleted: it must be idle.
            Some(l) if gone.as_str() == "tunl0" => {
                let addrs = node.addrs().unwrap();
                assert!(!l.is_up(), "{who}: unwanted tunl0 is up");
                assert!(
                    !addrs.iter().any(|a| a.ifname == "tunl0"),
                    "{who}: tunl0 keeps an address"
                );
            }
            Some(_) => panic!("{who}: {gone} should be gone"),
        }
    }

    let neigh: BTreeSet<(String, String)> = node
        .neighbours()
        .unwrap()
        .into_iter()
        .filter(|n| is_vxlan_dev(n.dev.as_deref()) && n.is_permanent())
        .map(|n| (n.dst, n.lladdr.unwrap_or_default()))
        .collect();
    let want_neigh: BTreeSet<(String, String)> = d
        .neighbours
        .iter()
        .map(|n| (n.ip.to_string(), n.mac.to_string()))
        .collect();
    assert_eq!(neigh, want_neigh, "{who}: VTEP neighbours");
    let fdb: BTreeSet<(String, String)> = node
        .fdb()
        .unwrap()
        .into_iter()
        .filter(|f| is_vxlan_dev(f.ifname.as_deref()) && f.dst.is_some())
        .map(|f| (f.mac, f.dst.unwrap_or_default()))
        .collect();
    let want_fdb: BTreeSet<(String, String)> = d
        .fdb
        .iter()
        .map(|f| (f.mac.to_string(), f.dst.to_string()))
        .collect();
    assert_eq!(fdb, want_fdb, "{who}: VTEP FDB");
}

fn is_vxlan_dev(dev: Option<&str>) -> bool {
    matches!(dev, Some("vxlan.calico" | "vxlan-v6.calico"))
}

/// A captured packet: the VXLAN outer header (if any) and the packet line.
#[derive(Debug)]
struct Seen {
    /// (outer source IP, outer destination IP, outer line) for VXLAN.
    outer: Option<(String, String, String)>,
    src: String,
    dst: String,
    line: String,
}

/// `... IP 198.51.100.101.4242 > 203.0.113.100.4789: ...` (or `IP6 ...`) ->
/// the two endpoints (with ports, if any).
fn endpoints(line: &str) -> Option<(String, String)> {
    let rest = match (line.find("IP "), line.find("IP6 ")) {
        (Some(i), _) => &line[i + 3..],
        (None, Some(i)) => &line[i + 4..],
        (None, None) => return None,
    };
    let mut it = rest.split_whitespace();
    let src = it.next()?.to_owned();
    (it.next()? == ">").then_some(())?;
    let dst = it.next()?.trim_end_matches(':').to_owned();
    Some((src, dst))
}

fn strip_port(ep: &str) -> String {
    // tcpdump appends ".port": after the last dot of an IPv6 address, and as
    // a fifth dot-separated part of an IPv4 one.
    if ep.contains(':') {
        return ep.rsplit_once('.').map_or(ep, |(a, _)| a).to_owned();
    }
    let parts: Vec<&str> = ep.split('.').collect();
    if parts.len() == 5 {
        parts[..4].join(".")
    } else {
        ep.to_owned()
    }
}

/// ICMP packets seen in a capture, with their VXLAN wrapping if any
/// (tcpdump prints the outer packet, then the inner one on the next line).
fn icmp_packets(p: &Packets) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut lines = p.lines.iter().peekable();
    while let Some(line) = lines.next() {
        if line.contains("VXLAN") {
            let Some((osrc, odst)) = endpoints(line) else {
                continue;
            };
            let Some(inner) = lines.next() else { break };
            if let Some((src, dst)) = endpoints(inner).filter(|_| inner.contains("ICMP")) {
                out.push(Seen {
                    outer: Some((strip_port(&osrc), strip_port(&odst), line.clone())),
                    src,
                    dst,
                    line: inner.clone(),
                });
            }
        } else if line.contains("ICMP")
            && let Some((src, dst)) = endpoints(line)
        {
            out.push(Seen {
                outer: None,
                src,
                dst,
                line: line.clone(),
            });
        }
    }
    out
}

fn echo_requests(seen: &[Seen], from: impl Into<IpAddr>, to: impl Into<IpAddr>) -> Vec<&Seen> {
    let (from, to) = (from.into(), to.into());
    seen.iter()
        .filter(|s| {
            s.src == from.to_string() && s.dst == to.to_string() && s.line.contains("echo request")
        })
        .collect()
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr) -> bool {
    LAN1.contains(&a) == LAN1.contains(&b)
}

#[test]
fn vxlan_always_wraps_every_cross_node_pod_packet() {
    testlab::require!(Feature::Vxlan, Feature::Tcpdump);
    let o = Overlay::build("vxlan_always_wraps_every_cross_node_pod_packet");
    let applied = o.apply(Never, Always);
    for (d, _) in &applied {
        assert_eq!(d.path_counts(), (0, 0, 3), "{}", d.node);
    }
    let (matrix, packets) = o.ping_all_captured();
    assert!(matrix.failures().is_empty(), "\n{matrix}");
    let seen = icmp_packets(&packets);
    for a in NODES {
        for b in NODES {
            if a.name == b.name {
                continue;
            }
            let (pa, pb) = (o.pod(a.name).addr, o.pod(b.name).addr);
            let reqs = echo_requests(&seen, pa, pb);
            assert!(
                !reqs.is_empty(),
                "{} -> {}: no echo request seen\n{packets}",
                a.name,
                b.name
            );
            for s in reqs {
                let (osrc, odst, oline) = s.outer.as_ref().unwrap_or_else(|| {
                    panic!(
                        "{} -> {}: plain on the underlay: {}",
                        a.name, b.name, s.line
                    )
                });
                assert_eq!(
                    (osrc.as_str(), odst.as_str()),
                    (a.addr.to_string().as_str(), b.addr.to_string().as_str()),
                    "{oline}"
                );
                assert!(oline.contains("vni 4096"), "{oline}");
            }
        }
    }
    // Nothing carrying a pod address crossed the underlay unwrapped.
    let plain: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.outer.is_none() && s.src.starts_with("172.16."))
        .collect();
    assert!(plain.is_empty(), "plain pod packets: {plain:#?}");
    println!(
        "VXLAN Always: {} ICMP packets on the underlay, all VXLAN vni 4096",
        seen.len()
    );
}

#[test]
fn vxlan_crosssubnet_is_plain_within_the_subnet_and_vxlan_across() {
    testlab::require!(Feature::Vxlan, Feature::Tcpdump);
    let o = Overlay::build("vxlan_crosssubnet_is_plain_within_the_subnet_and_vxlan_across");
    let applied = o.apply(Never, CrossSubnet);
    for (d, _) in &applied {
        let want = if d.node.as_str() == "k8s-w0" {
            (0, 0, 3)
        } else {
            (2, 0, 1)
        };
        assert_eq!(d.path_counts(), want, "{}", d.node);
    }
    let (matrix, packets) = o.ping_all_captured();
    assert!(matrix.failures().is_empty(), "\n{matrix}");
    let seen = icmp_packets(&packets);
    let (mut plain, mut wrapped) = (0, 0);
    for a in NODES {
        for b in NODES {
            if a.name == b.name {
                continue;
            }
            let (pa, pb) = (o.pod(a.name).addr, o.pod(b.name).addr);
            let reqs = echo_requests(&seen, pa, pb);
            assert!(
                !reqs.is_empty(),
                "{} -> {}: nothing seen\n{packets}",
                a.name,
                b.name
            );
            for s in reqs {
                if same_subnet(a.addr, b.addr) {
                    assert!(
                        s.outer.is_none(),
                        "{} -> {} same subnet but wrapped: {:?}",
                        a.name,
                        b.name,
                        s.outer
                    );
                    plain += 1;
                } else {
                    let (osrc, odst, oline) = s.outer.as_ref().unwrap_or_else(|| {
                        panic!(
                            "{} -> {} across subnets but plain: {}",
                            a.name, b.name, s.line
                        )
                    });
                    assert_eq!(
                        (osrc.clone(), odst.clone()),
                        (a.addr.to_string(), b.addr.to_string())
                    );
                    assert!(oline.contains("vni 4096"), "{oline}");
                    wrapped += 1;
                }
            }
        }
    }
    // No VXLAN at all between two nodes of the same subnet.
    for line in packets.lines.iter().filter(|l| l.contains("VXLAN")) {
        let (s, d) = endpoints(line).unwrap();
        let (s, d): (Ipv4Addr, Ipv4Addr) = (
            strip_port(&s).parse().unwrap(),
            strip_port(&d).parse().unwrap(),
        );
        assert!(!same_subnet(s, d), "VXLAN within a subnet: {line}");
    }
    println!(
        "VXLAN CrossSubnet: {plain} plain same-subnet echo requests, {wrapped} VXLAN cross-subnet"
    );
}

#[test]
fn never_is_direct_and_cross_subnet_needs_router_routes() {
    testlab::require!(Feature::Tcpdump);
    let o = Overlay::build("never_is_direct_and_cross_subnet_needs_router_routes");
    let applied = o.apply(Never, Never);
    for (d, _) in &applied {
        assert_eq!(d.path_counts(), (3, 0, 0), "{}", d.node);
        assert!(d.devices.is_empty());
    }
    // As in the article: pod1 on k8s-w1 cannot reach pod3 on k8s-w0 because the
    // router between the subnets knows no pod block; the request leaves plain.
    // In parallel: six pairs are expected to time out (3 s each), and the
    // capture only needs some of the retried requests.
    let (matrix, packets) = o.ping_all_captured_in_parallel();
    for a in NODES {
        for b in NODES {
            if a.name == b.name {
                continue;
            }
            let ok = matrix.get(a.name, b.name);
            assert_eq!(
                ok,
                same_subnet(a.addr, b.addr),
                "{} -> {}\n{matrix}",
                a.name,
                b.name
            );
        }
    }
    let seen = icmp_packets(&packets);
    let (w1, w0) = (o.pod("k8s-w1").addr, o.pod("k8s-w0").addr);
    let stuck = echo_requests(&seen, w1, w0);
    assert!(
        !stuck.is_empty() && stuck.iter().all(|s| s.outer.is_none()),
        "{packets}"
    );
    assert!(!packets.any(&["VXLAN"]), "{packets}");
    let failures_before = matrix.failures().len();

    o.teach_router_blocks();
    let (matrix, packets) = o.ping_all_captured();
    assert!(
        matrix.failures().is_empty(),
        "with router routes:\n{matrix}"
    );
    let seen = icmp_packets(&packets);
    let replies: Vec<&Seen> = seen
        .iter()
        .filter(|s| {
            s.src == w0.to_string() && s.dst == w1.to_string() && s.line.contains("echo reply")
        })
        .collect();
    assert!(
        !replies.is_empty() && replies.iter().all(|s| s.outer.is_none()),
        "{packets}"
    );
    assert!(!packets.any(&["VXLAN"]), "{packets}");
    println!(
        "Never: {failures_before} cross-subnet pairs failed without router routes, 0 with them; node IPs {} / {}",
        o.node_ip("k8s-w1"),
        o.node_ip("k8s-w0")
    );
}

#[test]
fn ipip_decisions_and_specs_then_kernel_if_available() {
    // The decisions and specs are checked everywhere; the kernel part needs IPIP.
    let o_specs = |ipip: EncapMode| {
        let mut seen = Vec::new();
        for spec in NODES {
            let mut input = seed_input_without_lab(spec.name);
            input.pools[0].ipip_mode = ipip;
            let d = decide(&input).unwrap();
            let specs = d.route_specs(RouteProtocol::CALICO);
            for r in &specs.routes {
                r.validate().unwrap();
            }
            assert_eq!(specs.links.len(), 1);
            assert!(matches!(specs.links[0].kind, LinkKind::Ipip(_)));
            assert_eq!(specs.links[0].mtu, Some(1480));
            seen.push((spec.name, d));
        }
        seen
    };
    for (name, d) in o_specs(Always) {
        assert!(
            d.paths
                .iter()
                .all(|p| p.kind == PathKind::Ipip && p.dev.as_str() == "tunl0"),
            "{name}"
        );
    }
    for (name, d) in o_specs(CrossSubnet) {
        for p in &d.paths {
            let remote = NODES.iter().find(|n| n.name == p.node.as_str()).unwrap();
            let me = NODES.iter().find(|n| n.name == name).unwrap();
            let want = if same_subnet(me.addr, remote.addr) {
                PathKind::Direct
            } else {
                PathKind::Ipip
            };
            assert_eq!(p.kind, want, "{name}: {p}");
        }
    }

    testlab::require!(Feature::Ipip, Feature::Tcpdump);
    let o = Overlay::build("ipip_decisions_and_specs_then_kernel_if_available");
    o.apply(Always, Never);
    let cap = o
        .seed
        .router
        .capture(&o.seed.lan1.bridge, "ip proto 4 or icmp")
        .unwrap();
    let matrix = o.ping_all();
    let packets = cap.stop().unwrap();
    assert!(matrix.failures().is_empty(), "\n{matrix}");
    let (w1, w0) = (o.pod("k8s-w1").addr, o.pod("k8s-w0").addr);
    let (w1s, w0s) = (w1.to_string(), w0.to_string());
    assert!(packets.any(&[w1s.as_str(), w0s.as_str()]), "{packets}");
    assert!(
        packets.any(&["ipip-proto-4"]) || packets.any(&["IPIP"]),
        "{packets}"
    );
}

/// The seed input for the IPIP checks, without a lab (uplink MTU 1500).
fn seed_input_without_lab(me: &str) -> Input {
    let mut local = None;
    let mut remotes = Vec::new();
    let mut blocks = Vec::new();
    for spec in NODES {
        let node = Node::new(spec.name.parse().unwrap())
            .with_address(IpNet::V4(Ipv4Net::new(spec.addr, 24).unwrap()))
            .with_ipip_tunnel(tunnel_addr(spec.block));
        blocks.push(calinet_encap::Block::new(
            IpNet::V4(spec.block),
            node.name.clone(),
        ));
        if spec.name == me {
            local = Some(node);
        } else {
            remotes.push(node);
        }
    }
    let mut input = Input::new(local.unwrap(), Uplink::new("eth0".parse().unwrap(), 1500));
    input.remotes = remotes;
    input.blocks = blocks;
    input.pools = vec![Pool::new("default-ipv4-ippool", IpNet::V4(POOL))];
    input
}

#[test]
fn switching_modes_converges_and_removes_the_old_mode() {
    testlab::require!(Feature::Vxlan, Feature::Tcpdump);
    let o = Overlay::build("switching_modes_converges_and_removes_the_old_mode");
    o.teach_router_blocks();
    // (ipipMode, vxlanMode, expected kinds seen from k8s-w1)
    let steps = [
        (Never, Always, (0, 0, 3)),
        (Never, CrossSubnet, (2, 0, 1)),
        (Never, Never, (3, 0, 0)),
        (Never, Always, (0, 0, 3)),
    ];
    for (ipip, vxlan, w1_kinds) in steps {
        let label = format!("ipipMode {ipip} vxlanMode {vxlan}");
        // `apply` checks every node's kernel state against its decisions,
        // including that unwanted devices are gone.
        let applied = o.apply(ipip, vxlan);
        let w1 = &applied[1].0;
        assert_eq!(w1.node.as_str(), "k8s-w1");
        assert_eq!(w1.path_counts(), w1_kinds, "{label}");
        // Converged: applying the same mode again writes nothing.
        let again = o.apply(ipip, vxlan);
        for (d, writes) in &again {
            assert_eq!(*writes, 0, "{label}: {} not converged", d.node);
        }
        let (matrix, packets) = o.ping_all_captured();
        assert!(matrix.failures().is_empty(), "{label}\n{matrix}");
        let vxlan_lines = packets.matching(&["VXLAN"]).len();
        if vxlan.enabled() {
            assert!(vxlan_lines > 0, "{label}: no VXLAN seen");
        } else {
            assert_eq!(
                vxlan_lines, 0,
                "{label}: VXLAN after switching it off\n{packets}"
            );
            for node in &o.seed.nodes {
                assert!(
                    node.link("vxlan.calico").unwrap().is_none(),
                    "{label}: {}",
                    node.name
                );
            }
        }
        println!("{label}: converged on 4 nodes, {vxlan_lines} VXLAN lines in the capture");
    }
}

/// IPv6 of one seed node, added by [`Overlay::add_ipv6`].
#[derive(Debug, Clone)]
struct V6 {
    name: &'static str,
    /// Underlay address on 2001:db8:1::/64 (first subnet) or 2001:db8:2::/64.
    addr: Ipv6Net,
    gateway: Ipv6Addr,
    block: Ipv6Net,
    pod: Ipv6Addr,
}

impl Overlay {
    /// Dual stack: IPv6 underlay (the router at ::1 of each /64, forwarding),
    /// a /122 pod block per node, and an IPv6 address on every pod, plumbed by
    /// hand the way Calico does (pod default route via the host side's
    /// link-local address).
    fn add_ipv6(&self) -> Vec<V6> {
        let router = &self.seed.router;
        router.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        for (bridge, net) in [(&self.seed.lan1.bridge, 1), (&self.seed.lan2.bridge, 2)] {
            router
                .ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("2001:db8:{net}::1/64"),
                    "dev",
                    bridge,
                    "nodad",
                ])
                .unwrap();
        }
        let mut out = Vec::new();
        for (i, spec) in NODES.iter().enumerate() {
            let subnet = if LAN1.contains(&spec.addr) { 1 } else { 2 };
            let n = u16::try_from(i).unwrap() + 1;
            let v6 = V6 {
                name: spec.name,
                addr: Ipv6Net::new(
                    Ipv6Addr::new(0x2001, 0xdb8, subnet, 0, 0, 0, 0, 0x10 + n),
                    64,
                )
                .unwrap(),
                gateway: Ipv6Addr::new(0x2001, 0xdb8, subnet, 0, 0, 0, 0, 1),
                block: Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0, n, 0, 0, 0, 0), 122).unwrap(),
                pod: Ipv6Addr::new(0xfd00, 0x10, 0, n, 0, 0, 0, 2),
            };
            let node = self.seed.node(spec.name).unwrap();
            node.ip(&[
                "-6",
                "addr",
                "add",
                &v6.addr.to_string(),
                "dev",
                "eth0",
                "nodad",
            ])
            .unwrap();
            node.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &v6.gateway.to_string(),
                "dev",
                "eth0",
            ])
            .unwrap();
            let pod = self.pod(spec.name);
            pod.ns
                .ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/128", v6.pod),
                    "dev",
                    "eth0",
                    "nodad",
                ])
                .unwrap();
            pod.ns
                .ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    HOST_SIDE_LINK_LOCAL,
                    "dev",
                    "eth0",
                ])
                .unwrap();
            node.ip(&[
                "-6",
                "route",
                "add",
                &format!("{}/128", v6.pod),
                "dev",
                "calilab0",
            ])
            .unwrap();
            // The pod's gateway is the host side's link-local address, usable
            // once duplicate address detection is over.
            testlab::wait_for(
                "calilab0 link-local address",
                Duration::from_secs(10),
                || {
                    Ok(node
                        .ip(&["-6", "addr", "show", "dev", "calilab0", "tentative"])?
                        .trim()
                        .is_empty())
                },
            )
            .unwrap();
            out.push(v6);
        }
        out
    }

    /// Node `me`'s dual-stack view: IPv4 pool with `vxlan4`, IPv6 pool with `vxlan6`.
    fn input_dual(&self, me: &str, vxlan4: EncapMode, vxlan6: EncapMode, v6: &[V6]) -> Input {
        let mut input = self.input_for(me, Never, vxlan4);
        for n in v6 {
            let node = if n.name == me {
                &mut input.local
            } else {
                input
                    .remotes
                    .iter_mut()
                    .find(|r| r.name.as_str() == n.name)
                    .unwrap()
            };
            node.spec.bgp_mut().ipv6_address = Some(n.addr);
            node.spec.ipv6_vxlan_tunnel_addr = Some(n.block.network());
            input.blocks.push(calinet_encap::Block::new(
                IpNet::V6(n.block),
                n.name.parse().unwrap(),
            ));
            if n.name == me {
                input.uplink.gateway_v6 = Some(n.gateway);
            }
        }
        input
            .pools
            .push(Pool::new("default-ipv6-ippool", "fd00:10::/48".parse().unwrap()).vxlan(vxlan6));
        input
    }
}

/// The host side's link-local address: derived from its MAC `ee:ee:ee:ee:ee:ee`.
const HOST_SIDE_LINK_LOCAL: &str = "fe80::ecee:eeff:feee:eeee";

#[test]
fn dual_stack_vxlan_crosssubnet_uses_vxlan_v6_across_subnets() {
    testlab::require!(Feature::Vxlan, Feature::Tcpdump);
    let o = Overlay::build("dual_stack_vxlan_crosssubnet_uses_vxlan_v6_across_subnets");
    let v6 = o.add_ipv6();
    for spec in NODES {
        let d = decide(&o.input_dual(spec.name, CrossSubnet, CrossSubnet, &v6)).unwrap();
        let node = o.seed.node(spec.name).unwrap();
        let writes = rt().block_on(apply_node(node, &d.route_specs(RouteProtocol::CALICO)));
        assert!(writes > 0);
        check_kernel(node, &d);
        let vx6 = d.device("vxlan-v6.calico").expect("vxlan-v6.calico wanted");
        assert_eq!(vx6.mtu(), 1500 - 70);
        assert_eq!(d.mtu.pod, 1500 - 70, "pods get the largest overhead in use");
        let v6_paths: Vec<_> = d.paths.iter().filter(|p| p.dst.addr().is_ipv6()).collect();
        let tunnelled = v6_paths
            .iter()
            .filter(|p| p.kind == PathKind::Vxlan)
            .count();
        assert_eq!(
            tunnelled,
            if spec.name == "k8s-w0" { 3 } else { 1 },
            "{}",
            spec.name
        );
    }
    let targets6: Vec<(String, IpAddr)> = v6
        .iter()
        .map(|n| (n.name.to_owned(), IpAddr::V6(n.pod)))
        .collect();
    let (matrix, packets) = o.ping_captured(&targets6);
    assert!(matrix.failures().is_empty(), "IPv6\n{matrix}");
    let seen = icmp_packets(&packets);
    let (mut plain, mut wrapped) = (0, 0);
    for a in &v6 {
        for b in &v6 {
            if a.name == b.name {
                continue;
            }
            let reqs = echo_requests(&seen, a.pod, b.pod);
            assert!(
                !reqs.is_empty(),
                "{} -> {}: nothing seen\n{packets}",
                a.name,
                b.name
            );
            let same = a.addr.contains(&b.addr.addr());
            for s in reqs {
                match (&s.outer, same) {
                    (None, true) => plain += 1,
                    (Some((osrc, odst, oline)), false) => {
                        assert_eq!(
                            (osrc.clone(), odst.clone()),
                            (a.addr.addr().to_string(), b.addr.addr().to_string())
                        );
                        assert!(oline.contains("vni 4096"), "{oline}");
                        wrapped += 1;
                    }
                    (outer, _) => panic!(
                        "{} -> {} (same subnet {same}): {outer:?} {}",
                        a.name, b.name, s.line
                    ),
                }
            }
        }
    }
    // IPv4 works alongside, over vxlan.calico across subnets.
    let matrix4 = o.ping_all();
    assert!(matrix4.failures().is_empty(), "IPv4\n{matrix4}");
    println!(
        "dual stack CrossSubnet: IPv6 {plain} plain same-subnet, {wrapped} VXLAN-over-IPv6 cross-subnet echo requests; IPv4 matrix ok"
    );
}

/// Full-size don't-fragment pings from pod to pod: `payload` bytes of ICMP
/// data, i.e. an IPv4 packet of `payload + 28`.
fn df_ping(from: &SeedPod, to: Ipv4Addr, payload: u32) -> bool {
    from.ns
        .exec(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                "3",
                "-i",
                "0.2",
                "-w",
                "3",
                "-M",
                "do",
                "-s",
                &payload.to_string(),
                &to.to_string(),
            ],
        )
        .is_ok()
}

fn set_pod_mtu(o: &Overlay, node: &str, mtu: u32) {
    let mtu = mtu.to_string();
    o.seed
        .node(node)
        .unwrap()
        .ip(&["link", "set", "calilab0", "mtu", &mtu])
        .unwrap();
    o.pod(node)
        .ns
        .ip(&["link", "set", "eth0", "mtu", &mtu])
        .unwrap();
}

#[test]
fn pod_mtu_fits_the_vxlan_path_and_the_host_mtu_does_not() {
    testlab::require!(Feature::Vxlan);
    let o = Overlay::build("pod_mtu_fits_the_vxlan_path_and_the_host_mtu_does_not");
    let applied = o.apply(Never, Always);
    let w1 = &applied[1].0;
    let (host, pod) = (w1.mtu.host, w1.mtu.pod);
    assert_eq!((host, pod), (1500, 1450));
    let (from, to) = (o.pod("k8s-w1"), o.pod("k8s-w0").addr);

    // Pods at the decided MTU: the largest packet they can send crosses the
    // overlay unfragmented.
    for node in ["k8s-w1", "k8s-w0"] {
        set_pod_mtu(&o, node, pod);
    }
    assert!(
        df_ping(from, to, pod - 28),
        "a {pod}-byte packet should cross VXLAN"
    );

    // Pods at the host MTU (the overhead ignored): a full-size packet does not
    // fit vxlan.calico and is refused (fragmentation needed).
    for node in ["k8s-w1", "k8s-w0"] {
        set_pod_mtu(&o, node, host);
    }
    assert!(
        !df_ping(from, to, host - 28),
        "a {host}-byte packet cannot fit VXLAN"
    );
    // ...while one that fits the path still works.
    assert!(df_ping(from, to, pod - 28));
    println!(
        "pod MTU {pod}: {}-byte DF packets cross VXLAN; {host}-byte ones are refused",
        pod
    );
}
