//! The pure planner: desired state vs observed state -> a [`Plan`].
//!
//! No kernel, no clock. The planner only ever touches entries it owns: routes by
//! [`Ownership`], neighbours and FDB entries by the set of devices handed to it
//! (permanent entries only). Every owned attribute is compared, so an entry changed
//! in place (e.g. `ip route change`) is replaced, not ignored.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::{FdbSpec, IfName, NeighbourSpec, Ownership, RouteKey, RouteSpec};

/// An owned entry whose attributes differ from the desired ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement<T> {
    /// What the kernel has now.
    pub observed: T,
    /// What it should have.
    pub desired: T,
}

/// What has to change to make the kernel match the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan<T> {
    /// Entries to create.
    pub adds: Vec<T>,
    /// Owned entries to replace in place.
    pub replacements: Vec<Replacement<T>>,
    /// Owned entries to delete.
    pub deletions: Vec<T>,
    /// Foreign entries that share a key with a desired entry. They are left alone;
    /// the applier adds the desired entry beside them instead of replacing.
    pub foreign_conflicts: Vec<T>,
}

impl<T> Default for Plan<T> {
    fn default() -> Self {
        Plan {
            adds: Vec::new(),
            replacements: Vec::new(),
            deletions: Vec::new(),
            foreign_conflicts: Vec::new(),
        }
    }
}

impl<T> Plan<T> {
    /// Whether nothing needs to be written.
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.replacements.is_empty() && self.deletions.is_empty()
    }

    /// The number of writes the plan needs (a replacement is one write).
    pub fn writes(&self) -> usize {
        self.adds.len() + self.replacements.len() + self.deletions.len()
    }
}

impl<T: fmt::Display> fmt::Display for Plan<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.adds {
            writeln!(f, "add {a}")?;
        }
        for r in &self.replacements {
            writeln!(f, "replace {} with {}", r.observed, r.desired)?;
        }
        for d in &self.deletions {
            writeln!(f, "delete {d}")?;
        }
        Ok(())
    }
}

/// Sorts `(key, entry)` pairs by key (stably) and drops identical duplicates; two
/// different entries with one key are an error built by `conflict(earlier, later)`.
fn sorted_unique<K: Ord, T: PartialEq>(
    mut items: Vec<(K, T)>,
    conflict: impl Fn(&T, &T) -> Error,
) -> Result<Vec<(K, T)>> {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<(K, T)> = Vec::with_capacity(items.len());
    for (k, t) in items {
        if let Some((pk, pt)) = out.last()
            && *pk == k
        {
            if *pt != t {
                return Err(conflict(pt, &t));
            }
            continue;
        }
        out.push((k, t));
    }
    Ok(out)
}

/// The generic diff, a merge join over keys (no per-key allocation: a reconcile of
/// tens of thousands of routes stays in the low milliseconds). `desired` is sorted
/// with unique keys; `observed_owned` may hold several entries per key (the first
/// one equal to the desired entry is kept, the rest are deleted).
fn diff<T, O, K>(
    desired: Vec<(K, T)>,
    observed_owned: Vec<O>,
    key: impl Fn(&O) -> K,
    same: impl Fn(&O, &T) -> bool,
    spec: impl Fn(O) -> T,
) -> Plan<T>
where
    K: Ord,
{
    let mut observed: Vec<(K, O)> = observed_owned.into_iter().map(|o| (key(&o), o)).collect();
    observed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut obs = observed.into_iter().peekable();
    let mut group: Vec<O> = Vec::new();
    let mut plan = Plan::default();
    for (k, want) in desired {
        while let Some((ok, _)) = obs.peek() {
            if *ok < k {
                if let Some((_, o)) = obs.next() {
                    plan.deletions.push(spec(o));
                }
            } else {
                break;
            }
        }
        group.clear();
        while let Some((ok, _)) = obs.peek() {
            if *ok == k {
                if let Some((_, o)) = obs.next() {
                    group.push(o);
                }
            } else {
                break;
            }
        }
        if group.is_empty() {
            plan.adds.push(want);
            continue;
        }
        let keep = group.iter().position(|h| same(h, &want));
        // When nothing matches, the first observed entry is replaced in place.
        let mut replacement = if keep.is_none() { Some(want) } else { None };
        for (i, o) in group.drain(..).enumerate() {
            if Some(i) == keep {
                continue;
            }
            match replacement.take() {
                Some(desired) => plan.replacements.push(Replacement {
                    observed: spec(o),
                    desired,
                }),
                None => plan.deletions.push(spec(o)),
            }
        }
    }
    plan.deletions.extend(obs.map(|(_, o)| spec(o)));
    plan
}

/// Plans the routes: `desired` against `observed` (a full dump of the tables the
/// ownership covers, foreign routes included).
///
/// Desired routes are validated: each must be consistent ([`RouteSpec::validate`]),
/// owned by `ownership` (otherwise it would be foreign once installed and never
/// reconciled again), and keys must be unique.
///
/// ```
/// use calinet_route::{plan_routes, Ownership, RouteProtocol, RouteSpec};
/// let own = Ownership::default();
/// let block = RouteSpec::blackhole("172.16.101.0/26".parse().unwrap());
/// let stale = RouteSpec::blackhole("172.16.9.0/26".parse().unwrap());
/// let foreign = RouteSpec::blackhole("172.16.7.0/26".parse().unwrap())
///     .protocol(RouteProtocol::BIRD);
/// let plan = plan_routes(&[block.clone()], &[stale.clone(), foreign], &own).unwrap();
/// assert_eq!(plan.adds, vec![block.clone()]);
/// assert_eq!(plan.deletions, vec![stale]);
/// // Once applied, the same desired state plans nothing.
/// assert!(plan_routes(&[block.clone()], &[block], &own).unwrap().is_empty());
/// ```
pub fn plan_routes(
    desired: &[RouteSpec],
    observed: &[RouteSpec],
    ownership: &Ownership,
) -> Result<Plan<RouteSpec>> {
    let mut pairs: Vec<(RouteKey, RouteSpec)> = Vec::with_capacity(desired.len());
    for d in desired {
        d.validate()?;
        let n = d.normalized();
        if !ownership.owns(&n) {
            return Err(Error::InvalidRoute {
                route: d.to_string(),
                rule: format!(
                    "not owned by the reconciler (protocol {:?}, interface prefixes {:?}, tables {:?}); it would never be reconciled",
                    ownership.protocol.map(|p| p.0),
                    ownership.interface_prefixes,
                    ownership.tables
                ),
            });
        }
        pairs.push((n.key(), n));
    }
    let want = sorted_unique(pairs, |prev, later| Error::InvalidRoute {
        route: later.to_string(),
        rule: format!("same key ({}) as {prev}", later.key()),
    })?;
    // Borrow the observed routes; only those that end up in the plan are cloned.
    let mut owned: Vec<&RouteSpec> = Vec::with_capacity(observed.len());
    let mut foreign_conflicts = Vec::new();
    for o in observed {
        if ownership.owns(o) {
            owned.push(o);
        } else if want.binary_search_by(|(k, _)| k.cmp(&o.key())).is_ok() {
            foreign_conflicts.push(o.clone());
        }
    }
    let mut plan = diff(want, owned, |o| o.key(), |o, w| *o == w, |o| o.clone());
    plan.foreign_conflicts = foreign_conflicts;
    Ok(plan)
}

/// An observed neighbour entry with the state the planner needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNeighbour {
    /// The entry.
    pub spec: NeighbourSpec,
    /// Whether it is `PERMANENT`. Only permanent entries count as owned: the others
    /// belong to the kernel's neighbour discovery.
    pub permanent: bool,
    /// The link-layer address is absent (incomplete / failed entries).
    pub incomplete: bool,
}

/// Plans permanent neighbour entries on `devices` (the devices whose permanent entries
/// the caller owns, e.g. `vxlan.calico`).
pub fn plan_neighbours(
    desired: &[NeighbourSpec],
    observed: &[ObservedNeighbour],
    devices: &BTreeSet<IfName>,
) -> Result<Plan<NeighbourSpec>> {
    let want = unique(
        desired,
        "neighbour",
        devices,
        |n| &n.device,
        NeighbourSpec::key,
    )?;
    // A non-permanent entry for a desired key is taken over (replaced by the
    // permanent one); other non-permanent entries belong to neighbour discovery.
    let owned: Vec<&ObservedNeighbour> = observed
        .iter()
        .filter(|o| {
            devices.contains(&o.spec.device)
                && (o.permanent || want.binary_search_by(|(k, _)| k.cmp(&o.spec.key())).is_ok())
        })
        .collect();
    let plan = diff(
        want,
        owned,
        |o| o.spec.key(),
        |o, w| o.permanent && !o.incomplete && o.spec == *w,
        |o| o.spec.clone(),
    );
    Ok(plan)
}

/// An observed FDB entry with the flags the planner needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFdb {
    /// The entry.
    pub spec: FdbSpec,
    /// Whether it is permanent.
    pub permanent: bool,
    /// Whether it is a `self` entry (the device's own table, not a bridge's).
    pub is_self: bool,
}

/// Plans permanent `self` FDB entries on `devices`.
pub fn plan_fdb(
    desired: &[FdbSpec],
    observed: &[ObservedFdb],
    devices: &BTreeSet<IfName>,
) -> Result<Plan<FdbSpec>> {
    let want = unique(desired, "fdb entry", devices, |f| &f.device, FdbSpec::key)?;
    let owned: Vec<&ObservedFdb> = observed
        .iter()
        .filter(|o| devices.contains(&o.spec.device) && o.permanent && o.is_self)
        .collect();
    Ok(diff(
        want,
        owned,
        |o| o.spec.key(),
        |o, w| o.spec == *w,
        |o| o.spec.clone(),
    ))
}

fn unique<T, K>(
    desired: &[T],
    what: &'static str,
    devices: &BTreeSet<IfName>,
    device: impl Fn(&T) -> &IfName,
    key: impl Fn(&T) -> K,
) -> Result<Vec<(K, T)>>
where
    T: Clone + PartialEq + fmt::Display,
    K: Ord,
{
    let mut pairs = Vec::with_capacity(desired.len());
    for d in desired {
        if !devices.contains(device(d)) {
            return Err(Error::InvalidEntry {
                what,
                entry: d.to_string(),
                rule: format!(
                    "device {} is not among the owned devices {:?}",
                    device(d),
                    devices
                ),
            });
        }
        pairs.push((key(d), d.clone()));
    }
    sorted_unique(pairs, |prev, later| Error::InvalidEntry {
        what,
        entry: later.to_string(),
        rule: format!("conflicts with {prev}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MacAddr, RouteProtocol, RouteScope};

    fn dev(s: &str) -> IfName {
        s.parse().unwrap()
    }

    fn own() -> Ownership {
        Ownership::default().interface_prefix("cali")
    }

    #[test]
    fn converged_plans_nothing() {
        let d = vec![
            RouteSpec::workload("10.0.0.1".parse().unwrap(), dev("cali1")),
            RouteSpec::blackhole("10.0.0.0/26".parse().unwrap()),
            RouteSpec::workload("fd00::1".parse().unwrap(), dev("cali1")),
        ];
        // Observed as the kernel reports it: v6 metric 1024, scope global.
        let observed: Vec<_> = d.iter().map(|r| r.normalized()).collect();
        assert_eq!(observed[2].metric, 1024);
        assert_eq!(observed[2].scope, RouteScope::Universe);
        let plan = plan_routes(&d, &observed, &own()).unwrap();
        assert!(plan.is_empty(), "{plan}");
    }

    #[test]
    fn every_owned_attribute_is_compared() {
        let base = RouteSpec::via(
            "10.1.0.0/26".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        )
        .device(dev("eth0"))
        .onlink();
        let variants = vec![
            base.clone().device(dev("eth1")),
            RouteSpec {
                gateway: Some("198.51.100.3".parse().unwrap()),
                ..base.clone()
            },
            RouteSpec {
                onlink: false,
                ..base.clone()
            },
            base.clone().scope(RouteScope::Link),
            base.clone().mtu(1400),
            base.clone().source("198.51.100.9".parse().unwrap()),
        ];
        for v in variants {
            let plan = plan_routes(
                std::slice::from_ref(&base),
                std::slice::from_ref(&v),
                &own(),
            )
            .unwrap();
            assert_eq!(plan.replacements.len(), 1, "{v} vs {base}");
            assert_eq!(plan.replacements[0].observed, v);
            assert_eq!(plan.replacements[0].desired, base);
            assert!(plan.adds.is_empty() && plan.deletions.is_empty());
        }
    }

    #[test]
    fn foreign_routes_are_left_alone() {
        let ours = RouteSpec::blackhole("10.2.0.0/26".parse().unwrap());
        let bird = ours.clone().protocol(RouteProtocol::BIRD);
        let other_table = ours.clone().table(100);
        let plan = plan_routes(
            std::slice::from_ref(&ours),
            &[
                bird.clone(),
                other_table,
                RouteSpec::blackhole("10.9.0.0/26".parse().unwrap()).protocol(RouteProtocol::BOOT),
            ],
            &own(),
        )
        .unwrap();
        assert_eq!(plan.adds, vec![ours]);
        assert!(plan.deletions.is_empty());
        assert_eq!(plan.foreign_conflicts, vec![bird]);
    }

    #[test]
    fn stale_and_duplicate_owned_routes_are_deleted() {
        let a = RouteSpec::workload("10.0.0.1".parse().unwrap(), dev("cali1"));
        let dup = a.clone().scope(RouteScope::Host);
        let stale = RouteSpec::workload("10.0.0.2".parse().unwrap(), dev("cali2"))
            .protocol(RouteProtocol::BOOT);
        let plan = plan_routes(
            std::slice::from_ref(&a),
            &[dup.clone(), a.clone(), stale.clone()],
            &own(),
        )
        .unwrap();
        assert!(plan.adds.is_empty() && plan.replacements.is_empty());
        assert_eq!(plan.deletions, vec![dup, stale]);
    }

    #[test]
    fn bad_desired_routes_are_rejected_with_the_rule() {
        let foreign =
            RouteSpec::blackhole("10.0.0.0/8".parse().unwrap()).protocol(RouteProtocol::BOOT);
        let err = plan_routes(&[foreign], &[], &own()).unwrap_err();
        assert!(err.to_string().contains("not owned"), "{err}");
        let a = RouteSpec::blackhole("10.0.0.0/8".parse().unwrap());
        let b = RouteSpec::unreachable("10.0.0.0/8".parse().unwrap());
        let err = plan_routes(&[a.clone(), b], &[], &own()).unwrap_err();
        assert!(err.to_string().contains("same key"), "{err}");
        // An identical duplicate is harmless.
        assert_eq!(
            plan_routes(&[a.clone(), a], &[], &own())
                .unwrap()
                .adds
                .len(),
            1
        );
    }

    #[test]
    fn neighbours_plan() {
        let vx = dev("vxlan.calico");
        let devices = BTreeSet::from([vx.clone()]);
        let mac: MacAddr = "66:00:00:00:00:01".parse().unwrap();
        let want = NeighbourSpec::new(vx.clone(), "10.0.0.1".parse().unwrap(), mac);
        let obs = |spec: NeighbourSpec, permanent| ObservedNeighbour {
            spec,
            permanent,
            incomplete: false,
        };
        // Missing -> add.
        assert_eq!(
            plan_neighbours(std::slice::from_ref(&want), &[], &devices)
                .unwrap()
                .adds,
            vec![want.clone()]
        );
        // Present -> nothing.
        assert!(
            plan_neighbours(
                std::slice::from_ref(&want),
                &[obs(want.clone(), true)],
                &devices
            )
            .unwrap()
            .is_empty()
        );
        // Wrong MAC -> replace.
        let wrong = NeighbourSpec {
            lladdr: MacAddr([0x66, 0, 0, 0, 0, 2]),
            ..want.clone()
        };
        let p = plan_neighbours(
            std::slice::from_ref(&want),
            &[obs(wrong.clone(), true)],
            &devices,
        )
        .unwrap();
        assert_eq!(
            p.replacements,
            vec![Replacement {
                observed: wrong,
                desired: want.clone()
            }]
        );
        // Same MAC but learned (not permanent) -> replace with permanent.
        let p = plan_neighbours(
            std::slice::from_ref(&want),
            &[obs(want.clone(), false)],
            &devices,
        )
        .unwrap();
        assert_eq!(p.replacements.len(), 1);
        // A stale permanent one -> delete; a dynamic one not desired -> leave alone.
        let other = NeighbourSpec::new(vx.clone(), "10.0.0.9".parse().unwrap(), mac);
        let dynamic = NeighbourSpec::new(vx.clone(), "10.0.0.8".parse().unwrap(), mac);
        let p = plan_neighbours(
            &[],
            &[obs(other.clone(), true), obs(dynamic, false)],
            &devices,
        )
        .unwrap();
        assert_eq!(p.deletions, vec![other]);
        // Entries on other devices are not ours.
        let eth = NeighbourSpec::new(dev("eth0"), "10.0.0.7".parse().unwrap(), mac);
        assert!(
            plan_neighbours(&[], &[obs(eth.clone(), true)], &devices)
                .unwrap()
                .is_empty()
        );
        assert!(plan_neighbours(&[eth], &[], &devices).is_err());
    }

    #[test]
    fn fdb_plan() {
        let vx = dev("vxlan.calico");
        let devices = BTreeSet::from([vx.clone()]);
        let mac: MacAddr = "66:00:00:00:00:01".parse().unwrap();
        let want = FdbSpec::new(vx.clone(), mac, "198.51.100.11".parse().unwrap());
        let moved = FdbSpec::new(vx.clone(), mac, "198.51.100.12".parse().unwrap());
        let obs = |spec: FdbSpec, permanent, is_self| ObservedFdb {
            spec,
            permanent,
            is_self,
        };
        let p = plan_fdb(
            std::slice::from_ref(&want),
            &[obs(moved.clone(), true, true)],
            &devices,
        )
        .unwrap();
        assert_eq!(
            p.replacements,
            vec![Replacement {
                observed: moved.clone(),
                desired: want.clone()
            }]
        );
        let p = plan_fdb(
            std::slice::from_ref(&want),
            &[
                obs(want.clone(), true, true),
                obs(moved.clone(), true, true),
            ],
            &devices,
        )
        .unwrap();
        assert_eq!(p.deletions, vec![moved.clone()]);
        assert!(p.adds.is_empty() && p.replacements.is_empty());
        // Non-self or non-permanent entries are not owned.
        let p = plan_fdb(
            &[],
            &[obs(moved.clone(), false, true), obs(moved, true, false)],
            &devices,
        )
        .unwrap();
        assert!(p.is_empty());
    }
}
