//! The agent attaches its pods through calinet-attach, dual stack: with an
//! IPv4 and an IPv6 pool, a pod on the node gets one address of each, both
//! plumbed into its namespace, both host routes, and a WorkloadEndpoint
//! listing both. A pod whose sandbox does not exist gets nothing (and does
//! not stop the others). A pod that is deleted is detached: interface
//! removed, addresses released. Root: the agent runs in a lab node namespace.

use std::time::Duration;

use calinet_agent::agent::{RunOptions, run};
use calinet_agent::datastore::{self, read_view};
use calinet_agent::resources::parse_documents;
use calinet_agent::wireguard::WgOptions;
use calinet_route::Netns;
use testlab::Lab;
use testlab::ipjson::routes_to;

fn apply(store: &datastore::DynStore, yaml: &str) {
    let docs = parse_documents("test.yaml", yaml).unwrap();
    datastore::apply(store.as_ref(), &docs).unwrap();
}

/// Runs the agent in `node` until it reconciled `n` times.
fn run_agent(node: &testlab::Node, store: &datastore::DynStore, dir: &std::path::Path, n: u64) {
    let opts = RunOptions {
        node: node.name.clone(),
        uplink: Some("eth0".into()),
        metrics: None,
        health: None,
        poll: Duration::from_millis(100),
        resync: Duration::from_secs(60),
        max_reconciles: Some(n),
        wireguard: WgOptions {
            ifname: "wg-attach-test".into(),
            key_file: dir.join("wg.key"),
        },
        bgp_dir: dir.join("bird"),
        bgp_secrets: None,
    };
    let store = store.clone();
    Netns::open(node.path())
        .unwrap()
        .run(move || run(store, opts))
        .unwrap()
        .unwrap();
}

#[test]
fn pods_get_ipv4_and_ipv6_through_the_attach_core_and_are_detached_when_gone() {
    testlab::require!(testlab::Feature::Nftables);
    let lab = Lab::new("agent_attach_dual_stack").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let node = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let pod_ns = lab.pod("p1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = datastore::open(&dir.path().join("ds.db"), None).unwrap();
    let pod = |ns: &testlab::Netns| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\n  \
             annotations:\n    calinet.io/netns: {}\nspec:\n  nodeName: {}\n",
            ns.path().display(),
            node.name
        )
    };
    apply(
        &store,
        &format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: v4}}\n\
             spec: {{cidr: 172.16.0.0/16, blockSize: 26}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: v6}}\n\
             spec: {{cidr: 'fd00:10:244::/112', blockSize: 122}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {}}}\n\
             spec: {{bgp: {{ipv4Address: 198.51.100.10/24}}}}\n---\n{}---\n\
             apiVersion: v1\nkind: Pod\nmetadata:\n  name: ghost\n  namespace: default\n  \
             annotations:\n    calinet.io/netns: /run/netns/{}-no-such-netns\n\
             spec:\n  nodeName: {}\n",
            node.name,
            pod(&pod_ns),
            lab.prefix(),
            node.name
        ),
    );
    run_agent(&node, &store, dir.path(), 2);

    let view = read_view(store.as_ref()).unwrap();
    assert_eq!(view.weps.len(), 1, "{:?}", view.weps.keys());
    let (wep, _) = view.weps.values().next().unwrap();
    let nets = &wep.spec.ip_networks;
    assert_eq!(nets.len(), 2, "{nets:?}");
    let (v4, v6) = (nets[0].addr(), nets[1].addr());
    assert!(v4.is_ipv4() && v6.is_ipv6(), "{nets:?}");
    assert!(
        "172.16.0.0/16"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&v4)
    );
    assert!(
        "fd00:10:244::/112"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&v6)
    );
    let ifname = wep.spec.interface_name.clone();
    let mut in_pod: Vec<String> = pod_ns
        .addrs()
        .unwrap()
        .into_iter()
        .filter(|a| a.ifname == "eth0" && a.scope.as_deref() != Some("link"))
        .map(|a| a.local)
        .collect();
    in_pod.sort();
    assert_eq!(in_pod, [v4.to_string(), v6.to_string()]);
    let r4 = routes_to(&node.routes().unwrap(), &format!("{v4}/32"))
        .iter()
        .map(|r| r.dev.clone())
        .collect::<Vec<_>>();
    assert_eq!(r4, [Some(ifname.clone())]);
    let routes6 = node.routes6().unwrap();
    let r6 = routes_to(&routes6, &format!("{v6}/128"));
    assert_eq!(r6.len(), 1, "{routes6:#?}");
    assert_eq!(r6[0].protocol.as_deref(), Some("80"), "the agent owns it");
    assert_eq!(
        calinet_agent::show::ipam_check(&view).1,
        0,
        "ipam check clean"
    );

    // The pod goes: its interface and addresses go with it.
    let key = format!("{}default/web", calinet_agent::resources::keys::PODS);
    datastore::delete_if_present(store.as_ref(), &key).unwrap();
    run_agent(&node, &store, dir.path(), 1);
    let view = read_view(store.as_ref()).unwrap();
    assert!(view.weps.is_empty(), "{:?}", view.weps.keys());
    assert!(node.link(&ifname).unwrap().is_none());
    let used: u32 = view
        .ipam
        .blocks
        .iter()
        .map(|(b, _)| b.allocated_count())
        .sum();
    assert_eq!(used, 0, "both addresses released");
}
