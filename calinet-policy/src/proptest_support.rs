//! Proptest strategies for selectors, labels, policies and packets, for this crate's
//! tests and for downstream projects (feature `proptest`).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::selector::{Expr, Selector};

/// Label keys drawn from a small alphabet so that random selectors and random label
/// sets actually meet; includes words that are also selector keywords.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["app", "tier", "env", "role", "k8s.io/name"]).prop_map(String::from),
        1 => prop::sample::select(vec!["has", "all", "in", "not", "global", "contains"]).prop_map(String::from),
        1 => "[a-zA-Z0-9_./-]{1,10}",
    ]
}

/// Label values: a small alphabet again, plus strings with one kind of quote.
pub fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["web", "db", "api", "prod", "dev", ""]).prop_map(String::from),
        1 => "[a-z0-9 ._:/'-]{0,8}",
        1 => "[a-z0-9 \"]{0,8}",
    ]
}

/// A label map.
pub fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..4)
}

fn leaf() -> impl Strategy<Value = Expr> {
    let set = || prop::collection::btree_set(value(), 0..3);
    prop_oneof![
        Just(Expr::All),
        Just(Expr::Global),
        key().prop_map(Expr::Has),
        (key(), value()).prop_map(|(k, v)| Expr::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::Ne(k, v)),
        (key(), set()).prop_map(|(k, v): (String, BTreeSet<String>)| Expr::In(k, v)),
        (key(), set()).prop_map(|(k, v): (String, BTreeSet<String>)| Expr::NotIn(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::EndsWith(k, v)),
    ]
}

/// Arbitrary selector expression trees (every operator, nested).
pub fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

/// Arbitrary selectors.
pub fn selector() -> impl Strategy<Value = Selector> {
    expr().prop_map(Selector::from_expr)
}

/// Text that looks like a selector: fragments of the grammar glued together, so
/// the parser sees near-misses, not only noise.
pub fn selector_like_text() -> impl Strategy<Value = String> {
    let frag = prop_oneof![
        Just("has(".to_owned()),
        Just(")".to_owned()),
        Just("(".to_owned()),
        Just("!".to_owned()),
        Just("&&".to_owned()),
        Just("||".to_owned()),
        Just("==".to_owned()),
        Just("!=".to_owned()),
        Just(" in ".to_owned()),
        Just(" not ".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just(",".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("all()".to_owned()),
        Just("global()".to_owned()),
        Just(" starts with ".to_owned()),
        Just(" ends ".to_owned()),
        Just(" contains ".to_owned()),
        key(),
        value().prop_map(|v| format!("'{v}'")),
        any::<String>(),
    ];
    prop::collection::vec(frag, 0..12).prop_map(|v| v.concat())
}

// ---------------------------------------------------------------------------
// Policies, endpoints and packets

use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{
    Action, AnyResource, EntityRule, IcmpFields, PolicySpec, PolicyType, Port, Profile, Protocol,
    Resource, Rule, TierSpec,
};
use crate::semantics::{Endpoint, NamedPort, Packet};

/// Namespaces the generated endpoints live in.
pub const NAMESPACES: [&str; 2] = ["a", "b"];

fn nets() -> impl Strategy<Value = Vec<IpNet>> {
    let pool: Vec<IpNet> = [
        "10.0.0.0/16",
        "10.0.1.0/24",
        "10.0.0.0/30",
        "192.0.2.0/24",
        "fd00::/64",
        "fd00::/126",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    prop::collection::vec(prop::sample::select(pool), 0..3)
}

fn ports() -> impl Strategy<Value = Vec<Port>> {
    let p = prop_oneof![
        prop::sample::select(vec![53u16, 80, 443, 5432, 8080]).prop_map(Port::Number),
        Just(Port::Range(50, 100)),
        Just(Port::Range(1000, 9000)),
        prop::sample::select(vec!["http", "dns", "alt"]).prop_map(|s| Port::Named(s.into())),
    ];
    prop::collection::vec(p, 0..3)
}

fn opt_selector() -> impl Strategy<Value = Option<Selector>> {
    prop::option::weighted(0.4, selector())
}

fn entity(with_ports: bool) -> impl Strategy<Value = EntityRule> {
    (
        nets(),
        nets(),
        opt_selector(),
        prop::option::weighted(0.2, selector()),
        prop::option::weighted(0.15, selector()),
        ports(),
        ports(),
    )
        .prop_map(
            move |(nets, not_nets, selector, not_selector, ns, ports, not_ports)| EntityRule {
                nets,
                not_nets,
                selector,
                not_selector,
                namespace_selector: ns,
                ports: if with_ports { ports } else { Vec::new() },
                not_ports: if with_ports { not_ports } else { Vec::new() },
            },
        )
}

/// A valid Calico rule with every kind of match and negation.
pub fn rule() -> impl Strategy<Value = Rule> {
    let action = prop::sample::select(vec![Action::Allow, Action::Deny, Action::Log, Action::Pass]);
    let proto = prop::option::weighted(
        0.7,
        prop::sample::select(vec![
            Protocol::TCP,
            Protocol::UDP,
            Protocol::ICMP,
            Protocol::ICMPV6,
            Protocol(47),
        ]),
    );
    let icmp = prop::option::weighted(
        0.5,
        (
            prop::sample::select(vec![0u8, 8, 128, 135]),
            prop::option::of(prop::sample::select(vec![0u8, 1])),
        ),
    );
    (
        action,
        proto,
        prop::option::weighted(0.2, prop::sample::select(vec![Protocol::UDP, Protocol(47)])),
        icmp.clone(),
        icmp,
        prop::option::weighted(0.15, prop::sample::select(vec![4u8, 6])),
        any::<bool>(),
    )
        .prop_flat_map(
            |(action, protocol, not_protocol, icmp, not_icmp, ipv, sw)| {
                let with_ports = protocol.is_some_and(Protocol::has_ports);
                (entity(with_ports), entity(with_ports)).prop_map(move |(mut src, mut dst)| {
                    let is_icmp = matches!(protocol, Some(Protocol::ICMP | Protocol::ICMPV6));
                    let f = |x: Option<(u8, Option<u8>)>| {
                        x.map(|(t, c)| IcmpFields {
                            icmp_type: Some(t),
                            code: c,
                        })
                    };
                    if let Some(v) = ipv {
                        for e in [&mut src, &mut dst] {
                            let keep = |n: &IpNet| matches!(n, IpNet::V4(_)) == (v == 4);
                            e.nets.retain(keep);
                            e.not_nets.retain(keep);
                        }
                    }
                    Rule {
                        action,
                        ip_version: ipv,
                        protocol,
                        not_protocol: not_protocol.filter(|np| Some(*np) != protocol),
                        icmp: if is_icmp && sw { f(icmp) } else { None },
                        not_icmp: if is_icmp { f(not_icmp) } else { None },
                        source: src,
                        destination: dst,
                        metadata: None,
                    }
                })
            },
        )
}

/// A set of valid resources: up to two extra tiers, Calico NetworkPolicies and
/// GlobalNetworkPolicies in them, and allow-all namespace profiles.
pub fn resources() -> impl Strategy<Value = Vec<AnyResource>> {
    let tier = (
        prop::option::of(0u8..3),
        prop::sample::select(vec![Action::Deny, Action::Pass]),
    );
    let policy = (
        any::<bool>(),
        prop::sample::select(vec!["default", "t1", "t2"]),
        prop::option::of(0u8..4),
        opt_selector(),
        prop::option::weighted(0.2, selector()),
        prop::option::of(prop::sample::select(vec![
            vec![PolicyType::Ingress],
            vec![PolicyType::Egress],
            vec![PolicyType::Ingress, PolicyType::Egress],
        ])),
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..3),
        prop::sample::select(NAMESPACES.to_vec()),
    );
    (
        prop::collection::vec(tier, 2..=2),
        prop::collection::vec(policy, 0..5),
        any::<bool>(),
    )
        .prop_map(|(tiers, policies, deny_profile)| {
            let mut out = Vec::new();
            for (i, (order, default_action)) in tiers.into_iter().enumerate() {
                out.push(AnyResource::Tier(Resource::calico(
                    "Tier",
                    &format!("t{}", i + 1),
                    TierSpec {
                        order: order.map(f64::from),
                        default_action: Some(default_action),
                    },
                )));
            }
            for (i, (global, tier, order, sel, nssel, types, ingress, egress, ns)) in
                policies.into_iter().enumerate()
            {
                let mut spec = PolicySpec {
                    tier: Some(tier.to_owned()),
                    order: order.map(f64::from),
                    selector: sel,
                    namespace_selector: if global { nssel } else { None },
                    types: types.clone(),
                    ingress,
                    egress,
                };
                // Keep rules consistent with explicit types (Calico rejects the rest).
                if let Some(t) = &types {
                    if !t.contains(&PolicyType::Ingress) {
                        spec.ingress.clear();
                    }
                    if !t.contains(&PolicyType::Egress) {
                        spec.egress.clear();
                    }
                }
                let name = format!("p{i}");
                if global {
                    out.push(AnyResource::GlobalNetworkPolicy(Resource::calico(
                        "GlobalNetworkPolicy",
                        &name,
                        spec,
                    )));
                } else {
                    let mut r = Resource::calico("NetworkPolicy", &name, spec);
                    r.metadata.namespace = Some(ns.to_owned());
                    out.push(AnyResource::NetworkPolicy(r));
                }
            }
            for ns in NAMESPACES {
                let labels = [("team".to_owned(), ns.to_owned())].into_iter().collect();
                let mut p = Profile::for_namespace(ns, &labels);
                if deny_profile && ns == "b" {
                    // A profile that denies some traffic and passes the rest.
                    let mut r = Rule::new(Action::Deny);
                    r.protocol = Some(Protocol::UDP);
                    p.spec.ingress.insert(0, r);
                }
                out.push(AnyResource::Profile(p));
            }
            out
        })
}

/// Up to five endpoints in the generated namespaces, each with an IPv4 and
/// sometimes an IPv6 address, labels and named ports.
pub fn endpoints() -> impl Strategy<Value = Vec<Endpoint>> {
    let np = prop::sample::subsequence(
        vec![
            NamedPort {
                name: "http".into(),
                protocol: Protocol::TCP,
                port: 80,
            },
            NamedPort {
                name: "dns".into(),
                protocol: Protocol::UDP,
                port: 53,
            },
            NamedPort {
                name: "alt".into(),
                protocol: Protocol::TCP,
                port: 8080,
            },
            NamedPort {
                name: "http".into(),
                protocol: Protocol::TCP,
                port: 5432,
            },
        ],
        0..3,
    );
    let one = (
        prop::sample::select(NAMESPACES.to_vec()),
        labels(),
        any::<bool>(),
        any::<bool>(),
        np,
        prop::bool::weighted(0.8),
    );
    prop::collection::vec(one, 1..5).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (ns, labels, v6, profile, named_ports, local))| {
                let mut addrs: Vec<IpAddr> = vec![format!("10.0.0.{}", i + 1).parse().unwrap()];
                if v6 {
                    addrs.push(format!("fd00::{}", i + 1).parse().unwrap());
                }
                Endpoint {
                    name: format!("{ns}/ep{i}"),
                    namespace: Some(ns.to_owned()),
                    local,
                    interface: format!("cali{i}"),
                    addrs,
                    labels,
                    profiles: if profile {
                        vec![format!("kns.{ns}")]
                    } else {
                        Vec::new()
                    },
                    named_ports,
                }
            })
            .collect()
    })
}

/// Packets between the generated endpoints' addresses and outside addresses.
pub fn packet() -> impl Strategy<Value = Packet> {
    let v4: Vec<IpAddr> = [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
        "10.0.1.9",
        "192.0.2.7",
        "203.0.113.1",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let v6: Vec<IpAddr> = ["fd00::1", "fd00::2", "fd00::3", "2001:db8::1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let addrs = prop_oneof![
        3 => (prop::sample::select(v4.clone()), prop::sample::select(v4)),
        1 => (prop::sample::select(v6.clone()), prop::sample::select(v6)),
    ];
    let port = prop::sample::select(vec![53u16, 80, 443, 5432, 8080, 40000]);
    (
        addrs,
        prop::sample::select(vec![6u8, 17, 1, 58, 47]),
        port.clone(),
        port,
        prop::sample::select(vec![0u8, 8, 128, 135]),
        prop::sample::select(vec![0u8, 1]),
    )
        .prop_map(
            |((src, dst), protocol, src_port, dst_port, icmp_type, icmp_code)| {
                let has_ports = Protocol(protocol).has_ports();
                let is_icmp = protocol == 1 || protocol == 58;
                Packet {
                    src,
                    dst,
                    protocol,
                    src_port: if has_ports { src_port } else { 0 },
                    dst_port: if has_ports { dst_port } else { 0 },
                    icmp_type: if is_icmp { icmp_type } else { 0 },
                    icmp_code: if is_icmp { icmp_code } else { 0 },
                }
            },
        )
}
