//! Lab test (root): three nodes, each running wireguard-go with its own
//! device name, programmed by calinet-wg through the UAPI backend; pod
//! traffic crosses the underlay only as WireGuard UDP. Routes go through
//! calinet-route (real netlink), the fwmark rule (calinet-wg's `rule_spec`)
//! through calinet-route's rule reconciler.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use calinet_route::Backend as _;
use calinet_route::RouteProtocol;
use calinet_wg::backend::sync;
use calinet_wg::backend::uapi::UapiBackend;
use calinet_wg::routing::{
    RuleDecision, device_mtu, missing_routes, route_specs, rule_decision, rule_spec,
};
use calinet_wg::{
    DeviceSettings, Family, IfName, NodeState, PrivateKey, compute_device, key, normalized,
    parse_showconf, render_showconf,
};

type Res<T = ()> = Result<T, Box<dyn std::error::Error>>;

struct LabNode {
    node: testlab::Node,
    settings: DeviceSettings,
    key_path: std::path::PathBuf,
    pod: testlab::Netns,
    pod_ip: Ipv4Addr,
    _wg: testlab::Process,
}

impl LabNode {
    fn private_key(&self) -> PrivateKey {
        key::load(&self.key_path).expect("key file loads")
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(172, 16, 10 + i as u8, 5)
}

fn state(n: &LabNode, i: usize) -> NodeState {
    let mut s = NodeState::new(n.node.name.parse().unwrap());
    s.public_key = Some(n.private_key().public_key());
    s.endpoint = Some(IpAddr::V4(n.node.address()));
    s.blocks = vec![format!("172.16.{}.0/24", 10 + i).parse().unwrap()];
    s.tunnel_addresses = vec![IpAddr::V4(Ipv4Addr::new(172, 16, 10 + i as u8, 1))];
    s
}

/// What the node agent would do on every change: compute, sync the device,
/// set MTU/address/up, install the table's routes, then (and only then) the rule.
fn program(n: &LabNode, states: &[NodeState]) -> Res<calinet_wg::backend::ApplyReport> {
    let local = n.node.name.parse()?;
    let c = compute_device(
        &local,
        &n.private_key(),
        &n.settings,
        states,
        &BTreeMap::new(),
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let (_, report) = sync(&mut UapiBackend::new(), &n.settings.ifname, &c.device)?;

    let dev = n.settings.ifname.as_str();
    let host_mtu = n.node.link("eth0")?.and_then(|l| l.mtu).ok_or("eth0 mtu")?;
    let mtu = device_mtu(host_mtu, Family::V4).to_string();
    n.node.ip(&["link", "set", dev, "mtu", &mtu, "up"])?;
    let me = states
        .iter()
        .find(|s| s.name == local)
        .ok_or("local state")?;
    for t in &me.tunnel_addresses {
        n.node
            .ip(&["addr", "replace", &format!("{t}/32"), "dev", dev])?;
    }

    let desired = route_specs(&n.settings, &c);
    let ns = calinet_route::Netns::named(n.node.name())?;
    let table = n.settings.table;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let observed = rt.block_on(async {
        let mut b = calinet_route::NetlinkBackend::open(&ns).await?;
        let links = b.links().await?;
        let have = b.routes(&links).await?;
        let mut ops: Vec<calinet_route::RouteOp> = have
            .iter()
            .filter(|r| r.table == table && !desired.iter().any(|d| d.key() == r.key()))
            .cloned()
            .map(calinet_route::RouteOp::Delete)
            .collect();
        ops.extend(desired.iter().cloned().map(calinet_route::RouteOp::Replace));
        let outcomes = b.apply_routes(&ops, &links).await?;
        for (op, o) in ops.iter().zip(&outcomes) {
            assert!(o.is_none(), "{op}: {o:?}");
        }
        let links = b.links().await?;
        b.routes(&links).await
    })?;
    // The rule goes in only once the device and every table route exist.
    let device_present = n.node.link(dev)?.is_some();
    let decision = rule_decision(device_present, &desired, &observed);
    assert_eq!(
        decision,
        RuleDecision::Add,
        "missing: {:?}",
        missing_routes(&desired, &observed)
    );
    let rule = [rule_spec(&n.settings)];
    calinet_route::reconcile_rules(&ns, &rule, RouteProtocol::CALICO)?;
    // Idempotent: a second apply writes nothing.
    let again = calinet_route::reconcile_rules(&ns, &rule, RouteProtocol::CALICO)?;
    assert_eq!(again.writes, 0, "{again:?}");
    Ok(report)
}

fn pings(nodes: &[LabNode], from: usize, to: usize, timeout: Duration) -> bool {
    nodes[from].pod.ping(IpAddr::V4(nodes[to].pod_ip), timeout)
}

#[test]
fn three_nodes_over_wireguard_go() -> Res {
    testlab::require!(testlab::Feature::WireguardGo, testlab::Feature::Tcpdump);
    let lab = testlab::Lab::new("wg_three_nodes")?;
    let keys = tempfile::tempdir()?;
    let seg = lab.segment("198.51.100.0/24")?;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let node = lab.node(
            &format!("n{i}"),
            &seg,
            Ipv4Addr::new(198, 51, 100, 10 + i as u8),
        )?;
        // Distinct device names: wireguard-go's sockets share /var/run/wireguard.
        let dev = format!("{}w{i}", lab.prefix());
        let wg = lab.wireguard_go(&node, &dev)?;
        let pod = lab.pod(&format!("p{i}"))?;
        lab.plumb_pod(&node, &pod, &format!("cali{i}"), pod_ip(i))?;
        let key_path = keys.path().join(format!("n{i}.key"));
        key::load_or_generate(&key_path)?;
        let mut settings = DeviceSettings::calico_v4();
        settings.ifname = dev.parse::<IfName>()?;
        nodes.push(LabNode {
            node,
            settings,
            key_path,
            pod,
            pod_ip: pod_ip(i),
            _wg: wg,
        });
    }
    let mut states: Vec<NodeState> = nodes.iter().enumerate().map(|(i, n)| state(n, i)).collect();
    for n in &nodes {
        let r = program(n, &states)?;
        assert_eq!(
            (r.operations, r.peer_entries),
            (1, 2),
            "first sync: one set with both peers"
        );
    }
    // Device state as configured.
    let n0 = &nodes[0];
    let link = n0
        .node
        .link(n0.settings.ifname.as_str())?
        .ok_or("wg link")?;
    assert_eq!(link.mtu, Some(1440), "host MTU 1500 - 60");
    let rules = n0.node.ip(&["rule"])?;
    assert!(
        rules.contains("99:\tnot from all fwmark 0x100000/0x100000 lookup 1"),
        "{rules}"
    );

    // Pod to pod everywhere, and the underlay sees only WireGuard UDP between node addresses.
    let router = lab.router()?;
    let cap = router.capture(&seg.bridge, "ip")?;
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                assert!(
                    pings(&nodes, from, to, Duration::from_secs(10)),
                    "p{from} -> p{to}"
                );
            }
        }
    }
    let packets = cap.stop()?;
    assert!(!packets.is_empty(), "capture saw nothing");
    let node_ips: Vec<String> = nodes.iter().map(|n| n.node.address().to_string()).collect();
    let lines: Vec<&String> = packets
        .lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "capture saw no packets");
    // The router's own multicast (IGMP reports from the bridge) is not node traffic.
    for line in lines.into_iter().filter(|l| !l.contains(" > 224.")) {
        assert!(
            line.contains(": UDP, length"),
            "non-UDP on the underlay: {line}"
        );
        let ok = node_ips
            .iter()
            .any(|a| line.contains(&format!("IP {a}.51820 >")))
            && node_ips
                .iter()
                .any(|a| line.contains(&format!("> {a}.51820:")));
        assert!(ok, "not node-to-node WireGuard: {line}");
    }
    assert!(
        !packets.mentions("172.16."),
        "pod address on the underlay:\n{packets}"
    );

    // A second sync with nothing changed sends nothing.
    let r = program(&nodes[0], &states)?;
    assert_eq!(r.operations, 0);

    // Rotate n1's key: persist it, reprogram n1 only -> the others still use the old key.
    let new_key = PrivateKey::generate()?;
    key::persist(&nodes[1].key_path, &new_key)?;
    states[1].public_key = Some(new_key.public_key());
    let r = program(&nodes[1], &states)?;
    assert_eq!(
        (r.operations, r.peer_entries),
        (1, 0),
        "n1: only its private key changes"
    );
    assert!(
        !pings(&nodes, 0, 1, Duration::from_secs(2)),
        "stale key must not work"
    );
    // Republish: each other node's update is one operation carrying one peer.
    for i in [0, 2] {
        let r = program(&nodes[i], &states)?;
        assert_eq!(
            (r.operations, r.peer_entries),
            (1, 2),
            "n{i}: remove old key, add new"
        );
    }
    assert!(
        pings(&nodes, 0, 1, Duration::from_secs(10)),
        "p0 -> p1 after rotation"
    );
    assert!(
        pings(&nodes, 2, 1, Duration::from_secs(10)),
        "p2 -> p1 after rotation"
    );

    // Remove n2: its peer disappears from n0 and n1, traffic to it stops.
    let gone = states.remove(2);
    for n in &nodes[..2] {
        program(n, &states)?;
        let dev = UapiBackend::new().socket_path(&n.settings.ifname);
        assert!(dev.exists());
        let observed =
            calinet_wg::backend::Backend::read(&mut UapiBackend::new(), &n.settings.ifname)?;
        assert_eq!(observed.peers.len(), 1);
        assert!(
            observed
                .peers
                .iter()
                .all(|p| Some(p.public_key) != gone.public_key)
        );
    }
    assert!(
        !pings(&nodes, 0, 2, Duration::from_secs(2)),
        "removed node still reachable"
    );
    assert!(pings(&nodes, 0, 1, Duration::from_secs(10)));

    // n2 comes back without a published key: still no peer, but a throw route
    // for its block in the WireGuard table so its traffic takes the normal path.
    let mut keyless = gone.clone();
    keyless.public_key = None;
    states.push(keyless);
    program(&nodes[0], &states)?;
    let observed =
        calinet_wg::backend::Backend::read(&mut UapiBackend::new(), &nodes[0].settings.ifname)?;
    assert_eq!(observed.peers.len(), 1, "no peer for a node without a key");
    let table = nodes[0].node.ip(&["route", "show", "table", "1"])?;
    assert!(table.contains("throw 172.16.12.0/24"), "{table}");
    assert!(
        table.contains(&format!("172.16.11.0/24 dev {}", nodes[0].settings.ifname)),
        "{table}"
    );
    states.pop();

    // The rendered showconf, fed to `wg setconf` on a fresh device, reads back equal.
    let c = compute_device(
        &nodes[0].node.name.parse()?,
        &nodes[0].private_key(),
        &nodes[0].settings,
        &states,
        &BTreeMap::new(),
    );
    let fresh = lab.netns("fresh")?;
    let fresh_dev = format!("{}wf", lab.prefix());
    let _fresh_wg = lab.wireguard_go(&fresh, &fresh_dev)?;
    let conf = keys.path().join("fresh.conf");
    write_0600(&conf, &render_showconf(&c.device))?;
    fresh.run(&["wg", "setconf", &fresh_dev, conf.to_str().ok_or("path")?])?;
    let shown = fresh.run(&["wg", "showconf", &fresh_dev])?;
    assert_eq!(normalized(&parse_showconf(&shown)?), normalized(&c.device));
    Ok(())
}

fn write_0600(path: &Path, text: &str) -> Res {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[test]
fn peer_with_thousands_of_allowed_ips_over_uapi() -> Res {
    testlab::require!(testlab::Feature::WireguardGo);
    let lab = testlab::Lab::new("wg_big_peer")?;
    let ns = lab.netns("big")?;
    let dev = format!("{}wb", lab.prefix());
    let _wg = lab.wireguard_go(&ns, &dev)?;
    let mut settings = DeviceSettings::calico_v4();
    settings.ifname = dev.parse()?;
    let (mut nodes, key) = calinet_wg::seed::nodes();
    for i in 0..5000u32 {
        nodes[2]
            .borrowed
            .push(IpAddr::V4(Ipv4Addr::from(0xac1f_0000 + i)));
    }
    let local = calinet_wg::seed::local();
    let c = compute_device(&local, &key, &settings, &nodes, &BTreeMap::new());
    let mut backend = UapiBackend::new();
    let (_, r) = sync(&mut backend, &settings.ifname, &c.device)?;
    assert_eq!(r.operations, 1, "the stream protocol needs no split");
    assert!(r.allowed_ips > 5000);
    let read_back = |backend: &mut UapiBackend| -> Res<calinet_wg::DeviceConfig> {
        let o = calinet_wg::backend::Backend::read(backend, &settings.ifname)?;
        Ok(calinet_wg::DeviceConfig {
            private_key: Some(key.clone()),
            listen_port: o.listen_port,
            fwmark: o.fwmark,
            peers: o.peers,
        })
    };
    assert_eq!(normalized(&read_back(&mut backend)?), normalized(&c.device));
    // Shrink that peer: one update-only entry replacing its allowed IPs.
    nodes[2].borrowed.truncate(1200);
    let c = compute_device(&local, &key, &settings, &nodes, &BTreeMap::new());
    let (delta, r) = sync(&mut backend, &settings.ifname, &c.device)?;
    assert_eq!((r.operations, r.peer_entries), (1, 1));
    assert!(delta.peers[0].update_only && delta.peers[0].replace_allowed_ips);
    assert_eq!(normalized(&read_back(&mut backend)?), normalized(&c.device));
    // The async backend reads the same device identically.
    #[cfg(feature = "tokio")]
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let async_read = rt.block_on(
            calinet_wg::backend::uapi::AsyncUapiBackend::default().read(&settings.ifname),
        )?;
        let sync_read = calinet_wg::backend::Backend::read(&mut backend, &settings.ifname)?;
        // wireguard-go lists peers in map order, which differs between reads.
        let as_config = |o: calinet_wg::ObservedDevice| {
            normalized(&calinet_wg::DeviceConfig {
                private_key: None,
                listen_port: o.listen_port,
                fwmark: o.fwmark,
                peers: o.peers,
            })
        };
        assert_eq!(async_read.public_key, sync_read.public_key);
        assert!(
            as_config(async_read) == as_config(sync_read),
            "async and sync reads differ"
        );
    }
    Ok(())
}
