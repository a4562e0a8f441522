//! Kubernetes NetworkPolicy conformance, organised by the sections of the
//! Kubernetes documentation ("Network Policies") and the API server's
//! defaulting and validation of `networking.k8s.io/v1` NetworkPolicy.
//!
//! Every traffic case is evaluated twice, through the model's reference
//! semantics (`PolicyModel::evaluate`) and through the compiled ruleset's packet
//! evaluator, and the two must agree for each direction before the case's
//! expectation is checked. A connection is allowed when the source pod's egress
//! and the destination pod's ingress both allow it.
//!
//! The cluster: namespace `a` (label `team: a`) with pods `a/web` (app=web,
//! 10.1.0.1, named port `http` TCP 8080) and `a/db` (app=db, 10.1.0.2, named
//! ports `pg` TCP 5432 and `dns` UDP 53); namespace `b` (label `team: b`) with
//! `b/web` (app=web, 10.1.1.1) and `b/client` (app=client, 10.1.1.2);
//! namespace `c` (no labels) with `c/forger` (10.1.2.1), whose labels a test
//! chooses. Outside hosts use documentation addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use calinet_policy::Error;
use calinet_policy::compile::{Options, Pool, compile};
use calinet_policy::index::LabelIndex;
use calinet_policy::ir::Ruleset;
use calinet_policy::model::{
    AnyResource, K8sNetworkPolicy, PolicyType, Profile, Protocol, parse_yaml,
};
use calinet_policy::selector::Selector;
use calinet_policy::semantics::{
    Direction, Endpoint, Endpoints, NamedPort, Packet, PolicyModel, Verdict,
    namespace_selector_to_labels,
};
use proptest::prelude::*;

use Verdict::{Allow, Deny};

const EXTERNAL: &str = "203.0.113.7";

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn named(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        protocol,
        port,
    }
}

fn pod(name: &str, addr: &str, own: BTreeMap<String, String>, ports: Vec<NamedPort>) -> Endpoint {
    let (ns, short) = name.split_once('/').unwrap();
    Endpoint {
        name: name.into(),
        namespace: Some(ns.into()),
        local: true,
        interface: format!("cali{}{short}", &ns[..1]),
        addrs: vec![addr.parse().unwrap()],
        labels: own,
        profiles: vec![format!("kns.{ns}")],
        named_ports: ports,
    }
}

fn pods(forger: BTreeMap<String, String>) -> Vec<Endpoint> {
    vec![
        pod(
            "a/web",
            "10.1.0.1",
            labels(&[("app", "web")]),
            vec![named("http", Protocol::TCP, 8080)],
        ),
        pod(
            "a/db",
            "10.1.0.2",
            labels(&[("app", "db")]),
            vec![
                named("pg", Protocol::TCP, 5432),
                named("dns", Protocol::UDP, 53),
            ],
        ),
        pod("b/web", "10.1.1.1", labels(&[("app", "web")]), vec![]),
        pod("b/client", "10.1.1.2", labels(&[("app", "client")]), vec![]),
        pod("c/forger", "10.1.2.1", forger, vec![]),
    ]
}

struct World {
    model: PolicyModel,
    eps: Endpoints,
    rs: Ruleset,
}

fn resources(yaml: &str) -> Vec<AnyResource> {
    let mut res = parse_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    res.push(AnyResource::Profile(Profile::for_namespace(
        "a",
        &labels(&[("team", "a")]),
    )));
    res.push(AnyResource::Profile(Profile::for_namespace(
        "b",
        &labels(&[("team", "b")]),
    )));
    res.push(AnyResource::Profile(Profile::for_namespace(
        "c",
        &BTreeMap::new(),
    )));
    res
}

fn world_with(yaml: &str, forger: BTreeMap<String, String>) -> World {
    let model = PolicyModel::build(&resources(yaml)).unwrap_or_else(|e| panic!("{e}"));
    let eps = Endpoints::new(&model, pods(forger));
    let pools = [Pool {
        cidr: "10.1.0.0/16".parse().unwrap(),
        nat_outgoing: false,
    }];
    let rs = compile(&model, &eps, &pools, &Options::default()).unwrap();
    World { model, eps, rs }
}

fn world(yaml: &str) -> World {
    world_with(yaml, BTreeMap::new())
}

impl World {
    fn endpoint_at(&self, addr: IpAddr) -> Option<&Endpoint> {
        self.eps.by_name.values().find(|e| e.addrs.contains(&addr))
    }

    /// One direction of one endpoint, through the model and the ruleset, which
    /// must agree.
    fn direction(&self, ep: &Endpoint, dir: Direction, p: &Packet) -> Verdict {
        let by_model = self.model.evaluate(&self.eps, &ep.name, dir, p).unwrap();
        let by_rules = self.rs.evaluate(p, &ep.interface, dir).unwrap();
        assert_eq!(
            by_model, by_rules,
            "model and compiled ruleset disagree on {dir:?} of {} for {p:?}",
            ep.name
        );
        by_model
    }

    /// The verdict for a packet: the source pod's egress (if the source is a
    /// pod) and the destination pod's ingress (if the destination is one).
    fn verdict(&self, p: Packet) -> Verdict {
        let mut v = Allow;
        if let Some(src) = self.endpoint_at(p.src)
            && self.direction(src, Direction::Egress, &p) == Deny
        {
            v = Deny;
        }
        if let Some(dst) = self.endpoint_at(p.dst)
            && self.direction(dst, Direction::Ingress, &p) == Deny
        {
            v = Deny;
        }
        v
    }

    fn tcp(&self, src: &str, dst: &str, port: u16) -> Verdict {
        self.verdict(Packet::tcp(ip(src), 40000, ip(dst), port))
    }

    fn udp(&self, src: &str, dst: &str, port: u16) -> Verdict {
        self.verdict(Packet::udp(ip(src), 40000, ip(dst), port))
    }
}

fn ip(s: &str) -> IpAddr {
    let addr = match s {
        "a/web" => "10.1.0.1",
        "a/db" => "10.1.0.2",
        "b/web" => "10.1.1.1",
        "b/client" => "10.1.1.2",
        "c/forger" => "10.1.2.1",
        other => other,
    };
    addr.parse().unwrap()
}

fn knp(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

/// The error parsing `yaml` gives (it must fail).
/// The error and its causes, as a caller printing the chain shows them.
fn rejected(yaml: &str) -> String {
    match parse_yaml(yaml) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => {
            let mut text = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                text.push_str(&format!(": {c}"));
                cur = c.source();
            }
            text
        }
    }
}

fn knp_value(spec: &str) -> K8sNetworkPolicy {
    serde_norway::from_str(&knp("a", "p", spec)).unwrap()
}

// ---------------------------------------------------------------------------
// Defaulting: policyTypes as the API server sets it.

#[test]
fn defaulting_policy_types_for_each_combination() {
    use PolicyType::{Egress, Ingress};
    // (policyTypes, ingress, egress) -> effective types.
    let cases: &[(&str, &str, &str, &[PolicyType])] = &[
        ("", "", "", &[Ingress]),
        ("", "", "  egress: []\n", &[Ingress]),
        ("", "", "  egress: [{}]\n", &[Ingress, Egress]),
        ("", "  ingress: []\n", "", &[Ingress]),
        (
            "",
            "  ingress: [{}]\n",
            "  egress: [{}]\n",
            &[Ingress, Egress],
        ),
        ("  policyTypes: []\n", "", "", &[Ingress]),
        ("  policyTypes: []\n", "", "  egress: []\n", &[Ingress]),
        (
            "  policyTypes: []\n",
            "",
            "  egress: [{}]\n",
            &[Ingress, Egress],
        ),
        (
            "  policyTypes: [Ingress]\n",
            "",
            "  egress: [{}]\n",
            &[Ingress],
        ),
        (
            "  policyTypes: [Egress]\n",
            "  ingress: [{}]\n",
            "",
            &[Egress],
        ),
        (
            "  policyTypes: [Egress, Ingress]\n",
            "",
            "",
            &[Ingress, Egress],
        ),
        ("  policyTypes: [Ingress, Ingress]\n", "", "", &[Ingress]),
    ];
    for (types, ingress, egress, want) in cases {
        let spec = format!("  podSelector: {{}}\n{types}{ingress}{egress}");
        let k = knp_value(&spec);
        assert_eq!(k.effective_policy_types(), *want, "{spec}");
        let c = k.to_calico().unwrap();
        assert_eq!(c.spec.types.as_deref(), Some(*want), "{spec}");
        // Rules of a direction the policy does not apply in are dropped.
        if !want.contains(&Ingress) {
            assert!(c.spec.ingress.is_empty(), "{spec}");
        }
        if !want.contains(&Egress) {
            assert!(c.spec.egress.is_empty(), "{spec}");
        }
    }
}

#[test]
fn defaulting_empty_egress_list_is_not_an_egress_policy() {
    let w = world(&knp("a", "p", "  podSelector: {}\n  egress: []\n"));
    assert_eq!(w.tcp("a/web", EXTERNAL, 443), Allow, "egress untouched");
    assert_eq!(w.tcp("b/web", "a/web", 80), Deny, "ingress isolated");
}

#[test]
fn defaulting_empty_policy_types_is_ingress() {
    let w = world(&knp("a", "p", "  podSelector: {}\n  policyTypes: []\n"));
    assert_eq!(w.tcp("b/web", "a/web", 80), Deny, "ingress isolated");
    assert_eq!(w.tcp("a/web", "b/web", 80), Allow, "egress untouched");
}

#[test]
fn defaulting_egress_rules_make_an_egress_policy_that_also_isolates_ingress() {
    let spec = "  podSelector: {matchLabels: {app: web}}\n  egress:\n  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("a/web", EXTERNAL, 443), Allow);
    assert_eq!(w.tcp("a/web", "198.51.100.1", 443), Deny);
    assert_eq!(
        w.tcp("b/web", "a/web", 80),
        Deny,
        "Ingress was defaulted in"
    );
}

#[test]
fn defaulting_explicit_egress_type_ignores_ingress_rules() {
    let spec = "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/web", "a/web", 80), Allow, "ingress not governed");
    assert_eq!(w.tcp("a/web", "b/web", 80), Deny, "no egress rule");
}

#[test]
fn defaulting_protocol_is_tcp() {
    let spec = "  podSelector: {}\n  ingress:\n  - ports: [{port: 53}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/web", "a/db", 53), Allow);
    assert_eq!(w.udp("b/web", "a/db", 53), Deny);
}

// ---------------------------------------------------------------------------
// Isolation: a pod is isolated for a direction once a policy selects it for
// that direction; otherwise everything is allowed.

#[test]
fn isolation_non_isolated_pods_allow_everything() {
    let w = world("");
    assert_eq!(w.tcp("b/web", "a/db", 5432), Allow);
    assert_eq!(w.tcp("a/db", EXTERNAL, 443), Allow);
    assert_eq!(
        w.verdict(Packet::icmp(ip("a/web"), ip("a/db"), 8, 0)),
        Allow
    );
}

#[test]
fn isolation_default_deny_ingress() {
    let w = world(&knp("a", "deny", "  podSelector: {}\n"));
    assert_eq!(w.tcp("a/web", "a/db", 5432), Deny);
    assert_eq!(w.tcp(EXTERNAL, "a/db", 5432), Deny);
    assert_eq!(w.tcp("a/db", "b/web", 80), Allow, "egress not isolated");
    assert_eq!(w.tcp("b/client", "b/web", 80), Allow, "other namespace");
}

#[test]
fn isolation_default_deny_egress() {
    let w = world(&knp(
        "a",
        "deny",
        "  podSelector: {}\n  policyTypes: [Egress]\n",
    ));
    assert_eq!(w.tcp("a/web", "b/web", 80), Deny);
    assert_eq!(
        w.tcp("a/web", "a/db", 5432),
        Deny,
        "even inside the namespace"
    );
    assert_eq!(w.tcp("b/web", "a/web", 80), Allow, "ingress not isolated");
}

#[test]
fn isolation_allow_all_ingress_and_egress() {
    let spec =
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress: [{}]\n  egress: [{}]\n";
    let w = world(&format!(
        "{}{}",
        knp(
            "a",
            "deny",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"
        ),
        knp("a", "allow", spec)
    ));
    assert_eq!(w.tcp(EXTERNAL, "a/web", 80), Allow);
    assert_eq!(w.tcp("a/web", EXTERNAL, 80), Allow);
}

#[test]
fn isolation_only_selected_pods() {
    let w = world(&knp("a", "db", "  podSelector: {matchLabels: {app: db}}\n"));
    assert_eq!(w.tcp("b/web", "a/db", 5432), Deny);
    assert_eq!(w.tcp("b/web", "a/web", 80), Allow);
}

// ---------------------------------------------------------------------------
// Peers: podSelector (own namespace), namespaceSelector, both (AND), several
// peers (OR).

#[test]
fn peers_pod_selector_means_the_policys_namespace() {
    let spec = "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("a/web", "a/db", 5432), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 5432), Deny, "app=web of namespace b");
    assert_eq!(w.tcp(EXTERNAL, "a/db", 5432), Deny);
}

#[test]
fn peers_namespace_selector() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: b}}}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/client", "a/db", 1), Allow);
    assert_eq!(
        w.tcp("a/web", "a/db", 1),
        Deny,
        "own namespace not selected"
    );
    assert_eq!(w.tcp("c/forger", "a/db", 1), Deny);
}

#[test]
fn peers_empty_namespace_selector_is_every_namespace() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n";
    let w = world(&knp("a", "p", spec));
    for src in ["a/web", "b/client", "c/forger"] {
        assert_eq!(w.tcp(src, "a/db", 1), Allow, "{src}");
    }
    assert_eq!(w.tcp(EXTERNAL, "a/db", 1), Deny, "not a pod");
}

#[test]
fn peers_namespace_name_label_selects_by_name() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: c}}}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("c/forger", "a/db", 1), Allow);
    assert_eq!(w.tcp("b/client", "a/db", 1), Deny);
}

#[test]
fn peers_namespace_and_pod_selector_in_one_peer_are_and() {
    let spec = "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: b}}\n      podSelector: {matchLabels: {app: client}}\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/client", "a/db", 1), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 1), Deny);
}

#[test]
fn peers_in_separate_entries_are_or() {
    let spec = "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: b}}\n    - podSelector: {matchLabels: {app: web}}\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/web", "a/db", 1), Allow);
    assert_eq!(w.tcp("b/client", "a/db", 1), Allow);
    assert_eq!(w.tcp("a/web", "a/db", 1), Allow);
    assert_eq!(w.tcp("c/forger", "a/db", 1), Deny);
}

#[test]
fn peers_match_expressions() {
    let spec = "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector:\n        matchExpressions:\n        - {key: app, operator: In, values: [web, client]}\n        - {key: tier, operator: DoesNotExist}\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/client", "a/db", 1), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 1), Allow);
    assert_eq!(w.tcp("c/forger", "a/db", 1), Deny);
}

// ---------------------------------------------------------------------------
// Ports: port, protocol, endPort.

#[test]
fn ports_number_and_protocol() {
    let spec = "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports:\n    - {port: 5432}\n    - {protocol: UDP, port: 53}\n    - {protocol: SCTP, port: 9999}\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/web", "a/db", 5432), Allow);
    assert_eq!(w.udp("b/web", "a/db", 5432), Deny);
    assert_eq!(w.udp("b/web", "a/db", 53), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 53), Deny);
    let sctp = |port| Packet::sctp(ip("b/web"), 40000, ip("a/db"), port);
    assert_eq!(w.verdict(sctp(9999)), Allow);
    assert_eq!(w.verdict(sctp(5432)), Deny);
    let icmp = Packet::icmp(ip("b/web"), ip("a/db"), 8, 0);
    assert_eq!(w.verdict(icmp), Deny, "ports rules never allow ICMP");
}

#[test]
fn ports_protocol_without_port_is_every_port() {
    let spec =
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{protocol: UDP}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.udp("b/web", "a/db", 1), Allow);
    assert_eq!(w.udp("b/web", "a/db", 65535), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 1), Deny);
}

#[test]
fn ports_end_port_is_an_inclusive_range() {
    let spec = "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: 32000, endPort: 32768}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/web", "a/db", 31999), Deny);
    assert_eq!(w.tcp("b/web", "a/db", 32000), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 32768), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 32769), Deny);
}

#[test]
fn ports_and_peers_are_and() {
    let spec = "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 5432}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("a/web", "a/db", 5432), Allow);
    assert_eq!(w.tcp("a/web", "a/db", 22), Deny);
    assert_eq!(w.tcp("b/client", "a/db", 5432), Deny);
}

// ---------------------------------------------------------------------------
// Named ports: resolved against the destination pod's container ports.

#[test]
fn named_ports_on_ingress() {
    let spec =
        "  podSelector: {}\n  ingress:\n  - ports: [{port: pg}, {protocol: UDP, port: dns}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/web", "a/db", 5432), Allow);
    assert_eq!(w.udp("b/web", "a/db", 53), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 53), Deny, "dns is UDP");
    assert_eq!(w.tcp("b/web", "a/web", 5432), Deny, "a/web has no pg port");
}

#[test]
fn named_ports_on_egress() {
    let spec = "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: pg}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("a/web", "a/db", 5432), Allow);
    assert_eq!(w.tcp("a/web", EXTERNAL, 5432), Deny, "no pod there has pg");
}

// ---------------------------------------------------------------------------
// ipBlock: cidr and except.

#[test]
fn ip_block_with_except() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/28]}}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("203.0.113.100", "a/db", 1), Allow);
    assert_eq!(w.tcp("203.0.113.5", "a/db", 1), Deny, "in except");
    assert_eq!(w.tcp("198.51.100.1", "a/db", 1), Deny);
}

#[test]
fn ip_block_covers_pod_addresses_too() {
    let spec = "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.1.1.0/24}}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("b/client", "a/db", 1), Allow);
    assert_eq!(w.tcp("a/web", "a/db", 1), Deny);
}

#[test]
fn ip_block_on_egress() {
    let spec = "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}}]\n    ports: [{port: 443}]\n";
    let w = world(&knp("a", "p", spec));
    assert_eq!(w.tcp("a/web", "198.51.100.1", 443), Allow);
    assert_eq!(w.tcp("a/web", "198.51.100.200", 443), Deny);
    assert_eq!(w.tcp("a/web", "198.51.100.1", 80), Deny);
}

// ---------------------------------------------------------------------------
// Multiple policies: unions; both directions must allow.

#[test]
fn multiple_policies_are_a_union() {
    let one = "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n";
    let two = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: b}}}]\n    ports: [{port: 5432}]\n";
    let w = world(&format!("{}{}", knp("a", "one", one), knp("a", "two", two)));
    assert_eq!(w.tcp("a/web", "a/db", 22), Allow, "by one");
    assert_eq!(w.tcp("b/client", "a/db", 5432), Allow, "by two");
    assert_eq!(w.tcp("b/client", "a/db", 22), Deny, "by neither");
    assert_eq!(w.tcp("a/db", "a/web", 22), Deny, "a/web only by two");
}

#[test]
fn multiple_policies_need_both_directions() {
    let ingress = "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n";
    let deny_egress = "  podSelector: {}\n  policyTypes: [Egress]\n";
    let w = world(&format!(
        "{}{}",
        knp("a", "in", ingress),
        knp("b", "out", deny_egress)
    ));
    assert_eq!(w.tcp("c/forger", "a/db", 1), Allow);
    assert_eq!(w.tcp("b/client", "a/db", 1), Deny, "b's egress denies it");
}

// ---------------------------------------------------------------------------
// Namespace identity: a pod's own labels cannot claim another namespace.

fn forged() -> BTreeMap<String, String> {
    labels(&[
        ("app", "web"),
        ("projectcalico.org/namespace", "a"),
        ("projectcalico.org/orchestrator", "k8s"),
        ("pcns.team", "a"),
        ("pcns.kubernetes.io/metadata.name", "a"),
        ("pcns.projectcalico.org/name", "a"),
    ])
}

#[test]
fn identity_forged_pod_is_not_in_another_namespaces_pod_selector() {
    let spec =
        "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n";
    let w = world_with(&knp("a", "p", spec), forged());
    assert_eq!(w.tcp("a/web", "a/db", 1), Allow);
    assert_eq!(w.tcp("c/forger", "a/db", 1), Deny);
}

#[test]
fn identity_forged_pod_is_not_selected_by_namespace_selectors() {
    let spec = "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: a}}\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: a}}\n";
    let w = world_with(&knp("a", "p", spec), forged());
    assert_eq!(w.tcp("a/web", "a/db", 1), Allow);
    assert_eq!(w.tcp("c/forger", "a/db", 1), Deny);
}

#[test]
fn identity_forged_pod_stays_under_its_namespaces_default_deny() {
    let deny = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
    let w = world_with(&knp("c", "deny", deny), forged());
    assert_eq!(w.tcp("c/forger", "a/db", 1), Deny, "egress of c");
    assert_eq!(w.tcp("a/web", "c/forger", 1), Deny, "ingress of c");
    assert_eq!(w.tcp("a/web", "a/db", 1), Allow);
}

#[test]
fn identity_namespace_profile_sets_the_name_label() {
    let p = Profile::for_namespace("a", &labels(&[("kubernetes.io/metadata.name", "b")]));
    assert_eq!(
        p.spec.labels_to_apply["pcns.kubernetes.io/metadata.name"], "a",
        "the namespace's name, whatever the labels say"
    );
    assert_eq!(p.spec.labels_to_apply["pcns.projectcalico.org/name"], "a");
}

#[test]
fn identity_only_the_namespace_profile_gives_namespace_labels() {
    // A profile that is not the pod's namespace profile cannot give it pcns.*.
    let mut res = resources("");
    let mut other = Profile::for_namespace("other", &labels(&[("team", "a")]));
    other.metadata.name = "shared".into();
    res.push(AnyResource::Profile(other));
    let model = PolicyModel::build(&res).unwrap();
    let mut ep = pod("c/x", "10.1.2.9", BTreeMap::new(), vec![]);
    ep.profiles.push("shared".into());
    let eff = model.effective_labels(&ep);
    assert_eq!(eff.get("pcns.team"), None);
    assert_eq!(eff["projectcalico.org/namespace"], "c");
    assert_eq!(eff["pcns.kubernetes.io/metadata.name"], "c");
}

const RESERVED_KEYS: &[&str] = &[
    "projectcalico.org/namespace",
    "projectcalico.org/orchestrator",
    "projectcalico.org/serviceaccount",
    "pcns.team",
    "pcns.kubernetes.io/metadata.name",
    "pcns.projectcalico.org/name",
    "pcsa.role",
    "app",
    "tier",
];

fn any_labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(RESERVED_KEYS).prop_map(str::to_owned),
        prop::sample::select(&["a", "b", "c", "k8s", "web", ""][..]).prop_map(str::to_owned),
        0..6,
    )
}

/// Namespace selectors, as written in a namespaceSelector.
const NAMESPACE_SELECTORS: &[&str] = &[
    "team == 'a'",
    "team == 'b'",
    "has(team)",
    "!has(team)",
    "kubernetes.io/metadata.name == 'a'",
    "kubernetes.io/metadata.name in {'a', 'c'}",
    "projectcalico.org/name == 'a'",
    "all()",
    "global()",
];

/// Policies whose verdicts for c/forger depend only on its namespace and its
/// unreserved labels.
fn identity_policies() -> String {
    [
        knp(
            "a",
            "pods",
            "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n",
        ),
        knp(
            "a",
            "namespaces",
            "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}}]\n",
        ),
        knp(
            "b",
            "deny",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {}}]\n",
        ),
    ]
    .concat()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No choice of pod labels changes which namespace selectors an endpoint
    /// matches, in the model's endpoints and in the label index.
    #[test]
    fn identity_pod_labels_never_change_namespace_selector_matches(
        own in any_labels(),
        ns in prop::sample::select(&["a", "b", "c"][..]),
    ) {
        let model = PolicyModel::build(&resources("")).unwrap();
        let name = format!("{ns}/x");
        let mut ep = pod(&name, "10.1.3.1", own.clone(), vec![]);
        let mut bare = ep.clone();
        bare.labels.clear();
        bare.name = format!("{ns}/bare");
        bare.addrs = vec!["10.1.3.2".parse().unwrap()];
        ep.local = false;
        let eps = Endpoints::new(&model, [ep.clone(), bare.clone()]);
        let mut ix: LabelIndex<usize, String> = LabelIndex::new();
        for (name, labels) in &model.profiles {
            ix.upsert_profile(name, labels.labels.clone());
        }
        ix.upsert_endpoint_in(ep.name.clone(), Some(ns.to_owned()), own, ep.profiles.clone());
        ix.upsert_endpoint_in(bare.name.clone(), Some(ns.to_owned()), BTreeMap::new(), bare.profiles.clone());
        for (i, text) in NAMESPACE_SELECTORS.iter().enumerate() {
            let sel = namespace_selector_to_labels(&Selector::parse(text).unwrap());
            let selected: Vec<String> = eps.selected(&sel).map(|e| e.name.clone()).collect();
            let selected: Vec<&str> = selected.iter().map(String::as_str).collect();
            prop_assert_eq!(
                selected.contains(&ep.name.as_str()),
                selected.contains(&bare.name.as_str()),
                "{}", text
            );
            ix.upsert_selector(i, sel);
            prop_assert_eq!(ix.is_match(&i, &ep.name), ix.is_match(&i, &bare.name), "{}", text);
            prop_assert_eq!(
                ix.is_match(&i, &ep.name),
                selected.contains(&ep.name.as_str()),
                "index and model agree on {}", text
            );
        }
    }

    /// No choice of pod labels changes any verdict for traffic of c/forger
    /// beyond what its unreserved labels decide: namespaced pod selectors and
    /// namespace selectors of other namespaces, and its own namespace's
    /// isolation, all see the same pod (model and compiled ruleset).
    #[test]
    fn identity_pod_labels_never_change_namespaced_verdicts(own in any_labels()) {
        let unreserved: BTreeMap<String, String> = own
            .iter()
            .filter(|(k, _)| !calinet_policy::model::is_reserved_label(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let policies = identity_policies();
        let with = world_with(&policies, own);
        let without = world_with(&policies, unreserved);
        for dst in ["a/web", "a/db", "b/web"] {
            prop_assert_eq!(with.tcp("c/forger", dst, 80), without.tcp("c/forger", dst, 80), "{}", dst);
            prop_assert_eq!(with.tcp(dst, "c/forger", 80), without.tcp(dst, "c/forger", 80), "{}", dst);
        }
        // c is not a: never allowed by a's namespace or pod peers.
        prop_assert_eq!(with.tcp("c/forger", "a/db", 80), Deny);
        prop_assert_eq!(with.tcp("c/forger", "a/web", 80), Deny);
    }
}

// ---------------------------------------------------------------------------
// Validation: what the API server rejects is rejected, naming the field, and
// nothing of the stream is applied.

#[test]
fn validation_except_must_be_strictly_inside_cidr() {
    let spec = "  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}\n";
    assert_eq!(
        rejected(&knp("a", "p", spec)),
        "NetworkPolicy p: spec.ingress[0].from[1].ipBlock.except[0]: 10.0.0.0/8 must be strictly inside cidr 10.0.0.0/8"
    );
    let spec = "  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}\n";
    assert_eq!(
        rejected(&knp("a", "p", spec)),
        "NetworkPolicy p: spec.egress[0].to[0].ipBlock.except[1]: 10.1.0.0/24 must be strictly inside cidr 10.0.0.0/16"
    );
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: ['2001:db8::/64']}}]\n";
    assert!(
        rejected(&knp("a", "p", spec)).contains("except[0]: 2001:db8::/64 must be strictly inside")
    );
}

#[test]
fn validation_protocol_must_be_tcp_udp_or_sctp() {
    for proto in ["ICMP", "ICMPv6", "UDPLite"] {
        let spec = format!(
            "  podSelector: {{}}\n  ingress:\n  - ports: [{{port: 80}}, {{protocol: {proto}}}]\n"
        );
        let e = rejected(&knp("a", "p", &spec));
        assert!(
            e.starts_with("NetworkPolicy p: spec.ingress[0].ports[1].protocol: ")
                && e.ends_with("is not TCP, UDP or SCTP"),
            "{e}"
        );
    }
}

#[test]
fn validation_protocol_is_case_sensitive_and_not_a_number() {
    for proto in ["tcp", "Tcp", "6", "'6'"] {
        let spec = format!("  podSelector: {{}}\n  ingress:\n  - ports: [{{protocol: {proto}}}]\n");
        let e = rejected(&knp("a", "p", &spec));
        assert!(e.contains("is not TCP, UDP or SCTP"), "{proto}: {e}");
    }
    parse_yaml(&knp(
        "a",
        "p",
        "  podSelector: {}\n  ingress:\n  - ports: [{protocol: SCTP}]\n",
    ))
    .unwrap();
}

#[test]
fn validation_port_zero() {
    let spec = "  podSelector: {}\n  egress:\n  - ports: [{port: 0}]\n";
    assert_eq!(
        rejected(&knp("a", "p", spec)),
        "NetworkPolicy p: spec.egress[0].ports[0].port: 0 is not a port number (1-65535)"
    );
    // Calico v3 rejects port 0 as well.
    let calico = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination: {ports: [80, '0:10']}\n";
    assert_eq!(
        rejected(calico),
        "GlobalNetworkPolicy g: spec.ingress[0].destination.ports[1]: 0:10 includes port 0 (ports are 1-65535)"
    );
}

#[test]
fn validation_end_port_errors_are_distinct() {
    let case = |port: &str| {
        rejected(&knp(
            "a",
            "p",
            &format!("  podSelector: {{}}\n  ingress:\n  - ports: [{{{port}}}]\n"),
        ))
    };
    let head = "NetworkPolicy p: spec.ingress[0].ports[0].endPort: ";
    assert_eq!(case("endPort: 90"), format!("{head}needs port to be set"));
    assert_eq!(
        case("port: http, endPort: 90"),
        format!("{head}cannot follow the named port \"http\" (a range needs a numeric port)")
    );
    assert_eq!(
        case("port: 100, endPort: 90"),
        format!("{head}90 is below port 100")
    );
    // endPort equal to port is a one-port range.
    let w = world(&knp(
        "a",
        "p",
        "  podSelector: {}\n  ingress:\n  - ports: [{port: 90, endPort: 90}]\n",
    ));
    assert_eq!(w.tcp("b/web", "a/db", 90), Allow);
    assert_eq!(w.tcp("b/web", "a/db", 91), Deny);
}

#[test]
fn validation_match_expression_values() {
    let sel = |expr: &str| {
        rejected(&knp(
            "a",
            "p",
            &format!(
                "  podSelector:\n    matchExpressions: [{{key: x, operator: Exists}}, {expr}]\n"
            ),
        ))
    };
    let head = "NetworkPolicy p: spec.podSelector.matchExpressions[1].values: ";
    assert_eq!(
        sel("{key: app, operator: In}"),
        format!("{head}operator In needs at least one value")
    );
    assert_eq!(
        sel("{key: app, operator: NotIn, values: []}"),
        format!("{head}operator NotIn needs at least one value")
    );
    assert_eq!(
        sel("{key: app, operator: Exists, values: [web]}"),
        format!("{head}operator \"Exists\" takes no values")
    );
    assert_eq!(
        sel("{key: app, operator: DoesNotExist, values: [web]}"),
        format!("{head}operator \"DoesNotExist\" takes no values")
    );
    let e = sel("{key: app, operator: Matches, values: [web]}");
    assert!(
        e.contains("matchExpressions[1].operator: \"Matches\""),
        "{e}"
    );
    // In a peer's namespaceSelector too.
    let spec = "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: team, operator: In}]\n";
    assert_eq!(
        rejected(&knp("a", "p", spec)),
        "NetworkPolicy p: spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: operator In needs at least one value"
    );
}

#[test]
fn validation_label_keys_and_values() {
    let sel = |labels: &str| {
        rejected(&knp(
            "a",
            "p",
            &format!("  podSelector: {{matchLabels: {{{labels}}}}}\n"),
        ))
    };
    assert!(sel("'-app': x").contains("spec.podSelector.matchLabels: label key \"-app\""));
    assert!(sel("'Bad_Prefix/app': x").contains("prefix \"Bad_Prefix\""));
    assert!(sel("app: 'a b'").contains("label value \"a b\""));
    assert!(sel(&format!("app: {}", "x".repeat(64))).contains("label value"));
    // Valid: prefixed key, empty value, dots and underscores.
    let ok = knp(
        "a",
        "p",
        "  podSelector: {matchLabels: {example.com/app: '', a_b.c: X-1}}\n",
    );
    parse_yaml(&ok).unwrap();
}

#[test]
fn validation_peer_needs_a_selector_or_ip_block() {
    let spec = "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}, {}]\n";
    assert_eq!(
        rejected(&knp("a", "p", spec)),
        "NetworkPolicy p: spec.ingress[0].from[1]: a peer needs a podSelector, a namespaceSelector or an ipBlock"
    );
    let spec = "  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8}, namespaceSelector: {}}]\n";
    assert_eq!(
        rejected(&knp("a", "p", spec)),
        "NetworkPolicy p: spec.egress[0].to[0]: ipBlock cannot be combined with podSelector or namespaceSelector"
    );
}

#[test]
fn validation_policy_types() {
    let spec = "  podSelector: {}\n  policyTypes: [Ingress, Egress, Ingress]\n";
    assert_eq!(
        rejected(&knp("a", "p", spec)),
        "NetworkPolicy p: spec.policyTypes: lists 3 types; at most Ingress and Egress"
    );
    let e = rejected(&knp(
        "a",
        "p",
        "  podSelector: {}\n  policyTypes: [Forward]\n",
    ));
    assert!(e.contains("Forward"), "{e}");
}

#[test]
fn validation_rejects_the_whole_stream() {
    let good = knp("a", "good", "  podSelector: {}\n");
    let bad = knp(
        "a",
        "bad",
        "  podSelector: {}\n  ingress:\n  - ports: [{port: 0}]\n",
    );
    let e = rejected(&format!("{good}{bad}"));
    assert!(e.starts_with("NetworkPolicy bad: "), "{e}");
    // Resources built by hand are validated again when the model is built.
    let mut res = parse_yaml(&good).unwrap();
    let AnyResource::K8sNetworkPolicy(k) = &mut res[0] else {
        panic!()
    };
    k.spec.ingress = Some(vec![serde_norway::from_str("from: [{}]").unwrap()]);
    let e = PolicyModel::build(&res).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("spec.ingress[0].from[0]"), "{e}");
}

// ---------------------------------------------------------------------------
// Calico v3 policy: the same defaulting and validation where Calico has them.

fn gnp(spec: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g}}\nspec:\n  selector: app == 'db'\n{spec}"
    )
}

#[test]
fn calico_types_default_from_the_rules_present() {
    // Only egress rules: an egress policy (Calico's API defaulting), so ingress
    // stays open.
    let w = world(&gnp("  egress:\n  - action: Deny\n"));
    assert_eq!(w.tcp("b/web", "a/db", 1), Allow);
    assert_eq!(w.tcp("a/db", "b/web", 1), Deny);
    // An empty types list is defaulted the same way as an absent one.
    let w = world(&gnp("  types: []\n  ingress:\n  - action: Deny\n"));
    assert_eq!(w.tcp("b/web", "a/db", 1), Deny);
    assert_eq!(w.tcp("a/db", "b/web", 1), Allow);
    // No rules at all: ingress.
    let w = world(&gnp(""));
    assert_eq!(w.tcp("b/web", "a/db", 1), Deny);
    assert_eq!(w.tcp("a/db", "b/web", 1), Allow);
}

// ---------------------------------------------------------------------------
// Library surface.

#[test]
fn evaluating_an_unknown_endpoint_is_an_error() {
    let w = world("");
    let p = Packet::tcp(ip("a/web"), 1, ip("a/db"), 2);
    let e = w
        .model
        .evaluate(&w.eps, "a/nope", Direction::Ingress, &p)
        .unwrap_err();
    assert!(
        matches!(e, Error::Endpoint { ref endpoint, .. } if endpoint == "a/nope"),
        "{e}"
    );
}

#[test]
fn packet_constructors_per_protocol() {
    let (s, d) = (ip("10.0.0.1"), ip("10.0.0.2"));
    assert_eq!(Packet::tcp(s, 1, d, 2).protocol, 6);
    assert_eq!(Packet::udp(s, 1, d, 2).protocol, 17);
    let sctp = Packet::sctp(s, 1, d, 2);
    assert_eq!((sctp.protocol, sctp.src_port, sctp.dst_port), (132, 1, 2));
    let icmp = Packet::icmp(s, d, 8, 0);
    assert_eq!((icmp.protocol, icmp.icmp_type, icmp.dst_port), (1, 8, 0));
    let v6 = Packet::icmp(ip("2001:db8::1"), ip("2001:db8::2"), 128, 0);
    assert_eq!(v6.protocol, 58);
    assert_eq!(Packet::other(s, d, 47).protocol, 47);
}
