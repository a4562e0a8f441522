//! A pod that labels itself as a member of another namespace gains nothing
//! (root, lab namespaces, real packets): the cluster goes through the agent's
//! datastore and its policy path (`policy::desired_ruleset`), the ruleset is
//! installed in the node's namespace through calinet-policy's netlink backend,
//! and TCP connections between pods plumbed as Calico plumbs them are the oracle.
//!
//! Pods on node `n1`: `shop/db` and `shop/web` (namespace `shop`, whose policy
//! admits only its own pods), `public/open` (no policy), and `guest/forger`
//! (namespace `guest`, default-deny both ways), which labels itself
//! `projectcalico.org/namespace: shop`, `pcns.kubernetes.io/metadata.name: shop`
//! and `pcns.projectcalico.org/name: shop`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use calinet_agent::datastore::{apply, read_view};
use calinet_agent::plan::LocalWorkload;
use calinet_agent::policy::desired_ruleset;
use calinet_agent::resources::parse_documents;
use calinet_ipam::MemStore;
use calinet_policy::ir::Ruleset;
use calinet_policy::netlink::{NetlinkBackend, NetlinkSocket};
use calinet_policy::semantics::{Direction, Packet, Verdict};
use calinet_route::{IfName, WorkloadSpec};

const T: Duration = Duration::from_millis(1500);

const CLUSTER: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.0.0.0/16, natOutgoing: false}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Pod
metadata: {name: open, namespace: public, labels: {app: open}}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Pod
metadata:
  name: forger
  namespace: guest
  labels:
    app: web
    projectcalico.org/namespace: shop
    pcns.kubernetes.io/metadata.name: shop
    pcns.projectcalico.org/name: shop
spec: {nodeName: n1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: shop-only, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
"#;

/// Namespace guest's default-deny, both ways.
const GUEST_DENY: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: guest}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
"#;

/// (namespace, pod, address) of the node's workloads.
const PODS: &[(&str, &str, &str)] = &[
    ("shop", "db", "10.0.0.2"),
    ("shop", "web", "10.0.0.1"),
    ("public", "open", "10.0.0.4"),
    ("guest", "forger", "10.0.0.3"),
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The agent's policy path: datastore -> view -> desired ruleset for `n1`.
fn desired(cluster: &str) -> Ruleset {
    let store = MemStore::new();
    apply(&store, &parse_documents("cluster", cluster).unwrap()).unwrap();
    let view = read_view(&store).unwrap();
    let workloads: Vec<LocalWorkload> = PODS
        .iter()
        .map(|(ns, name, addr)| {
            let pod = view.pods[&format!("{ns}/{name}")].clone();
            let spec = WorkloadSpec::new(IfName::calico_workload(ns, name), "/run/netns/x", 1450)
                .ipv4(addr.parse().unwrap());
            LocalWorkload { pod, spec }
        })
        .collect();
    desired_ruleset(&view, "n1", &workloads).unwrap().0
}

fn iface(ns: &str, pod: &str) -> String {
    IfName::calico_workload(ns, pod).to_string()
}

#[test]
fn pod_labelled_as_another_namespaces_member_stays_isolated() {
    testlab::require!(testlab::Feature::Nftables);
    let rs = desired(&format!("{CLUSTER}{GUEST_DENY}"));
    // Without guest's default-deny: only shop's policy stands in the forger's way.
    let rs_no_deny = desired(CLUSTER);

    // The compiled ruleset's own verdicts for the forger's first packet.
    let probe = Packet::tcp(ip("10.0.0.3"), 40000, ip("10.0.0.2"), 80);
    assert_eq!(
        rs.evaluate(&probe, &iface("guest", "forger"), Direction::Egress)
            .unwrap(),
        Verdict::Deny,
        "guest's default-deny governs the forger's egress"
    );
    assert_eq!(
        rs.evaluate(&probe, &iface("shop", "db"), Direction::Ingress)
            .unwrap(),
        Verdict::Deny,
        "shop's policy does not take the forger for a shop pod"
    );

    // Real packets.
    let lab = testlab::Lab::new("forged_namespace").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n1 = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let mut netns = BTreeMap::new();
    for (ns, name, addr) in PODS {
        let pod = lab.pod(name).unwrap();
        lab.plumb_pod(&n1, &pod, &iface(ns, name), addr.parse().unwrap())
            .unwrap();
        netns.insert(*name, pod);
    }
    let (db, web, open, forger) = (
        &netns["db"],
        &netns["web"],
        &netns["open"],
        &netns["forger"],
    );
    let _servers = [
        db.tcp_listen(ip("10.0.0.2"), 80).unwrap(),
        web.tcp_listen(ip("10.0.0.1"), 80).unwrap(),
        open.tcp_listen(ip("10.0.0.4"), 80).unwrap(),
        forger.tcp_listen(ip("10.0.0.3"), 80).unwrap(),
    ];
    let mut nl = NetlinkBackend::new(NetlinkSocket::open_in(&n1.path()).unwrap());

    // Phase 1, shop's policy alone: the forger's plumbing works (it reaches the
    // unprotected pod), and shop still does not take it for one of its own.
    nl.apply(&rs_no_deny).unwrap();
    assert!(
        forger.tcp_connect(ip("10.0.0.4"), 80, T),
        "guest/forger -> public/open allowed while guest has no policy"
    );
    assert!(
        web.tcp_connect(ip("10.0.0.2"), 80, T),
        "shop/web -> shop/db allowed by shop's policy"
    );
    assert!(
        !open.tcp_connect(ip("10.0.0.2"), 80, T),
        "public/open -> shop/db dropped by shop's policy"
    );
    assert!(
        !forger.tcp_connect(ip("10.0.0.2"), 80, T),
        "guest/forger (labelled as shop's) -> shop/db dropped by shop's policy"
    );

    // Phase 2, with guest's default-deny: the forger is isolated both ways.
    nl.apply(&rs).unwrap();
    assert!(
        web.tcp_connect(ip("10.0.0.4"), 80, T),
        "shop/web -> public/open: no policy, allowed"
    );
    assert!(
        !forger.tcp_connect(ip("10.0.0.4"), 80, T),
        "guest/forger -> public/open dropped by guest's egress default-deny"
    );
    assert!(
        !open.tcp_connect(ip("10.0.0.3"), 80, T),
        "public/open -> guest/forger dropped by guest's ingress default-deny"
    );
    assert!(
        !forger.tcp_connect(ip("10.0.0.2"), 80, T),
        "guest/forger -> shop/db dropped"
    );
}
