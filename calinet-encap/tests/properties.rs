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
                let node_ip = remote.address(calinet_encap::Family::of_net(p.dst)).unwrap().addr();
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
