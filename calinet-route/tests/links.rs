//! Root tests of tunnel links and the VXLAN overlay (neighbour + FDB reconcile),
//! in lab namespaces, with `ip -j`, `bridge -j` and `tcpdump` as the oracle.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use calinet_route::link::{LinkReport, reconcile_link};
use calinet_route::nl::Conn;
use calinet_route::workload::setup_workload;
use calinet_route::{
    CALICO_VNI, FdbSpec, IfName, LinkSpec, MacAddr, NeighbourSpec, NetlinkBackend, Netns,
    Ownership, Reconciler, RouteProtocol, RouteSpec, VxlanSpec, WorkloadSpec,
};
use testlab::ipjson::routes_to;
use testlab::{Feature, Lab};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn vxlan_spec(local: &str, mac: &str, tunnel_ip: &str) -> LinkSpec {
    let mut v = VxlanSpec::new(CALICO_VNI);
    v.parent = Some("eth0".parse().unwrap());
    v.local = Some(local.parse().unwrap());
    LinkSpec::vxlan("vxlan.calico".parse().unwrap(), v)
        .mtu(1450)
        .mac(mac.parse().unwrap())
        .address(format!("{tunnel_ip}/32").parse().unwrap())
}

#[test]
fn vxlan_link_is_created_reconciled_and_recreated_on_mismatch() {
    testlab::require!(Feature::Vxlan);
    let lab = Lab::new("vxlan_link_is_created_reconciled_and_recreated_on_mismatch").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n1 = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let spec = vxlan_spec("198.51.100.10", "66:11:22:33:44:55", "172.16.101.0");
    rt().block_on(async {
        let mut conn = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        let r = reconcile_link(&mut conn, &spec).await.unwrap();
        assert!(r.created, "{r:?}");
        let link = n1.link("vxlan.calico").unwrap().expect("created");
        assert!(link.is_up());
        assert_eq!(link.mtu, Some(1450));
        assert_eq!(link.address.as_deref(), Some("66:11:22:33:44:55"));
        let info = link.linkinfo.as_ref().unwrap();
        assert_eq!(info.info_kind.as_deref(), Some("vxlan"));
        let data = info.info_data.as_ref().unwrap();
        assert_eq!(data["id"], 4096);
        assert_eq!(data["port"], 4789);
        assert_eq!(data["local"], "198.51.100.10");
        assert_eq!(data["learning"], false);
        assert_eq!(data["link"], "eth0");
        assert!(
            n1.addrs()
                .unwrap()
                .iter()
                .any(|a| a.ifname == "vxlan.calico"
                    && a.local == "172.16.101.0"
                    && a.prefixlen == 32)
        );

        // Converged: nothing to do, nothing written.
        let before = conn.stats().writes;
        let r = reconcile_link(&mut conn, &spec).await.unwrap();
        assert!(r.unchanged(), "{r:?}");
        assert_eq!(conn.stats().writes, before);

        // MTU, admin state and a stray address changed by hand: repaired in place.
        n1.ip(&["link", "set", "vxlan.calico", "mtu", "1400", "down"])
            .unwrap();
        n1.ip(&["addr", "add", "192.0.2.99/32", "dev", "vxlan.calico"])
            .unwrap();
        let r = reconcile_link(&mut conn, &spec).await.unwrap();
        assert!(!r.created && r.recreated.is_none());
        assert_eq!(r.changed.len(), 2, "{r:?}");
        assert_eq!(r.addresses_removed, vec!["192.0.2.99/32".parse().unwrap()]);
        let link = n1.link("vxlan.calico").unwrap().unwrap();
        assert_eq!(link.mtu, Some(1450));
        assert!(link.is_up());

        // A kind parameter differs: the device is recreated with the new one.
        let mut other = spec.clone();
        if let calinet_route::LinkKind::Vxlan(v) = &mut other.kind {
            v.vni = 4097;
        }
        let r: LinkReport = reconcile_link(&mut conn, &other).await.unwrap();
        assert!(
            r.recreated.as_deref().unwrap_or("").contains("vni"),
            "{r:?}"
        );
        let link = n1.link("vxlan.calico").unwrap().unwrap();
        assert_eq!(link.linkinfo.unwrap().info_data.unwrap()["id"], 4097);
        assert_eq!(link.address.as_deref(), Some("66:11:22:33:44:55"));

        // A spec that cannot be created (missing parent) leaves the device alone.
        let mut broken = other.clone();
        if let calinet_route::LinkKind::Vxlan(v) = &mut broken.kind {
            v.vni = 5000;
            v.parent = Some("eth9".parse().unwrap());
        }
        let err = reconcile_link(&mut conn, &broken).await.unwrap_err();
        assert!(err.to_string().contains("eth9"), "{err}");
        let link = n1.link("vxlan.calico").unwrap().expect("still there");
        assert_eq!(link.linkinfo.unwrap().info_data.unwrap()["id"], 4097);
    });
}

#[test]
fn ipip_tunl0_is_reconciled() {
    // This kernel has no IPIP: the test must show as SKIPPED, never pass.
    testlab::require!(Feature::Ipip);
    let lab = Lab::new("ipip_tunl0_is_reconciled").unwrap();
    let n1 = lab.netns("n1").unwrap();
    let spec = LinkSpec::ipip_tunl0()
        .mtu(1480)
        .address("172.16.101.0/32".parse().unwrap());
    rt().block_on(async {
        let mut conn = Conn::open(&Netns::open(n1.path()).unwrap()).await.unwrap();
        reconcile_link(&mut conn, &spec).await.unwrap();
        let link = n1.link("tunl0").unwrap().expect("tunl0");
        assert_eq!(link.mtu, Some(1480));
        assert!(link.is_up());
        assert!(reconcile_link(&mut conn, &spec).await.unwrap().unchanged());
    });
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

#[test]
fn vxlan_overlay_carries_pod_traffic_between_two_nodes() {
    testlab::require!(Feature::Vxlan, Feature::Tcpdump);
    let lab = Lab::new("vxlan_overlay_carries_pod_traffic_between_two_nodes").unwrap();
    // Two subnets with the lab's router between them: the overlay is needed.
    let seg_a = lab.segment("198.51.100.0/24").unwrap();
    let seg_b = lab.segment("203.0.113.0/24").unwrap();
    let n1 = lab
        .node("n1", &seg_a, "198.51.100.10".parse().unwrap())
        .unwrap();
    let n2 = lab
        .node("n2", &seg_b, "203.0.113.10".parse().unwrap())
        .unwrap();
    let p1 = lab.pod("p1").unwrap();
    let p2 = lab.pod("p2").unwrap();

    struct Side<'a> {
        node: &'a testlab::Node,
        pod: &'a testlab::Netns,
        ip: &'static str,
        block: &'static str,
        tunnel: &'static str,
        vtep_mac: &'static str,
    }
    let sides = [
        Side {
            node: &n1,
            pod: &p1,
            ip: "172.16.101.1",
            block: "172.16.101.0/26",
            tunnel: "172.16.101.0",
            vtep_mac: "66:00:00:00:00:01",
        },
        Side {
            node: &n2,
            pod: &p2,
            ip: "172.16.158.1",
            block: "172.16.158.0/26",
            tunnel: "172.16.158.0",
            vtep_mac: "66:00:00:00:00:02",
        },
    ];
    let vx: IfName = "vxlan.calico".parse().unwrap();
    rt().block_on(async {
        for (i, me) in sides.iter().enumerate() {
            let peer = &sides[1 - i];
            let netns = Netns::open(me.node.path()).unwrap();
            let mut conn = Conn::open(&netns).await.unwrap();
            let node_ip = me.node.address().to_string();
            reconcile_link(&mut conn, &vxlan_spec(&node_ip, me.vtep_mac, me.tunnel))
                .await
                .unwrap();
            let host_if = IfName::calico_workload("default", &format!("pod{i}"));
            let w = WorkloadSpec::new(host_if.clone(), me.pod.path(), 1410)
                .ipv4(me.ip.parse().unwrap());
            setup_workload(&mut conn, &w, RouteProtocol::CALICO)
                .await
                .unwrap();

            let mut rec = Reconciler::new(
                NetlinkBackend::open(&netns).await.unwrap(),
                Ownership::default().interface_prefix("cali"),
            );
            let peer_tunnel: IpAddr = peer.tunnel.parse().unwrap();
            let mut desired = w.host_routes(RouteProtocol::CALICO);
            desired.push(RouteSpec::blackhole(me.block.parse().unwrap()));
            desired.push(
                RouteSpec::via(peer.block.parse().unwrap(), peer_tunnel)
                    .device(vx.clone())
                    .onlink(),
            );
            let r = rec.reconcile_routes(&desired).await.unwrap();
            assert!(r.converged(), "{:?}", r.failures);
            let neigh = [NeighbourSpec::new(
                vx.clone(),
                peer_tunnel,
                mac(peer.vtep_mac),
            )];
            let fdb = [FdbSpec::new(
                vx.clone(),
                mac(peer.vtep_mac),
                peer.node.address().into(),
            )];
            let devices = BTreeSet::from([vx.clone()]);
            let (nr, fr) = rec
                .reconcile_neighbours(&neigh, &fdb, &devices)
                .await
                .unwrap();
            assert!(
                nr.converged() && fr.converged(),
                "{:?} {:?}",
                nr.failures,
                fr.failures
            );
            assert_eq!((nr.writes, fr.writes), (1, 1));

            // Converged: the whole reconcile writes nothing.
            let again = rec.reconcile_routes(&desired).await.unwrap();
            let (n2r, f2r) = rec
                .reconcile_neighbours(&neigh, &fdb, &devices)
                .await
                .unwrap();
            assert_eq!(
                (again.writes, n2r.writes, f2r.writes),
                (0, 0, 0),
                "{:?} {:?} {:?}",
                again.plan,
                n2r.plan,
                f2r.plan
            );

            // Oracle: ip -j neigh, bridge -j fdb, ip -j route.
            let neighbours = me.node.neighbours().unwrap();
            let n = neighbours
                .iter()
                .find(|n| n.dst == peer.tunnel)
                .expect("neighbour entry");
            assert_eq!(n.dev.as_deref(), Some("vxlan.calico"));
            assert_eq!(n.lladdr.as_deref(), Some(peer.vtep_mac));
            assert!(n.is_permanent());
            let fdb_entries = me.node.fdb().unwrap();
            let f = fdb_entries
                .iter()
                .find(|f| f.mac == peer.vtep_mac)
                .expect("fdb entry");
            assert_eq!(
                f.dst.as_deref(),
                Some(peer.node.address().to_string().as_str())
            );
            assert!(f.flags.iter().any(|x| x == "self"), "{f:?}");
            assert_eq!(f.state.as_deref(), Some("permanent"));
            let routes = me.node.routes().unwrap();
            let r = routes_to(&routes, peer.block);
            assert_eq!(r[0].gateway.as_deref(), Some(peer.tunnel));
            assert_eq!(r[0].dev.as_deref(), Some("vxlan.calico"));
            assert!(r[0].has_flag("onlink"));
        }

        let cap = n1.capture("eth0", "udp port 4789").unwrap();
        assert!(p1.ping("172.16.158.1".parse().unwrap(), Duration::from_secs(5)));
        let packets = cap.stop().unwrap();
        assert!(
            packets.any(&["VXLAN", "vni 4096"]),
            "no VXLAN VNI 4096 on the underlay:\n{packets}"
        );
        assert!(packets.mentions("172.16.101.1 > 172.16.158.1"), "{packets}");
    });
}
