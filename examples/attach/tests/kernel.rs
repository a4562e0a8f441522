//! Root tests of the attach core with its real edges: calinet-ipam on an
//! in-memory store and the [`KernelPlumber`] in a lab node namespace, pods in
//! their own namespaces. Checked with `ip -j` through testlab.

use calinet_attach::{
    AddressManager, Error, FamilyRequest, IpamAddresses, KernelPlumber, PoolRef, Request, Step,
};
use calinet_ipam::MemStore;
use calinet_route::{IfName, Netns};
use testlab::Lab;
use testlab::ipjson::routes_to;

/// A plumber whose host namespace is `node`.
fn plumber_in(node: &testlab::Netns) -> KernelPlumber {
    Netns::open(node.path())
        .unwrap()
        .run(KernelPlumber::new)
        .unwrap()
        .unwrap()
}

fn request(pod: &testlab::Netns, name: &str) -> Request {
    Request::new(
        format!("k8s-pod-network.{name}").parse().unwrap(),
        "node-1".parse().unwrap(),
        IfName::calico_workload("default", name),
        Some(pod.path()),
        1400,
    )
    .pod("default", name)
    .ipv4(Some(FamilyRequest::from_pools(
        vec![PoolRef::Cidr("172.16.0.0/24".parse().unwrap())],
        Some(28),
    )))
    .ipv6(Some(FamilyRequest::from_pools(
        vec![PoolRef::Cidr("fd00:10:244::/120".parse().unwrap())],
        Some(124),
    )))
}

fn addrs_of(ns: &testlab::Netns, ifname: &str) -> Vec<String> {
    ns.addrs()
        .unwrap()
        .into_iter()
        .filter(|a| a.ifname == ifname && a.scope.as_deref() != Some("link"))
        .map(|a| format!("{}/{}", a.local, a.prefixlen))
        .collect()
}

#[test]
fn dual_stack_add_retry_and_release_in_namespaces() {
    testlab::require_root!();
    let lab = Lab::new("attach_dual_stack").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let node = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let pod = lab.pod("p1").unwrap();
    let mut ipam = IpamAddresses::new(MemStore::new(), None);
    let mut kernel = plumber_in(&node);
    let req = request(&pod, "web");
    let host_if = req.host_ifname.to_string();

    let a = calinet_attach::add(&mut ipam, &mut kernel, &req).unwrap();
    assert!(a.allocation.fresh && a.plumbed.changed);
    assert!(a.plumbed.writes > 1, "{:?}", a.plumbed);
    let [v4, v6] = [a.allocation.nets[0].addr(), a.allocation.nets[1].addr()];
    assert!(v4.is_ipv4() && v6.is_ipv6(), "{:?}", a.allocation);
    let mut got = addrs_of(&pod, "eth0");
    got.sort();
    assert_eq!(got, [format!("{v4}/32"), format!("{v6}/128")]);
    assert_eq!(
        routes_to(&node.routes().unwrap(), &format!("{v4}/32"))[0]
            .dev
            .as_deref(),
        Some(host_if.as_str())
    );
    assert_eq!(
        routes_to(&node.routes6().unwrap(), &format!("{v6}/128")).len(),
        1
    );
    assert!(a.plumbed.host_link_local.is_some());
    let pod_default6 = pod.routes6().unwrap();
    let d6 = routes_to(&pod_default6, "default");
    assert_eq!(d6.len(), 1, "{pod_default6:#?}");
    assert_eq!(
        d6[0].gateway.as_deref(),
        a.plumbed.host_link_local.map(|l| l.to_string()).as_deref()
    );

    // A retry: the same addresses, nothing written.
    let b = calinet_attach::add(&mut ipam, &mut kernel, &req).unwrap();
    assert_eq!(b.allocation.nets, a.allocation.nets);
    assert!(!b.allocation.fresh && !b.plumbed.changed);
    assert_eq!(b.plumbed.writes, 0, "{:?}", b.plumbed);

    // Release: the veth goes, the addresses are free; again is fine.
    let r = calinet_attach::release(&mut ipam, Some(&mut kernel), &req.endpoint()).unwrap();
    assert!(r.interface_removed);
    assert_eq!(r.addresses.len(), 2);
    assert!(node.link(&host_if).unwrap().is_none());
    assert!(pod.link("eth0").unwrap().is_none());
    assert!(ipam.held(&req.handle).unwrap().is_empty());
    let again = calinet_attach::release(&mut ipam, Some(&mut kernel), &req.endpoint()).unwrap();
    assert!(!again.interface_removed && again.addresses.is_empty());
}

/// A pod namespace already holding a foreign `eth0` (a veth pair made inside
/// it): plumbing fails, the error names the step, and the ADD leaves no host
/// interface and no allocation behind, and the foreign interface alone.
#[test]
fn a_kernel_refusal_rolls_back_the_allocation_and_the_interfaces() {
    testlab::require_root!();
    let lab = Lab::new("attach_rollback").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let node = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let pod = lab.pod("p1").unwrap();
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ])
    .unwrap();
    let mut ipam = IpamAddresses::new(MemStore::new(), None);
    let mut kernel = plumber_in(&node);
    let req = request(&pod, "web");

    let e = calinet_attach::add(&mut ipam, &mut kernel, &req).unwrap_err();
    assert_eq!(e.step(), Some(Step::Plumb), "{}", calinet_attach::chain(&e));
    assert!(
        matches!(
            e.cause(),
            Error::Plumbing {
                source: calinet_route::Error::ForeignInterface { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(ipam.held(&req.handle).unwrap().is_empty());
    assert!(node.link(req.host_ifname.as_str()).unwrap().is_none());
    assert!(pod.link("eth0").unwrap().is_some(), "not ours: left alone");
}

#[test]
fn a_missing_namespace_allocates_nothing() {
    testlab::require_root!();
    let lab = Lab::new("attach_missing_netns").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let node = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let mut ipam = IpamAddresses::new(MemStore::new(), None);
    let mut kernel = plumber_in(&node);
    let mut req = request(&node, "ghost");
    req.netns = Some(format!("/run/netns/{}-nope", lab.prefix()).into());
    let e = calinet_attach::add(&mut ipam, &mut kernel, &req).unwrap_err();
    assert_eq!(e.step(), Some(Step::CheckNetns));
    assert!(matches!(e.cause(), Error::NetnsMissing { .. }), "{e:?}");
    assert!(ipam.held(&req.handle).unwrap().is_empty());
}
