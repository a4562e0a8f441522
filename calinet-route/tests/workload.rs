//! Root tests of workload plumbing in lab namespaces, checked with `ip -j` and
//! `/proc/sys` (through testlab) and with real traffic.

use std::time::Duration;

use calinet_route::nl::Conn;
use calinet_route::workload::{check_workload, setup_workload, teardown_workload};
use calinet_route::{IfName, Netns, RouteProtocol, WorkloadSpec};
use testlab::Lab;
use testlab::ipjson::routes_to;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn spec(pod: &testlab::Netns, ns: &str, name: &str, v4: &str, v6: &str) -> WorkloadSpec {
    WorkloadSpec::new(IfName::calico_workload(ns, name), pod.path(), 1440)
        .ipv4(v4.parse().unwrap())
        .ipv6(v6.parse().unwrap())
}

#[test]
fn two_pods_on_one_node_ping_through_proxy_arp() {
    testlab::require_root!();
    let lab = Lab::new("two_pods_on_one_node_ping_through_proxy_arp").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n1 = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    n1.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    let p1 = lab.pod("p1").unwrap();
    let p2 = lab.pod("p2").unwrap();
    let s1 = spec(&p1, "default", "pod-a", "172.16.101.1", "fd00:10:244::1");
    let s2 = spec(&p2, "default", "pod-b", "172.16.101.2", "fd00:10:244::2");
    rt().block_on(async {
        let mut host = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        let r1 = setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        let r2 = setup_workload(&mut host, &s2, RouteProtocol::CALICO)
            .await
            .unwrap();
        assert!(r1.changed && r2.changed);
        assert!(r1.host_link_local.is_some());

        // The oracle: ip -j and /proc/sys in the node and the pod.
        let h1 = s1.host_ifname.as_str();
        let link = n1.link(h1).unwrap().expect("host veth exists");
        assert_eq!(link.address.as_deref(), Some("ee:ee:ee:ee:ee:ee"));
        assert_eq!(link.mtu, Some(1440));
        assert_eq!(
            link.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()),
            Some("veth")
        );
        assert!(link.is_up());
        for (key, want) in [
            (format!("net.ipv4.conf.{h1}.proxy_arp"), "1"),
            (format!("net.ipv4.neigh.{h1}.proxy_delay"), "0"),
            (format!("net.ipv4.conf.{h1}.forwarding"), "1"),
            (format!("net.ipv4.conf.{h1}.route_localnet"), "1"),
            (format!("net.ipv6.conf.{h1}.proxy_ndp"), "1"),
            (format!("net.ipv6.conf.{h1}.forwarding"), "1"),
            (format!("net.ipv6.conf.{h1}.accept_dad"), "0"),
            (format!("net.ipv6.conf.{h1}.accept_ra"), "0"),
        ] {
            assert_eq!(n1.sysctl_get(&key).unwrap().trim(), want, "{key}");
        }
        let host_routes = n1.routes().unwrap();
        let hr = routes_to(&host_routes, "172.16.101.1/32");
        assert_eq!(hr.len(), 1, "{host_routes:#?}");
        assert_eq!(hr[0].dev.as_deref(), Some(h1));
        assert_eq!(hr[0].scope.as_deref(), Some("link"));
        assert_eq!(hr[0].protocol.as_deref(), Some("80"));
        assert_eq!(
            routes_to(&n1.routes6().unwrap(), "fd00:10:244::1/128").len(),
            1
        );

        let pod_addrs = p1.addrs().unwrap();
        assert!(
            pod_addrs
                .iter()
                .any(|a| a.ifname == "eth0" && a.local == "172.16.101.1" && a.prefixlen == 32)
        );
        assert!(
            pod_addrs
                .iter()
                .any(|a| a.ifname == "eth0" && a.local == "fd00:10:244::1" && a.prefixlen == 128)
        );
        let pod_routes = p1.routes().unwrap();
        let gw = routes_to(&pod_routes, "169.254.1.1/32");
        assert_eq!(gw.len(), 1);
        assert_eq!(gw[0].scope.as_deref(), Some("link"));
        let def = routes_to(&pod_routes, "default");
        assert_eq!(def[0].gateway.as_deref(), Some("169.254.1.1"));
        assert_eq!(def[0].dev.as_deref(), Some("eth0"));
        let def6 = p1.routes6().unwrap();
        let def6 = routes_to(&def6, "default");
        assert_eq!(
            def6[0].gateway.as_deref(),
            Some(r1.host_link_local.unwrap().to_string().as_str())
        );

        // Traffic: pod to pod through the host, ARP answered by proxy ARP.
        assert!(p1.ping("172.16.101.2".parse().unwrap(), Duration::from_secs(3)));
        assert!(p2.ping("172.16.101.1".parse().unwrap(), Duration::from_secs(3)));
        assert!(p1.ping("fd00:10:244::2".parse().unwrap(), Duration::from_secs(3)));
        let neigh = p1.neighbours().unwrap();
        let gw_neigh = neigh
            .iter()
            .find(|n| n.dst == "169.254.1.1")
            .expect("ARP for the gateway");
        assert_eq!(gw_neigh.lladdr.as_deref(), Some("ee:ee:ee:ee:ee:ee"));
    });
}

#[test]
fn setup_is_idempotent_check_reports_and_repairs() {
    testlab::require_root!();
    let lab = Lab::new("setup_is_idempotent_check_reports_and_repairs").unwrap();
    let n1 = lab.netns("n1").unwrap();
    let p1 = lab.pod("p1").unwrap();
    let s1 = spec(&p1, "kube-system", "dns", "172.16.101.7", "fd00:10:244::7");
    rt().block_on(async {
        let mut host = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        let first = setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        // The reported pod MAC is the one `ip` sees on the pod's eth0.
        let pod_mac = p1.link("eth0").unwrap().unwrap().address;
        assert!(pod_mac.is_some());
        assert_eq!(first.pod_mac.map(|m| m.to_string()), pod_mac);
        assert_eq!(
            check_workload(&mut host, &s1, RouteProtocol::CALICO)
                .await
                .unwrap(),
            vec![]
        );
        let before = host.stats().writes;
        let again = setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        assert!(!again.changed);
        assert_eq!(again.pod_mac, first.pod_mac);
        assert_eq!(
            host.stats().writes,
            before,
            "a converged setup writes nothing"
        );

        // Break three things by hand; check names each one.
        let h = s1.host_ifname.as_str();
        n1.ip(&["link", "set", h, "mtu", "1300"]).unwrap();
        n1.sysctl(&format!("net.ipv4.conf.{h}.proxy_arp"), "0")
            .unwrap();
        p1.ip(&["route", "del", "default"]).unwrap();
        let diffs = check_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        let items: Vec<&str> = diffs.iter().map(|d| d.item.as_str()).collect();
        assert!(items.iter().any(|i| i.ends_with("mtu")), "{diffs:#?}");
        assert!(items.iter().any(|i| i.contains("proxy_arp")), "{diffs:#?}");
        assert!(items.contains(&"pod route 0.0.0.0/0"), "{diffs:#?}");

        // Setup rebuilds and the result checks clean again.
        let fixed = setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        assert!(fixed.changed);
        assert_eq!(fixed.rebuilt_because, diffs);
        assert_eq!(
            check_workload(&mut host, &s1, RouteProtocol::CALICO)
                .await
                .unwrap(),
            vec![]
        );
        assert_eq!(routes_to(&p1.routes().unwrap(), "default").len(), 1);
    });
}

#[test]
fn an_mtu_change_is_made_in_place_and_the_pod_keeps_its_mtu() {
    testlab::require_root!();
    let lab = Lab::new("an_mtu_change_is_made_in_place_and_the_pod_keeps_its_mtu").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n1 = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let p1 = lab.pod("p1").unwrap();
    let p2 = lab.pod("p2").unwrap();
    let s1 = spec(&p1, "default", "mtu", "172.16.101.5", "fd00:10:244::5");
    let other = spec(&p2, "default", "other", "172.16.101.6", "fd00:10:244::6");
    let h = s1.host_ifname.to_string();
    let mut s2 = s1.clone();
    s2.mtu = 1410;
    rt().block_on(async {
        let mut host = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        for s in [&s1, &other] {
            setup_workload(&mut host, s, RouteProtocol::CALICO)
                .await
                .unwrap();
        }
        let host_before = n1.link(&h).unwrap().unwrap();
        let pod_before = p1.link("eth0").unwrap().unwrap();
        assert_eq!(host_before.mtu, Some(1440));

        let r = setup_workload(&mut host, &s2, RouteProtocol::CALICO)
            .await
            .unwrap();
        assert!(r.changed);
        assert_eq!(r.rebuilt_because, vec![], "an MTU change is no rebuild");
        assert_eq!(r.changed_in_place.len(), 1, "{r:#?}");
        assert_eq!(r.changed_in_place[0].item, format!("host link {h} mtu"));
        assert_eq!(r.pod_mtu_kept, Some(1440));
        let host_after = n1.link(&h).unwrap().unwrap();
        let pod_after = p1.link("eth0").unwrap().unwrap();
        assert_eq!(host_after.mtu, Some(1410));
        assert_eq!(host_after.ifindex, host_before.ifindex);
        assert_eq!(pod_after.ifindex, pod_before.ifindex);
        assert_eq!(pod_after.mtu, Some(1440), "the pod keeps its MTU");

        // The check still names the pod's MTU; setup leaves it and writes nothing.
        let diffs = check_workload(&mut host, &s2, RouteProtocol::CALICO)
            .await
            .unwrap();
        let items: Vec<&str> = diffs.iter().map(|d| d.item.as_str()).collect();
        assert_eq!(items, vec!["pod link eth0 mtu"], "{diffs:#?}");
        let before = host.stats().writes;
        let again = setup_workload(&mut host, &s2, RouteProtocol::CALICO)
            .await
            .unwrap();
        assert!(!again.changed);
        assert_eq!(again.pod_mtu_kept, Some(1440));
        assert_eq!(host.stats().writes, before);
        // Another pod on the node still reaches it through the kept interfaces.
        assert!(p2.ping("172.16.101.5".parse().unwrap(), Duration::from_secs(3)));
    });
}

#[test]
fn teardown_tolerates_missing_interface_and_namespace() {
    testlab::require_root!();
    let lab = Lab::new("teardown_tolerates_missing_interface_and_namespace").unwrap();
    let n1 = lab.netns("n1").unwrap();
    let p1 = lab.pod("p1").unwrap();
    let s1 = spec(&p1, "default", "web", "172.16.101.9", "fd00:10:244::9");
    rt().block_on(async {
        let mut host = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        let eth0: IfName = "eth0".parse().unwrap();
        let r = teardown_workload(&mut host, &s1.host_ifname, Some(&s1.pod_netns), &eth0)
            .await
            .unwrap();
        assert!(r.host_link_deleted);
        assert!(n1.link(s1.host_ifname.as_str()).unwrap().is_none());
        assert!(
            p1.link("eth0").unwrap().is_none(),
            "the peer goes with the host side"
        );
        assert!(routes_to(&n1.routes().unwrap(), "172.16.101.9/32").is_empty());

        // Again: nothing left, no error.
        let r = teardown_workload(&mut host, &s1.host_ifname, Some(&s1.pod_netns), &eth0)
            .await
            .unwrap();
        assert!(!r.host_link_deleted && !r.pod_link_deleted && !r.netns_missing);

        // The namespace is gone too.
        setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        testlab::cmd::run("ip", &["netns", "del", p1.name()]).unwrap();
        let r = teardown_workload(&mut host, &s1.host_ifname, Some(&s1.pod_netns), &eth0)
            .await
            .unwrap();
        assert!(r.netns_missing);
        // The host side is gone: deleted by teardown, or already by the kernel's
        // (asynchronous) cleanup of the pod's namespace.
        assert!(n1.link(s1.host_ifname.as_str()).unwrap().is_none());
    });
}

#[test]
fn failed_setup_leaves_nothing_behind() {
    testlab::require_root!();
    let lab = Lab::new("failed_setup_leaves_nothing_behind").unwrap();
    let n1 = lab.netns("n1").unwrap();
    let p1 = lab.pod("p1").unwrap();
    // IPv6 disabled in the pod: the /128 cannot be added after the veth exists.
    p1.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .unwrap();
    p1.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    let s1 = spec(&p1, "default", "v6pod", "172.16.101.11", "fd00:10:244::11");
    rt().block_on(async {
        let mut host = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        let err = setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("fd00:10:244::11/128"), "{text}");
        assert!(err.errno().is_some(), "{text}");
        assert!(
            n1.link(s1.host_ifname.as_str()).unwrap().is_none(),
            "host veth left behind"
        );
        assert!(p1.link("eth0").unwrap().is_none(), "pod veth left behind");
        assert!(routes_to(&n1.routes().unwrap(), "172.16.101.11/32").is_empty());
    });
}

/// What `setup_workload` must leave alone: an interface named like the pod side
/// that it did not create.
fn assert_refused_and_untouched(case: &str, make: &[&[&str]], want_kind: &str) {
    let lab = Lab::new(case).unwrap();
    let n1 = lab.netns("n1").unwrap();
    let p1 = lab.pod("p1").unwrap();
    for cmd in make {
        p1.run(cmd).unwrap();
    }
    p1.run(&["ip", "addr", "add", "192.0.2.7/24", "dev", "eth0"])
        .unwrap();
    let before = p1.link("eth0").unwrap().expect("eth0 made by hand");
    let s1 = spec(
        &p1,
        "default",
        "foreign",
        "172.16.101.21",
        "fd00:10:244::21",
    );
    rt().block_on(async {
        let mut host = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        let err = setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap_err();
        assert!(
            matches!(err, calinet_route::Error::ForeignInterface { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(&p1.path().display().to_string()), "{text}");
        assert!(text.contains("eth0"), "{text}");
        assert!(text.contains(want_kind), "{text}");
    });
    let after = p1.link("eth0").unwrap().expect("eth0 still there");
    assert_eq!(after.ifindex, before.ifindex, "eth0 was recreated");
    assert_eq!(
        after.linkinfo.as_ref().and_then(|i| i.info_kind.as_deref()),
        Some(want_kind)
    );
    let addrs = p1
        .run(&["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(addrs.contains("192.0.2.7/24"), "{addrs}");
    assert!(
        n1.link(s1.host_ifname.as_str()).unwrap().is_none(),
        "host veth created anyway"
    );
}

#[test]
fn setup_refuses_to_delete_a_foreign_bridge() {
    testlab::require_root!();
    assert_refused_and_untouched(
        "setup_refuses_to_delete_a_foreign_bridge",
        &[&["ip", "link", "add", "eth0", "type", "bridge"]],
        "bridge",
    );
}

#[test]
fn setup_refuses_to_delete_a_veth_pair_inside_the_pod() {
    testlab::require_root!();
    assert_refused_and_untouched(
        "setup_refuses_to_delete_a_veth_pair_inside_the_pod",
        &[&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
        ]],
        "veth",
    );
}

#[test]
fn setup_replaces_a_leftover_veth_leading_out_of_the_pod() {
    testlab::require_root!();
    let lab = Lab::new("setup_replaces_a_leftover_veth_leading_out").unwrap();
    let n1 = lab.netns("n1").unwrap();
    let p1 = lab.pod("p1").unwrap();
    // A veth from the node into the pod under another host-side name, as an
    // earlier ADD with a different host name would have left it.
    let pod_ns = p1.path().display().to_string();
    n1.run(&[
        "ip", "link", "add", "oldcali0", "type", "veth", "peer", "name", "eth0", "netns", &pod_ns,
    ])
    .unwrap();
    let before = p1.link("eth0").unwrap().expect("leftover eth0");
    let s1 = spec(
        &p1,
        "default",
        "leftover",
        "172.16.101.22",
        "fd00:10:244::22",
    );
    rt().block_on(async {
        let mut host = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        let r = setup_workload(&mut host, &s1, RouteProtocol::CALICO)
            .await
            .unwrap();
        assert!(r.changed);
        assert!(
            check_workload(&mut host, &s1, RouteProtocol::CALICO)
                .await
                .unwrap()
                .is_empty()
        );
    });
    let after = p1.link("eth0").unwrap().expect("new eth0");
    assert_ne!(after.ifindex, before.ifindex, "leftover not replaced");
    assert!(
        n1.link("oldcali0").unwrap().is_none(),
        "old peer left behind"
    );
}
