//! Root tests of the route reconciler against the real kernel, in lab namespaces,
//! with `ip -j` (through testlab) as the oracle.

use std::collections::BTreeSet;

use calinet_route::{
    IfName, NetlinkBackend, Netns, Ownership, PendingReason, Reconciler, RouteProtocol, RouteSpec,
};
use testlab::Lab;
use testlab::ipjson::routes_to as routes_to_dst;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn dev(s: &str) -> IfName {
    s.parse().unwrap()
}

async fn reconciler(ns: &testlab::Netns) -> Reconciler<NetlinkBackend> {
    let netns = Netns::open(ns.path()).unwrap();
    let backend = NetlinkBackend::open(&netns).await.unwrap();
    Reconciler::new(backend, Ownership::default().interface_prefix("cali"))
}

/// A node with uplink eth0 on 198.51.100.0/24.
fn node(lab: &Lab) -> testlab::Node {
    let seg = lab.segment("198.51.100.0/24").unwrap();
    lab.node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap()
}

#[test]
fn remote_block_via_node_onlink_and_local_blackhole() {
    testlab::require_root!();
    let lab = Lab::new("remote_block_via_node_onlink_and_local_blackhole").unwrap();
    let n1 = node(&lab);
    rt().block_on(async {
        let mut rec = reconciler(&n1).await;
        let desired = vec![
            RouteSpec::via(
                "172.16.158.0/26".parse().unwrap(),
                "198.51.100.11".parse().unwrap(),
            )
            .device(dev("eth0"))
            .onlink(),
            RouteSpec::blackhole("172.16.101.0/26".parse().unwrap()),
            RouteSpec::blackhole("fd00:10:244:1::/122".parse().unwrap()),
        ];
        let report = rec.reconcile_routes(&desired).await.unwrap();
        assert!(report.converged(), "{:?}", report.failures);
        assert_eq!(report.writes, 3);

        let routes = n1.routes().unwrap();
        let remote = routes_to_dst(&routes, "172.16.158.0/26");
        assert_eq!(remote.len(), 1, "{routes:#?}");
        assert_eq!(remote[0].gateway.as_deref(), Some("198.51.100.11"));
        assert_eq!(remote[0].dev.as_deref(), Some("eth0"));
        assert!(remote[0].has_flag("onlink"));
        assert_eq!(remote[0].protocol.as_deref(), Some("80"));
        let bh = routes_to_dst(&routes, "172.16.101.0/26");
        assert_eq!(bh.len(), 1);
        assert_eq!(bh[0].kind.as_deref(), Some("blackhole"));
        let routes6 = n1.routes6().unwrap();
        let bh6 = routes_to_dst(&routes6, "fd00:10:244:1::/122");
        assert_eq!(bh6.len(), 1, "{routes6:#?}");
        assert_eq!(bh6[0].kind.as_deref(), Some("blackhole"));

        // Converged: the next reconcile dumps and writes nothing.
        let again = rec.reconcile_routes(&desired).await.unwrap();
        assert_eq!(again.writes, 0, "{}", again.plan);
        assert!(again.plan.is_empty());

        // Dropping a route from the desired set deletes exactly it.
        let report = rec.reconcile_routes(&desired[..2]).await.unwrap();
        assert_eq!(report.writes, 1);
        assert!(routes_to_dst(&n1.routes6().unwrap(), "fd00:10:244:1::/122").is_empty());
    });
}

#[test]
fn foreign_route_with_same_destination_is_left_alone() {
    testlab::require_root!();
    let lab = Lab::new("foreign_route_with_same_destination_is_left_alone").unwrap();
    let n1 = node(&lab);
    // BIRD's route to the same block, and an unrelated static route.
    n1.ip(&[
        "route",
        "add",
        "blackhole",
        "172.16.5.0/26",
        "proto",
        "bird",
    ])
    .unwrap();
    n1.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "198.51.100.1",
        "proto",
        "static",
    ])
    .unwrap();
    rt().block_on(async {
        let mut rec = reconciler(&n1).await;
        let ours = RouteSpec::via(
            "172.16.5.0/26".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        )
        .device(dev("eth0"))
        .onlink();
        let report = rec
            .reconcile_routes(std::slice::from_ref(&ours))
            .await
            .unwrap();
        assert!(report.converged(), "{:?}", report.failures);
        assert_eq!(report.plan.foreign_conflicts.len(), 1);
        let routes = n1.routes().unwrap();
        let both = routes_to_dst(&routes, "172.16.5.0/26");
        let protos: BTreeSet<_> = both.iter().filter_map(|r| r.protocol.clone()).collect();
        assert_eq!(
            protos,
            BTreeSet::from(["80".to_string(), "bird".to_string()]),
            "{both:#?}"
        );
        assert_eq!(routes_to_dst(&routes, "192.0.2.0/24").len(), 1);

        // Nothing we own is desired any more: ours goes, theirs stays.
        let report = rec.reconcile_routes(&[]).await.unwrap();
        assert_eq!(report.writes, 1);
        let routes = n1.routes().unwrap();
        let left = routes_to_dst(&routes, "172.16.5.0/26");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].protocol.as_deref(), Some("bird"));
        assert_eq!(routes_to_dst(&routes, "192.0.2.0/24").len(), 1);
    });
}

#[test]
fn route_changed_by_hand_is_repaired() {
    testlab::require_root!();
    let lab = Lab::new("route_changed_by_hand_is_repaired").unwrap();
    let n1 = node(&lab);
    rt().block_on(async {
        let mut rec = reconciler(&n1).await;
        let ours = RouteSpec::via(
            "172.16.7.0/26".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        )
        .device(dev("eth0"))
        .onlink()
        .mtu(1450);
        rec.reconcile_routes(std::slice::from_ref(&ours))
            .await
            .unwrap();
        // Same key, same protocol: only the gateway and the MTU change.
        n1.ip(&[
            "route",
            "change",
            "172.16.7.0/26",
            "via",
            "198.51.100.12",
            "dev",
            "eth0",
            "onlink",
            "proto",
            "80",
        ])
        .unwrap();
        let changed = routes_to_dst(&n1.routes().unwrap(), "172.16.7.0/26")[0].clone();
        assert_eq!(changed.gateway.as_deref(), Some("198.51.100.12"));

        let report = rec
            .reconcile_routes(std::slice::from_ref(&ours))
            .await
            .unwrap();
        assert_eq!(report.plan.replacements.len(), 1);
        assert_eq!(report.writes, 1);
        let fixed = routes_to_dst(&n1.routes().unwrap(), "172.16.7.0/26")[0].clone();
        assert_eq!(fixed.gateway.as_deref(), Some("198.51.100.11"));
        assert_eq!(fixed.mtu(), Some(1450));
        assert_eq!(rec.reconcile_routes(&[ours]).await.unwrap().writes, 0);
    });
}

#[test]
fn interface_deleted_and_recreated_gets_its_routes_back() {
    testlab::require_root!();
    let lab = Lab::new("interface_deleted_and_recreated_gets_its_routes_back").unwrap();
    let n1 = node(&lab);
    let pod = lab.pod("p1").unwrap();
    let make_veth = || {
        n1.ip(&[
            "link",
            "add",
            "calitest1",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])
        .unwrap();
        n1.ip(&["link", "set", "calitest1", "up"]).unwrap();
    };
    make_veth();
    rt().block_on(async {
        let mut rec = reconciler(&n1).await;
        let desired = vec![
            RouteSpec::workload("172.16.101.5".parse().unwrap(), dev("calitest1")),
            RouteSpec::blackhole("172.16.101.0/26".parse().unwrap()),
        ];
        assert!(rec.reconcile_routes(&desired).await.unwrap().converged());
        assert_eq!(
            routes_to_dst(&n1.routes().unwrap(), "172.16.101.5").len(),
            1
        );

        n1.ip(&["link", "del", "calitest1"]).unwrap();
        assert!(routes_to_dst(&n1.routes().unwrap(), "172.16.101.5").is_empty());
        let report = rec.reconcile_routes(&desired).await.unwrap();
        assert_eq!(report.pending.len(), 1);
        assert_eq!(report.pending[0].reason, PendingReason::DeviceMissing);
        assert_eq!(report.writes, 0);
        assert!(rec.retry_pending().await.unwrap().is_none());

        // Retried when the interface appears: driven by link notifications.
        let netns = Netns::open(n1.path()).unwrap();
        let mut events = calinet_route::nl::LinkEvents::open(&netns).await.unwrap();
        make_veth();
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
            .await
            .expect("a link event arrives")
            .unwrap();
        match event {
            calinet_route::nl::LinkEvent::Changed(names) => {
                assert!(names.iter().any(|n| n == "calitest1"), "{names:?}")
            }
            other => panic!("{other:?}"),
        }
        let report = rec.retry_pending().await.unwrap().expect("device is back");
        assert!(report.converged());
        assert_eq!(report.writes, 1);
        let back = routes_to_dst(&n1.routes().unwrap(), "172.16.101.5")[0].clone();
        assert_eq!(back.dev.as_deref(), Some("calitest1"));
        assert_eq!(back.scope.as_deref(), Some("link"));

        // Down: the kernel flushes the route and refuses it; it waits as pending.
        n1.ip(&["link", "set", "calitest1", "down"]).unwrap();
        let report = rec.reconcile_routes(&desired).await.unwrap();
        assert_eq!(report.pending[0].reason, PendingReason::DeviceDown);
        n1.ip(&["link", "set", "calitest1", "up"]).unwrap();
        assert!(rec.retry_pending().await.unwrap().unwrap().converged());
        assert_eq!(
            routes_to_dst(&n1.routes().unwrap(), "172.16.101.5").len(),
            1
        );
    });
}

#[test]
fn kernel_rejection_names_request_and_errno() {
    testlab::require_root!();
    let lab = Lab::new("kernel_rejection_names_request_and_errno").unwrap();
    let n1 = node(&lab);
    rt().block_on(async {
        let mut rec = reconciler(&n1).await;
        // Gateway not on any connected subnet and no onlink: ENETUNREACH.
        let bad = RouteSpec::via(
            "172.16.9.0/26".parse().unwrap(),
            "203.0.113.7".parse().unwrap(),
        )
        .device(dev("eth0"));
        let good = RouteSpec::blackhole("172.16.10.0/26".parse().unwrap());
        let report = rec.reconcile_routes(&[bad, good]).await.unwrap();
        assert_eq!(report.failures.len(), 1);
        let err = &report.failures[0];
        assert_eq!(err.errno(), Some(libc::ENETUNREACH), "{err}");
        assert!(
            err.to_string().contains("172.16.9.0/26 via 203.0.113.7"),
            "{err}"
        );
        // The other request of the same batch went through.
        assert_eq!(
            routes_to_dst(&n1.routes().unwrap(), "172.16.10.0/26").len(),
            1
        );
    });
}

#[test]
fn protocol_ownership_in_another_table() {
    testlab::require_root!();
    let lab = Lab::new("protocol_ownership_in_another_table").unwrap();
    let n1 = node(&lab);
    rt().block_on(async {
        let netns = Netns::open(n1.path()).unwrap();
        let backend = NetlinkBackend::open(&netns).await.unwrap();
        let own = Ownership::by_protocol(RouteProtocol(99)).tables([1]);
        let mut rec = Reconciler::new(backend, own);
        let throw = RouteSpec::throw("172.16.158.0/24".parse().unwrap())
            .table(1)
            .protocol(RouteProtocol(99));
        // A main-table route with the same protocol is outside the managed tables.
        n1.ip(&["route", "add", "blackhole", "172.16.1.0/24", "proto", "99"])
            .unwrap();
        let report = rec
            .reconcile_routes(std::slice::from_ref(&throw))
            .await
            .unwrap();
        assert!(report.converged());
        let t1 = n1.route_table("4", "1").unwrap();
        assert_eq!(
            routes_to_dst(&t1, "172.16.158.0/24")[0].kind.as_deref(),
            Some("throw")
        );
        assert_eq!(
            routes_to_dst(&n1.routes().unwrap(), "172.16.1.0/24").len(),
            1
        );
        assert_eq!(rec.reconcile_routes(&[throw]).await.unwrap().writes, 0);
    });
}

#[test]
fn ipv6_routes_converge_with_kernel_normalisation() {
    testlab::require_root!();
    let lab = Lab::new("ipv6_routes_converge_with_kernel_normalisation").unwrap();
    let n1 = node(&lab);
    rt().block_on(async {
        let mut rec = reconciler(&n1).await;
        let desired = vec![
            // IPv6 VXLAN-style remote block: via the peer's address, onlink.
            RouteSpec::via(
                "fd00:10:244:2::/122".parse().unwrap(),
                "fd00:99::11".parse().unwrap(),
            )
            .device(dev("eth0"))
            .onlink()
            .mtu(1430),
            RouteSpec::blackhole("fd00:10:244:1::/122".parse().unwrap()).metric(100),
            RouteSpec::unreachable("fd00:10:244:3::/122".parse().unwrap()),
        ];
        let r = rec.reconcile_routes(&desired).await.unwrap();
        assert!(r.converged(), "{:?}", r.failures);
        assert_eq!(r.writes, 3);
        let routes6 = n1.routes6().unwrap();
        let remote = routes_to_dst(&routes6, "fd00:10:244:2::/122");
        assert_eq!(remote.len(), 1, "{routes6:#?}");
        assert_eq!(remote[0].gateway.as_deref(), Some("fd00:99::11"));
        assert!(remote[0].has_flag("onlink"), "{:?}", remote[0]);
        assert_eq!(remote[0].mtu(), Some(1430));
        assert_eq!(
            routes_to_dst(&routes6, "fd00:10:244:1::/122")[0].metric,
            Some(100)
        );
        let again = rec.reconcile_routes(&desired).await.unwrap();
        assert_eq!(again.writes, 0, "{}", again.plan);
    });
}

#[test]
fn dumps_stay_consistent_under_concurrent_churn() {
    testlab::require_root!();
    let lab = Lab::new("dumps_stay_consistent_under_concurrent_churn").unwrap();
    let n1 = node(&lab);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Another process keeps adding and deleting links and foreign routes while we
    // dump and reconcile.
    let churn = {
        let ns = n1.name().to_string();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("churn{}", i % 4);
                let _ = testlab::cmd::run(
                    "ip",
                    &[
                        "-n",
                        &ns,
                        "link",
                        "add",
                        &name,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        &format!("{name}p"),
                    ],
                );
                let _ = testlab::cmd::run(
                    "ip",
                    &[
                        "-n",
                        &ns,
                        "route",
                        "add",
                        "blackhole",
                        &format!("192.0.2.{}/32", i % 200),
                        "proto",
                        "static",
                    ],
                );
                let _ = testlab::cmd::run("ip", &["-n", &ns, "link", "del", &name]);
                let _ = testlab::cmd::run(
                    "ip",
                    &[
                        "-n",
                        &ns,
                        "route",
                        "del",
                        "blackhole",
                        &format!("192.0.2.{}/32", i % 200),
                        "proto",
                        "static",
                    ],
                );
                i += 1;
            }
        })
    };
    rt().block_on(async {
        let mut rec = reconciler(&n1).await;
        let desired: Vec<RouteSpec> = (0..2000u32)
            .map(|i| {
                RouteSpec::blackhole(
                    format!("172.16.{}.{}/32", i / 256, i % 256)
                        .parse()
                        .unwrap(),
                )
            })
            .collect();
        assert!(rec.reconcile_routes(&desired).await.unwrap().converged());
        for _ in 0..30 {
            // Each snapshot must be complete: a torn dump would plan spurious adds.
            let r = rec.reconcile_routes(&desired).await.unwrap();
            assert_eq!(r.writes, 0, "{}", r.plan);
        }
        let stats = rec.backend().stats();
        eprintln!(
            "dumps {} redumps {} under churn",
            stats.dumps, stats.redumps
        );
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().unwrap();
}
