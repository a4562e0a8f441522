//! Table-driven tests: one table for the modes, one for the errors, plus the
//! pieces (VTEP MAC, MTU, borrowed addresses, IPv6, serde names).

use std::net::IpAddr;

use calinet_encap::{
    Block, Borrowed, Decisions, Device, EncapMode, Error, Family, Input, MacAddr, Node, NodeName,
    PathKind, Pool, Uplink, Wireguard, decide,
};
use ipnet::IpNet;

use EncapMode::{Always, CrossSubnet, Never};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn name(s: &str) -> NodeName {
    s.parse().unwrap()
}

/// The seed article's topology on documentation ranges:
/// (name, uplink address, gateway, block, tunnel address).
const SEED: [(&str, &str, &str, &str, &str); 4] = [
    (
        "k8s-m",
        "198.51.100.10/24",
        "198.51.100.1",
        "172.16.116.0/24",
        "172.16.116.0",
    ),
    (
        "k8s-w1",
        "198.51.100.101/24",
        "198.51.100.1",
        "172.16.158.0/24",
        "172.16.158.0",
    ),
    (
        "k8s-w2",
        "198.51.100.102/24",
        "198.51.100.1",
        "172.16.184.0/24",
        "172.16.184.0",
    ),
    (
        "k8s-w0",
        "203.0.113.100/24",
        "203.0.113.1",
        "172.16.34.0/24",
        "172.16.34.0",
    ),
];

fn seed_input(me: &str, ipip: EncapMode, vxlan: EncapMode) -> Input {
    let mut local = None;
    let mut remotes = Vec::new();
    let mut blocks = Vec::new();
    for (n, addr, gw, block, tunnel) in SEED {
        let node = Node::new(name(n))
            .with_address(net(addr))
            .with_ipip_tunnel(tunnel.parse().unwrap())
            .with_vxlan_tunnel(ip(tunnel));
        blocks.push(Block::new(net(block), name(n)));
        if n == me {
            local = Some((
                node,
                Uplink::new("eth0".parse().unwrap(), 1500).with_gateway(ip(gw)),
            ));
        } else {
            remotes.push(node);
        }
    }
    let (local, uplink) = local.unwrap();
    let mut input = Input::new(local, uplink);
    input.remotes = remotes;
    input.blocks = blocks;
    input.pools = vec![
        Pool::new("default-ipv4-ippool", net("172.16.0.0/16"))
            .ipip(ipip)
            .vxlan(vxlan),
    ];
    input
}

fn routes(d: &Decisions) -> Vec<String> {
    d.paths.iter().map(ToString::to_string).collect()
}

#[test]
fn modes_table_from_k8s_w1() {
    struct Case {
        ipip: EncapMode,
        vxlan: EncapMode,
        routes: [&'static str; 3],
        devices: &'static [&'static str],
        pod_mtu: u32,
        vteps: usize,
    }
    let cases = [
        Case {
            ipip: Always,
            vxlan: Never,
            routes: [
                "172.16.34.0/24 via 203.0.113.100 dev tunl0 onlink",
                "172.16.116.0/24 via 198.51.100.10 dev tunl0 onlink",
                "172.16.184.0/24 via 198.51.100.102 dev tunl0 onlink",
            ],
            devices: &["tunl0"],
            pod_mtu: 1480,
            vteps: 0,
        },
        Case {
            ipip: CrossSubnet,
            vxlan: Never,
            routes: [
                "172.16.34.0/24 via 203.0.113.100 dev tunl0 onlink",
                "172.16.116.0/24 via 198.51.100.10 dev eth0 onlink",
                "172.16.184.0/24 via 198.51.100.102 dev eth0 onlink",
            ],
            devices: &["tunl0"],
            pod_mtu: 1480,
            vteps: 0,
        },
        Case {
            ipip: Never,
            vxlan: Never,
            routes: [
                "172.16.34.0/24 via 198.51.100.1 dev eth0",
                "172.16.116.0/24 via 198.51.100.10 dev eth0 onlink",
                "172.16.184.0/24 via 198.51.100.102 dev eth0 onlink",
            ],
            devices: &[],
            pod_mtu: 1500,
            vteps: 0,
        },
        Case {
            ipip: Never,
            vxlan: Always,
            routes: [
                "172.16.34.0/24 via 172.16.34.0 dev vxlan.calico onlink",
                "172.16.116.0/24 via 172.16.116.0 dev vxlan.calico onlink",
                "172.16.184.0/24 via 172.16.184.0 dev vxlan.calico onlink",
            ],
            devices: &["vxlan.calico"],
            pod_mtu: 1450,
            vteps: 3,
        },
        Case {
            ipip: Never,
            vxlan: CrossSubnet,
            routes: [
                "172.16.34.0/24 via 172.16.34.0 dev vxlan.calico onlink",
                "172.16.116.0/24 via 198.51.100.10 dev eth0 onlink",
                "172.16.184.0/24 via 198.51.100.102 dev eth0 onlink",
            ],
            devices: &["vxlan.calico"],
            pod_mtu: 1450,
            vteps: 3,
        },
    ];
    for c in cases {
        let label = format!("ipipMode {} vxlanMode {}", c.ipip, c.vxlan);
        let d = decide(&seed_input("k8s-w1", c.ipip, c.vxlan)).unwrap();
        assert_eq!(routes(&d), c.routes, "{label}");
        assert_eq!(d.blackholes, [net("172.16.158.0/24")], "{label}");
        let devs: Vec<&str> = d.devices.iter().map(|d| d.name().as_str()).collect();
        assert_eq!(devs, c.devices, "{label}");
        assert_eq!(d.mtu.pod, c.pod_mtu, "{label}");
        assert_eq!(
            (d.neighbours.len(), d.fdb.len()),
            (c.vteps, c.vteps),
            "{label}"
        );
        assert_eq!(
            d.unwanted_devices().len() + d.devices.len(),
            3,
            "{label}: every Calico device is wanted or unwanted"
        );
    }
}

#[test]
fn vxlan_device_neighbours_and_fdb_are_calico_shaped() {
    let d = decide(&seed_input("k8s-w1", Never, Always)).unwrap();
    let Device::Vxlan(vx) = &d.devices[0] else {
        panic!("expected VXLAN device, got {:?}", d.devices[0])
    };
    assert_eq!(vx.name.as_str(), "vxlan.calico");
    assert_eq!((vx.vni, vx.port, vx.learning), (4096, 4789, false));
    assert_eq!(vx.parent.as_str(), "eth0");
    assert_eq!(vx.local, ip("198.51.100.101"));
    assert_eq!(vx.address, ip("172.16.158.0"));
    assert_eq!(vx.mtu, 1450);
    assert_eq!(vx.mac, MacAddr::calico_vtep(&name("k8s-w1"), Family::V4));
    let neigh: Vec<String> = d.neighbours.iter().map(ToString::to_string).collect();
    let fdb: Vec<String> = d.fdb.iter().map(ToString::to_string).collect();
    let mac = |n| MacAddr::calico_vtep(&name(n), Family::V4);
    assert_eq!(
        neigh,
        [
            format!(
                "172.16.34.0 lladdr {} dev vxlan.calico nud permanent",
                mac("k8s-w0")
            ),
            format!(
                "172.16.116.0 lladdr {} dev vxlan.calico nud permanent",
                mac("k8s-m")
            ),
            format!(
                "172.16.184.0 lladdr {} dev vxlan.calico nud permanent",
                mac("k8s-w2")
            ),
        ]
    );
    assert_eq!(
        fdb,
        [
            format!(
                "{} dev vxlan.calico dst 203.0.113.100 self permanent",
                mac("k8s-w0")
            ),
            format!(
                "{} dev vxlan.calico dst 198.51.100.10 self permanent",
                mac("k8s-m")
            ),
            format!(
                "{} dev vxlan.calico dst 198.51.100.102 self permanent",
                mac("k8s-w2")
            ),
        ]
    );
}

#[test]
fn vtep_mac_is_66_then_sha1_prefix() {
    // SHA-1("k8s-w1") and SHA-1("k8s-w1-v6") computed with `printf %s k8s-w1 | sha1sum`.
    let cases = [
        ("k8s-w1", Family::V4, "66:74:91:32:7c:04"),
        ("k8s-w1", Family::V6, "66:a2:65:da:e4:78"),
        ("node-0", Family::V4, "66:fa:5e:1a:4d:f3"),
    ];
    for (n, fam, want) in cases {
        assert_eq!(
            MacAddr::calico_vtep(&name(n), fam).to_string(),
            want,
            "{n} {fam}"
        );
    }
    // A stated MAC wins over the derived one.
    let stated: MacAddr = "66:00:00:00:00:01".parse().unwrap();
    let node = Node::new(name("k8s-w1")).with_vtep_mac(Family::V4, stated);
    assert_eq!(node.vtep_mac(Family::V4), stated);
    assert_eq!(node.vtep_mac(Family::V6).to_string(), "66:a2:65:da:e4:78");
}

#[test]
fn mtu_table() {
    // (host, ipip, vxlan, wg4, wg6 with a v6 VXLAN pool, expected pod MTU,
    //  expected tunl0/vxlan.calico/vxlan-v6 MTUs)
    struct Case {
        host: u32,
        ipip: EncapMode,
        vxlan: EncapMode,
        v6_vxlan: bool,
        wg: Wireguard,
        pod: u32,
        ipip_mtu: Option<u32>,
        vxlan_mtu: Option<u32>,
        vxlan6_mtu: Option<u32>,
    }
    let wg = |ipv4, ipv6| Wireguard { ipv4, ipv6 };
    let cases = [
        // The seed: host 9001, IPIP -> tunl0 and pods 8981; WireGuard -> 8941.
        Case {
            host: 9001,
            ipip: Always,
            vxlan: Never,
            v6_vxlan: false,
            wg: wg(false, false),
            pod: 8981,
            ipip_mtu: Some(8981),
            vxlan_mtu: None,
            vxlan6_mtu: None,
        },
        Case {
            host: 9001,
            ipip: Always,
            vxlan: Never,
            v6_vxlan: false,
            wg: wg(true, false),
            pod: 8941,
            ipip_mtu: Some(8981),
            vxlan_mtu: None,
            vxlan6_mtu: None,
        },
        Case {
            host: 1500,
            ipip: Never,
            vxlan: Never,
            v6_vxlan: false,
            wg: wg(false, false),
            pod: 1500,
            ipip_mtu: None,
            vxlan_mtu: None,
            vxlan6_mtu: None,
        },
        Case {
            host: 1500,
            ipip: Never,
            vxlan: CrossSubnet,
            v6_vxlan: false,
            wg: wg(false, false),
            pod: 1450,
            ipip_mtu: None,
            vxlan_mtu: Some(1450),
            vxlan6_mtu: None,
        },
        Case {
            host: 1500,
            ipip: Never,
            vxlan: Always,
            v6_vxlan: true,
            wg: wg(false, false),
            pod: 1430,
            ipip_mtu: None,
            vxlan_mtu: Some(1450),
            vxlan6_mtu: Some(1430),
        },
        Case {
            host: 1500,
            ipip: Never,
            vxlan: Always,
            v6_vxlan: true,
            wg: wg(true, true),
            pod: 1420,
            ipip_mtu: None,
            vxlan_mtu: Some(1450),
            vxlan6_mtu: Some(1430),
        },
    ];
    for c in cases {
        let mut input = seed_input("k8s-m", c.ipip, c.vxlan);
        input.uplink.mtu = c.host;
        input.wireguard = c.wg;
        if c.v6_vxlan {
            add_v6(&mut input, Always);
        }
        let d = decide(&input).unwrap();
        let label = format!(
            "host {} ipip {} vxlan {} v6 {} wg {:?}",
            c.host, c.ipip, c.vxlan, c.v6_vxlan, c.wg
        );
        assert_eq!(d.mtu.pod, c.pod, "{label}");
        assert_eq!(d.mtu.ipip, c.ipip_mtu, "{label}");
        assert_eq!(d.mtu.vxlan_v4, c.vxlan_mtu, "{label}");
        assert_eq!(d.mtu.vxlan_v6, c.vxlan6_mtu, "{label}");
        for dev in &d.devices {
            assert!(
                d.mtu.pod <= dev.mtu(),
                "{label}: pod MTU above {}",
                dev.name()
            );
        }
    }
}

/// Adds an IPv6 pool, node addresses (k8s-w0 in another /64), blocks and
/// VXLAN tunnel addresses to a seed input.
fn add_v6(input: &mut Input, vxlan: EncapMode) {
    let v6 = |n: &str| -> (IpNet, IpNet, IpAddr) {
        let (i, subnet) = match n {
            "k8s-m" => (1, 1),
            "k8s-w1" => (2, 1),
            "k8s-w2" => (3, 1),
            _ => (4, 2),
        };
        (
            net(&format!("2001:db8:{subnet}::{i}/64")),
            net(&format!("fd00:10:0:{i}::/64")),
            ip(&format!("fd00:10:0:{i}::")),
        )
    };
    for node in std::iter::once(&mut input.local).chain(input.remotes.iter_mut()) {
        let (addr, block, tunnel) = v6(node.name.as_str());
        node.spec.bgp_mut().ipv6_address = match addr {
            IpNet::V6(a) => Some(a),
            IpNet::V4(_) => unreachable!(),
        };
        node.spec.ipv6_vxlan_tunnel_addr = match tunnel {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => unreachable!(),
        };
        input.blocks.push(Block::new(block, node.name.clone()));
    }
    input
        .pools
        .push(Pool::new("default-ipv6-ippool", net("fd00:10::/48")).vxlan(vxlan));
}

#[test]
fn ipv6_vxlan_paths_and_device() {
    for (mode, w0_kind, w2_kind) in [
        (Always, PathKind::Vxlan, PathKind::Vxlan),
        (CrossSubnet, PathKind::Vxlan, PathKind::Direct),
        (Never, PathKind::Direct, PathKind::Direct),
    ] {
        let mut input = seed_input("k8s-w1", Never, Never);
        add_v6(&mut input, mode);
        let d = decide(&input).unwrap();
        let w0 = d.path(net("fd00:10:0:4::/64")).unwrap();
        let w2 = d.path(net("fd00:10:0:3::/64")).unwrap();
        assert_eq!((w0.kind, w2.kind), (w0_kind, w2_kind), "{mode}");
        if w0.kind == PathKind::Vxlan {
            assert_eq!(
                w0.to_string(),
                "fd00:10:0:4::/64 via fd00:10:0:4:: dev vxlan-v6.calico onlink"
            );
            let Some(Device::Vxlan(vx)) = d.device("vxlan-v6.calico") else {
                panic!("{mode}: no vxlan-v6.calico")
            };
            assert_eq!(vx.local, ip("2001:db8:1::2"));
            assert_eq!(vx.mac, MacAddr::calico_vtep(&name("k8s-w1"), Family::V6));
            assert_eq!(vx.mtu, 1430);
            assert!(d.fdb.iter().any(|f| f.dst == ip("2001:db8:2::4")));
        }
        if w2.kind == PathKind::Direct {
            assert_eq!(
                w2.to_string(),
                "fd00:10:0:3::/64 via 2001:db8:1::3 dev eth0 onlink"
            );
        }
        // IPv4 stays direct whatever the IPv6 pool does.
        assert_eq!(
            d.path(net("172.16.184.0/24")).unwrap().kind,
            PathKind::Direct
        );
    }
}

#[test]
fn borrowed_addresses_get_host_routes_to_the_borrower() {
    let mut input = seed_input("k8s-m", Always, Never);
    input.borrowed = vec![
        // k8s-w2 uses an address of k8s-w1's block: route it to k8s-w2.
        Borrowed {
            addr: ip("172.16.158.7"),
            node: name("k8s-w2"),
        },
        // k8s-w0 uses an address of our own block: /32 beats our blackhole.
        Borrowed {
            addr: ip("172.16.116.9"),
            node: name("k8s-w0"),
        },
        // We use an address of k8s-w1's block: the workload route is not ours.
        Borrowed {
            addr: ip("172.16.158.9"),
            node: name("k8s-m"),
        },
    ];
    let d = decide(&input).unwrap();
    assert_eq!(
        routes(&d),
        [
            "172.16.34.0/24 via 203.0.113.100 dev tunl0 onlink",
            "172.16.116.9/32 via 203.0.113.100 dev tunl0 onlink",
            "172.16.158.0/24 via 198.51.100.101 dev tunl0 onlink",
            "172.16.158.7/32 via 198.51.100.102 dev tunl0 onlink",
            "172.16.184.0/24 via 198.51.100.102 dev tunl0 onlink",
        ]
    );
    assert_eq!(d.blackholes, [net("172.16.116.0/24")]);
}

#[test]
fn block_outside_pools_is_direct_and_gateway_free_direct_uses_onlink() {
    let mut input = seed_input("k8s-w1", Always, Never);
    input.pools.clear();
    input.uplink.gateway_v4 = None;
    let d = decide(&input).unwrap();
    assert_eq!(
        routes(&d)[0],
        "172.16.34.0/24 via 203.0.113.100 dev eth0 onlink",
        "no gateway: the node IP, onlink"
    );
    assert!(d.paths.iter().all(|p| p.kind == PathKind::Direct));
    assert!(d.devices.is_empty());
}

#[test]
fn errors_table() {
    type Mutate = fn(&mut Input);
    type Expect = fn(&Error) -> bool;
    let cases: [(&str, Mutate, Expect, &str); 16] = [
        (
            "both encaps in one pool",
            |i| i.pools[0].vxlan_mode = Always,
            |e| matches!(e, Error::BothEncapsEnabled { pool, .. } if pool == "default-ipv4-ippool"),
            "ipipMode and vxlanMode are both enabled",
        ),
        (
            "IPIP on IPv6",
            |i| {
                i.pools
                    .push(Pool::new("v6", net("fd00::/48")).ipip(CrossSubnet))
            },
            |e| matches!(e, Error::IpipOnIpv6 { pool, .. } if pool == "v6"),
            "ipipMode must be Never on an IPv6 pool",
        ),
        (
            "overlapping pools",
            |i| i.pools.push(Pool::new("inner", net("172.16.34.0/23"))),
            |e| matches!(e, Error::OverlappingPools { .. }),
            "overlap",
        ),
        (
            "remote without node address",
            |i| i.remotes[2].spec.bgp_mut().ipv4_address = None,
            |e| matches!(e, Error::NoUsableAddress { node, what: "node address", .. } if node.as_str() == "k8s-w0"),
            "node k8s-w0 has no IPv4 node address, which the path to 172.16.34.0/24 needs",
        ),
        (
            "remote without VXLAN tunnel address",
            |i| {
                i.pools[0].ipip_mode = Never;
                i.pools[0].vxlan_mode = Always;
                i.remotes[0].spec.ipv4_vxlan_tunnel_addr = None;
            },
            |e| {
                matches!(
                    e,
                    Error::NoUsableAddress {
                        what: "VXLAN tunnel address",
                        ..
                    }
                )
            },
            "which the VXLAN path to 172.16.116.0/24 needs",
        ),
        (
            "local without IPIP tunnel address",
            |i| i.local.spec.bgp_mut().ipv4_ipip_tunnel_addr = None,
            |e| {
                matches!(
                    e,
                    Error::NoUsableAddress {
                        what: "IPIP tunnel address",
                        ..
                    }
                )
            },
            "device tunl0",
        ),
        (
            "overlapping blocks",
            |i| {
                i.blocks
                    .push(Block::new(net("172.16.158.128/25"), name("k8s-m")))
            },
            |e| matches!(e, Error::OverlappingBlocks { .. }),
            "blocks 172.16.158.0/24 and 172.16.158.128/25 overlap",
        ),
        (
            "block straddling a pool",
            |i| i.blocks.push(Block::new(net("172.0.0.0/8"), name("k8s-m"))),
            |e| {
                matches!(
                    e,
                    Error::OverlappingBlocks { .. } | Error::BlockStraddlesPool { .. }
                )
            },
            "172.0.0.0/8",
        ),
        (
            "block of an unknown node",
            |i| {
                i.blocks
                    .push(Block::new(net("172.16.200.0/24"), name("ghost")))
            },
            |e| matches!(e, Error::UnknownNode { node, .. } if node.as_str() == "ghost"),
            "block 172.16.200.0/24 refers to node ghost",
        ),
        (
            "duplicate node",
            |i| i.remotes.push(i.local.clone()),
            |e| matches!(e, Error::DuplicateNode { .. }),
            "node k8s-w1 is listed more than once",
        ),
        (
            "borrowed outside blocks",
            |i| {
                i.borrowed.push(Borrowed {
                    addr: ip("172.16.99.1"),
                    node: name("k8s-m"),
                })
            },
            |e| matches!(e, Error::BorrowedOutsideBlocks { .. }),
            "lies in no block",
        ),
        (
            "borrowed from self",
            |i| {
                i.borrowed.push(Borrowed {
                    addr: ip("172.16.158.3"),
                    node: name("k8s-w1"),
                })
            },
            |e| matches!(e, Error::BorrowedFromSelf { .. }),
            "owns its block 172.16.158.0/24",
        ),
        (
            "two nodes with one node address",
            |i| {
                i.remotes[1].spec.bgp_mut().ipv4_address = Some("198.51.100.10/24".parse().unwrap())
            },
            |e| matches!(e, Error::DuplicateAddress { .. }),
            "address 198.51.100.10 is both IPv4 node address of node k8s-m and IPv4 node address of node k8s-w2",
        ),
        (
            "two nodes with one VXLAN tunnel address",
            |i| i.remotes[2].spec.ipv4_vxlan_tunnel_addr = Some("172.16.158.0".parse().unwrap()),
            |e| matches!(e, Error::DuplicateAddress { .. }),
            "address 172.16.158.0 is both IPIP tunnel address of node k8s-w1 and VXLAN tunnel address of node k8s-w0",
        ),
        (
            "two VTEPs with one MAC",
            |i| {
                i.pools[0].ipip_mode = Never;
                i.pools[0].vxlan_mode = CrossSubnet;
                let mac = i.remotes[0].vtep_mac(Family::V4);
                i.remotes[2].spec.vxlan_tunnel_mac_addr = Some(mac);
            },
            |e| matches!(e, Error::DuplicateVtepMac { .. }),
            "share the IPv4 VTEP MAC",
        ),
        (
            "MTU too small",
            |i| i.uplink.mtu = 80,
            |e| {
                matches!(
                    e,
                    Error::MtuTooSmall {
                        host_mtu: 80,
                        overhead: 20,
                        ..
                    }
                )
            },
            "host MTU 80 minus the largest overhead in use (20, IPIP)",
        ),
    ];
    for (label, mutate, want, text) in cases {
        let mut input = seed_input("k8s-w1", Always, Never);
        mutate(&mut input);
        let err = decide(&input).expect_err(label);
        assert!(want(&err), "{label}: got {err:?}");
        assert!(err.to_string().contains(text), "{label}: message {err}");
    }
}

#[test]
fn newtype_errors_name_the_input() {
    let e = "bad/node".parse::<NodeName>().unwrap_err();
    assert!(e.to_string().contains("\"bad/node\""), "{e}");
    let e = "much-too-long-ifname"
        .parse::<calinet_encap::IfName>()
        .unwrap_err();
    assert!(e.to_string().contains("longer than 15 bytes"), "{e}");
    let e = "66:00:00".parse::<MacAddr>().unwrap_err();
    assert!(e.to_string().contains("66:00:00"), "{e}");
    let e = "Sometimes".parse::<EncapMode>().unwrap_err();
    assert!(e.to_string().contains("Sometimes"), "{e}");
    let mut input = seed_input("k8s-w1", Never, Always);
    input.remotes[0].spec.vxlan_tunnel_mac_addr = Some("01:00:5e:00:00:01".parse().unwrap());
    let e = decide(&input).unwrap_err();
    assert!(matches!(e, Error::MulticastVtepMac { .. }), "{e:?}");
}

#[test]
fn serde_uses_calico_field_names() {
    let json = r#"{
        "local": {"name": "k8s-w1", "bgp": {"ipv4Address": "198.51.100.101/24"},
                  "ipv4VXLANTunnelAddr": "172.16.158.0", "vxlanTunnelMACAddr": "66:01:02:03:04:05"},
        "uplink": {"name": "eth0", "mtu": 1500, "gatewayV4": "198.51.100.1"},
        "remotes": [{"name": "k8s-w0", "bgp": {"ipv4Address": "203.0.113.100/24"},
                     "ipv4VXLANTunnelAddr": "172.16.34.0"}],
        "pools": [{"name": "p", "cidr": "172.16.0.0/16", "vxlanMode": "CrossSubnet"}],
        "blocks": [{"cidr": "172.16.34.0/24", "node": "k8s-w0"},
                   {"cidr": "172.16.158.0/24", "node": "k8s-w1"}]
    }"#;
    let input: Input = serde_json::from_str(json).unwrap();
    assert_eq!(input.pools[0].ipip_mode, Never);
    let d = decide(&input).unwrap();
    assert_eq!(
        routes(&d),
        ["172.16.34.0/24 via 172.16.34.0 dev vxlan.calico onlink"]
    );
    assert_eq!(d.device("vxlan.calico").map(|d| d.mtu()), Some(1450));
    let Some(Device::Vxlan(vx)) = d.device("vxlan.calico") else {
        panic!()
    };
    assert_eq!(vx.mac.to_string(), "66:01:02:03:04:05");
    // Round trip.
    let back: Input = serde_json::from_str(&serde_json::to_string(&input).unwrap()).unwrap();
    assert_eq!(back, input);
    // Bad values are rejected with the rule.
    let bad = json.replace("CrossSubnet", "Sometimes");
    assert!(serde_json::from_str::<Input>(&bad).is_err());
    let bad = json.replace("\"k8s-w0\"", "\"k8s w0\"");
    let e = serde_json::from_str::<Input>(&bad).unwrap_err();
    assert!(e.to_string().contains("may contain only"), "{e}");
}
