//! The compiled IR, run by the reference evaluator, gives the verdict the model's
//! direct semantics give, for random policies, endpoints and packets.

use calinet_policy::compile::{EndpointToHostAction, HOST_ICMPV6_TYPES, Options, Pool, compile};
use calinet_policy::ir::{Family, Match, SetElems, Stmt};
use calinet_policy::proptest_support as s;
use calinet_policy::semantics::{Direction, Endpoints, PolicyModel, Verdict};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// With IPv6 rules off, IPv4 verdicts are still the model's, every IPv6
    /// packet from or to a workload is dropped, and no IPv6 set exists.
    #[test]
    fn ir_agrees_with_model_semantics(
        res in s::resources(),
        eps in s::endpoints(),
        pkts in prop::collection::vec(s::packet(), 1..12),
        ipv6 in any::<bool>(),
        to_host in prop::sample::select(vec![
            EndpointToHostAction::Drop,
            EndpointToHostAction::Return,
            EndpointToHostAction::Accept,
        ]),
    ) {
        let model = PolicyModel::build(&res).expect("generated resources are valid");
        let eps = Endpoints::new(&model, eps);
        let pools = [Pool { cidr: "10.0.0.0/16".parse().unwrap(), nat_outgoing: true }];
        let opts = Options { ipv6, endpoint_to_host: to_host, ..Options::default() };
        let rs = compile(&model, &eps, &pools, &opts).unwrap();
        if !ipv6 {
            for (name, set) in &rs.sets {
                prop_assert!(
                    !matches!(set, SetElems::Addr6(_) | SetElems::Net6(_) | SetElems::AddrProtoPort6(_)),
                    "IPv6 set {name}"
                );
            }
            // The only IPv6 rules are the two that drop it.
            let v6_rules = rs.chains.values().flat_map(|c| &c.rules).filter(|r| {
                r.matches.iter().any(|m| matches!(m, Match::Family(Family::V6)))
            });
            prop_assert!(v6_rules.clone().all(|r| r.stmt == Stmt::Drop), "{:?}", v6_rules.collect::<Vec<_>>());
            prop_assert_eq!(v6_rules.count(), 2);
        }
        let model_verdict = |ep: &str, dir, p: &calinet_policy::semantics::Packet| {
            if ipv6 || p.is_v4() {
                model.evaluate(&eps, ep, dir, p).unwrap()
            } else {
                Verdict::Deny
            }
        };
        for ep in eps.by_name.values().filter(|e| e.local) {
            for dir in [Direction::Ingress, Direction::Egress] {
                for p in &pkts {
                    let want = model_verdict(&ep.name, dir, p);
                    let got = rs.evaluate(p, &ep.interface, dir).unwrap();
                    prop_assert_eq!(got, want, "endpoint {} {:?} packet {:?}", ep.name, dir, p);
                }
            }
        }
        // Between two local workloads both the sender's egress and the
        // receiver's ingress apply: the two forward base chains in turn.
        let local: Vec<_> = eps.by_name.values().filter(|e| e.local).collect();
        for from in &local {
            for to in local.iter().filter(|to| to.name != from.name) {
                for p in &pkts {
                    let egress = model_verdict(&from.name, Direction::Egress, p);
                    let ingress = model_verdict(&to.name, Direction::Ingress, p);
                    let want = if egress == Verdict::Allow && ingress == Verdict::Allow {
                        Verdict::Allow
                    } else {
                        Verdict::Deny
                    };
                    let got = rs.evaluate_forward(p, &from.interface, &to.interface).unwrap();
                    prop_assert_eq!(got, want, "{} -> {} packet {:?}", from.name, to.name, p);
                }
            }
        }
        // A workload's traffic to this host: the ICMPv6 the host needs as the
        // workloads' router always passes; anything else needs the sender's
        // egress policy to allow it AND an endpoint-to-host action that is not
        // Drop. An unknown workload interface gets only the ICMPv6; traffic
        // from a non-workload interface is not this table's business.
        let host_icmpv6 = |p: &calinet_policy::semantics::Packet| {
            ipv6 && !p.is_v4() && p.protocol == 58 && HOST_ICMPV6_TYPES.contains(&p.icmp_type)
        };
        for ep in eps.by_name.values() {
            for p in &pkts {
                let allowed = host_icmpv6(p)
                    || (ep.local
                        && model_verdict(&ep.name, Direction::Egress, p) == Verdict::Allow
                        && to_host != EndpointToHostAction::Drop);
                let want = if allowed { Verdict::Allow } else { Verdict::Deny };
                let got = rs.evaluate_to_host(p, &ep.interface).unwrap();
                prop_assert_eq!(got, want, "{} -> host ({:?}) packet {:?}", ep.name, to_host, p);
                prop_assert_eq!(rs.evaluate_to_host(p, "eth0").unwrap(), Verdict::Allow);
            }
        }
        // Remote endpoints have no dispatch entry: their interface name, were it
        // to appear on this node, is an unknown workload interface and dropped.
        for ep in eps.by_name.values().filter(|e| !e.local) {
            for p in &pkts {
                prop_assert_eq!(rs.evaluate(p, &ep.interface, Direction::Ingress).unwrap(),
                    Verdict::Deny);
            }
        }
    }
}

#[derive(Clone, Debug)]
enum EpOp {
    Upsert(usize),
    Remove(usize),
    Relabel(usize, std::collections::BTreeMap<String, String>),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Updating endpoint by endpoint gives exactly what a full compile of the same
    /// state gives, after every step.
    #[test]
    fn incremental_updates_equal_full_compile(
        res in s::resources(),
        pool in s::endpoints(),
        initial in prop::collection::vec(any::<bool>(), 5),
        ops in prop::collection::vec(prop_oneof![
            (0..5usize).prop_map(EpOp::Upsert),
            (0..5usize).prop_map(EpOp::Remove),
            (0..5usize, s::labels()).prop_map(|(i, l)| EpOp::Relabel(i, l)),
        ], 1..8),
        ipv6 in any::<bool>(),
    ) {
        use calinet_policy::compile::Incremental;
        let model = PolicyModel::build(&res).unwrap();
        let pools = vec![Pool { cidr: "10.0.0.0/16".parse().unwrap(), nat_outgoing: true }];
        let opts = Options { ipv6, ..Options::default() };
        let mut current: std::collections::BTreeMap<String, calinet_policy::semantics::Endpoint> = pool
            .iter()
            .zip(&initial)
            .filter(|(_, on)| **on)
            .map(|(e, _)| (e.name.clone(), e.clone()))
            .collect();
        let mut inc = Incremental::new(model.clone(), current.values().cloned(), pools.clone(), opts.clone()).unwrap();
        for op in ops {
            match op {
                EpOp::Upsert(i) | EpOp::Relabel(i, _) if i >= pool.len() => continue,
                EpOp::Remove(i) if i >= pool.len() => continue,
                EpOp::Upsert(i) => {
                    current.insert(pool[i].name.clone(), pool[i].clone());
                    inc.upsert_endpoint(pool[i].clone()).unwrap();
                }
                EpOp::Relabel(i, labels) => {
                    let mut e = pool[i].clone();
                    e.labels = labels;
                    current.insert(e.name.clone(), e.clone());
                    inc.upsert_endpoint(e).unwrap();
                }
                EpOp::Remove(i) => {
                    current.remove(&pool[i].name);
                    inc.remove_endpoint(&pool[i].name);
                }
            }
            let eps = Endpoints::new(&model, current.values().cloned());
            let full = compile(&model, &eps, &pools, &opts).unwrap();
            prop_assert_eq!(inc.ruleset(), &full);
        }
    }
}
