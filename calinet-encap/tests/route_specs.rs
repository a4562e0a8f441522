//! Decisions converted to calinet-route specs, per mode (feature `route`).
//! IPIP's kernel side cannot run here (no IPIP in this kernel), so its specs
//! are checked in full here.

use calinet_encap::{Block, EncapMode, Input, Node, Pool, Uplink, decide};
use calinet_route::{LinkKind, RouteProtocol};

use EncapMode::{Always, CrossSubnet, Never};

const SEED: [(&str, &str, &str, &str); 4] = [
    (
        "k8s-m",
        "198.51.100.10/24",
        "172.16.116.0/24",
        "172.16.116.0",
    ),
    (
        "k8s-w1",
        "198.51.100.101/24",
        "172.16.158.0/24",
        "172.16.158.0",
    ),
    (
        "k8s-w2",
        "198.51.100.102/24",
        "172.16.184.0/24",
        "172.16.184.0",
    ),
    (
        "k8s-w0",
        "203.0.113.100/24",
        "172.16.34.0/24",
        "172.16.34.0",
    ),
];

fn input(me: &str, ipip: EncapMode, vxlan: EncapMode) -> Input {
    let mut local = None;
    let mut remotes = Vec::new();
    let mut blocks = Vec::new();
    for (n, addr, block, tunnel) in SEED {
        let node = Node::new(n.parse().unwrap())
            .with_address(addr.parse().unwrap())
            .with_ipip_tunnel(tunnel.parse().unwrap())
            .with_vxlan_tunnel(tunnel.parse().unwrap());
        blocks.push(Block::new(block.parse().unwrap(), n.parse().unwrap()));
        if n == me {
            local = Some(node);
        } else {
            remotes.push(node);
        }
    }
    let uplink =
        Uplink::new("eth0".parse().unwrap(), 1500).with_gateway("198.51.100.1".parse().unwrap());
    let mut i = Input::new(local.unwrap(), uplink);
    i.remotes = remotes;
    i.blocks = blocks;
    i.pools = vec![
        Pool::new("default-ipv4-ippool", "172.16.0.0/16".parse().unwrap())
            .ipip(ipip)
            .vxlan(vxlan),
    ];
    i
}

#[test]
fn specs_per_mode() {
    /// (ipipMode, vxlanMode, routes, links wanted, links deleted)
    type Case = (
        EncapMode,
        EncapMode,
        [&'static str; 4],
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: [Case; 5] = [
        (
            Always,
            Never,
            [
                "172.16.34.0/24 via 203.0.113.100 dev tunl0 proto 80 onlink",
                "172.16.116.0/24 via 198.51.100.10 dev tunl0 proto 80 onlink",
                "blackhole 172.16.158.0/24 proto 80",
                "172.16.184.0/24 via 198.51.100.102 dev tunl0 proto 80 onlink",
            ],
            &["tunl0"],
            &["vxlan.calico", "vxlan-v6.calico"],
        ),
        (
            CrossSubnet,
            Never,
            [
                "172.16.34.0/24 via 203.0.113.100 dev tunl0 proto 80 onlink",
                "172.16.116.0/24 via 198.51.100.10 dev eth0 proto 80 onlink",
                "blackhole 172.16.158.0/24 proto 80",
                "172.16.184.0/24 via 198.51.100.102 dev eth0 proto 80 onlink",
            ],
            &["tunl0"],
            &["vxlan.calico", "vxlan-v6.calico"],
        ),
        (
            Never,
            Never,
            [
                "172.16.34.0/24 via 198.51.100.1 dev eth0 proto 80",
                "172.16.116.0/24 via 198.51.100.10 dev eth0 proto 80 onlink",
                "blackhole 172.16.158.0/24 proto 80",
                "172.16.184.0/24 via 198.51.100.102 dev eth0 proto 80 onlink",
            ],
            &[],
            &["vxlan.calico", "vxlan-v6.calico"],
        ),
        (
            Never,
            Always,
            [
                "172.16.34.0/24 via 172.16.34.0 dev vxlan.calico proto 80 onlink",
                "172.16.116.0/24 via 172.16.116.0 dev vxlan.calico proto 80 onlink",
                "blackhole 172.16.158.0/24 proto 80",
                "172.16.184.0/24 via 172.16.184.0 dev vxlan.calico proto 80 onlink",
            ],
            &["vxlan.calico"],
            &["vxlan-v6.calico"],
        ),
        (
            Never,
            CrossSubnet,
            [
                "172.16.34.0/24 via 172.16.34.0 dev vxlan.calico proto 80 onlink",
                "172.16.116.0/24 via 198.51.100.10 dev eth0 proto 80 onlink",
                "blackhole 172.16.158.0/24 proto 80",
                "172.16.184.0/24 via 198.51.100.102 dev eth0 proto 80 onlink",
            ],
            &["vxlan.calico"],
            &["vxlan-v6.calico"],
        ),
    ];
    for (ipip, vxlan, routes, links, removed) in cases {
        let label = format!("ipip {ipip} vxlan {vxlan}");
        let specs = decide(&input("k8s-w1", ipip, vxlan))
            .unwrap()
            .route_specs(RouteProtocol::CALICO);
        let got: Vec<String> = specs.routes.iter().map(ToString::to_string).collect();
        assert_eq!(got, routes, "{label}");
        for r in &specs.routes {
            r.validate().unwrap_or_else(|e| panic!("{label}: {r}: {e}"));
        }
        let names: Vec<&str> = specs.links.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, links, "{label}");
        let rm: Vec<&str> = specs.remove_links.iter().map(|l| l.as_str()).collect();
        assert_eq!(rm, removed, "{label}");
        // tunl0 is never deleted: quiesced (down, no address) when IPIP is off.
        let quiesced: Vec<&str> = specs
            .quiesce_links
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(
            quiesced,
            if ipip.enabled() {
                vec![]
            } else {
                vec!["tunl0"]
            },
            "{label}"
        );
        for l in &specs.quiesce_links {
            assert!(
                !l.up && l.addresses.is_empty() && l.validate().is_ok(),
                "{label}"
            );
        }
        for l in &specs.links {
            l.validate()
                .unwrap_or_else(|e| panic!("{label}: {}: {e}", l.name));
            match &l.kind {
                LinkKind::Ipip(p) => {
                    assert_eq!((p.local, p.remote), (None, None), "{label}");
                    assert_eq!(l.mtu, Some(1480), "{label}");
                    assert_eq!(
                        l.addresses,
                        ["172.16.158.0/32".parse::<ipnet::IpNet>().unwrap()]
                    );
                    assert_eq!(l.mac, None);
                }
                LinkKind::Vxlan(v) => {
                    assert_eq!((v.vni, v.port, v.learning), (4096, 4789, false), "{label}");
                    assert_eq!(v.parent.as_ref().map(|p| p.as_str()), Some("eth0"));
                    assert_eq!(v.local, Some("198.51.100.101".parse().unwrap()));
                    assert_eq!(l.mtu, Some(1450), "{label}");
                    assert_eq!(l.mac.unwrap().to_string(), "66:74:91:32:7c:04");
                }
                other => panic!("{label}: unexpected link kind {other:?}"),
            }
        }
        let vteps = if vxlan.enabled() { 3 } else { 0 };
        assert_eq!(
            (specs.neighbours.len(), specs.fdb.len()),
            (vteps, vteps),
            "{label}"
        );
        for (n, f) in specs.neighbours.iter().zip(&specs.fdb) {
            assert_eq!(
                n.lladdr, f.mac,
                "{label}: neighbour and FDB of one VTEP share the MAC"
            );
        }
    }
}

#[test]
fn protocol_is_the_callers() {
    let specs = decide(&input("k8s-m", Always, Never))
        .unwrap()
        .route_specs(RouteProtocol::BIRD);
    assert!(
        specs
            .routes
            .iter()
            .all(|r| r.protocol == RouteProtocol::BIRD)
    );
}
