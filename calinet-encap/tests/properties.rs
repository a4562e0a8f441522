//! Property tests over generated clusters, using the exported strategies and
//! invariant checkers (feature `proptest`).
#![cfg(feature = "proptest")]

use calinet_encap::proptest_support::{Cluster, arb_cluster, check_decisions, check_symmetry};
use calinet_encap::{EncapMode, PathKind, decide, same_subnet};
use proptest::prelude::*;

fn all_decisions(c: &Cluster) -> Vec<(calinet_encap::Input, calinet_encap::Decisions)> {
    (0..c.nodes.len())
        .map(|i| {
            let input = c.input_for(i);
            let d = decide(&input).expect("generated clusters are valid");
            (input, d)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Invariants 1-4 of `check_decisions` for every node's view: each remote
    /// block exactly one path, kinds follow the modes, pod MTU fits the path.
    #[test]
    fn every_node_satisfies_the_invariants(c in arb_cluster(6)) {
        for (input, d) in all_decisions(&c) {
            if let Err(e) = check_decisions(&input, &d) {
                prop_assert!(false, "node {}: {e}\n{d}", input.local.name);
            }
        }
    }

    #[test]
    fn decisions_are_symmetric(c in arb_cluster(6)) {
        for a in 0..c.nodes.len() {
            for b in a + 1..c.nodes.len() {
                prop_assert_eq!(check_symmetry(&c, a, b), Ok(()));
            }
        }
    }

    #[test]
    fn crosssubnet_same_subnet_never_tunnels(c in arb_cluster(6)) {
        for (input, d) in all_decisions(&c) {
            for p in &d.paths {
                let pool = input.pool_of(p.dst).expect("generated blocks are in pools");
                let cross = pool.ipip_mode == EncapMode::CrossSubnet
                    || pool.vxlan_mode == EncapMode::CrossSubnet;
                let remote = input.node(&p.node).unwrap();
                let node_ip = remote.address(calinet_encap::Family::of(p.dst)).unwrap().addr();
                if cross && same_subnet(&input.local, node_ip) {
                    prop_assert_eq!(p.kind, PathKind::Direct, "{}", p);
                }
            }
        }
    }

    #[test]
    fn always_always_tunnels(c in arb_cluster(6)) {
        for (input, d) in all_decisions(&c) {
            for p in &d.paths {
                let pool = input.pool_of(p.dst).unwrap();
                if pool.vxlan_mode == EncapMode::Always {
                    prop_assert_eq!(p.kind, PathKind::Vxlan, "{}", p);
                }
                if pool.ipip_mode == EncapMode::Always {
                    prop_assert_eq!(p.kind, PathKind::Ipip, "{}", p);
                }
            }
        }
    }

    #[test]
    fn deciding_is_deterministic_and_order_independent(c in arb_cluster(5)) {
        let input = c.input_for(0);
        let mut shuffled = input.clone();
        shuffled.remotes.reverse();
        shuffled.blocks.reverse();
        shuffled.borrowed.reverse();
        prop_assert_eq!(decide(&input).unwrap(), decide(&shuffled).unwrap());
    }
}

/// The checkers themselves must catch broken decisions, or the properties
/// above prove nothing.
#[test]
fn checkers_reject_broken_decisions() {
    let runner_cluster = {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut found = None;
        for _ in 0..200 {
            let c = arb_cluster(4).new_tree(&mut runner).unwrap().current();
            // Want a tunnelled path to break.
            let d = decide(&c.input_for(0)).unwrap();
            if d.paths.iter().any(|p| p.kind.is_tunnel()) {
                found = Some(c);
                break;
            }
        }
        found.expect("some generated cluster tunnels")
    };
    let input = runner_cluster.input_for(0);
    let good = decide(&input).unwrap();
    assert_eq!(check_decisions(&input, &good), Ok(()));

    let mut wrong_kind = good.clone();
    let i = wrong_kind
        .paths
        .iter()
        .position(|p| p.kind.is_tunnel())
        .unwrap();
    wrong_kind.paths[i].kind = PathKind::Direct;
    assert!(check_decisions(&input, &wrong_kind).is_err());

    let mut missing = good.clone();
    missing.paths.remove(i);
    assert!(
        check_decisions(&input, &missing)
            .unwrap_err()
            .contains("path")
    );

    let mut fat_pods = good.clone();
    fat_pods.mtu.pod = fat_pods.mtu.host + 1;
    assert!(
        check_decisions(&input, &fat_pods)
            .unwrap_err()
            .contains("MTU")
    );

    let mut no_blackhole = good;
    no_blackhole.blackholes.clear();
    assert!(
        check_decisions(&input, &no_blackhole)
            .unwrap_err()
            .contains("local block")
    );
}

mod random_inputs {
    //! Unstructured inputs (overlaps, missing addresses, both encaps, ghosts):
    //! `decide` either rejects them with an error or returns decisions that
    //! pass every invariant.

    use std::net::IpAddr;

    use calinet_encap::proptest_support::check_decisions;
    use calinet_encap::{Block, Borrowed, EncapMode, Input, Node, Pool, Uplink, Wireguard, decide};
    use ipnet::IpNet;
    use proptest::prelude::*;
    use proptest::sample::select;

    const POOLS: [&str; 5] = [
        "172.16.0.0/16",
        "172.16.0.0/12",
        "10.0.0.0/8",
        "fd00:10::/48",
        "fd00::/8",
    ];
    const BLOCKS: [&str; 7] = [
        "172.16.1.0/24",
        "172.16.2.0/24",
        "172.16.3.0/26",
        "10.1.0.0/16",
        "fd00:10:0:1::/64",
        "fd00:10:0:2::/122",
        "192.0.2.0/24",
    ];
    /// Overlaps three of `BLOCKS`.
    const OVERLAPPING_BLOCK: &str = "172.16.0.0/20";
    /// Underlay subnets (prefix, length); each node takes host 10+index in one.
    const SUBNETS4: [(&str, u8); 3] = [("198.51.100", 24), ("203.0.113", 24), ("203.0.113", 16)];
    /// A tunnel address several nodes may claim (an error when two do).
    const SHARED_TUNNEL: &str = "10.1.0.1";
    const BORROWED: [&str; 4] = ["172.16.1.9", "172.16.2.9", "fd00:10:0:1::9", "10.9.9.9"];
    const NAMES: [&str; 4] = ["n0", "n1", "n2", "ghost"];

    /// A node with addresses of its own (mostly), some missing.
    fn arb_node(name: &'static str, idx: u8) -> impl Strategy<Value = Node> {
        let own4 = format!("172.16.{}.0", idx + 1);
        let own6 = format!("fd00:10:0:{}::", idx + 1);
        let ipip = prop_oneof![9 => Just(own4.clone()), 1 => Just(SHARED_TUNNEL.to_owned())];
        let vxlan = prop_oneof![
            5 => Just(own4),
            4 => Just(own6),
            1 => Just(SHARED_TUNNEL.to_owned()),
        ];
        (
            proptest::option::weighted(0.9, select(&SUBNETS4[..])),
            proptest::option::weighted(0.8, 1u8..=2),
            proptest::option::weighted(0.9, ipip),
            proptest::option::weighted(0.9, vxlan),
        )
            .prop_map(move |(a4, a6, t1, t2)| {
                let mut n = Node::new(name.parse().unwrap());
                if let Some((prefix, len)) = a4 {
                    n = n.with_address(format!("{prefix}.{}/{len}", 10 + idx).parse().unwrap());
                }
                if let Some(subnet) = a6 {
                    n = n.with_address(
                        format!("2001:db8:{subnet}::{}/64", 10 + idx)
                            .parse()
                            .unwrap(),
                    );
                }
                if let Some(IpAddr::V4(t)) = t1.map(|t| t.parse().unwrap()) {
                    n = n.with_ipip_tunnel(t);
                }
                if let Some(t) = t2 {
                    n = n.with_vxlan_tunnel(t.parse().unwrap());
                }
                n
            })
    }

    fn arb_mode() -> impl Strategy<Value = EncapMode> {
        select(&[EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet][..])
    }

    /// (ipipMode, vxlanMode): mostly one of them, sometimes both (invalid).
    fn arb_modes() -> impl Strategy<Value = (EncapMode, EncapMode)> {
        prop_oneof![
            3 => arb_mode().prop_map(|m| (m, EncapMode::Never)),
            5 => arb_mode().prop_map(|m| (EncapMode::Never, m)),
            1 => (arb_mode(), arb_mode()),
        ]
    }

    /// Mostly real nodes, sometimes a node nobody knows.
    fn arb_owner() -> impl Strategy<Value = &'static str> {
        prop_oneof![9 => select(&NAMES[..3]), 1 => Just(NAMES[3])]
    }

    fn arb_input() -> impl Strategy<Value = Input> {
        (
            (arb_node("n0", 0), arb_node("n1", 1), arb_node("n2", 2)),
            proptest::collection::vec((select(&POOLS[..]), arb_modes()), 0..3),
            (
                proptest::sample::subsequence(&BLOCKS[..], 0..=5),
                proptest::collection::vec(arb_owner(), 6),
                proptest::bool::weighted(0.1),
            )
                .prop_map(|(cidrs, owners, overlap)| {
                    let extra = overlap.then_some(OVERLAPPING_BLOCK);
                    cidrs
                        .into_iter()
                        .chain(extra)
                        .zip(owners)
                        .collect::<Vec<_>>()
                }),
            proptest::option::weighted(0.4, (select(&BORROWED[..]), arb_owner())),
            (
                prop_oneof![9 => 1400u32..10_000, 1 => 0u32..1400],
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |((n0, n1, n2), pools, blocks, borrowed, (mtu, gw, wg4, wg6))| {
                    let mut uplink = Uplink::new("eth0".parse().unwrap(), mtu);
                    if gw {
                        uplink = uplink.with_gateway("198.51.100.1".parse().unwrap());
                    }
                    let mut input = Input::new(n0, uplink);
                    input.remotes = vec![n1, n2];
                    input.pools = pools
                        .into_iter()
                        .enumerate()
                        .map(|(i, (c, (ipip, vxlan)))| {
                            Pool::new(format!("p{i}"), c.parse::<IpNet>().unwrap())
                                .ipip(ipip)
                                .vxlan(vxlan)
                        })
                        .collect();
                    input.blocks = blocks
                        .into_iter()
                        .map(|(c, n)| Block::new(c.parse().unwrap(), n.parse().unwrap()))
                        .collect();
                    input.borrowed = borrowed
                        .into_iter()
                        .map(|(a, n)| Borrowed {
                            addr: a.parse().unwrap(),
                            node: n.parse().unwrap(),
                        })
                        .collect();
                    input.wireguard = Wireguard {
                        ipv4: wg4,
                        ipv6: wg6,
                    };
                    input
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decisions_from_any_input_are_sound_or_refused(input in arb_input()) {
            match decide(&input) {
                Ok(d) => {
                    if let Err(e) = check_decisions(&input, &d) {
                        prop_assert!(false, "{e}\n{d}");
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    /// The random inputs must reach both outcomes, or the test above proves little.
    #[test]
    fn random_inputs_reach_both_outcomes() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut ok, mut err) = (0, 0);
        let mut kinds = std::collections::BTreeMap::new();
        for _ in 0..512 {
            let input = arb_input().new_tree(&mut runner).unwrap().current();
            match decide(&input) {
                Ok(d) if !d.paths.is_empty() => ok += 1,
                Ok(_) => {}
                Err(e) => {
                    err += 1;
                    let kind = format!("{e:?}");
                    let kind = kind.split([' ', '(', '{']).next().unwrap_or("").to_owned();
                    *kinds.entry(kind).or_insert(0) += 1;
                }
            }
        }
        println!("refusals by kind: {kinds:?}");
        println!("random inputs: {ok} decided with paths, {err} refused (of 512)");
        assert!(ok > 20 && err > 20, "ok {ok}, err {err}");
    }
}
