//! Routing the device needs: its MTU, its routing table (as calinet-types
//! `RouteSpec`s) and the rule `not from all fwmark M/M lookup T` (priority
//! 99, a calinet-types `RuleSpec`); calinet-route programs both.
//!
//! Order matters: the rule sends every unmarked packet to table T, so it is
//! added only after the device is up and the table's routes exist
//! (`rule_decision` says when); otherwise traffic to peers would hit an
//! empty table and fall through unencrypted or be dropped mid-update.

use calinet_types::RuleSpec;

use crate::model::{DeviceSettings, Family, RULE_PRIORITY};

/// The device MTU: the host MTU (smallest MTU of the up uplinks) minus
/// WireGuard's overhead, 60 bytes over IPv4 and 80 over IPv6 (seed: 9001 -> 8941).
pub fn device_mtu(host_mtu: u32, family: Family) -> u32 {
    host_mtu.saturating_sub(crate::model::overhead(family))
}

/// Calico's rule for `settings`: `not from all fwmark M/M lookup T`,
/// priority 99, protocol 80. Unmarked packets look up the device's table;
/// packets WireGuard itself sends (marked M) take the normal path.
/// calinet-route's `reconcile_rules` programs it; add it only once the
/// device and its routes exist (`rule_decision`).
pub fn rule_spec(settings: &DeviceSettings) -> RuleSpec {
    RuleSpec::lookup(settings.family, RULE_PRIORITY, settings.table)
        .fwmark(settings.fwmark, settings.fwmark)
        .invert()
}

pub use with_route::{RuleDecision, missing_routes, route_specs, rule_decision};

mod with_route {
    use std::collections::BTreeMap;

    use calinet_types::{RouteKey, RouteSpec, RouteType};

    use crate::model::DeviceSettings;
    use crate::peers::Computed;

    /// The device's routing table: `range dev <device> scope link table T` for
    /// every peer range, `throw range table T` for every fallback range (nodes
    /// without a usable key, the local node's own ranges), so a wider peer
    /// route never captures them. Where a range is both, the throw wins.
    pub fn route_specs(settings: &DeviceSettings, computed: &Computed) -> Vec<RouteSpec> {
        let device = &settings.ifname;
        let mut by_key: BTreeMap<RouteKey, RouteSpec> = BTreeMap::new();
        for peer in &computed.device.peers {
            for net in &peer.allowed_ips {
                let r = RouteSpec::direct(*net, device.clone()).table(settings.table);
                by_key.entry(r.key()).or_insert(r);
            }
        }
        for fb in &computed.fallback {
            for net in &fb.ranges {
                let r = RouteSpec::throw(*net).table(settings.table);
                by_key.insert(r.key(), r);
            }
        }
        by_key.into_values().collect()
    }

    /// Whether the fwmark rule may be installed now.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum RuleDecision {
        /// Device and every table route exist: add (or keep) the rule.
        Add,
        /// The device does not exist yet: the rule would black-hole traffic.
        WaitForDevice,
        /// This many table routes are still missing.
        WaitForRoutes(usize),
    }

    /// The ordering rule as a value: the rule goes in only after the device
    /// and all of its table's routes exist.
    pub fn rule_decision(
        device_present: bool,
        desired: &[RouteSpec],
        observed: &[RouteSpec],
    ) -> RuleDecision {
        if !device_present {
            return RuleDecision::WaitForDevice;
        }
        match missing_routes(desired, observed).len() {
            0 => RuleDecision::Add,
            n => RuleDecision::WaitForRoutes(n),
        }
    }

    /// Desired routes not (yet) in `observed`, compared on key, type and
    /// device. The fwmark rule may be added only when this is empty.
    pub fn missing_routes<'a>(
        desired: &'a [RouteSpec],
        observed: &[RouteSpec],
    ) -> Vec<&'a RouteSpec> {
        desired
            .iter()
            .filter(|d| {
                !observed.iter().any(|o| {
                    o.key() == d.key()
                        && o.kind == d.kind
                        && (d.kind != RouteType::Unicast || o.device == d.device)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_follows_the_seed() {
        assert_eq!(device_mtu(9001, Family::V4), 8941);
        assert_eq!(device_mtu(1500, Family::V4), 1440);
        assert_eq!(device_mtu(1500, Family::V6), 1420);
        assert_eq!(device_mtu(40, Family::V4), 0);
    }

    #[test]
    fn calico_rule_spec() {
        let r = rule_spec(&DeviceSettings::calico_v4());
        assert_eq!(
            r.to_string(),
            "99: not from all fwmark 0x100000/0x100000 lookup 1 proto 80"
        );
        assert!(r.validate().is_ok());
    }

    #[test]
    fn table_routes_for_the_seed() {
        use calinet_types::RouteType;
        let (mut nodes, key) = crate::seed::nodes();
        nodes[1].public_key = None; // k8s-w0 falls back
        let s = DeviceSettings::calico_v4();
        let c = crate::compute_device(&crate::seed::local(), &key, &s, &nodes, &Default::default());
        let routes = route_specs(&s, &c);
        let show: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert!(
            show.contains(
                &"172.16.158.0/24 dev wireguard.cali table 1 proto 80 scope link".to_owned()
            ),
            "{show:#?}"
        );
        assert!(
            show.contains(&"throw 172.16.34.0/24 table 1 proto 80".to_owned()),
            "{show:#?}"
        );
        assert!(
            show.contains(&"throw 172.16.116.2/32 table 1 proto 80".to_owned()),
            "{show:#?}"
        );
        assert!(routes.iter().all(|r| r.table == 1 && r.validate().is_ok()));
        assert_eq!(
            routes
                .iter()
                .filter(|r| r.kind == RouteType::Unicast)
                .count(),
            6
        );
        assert_eq!(missing_routes(&routes, &routes).len(), 0);
        assert_eq!(missing_routes(&routes, &routes[1..]).len(), 1);
        assert_eq!(rule_decision(true, &routes, &routes), RuleDecision::Add);
        assert_eq!(
            rule_decision(false, &routes, &routes),
            RuleDecision::WaitForDevice
        );
        assert_eq!(
            rule_decision(true, &routes, &routes[2..]),
            RuleDecision::WaitForRoutes(2)
        );
        // A route with the right key on another device does not count.
        let mut wrong = routes.clone();
        let i = wrong
            .iter()
            .position(|r| r.kind == RouteType::Unicast)
            .unwrap();
        wrong[i].device = Some("eth0".parse().unwrap());
        assert_eq!(
            rule_decision(true, &routes, &wrong),
            RuleDecision::WaitForRoutes(1)
        );
    }
}
