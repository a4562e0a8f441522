//! Real packets through the compiled policy (root, lab namespaces): pods on two
//! nodes, the policy applied on node 1 through the netlink backend, TCP probes
//! and captures as the oracle.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::Duration;

use calinet_policy::compile::{Options, Pool, compile};
use calinet_policy::model::{AnyResource, Profile, parse_yaml};
use calinet_policy::netlink::{NetlinkBackend, NetlinkSocket};
use calinet_policy::semantics::{Endpoint, Endpoints, PolicyModel};

const T: Duration = Duration::from_millis(1500);

const POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  selector: app == 'db'
  ingress:
  - action: Deny
    protocol: TCP
    destination: {ports: [22]}
  - action: Allow
    protocol: TCP
    source: {selector: app == 'web'}
    destination: {ports: [5432, "7000:7010"]}
"#;

fn ep(name: &str, local: bool, ifname: &str, addr: &str, app: &str) -> Endpoint {
    Endpoint {
        name: name.into(),
        namespace: Some("shop".into()),
        local,
        interface: ifname.into(),
        addrs: vec![addr.parse().unwrap()],
        labels: [("app".to_string(), app.to_string())].into_iter().collect(),
        profiles: vec!["kns.shop".into()],
        named_ports: vec![],
    }
}

fn model(policy: &str) -> PolicyModel {
    let mut res = parse_yaml(policy).unwrap();
    res.push(AnyResource::Profile(Profile::for_namespace(
        "shop",
        &BTreeMap::new(),
    )));
    PolicyModel::build(&res).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn policy_and_nat_with_real_packets() {
    testlab::require!(testlab::Feature::Nftables, testlab::Feature::Tcpdump);
    let lab = testlab::Lab::new("policy_packets").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n1 = lab
        .node("n1", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let n2 = lab
        .node("n2", &seg, "198.51.100.11".parse().unwrap())
        .unwrap();
    let outside = lab
        .node("ext", &seg, "198.51.100.50".parse().unwrap())
        .unwrap();
    let web = lab.pod("web").unwrap();
    let db = lab.pod("db").unwrap();
    let remote = lab.pod("remote").unwrap();
    lab.plumb_pod(&n1, &web, "caliweb", "10.0.0.1".parse().unwrap())
        .unwrap();
    lab.plumb_pod(&n1, &db, "calidb", "10.0.0.2".parse().unwrap())
        .unwrap();
    lab.plumb_pod(&n2, &remote, "caliremote", "10.0.1.1".parse().unwrap())
        .unwrap();
    n1.ip(&["route", "add", "10.0.1.0/24", "via", "198.51.100.11"])
        .unwrap();
    n2.ip(&["route", "add", "10.0.0.0/24", "via", "198.51.100.10"])
        .unwrap();

    let endpoints = vec![
        ep("shop/web", true, "caliweb", "10.0.0.1", "web"),
        ep("shop/db", true, "calidb", "10.0.0.2", "db"),
        ep("shop/remote", false, "", "10.0.1.1", "other"),
    ];
    let pools = [Pool {
        cidr: "10.0.0.0/16".parse().unwrap(),
        nat_outgoing: true,
    }];
    let m = model(POLICY);
    let rs = compile(
        &m,
        &Endpoints::new(&m, endpoints.clone()),
        &pools,
        &Options::default(),
    )
    .unwrap();
    let mut nl = NetlinkBackend::new(NetlinkSocket::open_in(&n1.path()).unwrap());
    nl.apply(&rs).unwrap();

    let mut servers = Vec::new();
    for port in [22, 5432, 7005, 8080] {
        servers.push(db.tcp_listen(ip("10.0.0.2"), port).unwrap());
    }
    let _outside_srv = outside.tcp_listen(ip("198.51.100.50"), 80).unwrap();
    let _remote_srv = remote.tcp_listen(ip("10.0.1.1"), 9000).unwrap();

    // Allowed ports from the web pod; 22 denied by rule; 8080 allowed by no rule:
    // dropped, since a policy selects the db endpoint for ingress.
    assert!(
        web.tcp_connect(ip("10.0.0.2"), 5432, T),
        "web -> db:5432 allowed"
    );
    assert!(
        web.tcp_connect(ip("10.0.0.2"), 7005, T),
        "web -> db:7005 (range) allowed"
    );
    assert!(
        !web.tcp_connect(ip("10.0.0.2"), 22, T),
        "web -> db:22 denied"
    );
    assert!(
        !web.tcp_connect(ip("10.0.0.2"), 8080, T),
        "web -> db:8080 dropped"
    );
    // The remote pod is not app=web: nothing allowed.
    assert!(
        !remote.tcp_connect(ip("10.0.0.2"), 5432, T),
        "remote -> db:5432 dropped"
    );
    // web is selected by no policy: its profile allows everything.
    let web_srv = web.tcp_listen(ip("10.0.0.1"), 8080).unwrap();
    assert!(
        remote.tcp_connect(ip("10.0.0.1"), 8080, T),
        "remote -> web allowed by profile"
    );
    // The echo server accepts on a polling thread: give it a moment.
    testlab::wait_for("the web pod's server to accept", T, || {
        Ok(web_srv.accepted() > 0)
    })
    .unwrap();
    assert_eq!(web_srv.accepted(), 1);
    // An unknown workload interface on the node is dropped (fail closed).
    let stray = lab.pod("stray").unwrap();
    lab.plumb_pod(&n1, &stray, "calistray", "10.0.0.9".parse().unwrap())
        .unwrap();
    assert!(
        !stray.tcp_connect(ip("10.0.0.1"), 8080, T),
        "unknown caliX dropped"
    );

    // Keep an allowed connection open across a policy update that removes the
    // allow rule: the established connection survives, new ones are dropped.
    let mut conn = web.tcp_stream(ip("10.0.0.2"), 5432, T).unwrap();
    conn.set_read_timeout(Some(T)).unwrap();
    let tighter = POLICY.replace("[5432, \"7000:7010\"]", "[7000]");
    let m2 = model(&tighter);
    let rs2 = compile(
        &m2,
        &Endpoints::new(&m2, endpoints.clone()),
        &pools,
        &Options::default(),
    )
    .unwrap();
    let stats = nl.apply(&rs2).unwrap();
    assert!(stats.touched_rules);
    assert!(
        !web.tcp_connect(ip("10.0.0.2"), 5432, T),
        "new connection after update dropped"
    );
    conn.write_all(b"still here").unwrap();
    let mut buf = [0u8; 10];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here", "established connection kept");

    // natOutgoing: to an outside host the pod's packets leave as the node
    // address; to another pod they keep the pod address.
    let cap = n1.capture("eth0", "tcp").unwrap();
    assert!(
        web.tcp_connect(ip("198.51.100.50"), 80, T),
        "web -> outside"
    );
    assert!(
        web.tcp_connect(ip("10.0.1.1"), 9000, T),
        "web -> remote pod"
    );
    let pkts = cap.stop().unwrap();
    assert!(
        pkts.any(&["198.51.100.10.", "> 198.51.100.50.80"]),
        "outside traffic masqueraded to the node address:\n{pkts}"
    );
    assert!(
        !pkts.any(&["10.0.0.1.", "> 198.51.100.50.80"]),
        "no pod address towards outside:\n{pkts}"
    );
    assert!(
        pkts.any(&["10.0.0.1.", "> 10.0.1.1.9000"]),
        "pod-to-pod keeps the pod address:\n{pkts}"
    );
    drop(servers);
}
