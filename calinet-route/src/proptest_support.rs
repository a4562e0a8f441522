//! Proptest strategies and the planner's invariant checker, for this crate's
//! property tests and for downstream crates that produce route specs
//! (enable the `proptest` feature).

use proptest::prelude::*;

use crate::plan::{Plan, plan_routes};
use crate::spec::{Ownership, RouteProtocol, RouteSpec};

pub use calinet_types::proptest_support::{destination, ifname, protocol, route, scope};

/// What the kernel would hold after the plan is applied to `observed`
/// (replacements replace by key, deletions remove exactly, adds are prepended).
pub fn apply(observed: &[RouteSpec], plan: &Plan<RouteSpec>) -> Vec<RouteSpec> {
    let mut out: Vec<RouteSpec> = observed.to_vec();
    for d in &plan.deletions {
        if let Some(p) = out.iter().position(|o| o == d) {
            out.remove(p);
        }
    }
    for r in &plan.replacements {
        if let Some(p) = out.iter().position(|o| *o == r.observed) {
            out[p] = r.desired.normalized();
        }
    }
    for a in &plan.adds {
        out.insert(0, a.normalized());
    }
    out
}

/// Checks the planner's invariants for one input; `Err` names the broken one.
///
/// 1. After applying the plan every desired route is present exactly once.
/// 2. No owned route that is not desired is left.
/// 3. Every foreign (unowned) route is left exactly as it was.
/// 4. Planning again against the result plans nothing (convergence).
pub fn check_plan(
    desired: &[RouteSpec],
    observed: &[RouteSpec],
    ownership: &Ownership,
) -> Result<(), String> {
    let plan = plan_routes(desired, observed, ownership).map_err(|e| e.to_string())?;
    let after = apply(observed, &plan);
    for d in desired {
        let n = d.normalized();
        let count = after.iter().filter(|a| **a == n).count();
        if count != 1 {
            return Err(format!(
                "desired {n} present {count} times after the plan\n{plan}"
            ));
        }
    }
    for a in &after {
        if ownership.owns(a) && !desired.iter().any(|d| d.normalized() == *a) {
            return Err(format!("owned route {a} left although not desired\n{plan}"));
        }
    }
    let foreign_before: Vec<&RouteSpec> = observed.iter().filter(|o| !ownership.owns(o)).collect();
    let foreign_after: Vec<&RouteSpec> = after.iter().filter(|o| !ownership.owns(o)).collect();
    let mut fb = foreign_before.clone();
    let mut fa = foreign_after.clone();
    fb.sort_by_key(|r| r.to_string());
    fa.sort_by_key(|r| r.to_string());
    if fb != fa {
        return Err(format!("foreign routes changed: {fb:?} -> {fa:?}"));
    }
    let again = plan_routes(desired, &after, ownership).map_err(|e| e.to_string())?;
    if !again.is_empty() {
        return Err(format!("not converged after one plan:\n{again}"));
    }
    Ok(())
}

/// Desired routes that the default ownership (protocol 80, main table, prefix
/// `cali`) accepts, with unique keys.
pub fn desired_routes() -> impl Strategy<Value = Vec<RouteSpec>> {
    prop::collection::vec(route(), 0..12).prop_map(|v| {
        let own = default_ownership();
        let mut seen = std::collections::BTreeSet::new();
        v.into_iter()
            .map(|r| {
                r.protocol(RouteProtocol::CALICO)
                    .table(crate::spec::MAIN_TABLE)
            })
            .filter(|r| own.owns(r) && seen.insert(r.key()))
            .collect()
    })
}

/// Observed routes: anything, including foreign ones and duplicates per key.
pub fn observed_routes() -> impl Strategy<Value = Vec<RouteSpec>> {
    prop::collection::vec(route(), 0..16)
}

/// The ownership the strategies are built around.
pub fn default_ownership() -> Ownership {
    Ownership::default().interface_prefix("cali")
}
