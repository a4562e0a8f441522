//! The compiled IR, run by the reference evaluator, gives the verdict the model's
//! direct semantics give, for random policies, endpoints and packets.

use calinet_policy::compile::{Options, Pool, compile};
use calinet_policy::proptest_support as s;
use calinet_policy::semantics::{Direction, Endpoints, PolicyModel};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn ir_agrees_with_model_semantics(
        res in s::resources(),
        eps in s::endpoints(),
        pkts in prop::collection::vec(s::packet(), 1..12),
    ) {
        let model = PolicyModel::build(&res).expect("generated resources are valid");
        let eps = Endpoints::new(&model, eps);
        let pools = [Pool { cidr: "10.0.0.0/16".parse().unwrap(), nat_outgoing: true }];
        let rs = compile(&model, &eps, &pools, &Options::default()).unwrap();
        for ep in eps.by_name.values().filter(|e| e.local) {
            for dir in [Direction::Ingress, Direction::Egress] {
                for p in &pkts {
                    let want = model.evaluate(&eps, &ep.name, dir, p);
                    let got = rs.evaluate(p, &ep.interface, dir).unwrap();
                    prop_assert_eq!(got, want, "endpoint {} {:?} packet {:?}", ep.name, dir, p);
                }
            }
        }
        // Remote endpoints have no dispatch entry: their interface name, were it
        // to appear on this node, is an unknown workload interface and dropped.
        for ep in eps.by_name.values().filter(|e| !e.local) {
            for p in &pkts {
                prop_assert_eq!(rs.evaluate(p, &ep.interface, Direction::Ingress).unwrap(),
                    calinet_policy::semantics::Verdict::Deny);
            }
        }
    }
}
