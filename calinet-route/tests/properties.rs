//! Seeded property tests of the pure planner, through the exported
//! `proptest_support` strategies and invariant checker.
#![cfg(feature = "proptest")]

use calinet_route::proptest_support::{
    check_plan, default_ownership, desired_routes, observed_routes, route,
};
use calinet_route::{Ownership, RouteSpec, plan_routes};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any observed table (foreign routes, duplicates, stale owned routes) and any
    /// valid desired set: one plan converges and never touches foreign routes.
    #[test]
    fn plan_converges_and_spares_foreign_routes(
        desired in desired_routes(),
        observed in observed_routes(),
    ) {
        if let Err(e) = check_plan(&desired, &observed, &default_ownership()) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Converged input plans nothing, whatever else is in the table.
    #[test]
    fn converged_table_plans_nothing(desired in desired_routes(), foreign in observed_routes()) {
        let own = default_ownership();
        let mut observed: Vec<RouteSpec> = foreign.into_iter().filter(|r| !own.owns(r)).collect();
        observed.extend(desired.iter().map(RouteSpec::normalized));
        let plan = plan_routes(&desired, &observed, &own).unwrap();
        prop_assert!(plan.is_empty(), "{}", plan);
    }

    /// JSON round trip of every generated route is lossless.
    #[test]
    fn route_json_round_trip(r in route()) {
        let json = serde_json::to_string(&r).unwrap();
        let back: RouteSpec = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, r);
    }

    /// With protocol-only ownership in every table, routes of other protocols are
    /// never planned for deletion or replacement.
    #[test]
    fn protocol_ownership_only_touches_its_protocol(observed in observed_routes()) {
        let own = Ownership::by_protocol(calinet_route::RouteProtocol::CALICO).all_tables();
        let plan = plan_routes(&[], &observed, &own).unwrap();
        for d in &plan.deletions {
            prop_assert_eq!(d.protocol, calinet_route::RouteProtocol::CALICO);
        }
        prop_assert!(plan.replacements.is_empty() && plan.adds.is_empty());
    }
}
