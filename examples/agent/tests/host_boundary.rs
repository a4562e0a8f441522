//! Policy at the node boundary (root, lab namespaces, real packets): a pod's
//! traffic to its own node meets the pod's egress policy and then
//! FelixConfiguration's `defaultEndpointToHostAction` (Drop when unset, as
//! Felix), while forwarded pod -> pod and pod -> outside traffic is unchanged.
//! The cluster goes through the agent's datastore and policy path
//! (`policy::desired_ruleset`), the table is installed in the node's namespace
//! through calinet-policy's netlink backend, and TCP connections are the oracle.
//!
//! Node `n1` (198.51.100.10) listens on 9091 (the port the agent serves its
//! metrics on) and 2222; `out` (198.51.100.20, same segment) stands for the
//! world outside the cluster. Pods on `n1`: `a/web` (no policy), `a/ops`
//! (egress allows only TCP 9091), `b/locked` (Kubernetes egress deny-all), and
//! `stray`, plumbed on a `cali*` interface no endpoint owns.

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
use calinet_policy::semantics::{Packet, Verdict};
use calinet_route::{IfName, WorkloadSpec};

const T: Duration = Duration::from_millis(1000);

const NODE: &str = "198.51.100.10";
const OUTSIDE: &str = "198.51.100.20";
const METRICS: u16 = 9091;
const OTHER: u16 = 2222;

const CLUSTER: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.0.0.0/16, natOutgoing: true}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Pod
metadata: {name: ops, namespace: a, labels: {app: ops}}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Pod
metadata: {name: locked, namespace: b, labels: {app: locked}}
spec: {nodeName: n1}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ops-metrics-only, namespace: a}
spec:
  selector: app == 'ops'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination: {ports: [9091]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-egress, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Egress]
"#;

/// (namespace, pod, address) of the node's workloads.
const PODS: &[(&str, &str, &str)] = &[
    ("a", "web", "10.0.0.1"),
    ("a", "ops", "10.0.0.2"),
    ("b", "locked", "10.0.0.3"),
];
const STRAY_IF: &str = "calistray0";
const STRAY_ADDR: &str = "10.0.0.9";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn felix(name: &str, action: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: {name}}}\nspec: {{defaultEndpointToHostAction: {action}}}\n"
    )
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
fn pod_to_host_meets_egress_policy_then_the_endpoint_to_host_action() {
    testlab::require!(testlab::Feature::Nftables);
    let drop = desired(CLUSTER);
    let accept = desired(&format!("{CLUSTER}{}", felix("default", "Accept")));
    let ret = desired(&format!("{CLUSTER}{}", felix("default", "Return")));
    // node.<name> overrides default, as in Felix.
    let node_drop = desired(&format!(
        "{CLUSTER}{}{}",
        felix("default", "Accept"),
        felix("node.n1", "Drop")
    ));
    assert_eq!(node_drop, drop, "node.n1's Drop overrides default's Accept");

    // The compiled ruleset's own verdicts for the first packet to the node.
    let probe = |from: &str, port| Packet::tcp(ip(from), 40000, ip(NODE), port);
    let web = iface("a", "web");
    for (rs, want) in [(&drop, Verdict::Deny), (&accept, Verdict::Allow)] {
        assert_eq!(
            rs.evaluate_to_host(&probe("10.0.0.1", METRICS), &web)
                .unwrap(),
            want
        );
    }
    assert_eq!(
        accept
            .evaluate_to_host(&probe("10.0.0.3", METRICS), &iface("b", "locked"))
            .unwrap(),
        Verdict::Deny,
        "egress deny-all applies before the action"
    );

    // Real packets.
    let lab = testlab::Lab::new("host_boundary").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n1 = lab.node("n1", &seg, NODE.parse().unwrap()).unwrap();
    let out = lab.node("out", &seg, OUTSIDE.parse().unwrap()).unwrap();
    let mut pods = BTreeMap::new();
    for (ns, name, addr) in PODS {
        let pod = lab.pod(name).unwrap();
        lab.plumb_pod(&n1, &pod, &iface(ns, name), addr.parse().unwrap())
            .unwrap();
        pods.insert(*name, pod);
    }
    let stray = lab.pod("stray").unwrap();
    lab.plumb_pod(&n1, &stray, STRAY_IF, STRAY_ADDR.parse().unwrap())
        .unwrap();
    let (web, ops, locked) = (&pods["web"], &pods["ops"], &pods["locked"]);
    let _servers = [
        n1.tcp_listen(ip(NODE), METRICS).unwrap(),
        n1.tcp_listen(ip(NODE), OTHER).unwrap(),
        out.tcp_listen(ip(OUTSIDE), 80).unwrap(),
        web.tcp_listen(ip("10.0.0.1"), 80).unwrap(),
        ops.tcp_listen(ip("10.0.0.2"), 80).unwrap(),
    ];
    let mut nl = NetlinkBackend::new(NetlinkSocket::open_in(&n1.path()).unwrap());

    // Before any table: the plumbing reaches the node (so a refusal below is
    // the table's doing, not the lab's).
    assert!(
        web.tcp_connect(ip(NODE), METRICS, T),
        "no table: web -> node"
    );
    assert!(
        stray.tcp_connect(ip(NODE), METRICS, T),
        "no table: stray -> node"
    );

    // Drop (no FelixConfiguration): no pod reaches its node, whatever its
    // egress policy allows; forwarded traffic and the node's own connections
    // to its pods are unaffected.
    nl.apply(&drop).unwrap();
    let node = ip(NODE);
    assert!(
        !web.tcp_connect(node, METRICS, T),
        "Drop: web -> node metrics"
    );
    assert!(
        !web.tcp_connect(node, OTHER, T),
        "Drop: web -> node {OTHER}"
    );
    assert!(
        !ops.tcp_connect(node, METRICS, T),
        "Drop: ops -> node metrics (its egress allows it; the action drops it)"
    );
    assert!(
        !locked.tcp_connect(node, METRICS, T),
        "Drop: locked -> node"
    );
    assert!(
        web.tcp_connect(ip("10.0.0.2"), 80, T),
        "Drop: web -> ops pod"
    );
    assert!(web.tcp_connect(ip(OUTSIDE), 80, T), "Drop: web -> outside");
    assert!(
        !ops.tcp_connect(ip(OUTSIDE), 80, T),
        "Drop: ops -> outside (egress)"
    );
    assert!(
        !locked.tcp_connect(ip(OUTSIDE), 80, T),
        "Drop: locked -> outside"
    );
    assert!(
        n1.tcp_connect(ip("10.0.0.1"), 80, T),
        "Drop: node -> web (probes)"
    );

    // Accept: what egress policy allows reaches the node.
    nl.apply(&accept).unwrap();
    assert!(
        web.tcp_connect(node, METRICS, T),
        "Accept: web -> node metrics"
    );
    assert!(
        web.tcp_connect(node, OTHER, T),
        "Accept: web -> node {OTHER}"
    );
    assert!(
        ops.tcp_connect(node, METRICS, T),
        "Accept: ops -> node metrics"
    );
    assert!(
        !ops.tcp_connect(node, OTHER, T),
        "Accept: ops -> node {OTHER} (egress)"
    );
    assert!(
        !locked.tcp_connect(node, METRICS, T),
        "Accept: locked -> node (egress deny-all)"
    );
    assert!(
        !stray.tcp_connect(node, METRICS, T),
        "Accept: an unknown cali* interface -> node is dropped"
    );
    assert!(
        web.tcp_connect(ip(OUTSIDE), 80, T),
        "Accept: web -> outside"
    );
    assert!(
        !ops.tcp_connect(ip(OUTSIDE), 80, T),
        "Accept: ops -> outside (egress)"
    );
    assert!(
        web.tcp_connect(ip("10.0.0.2"), 80, T),
        "Accept: web -> ops pod"
    );

    // Return: within our table the same as Accept (the host's other rules,
    // none here, decide).
    nl.apply(&ret).unwrap();
    assert!(
        web.tcp_connect(node, METRICS, T),
        "Return: web -> node metrics"
    );
    assert!(
        !locked.tcp_connect(node, METRICS, T),
        "Return: locked -> node"
    );
    assert!(
        !stray.tcp_connect(node, METRICS, T),
        "Return: stray -> node"
    );

    // Back to Drop: the table, not a leftover, decides.
    nl.apply(&drop).unwrap();
    assert!(
        !web.tcp_connect(node, METRICS, T),
        "Drop again: web -> node"
    );
}
