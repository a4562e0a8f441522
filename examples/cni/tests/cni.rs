//! The plugins executed exactly as a container runtime executes them: the
//! `CNI_*` environment, the configuration on stdin, the runtime's network
//! namespace (a lab node) and the pod's namespace path. Replies are checked
//! against the specification's schema (`common::schema`), the kernel through
//! the lab's typed `ip -j` output, and the datastore through `ipam check`.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use calinet_route::IfName;
use common::{
    CALINET, CALINET_IPAM, Call, calinet_config, ipam_check, schema, stored_handles, stored_weps,
};
use serde_json::{Value, json};
use testlab::{Lab, Netns, Node};

fn lab_node(lab: &Lab) -> Node {
    let seg = lab.segment("198.51.100.0/24").expect("segment");
    lab.node("node1", &seg, "198.51.100.10".parse().unwrap())
        .expect("node")
}

fn result_ip(r: &Value) -> IpAddr {
    r["ips"][0]["address"]
        .as_str()
        .and_then(|s| s.parse::<ipnet::IpNet>().ok())
        .map(|n| n.addr())
        .unwrap_or_else(|| panic!("no ips[0].address in {r}"))
}

fn cali_links(ns: &Netns) -> Vec<String> {
    ns.links()
        .expect("links")
        .into_iter()
        .filter(|l| l.ifname.starts_with("cali"))
        .map(|l| l.ifname)
        .collect()
}

/// Checks a full plugin's ADD result for `container` (CNI 1.0.0, Calico's
/// shape) and that the kernel agrees with it: the host veth (name, MAC, MTU
/// 1400, up), the pod's `eth0` with the /32, the pod's routes via
/// `169.254.1.1`, and the node's link-scope route to the pod. Returns the
/// address and the host interface.
fn assert_plumbed(node: &Node, pod: &Netns, container: &str, r: &Value) -> (IpAddr, String) {
    schema::assert_valid(schema::result(r, false), r);
    assert_eq!(r["cniVersion"], "1.0.0");
    let ip = result_ip(r);
    let host_if = IfName::calico_workload("default", container).to_string();
    assert_eq!(r["interfaces"][0]["name"], host_if.as_str());
    assert_eq!(r["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r["interfaces"][1]["sandbox"],
        pod.path().display().to_string()
    );
    assert_eq!(r["ips"][0]["address"], format!("{ip}/32"));
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["routes"][0]["gw"], "169.254.1.1");

    // The kernel agrees with the result.
    let link = node.link(&host_if).unwrap().expect("host veth exists");
    assert_eq!(link.kind(), Some("veth"));
    assert_eq!(link.mtu, Some(1400));
    assert_eq!(link.address.as_deref(), Some("ee:ee:ee:ee:ee:ee"));
    assert!(link.is_up());
    let pod_link = pod.link("eth0").unwrap().expect("pod eth0 exists");
    assert_eq!(pod_link.mtu, Some(1400));
    assert_eq!(
        pod_link.address.as_deref(),
        r["interfaces"][1]["mac"].as_str()
    );
    let addrs = pod.addrs().unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.ifname == "eth0" && a.local == ip.to_string() && a.prefixlen == 32),
        "{addrs:?}"
    );
    let pod_routes = pod.routes().unwrap();
    assert!(pod_routes.iter().any(|r| r.dst == "default"
        && r.gateway.as_deref() == Some("169.254.1.1")
        && r.dev.as_deref() == Some("eth0")));
    assert!(
        pod_routes
            .iter()
            .any(|r| r.dst == "169.254.1.1" && r.scope.as_deref() == Some("link"))
    );
    let host_routes = node.routes().unwrap();
    let to_pod = testlab::ipjson::routes_to(&host_routes, &ip.to_string());
    assert_eq!(to_pod.len(), 1, "{host_routes:?}");
    assert_eq!(to_pod[0].dev.as_deref(), Some(host_if.as_str()));
    assert_eq!(to_pod[0].scope.as_deref(), Some("link"));
    (ip, host_if)
}

/// After DEL: no workload veth on the node, no `eth0` in the pod, no route
/// to the pod's address.
fn assert_unplumbed(node: &Node, pod: &Netns, ip: IpAddr) {
    assert!(cali_links(node).is_empty());
    assert!(pod.link("eth0").unwrap().is_none());
    assert!(testlab::ipjson::routes_to(&node.routes().unwrap(), &ip.to_string()).is_empty());
}

/// As root: a lab node to run the plugin in, so that a plugin that went on
/// despite bad input would leave a link there for the test to find. Without
/// root the plugin runs in the caller's namespace (and could create nothing).
fn node_if_root(test: &str) -> Option<(Lab, Node)> {
    if !testlab::skip::is_root() {
        return None;
    }
    let lab = Lab::new(test).expect("lab");
    let node = lab_node(&lab);
    Some((lab, node))
}

// ----- no root needed --------------------------------------------------------

#[test]
fn schema_checkers_reject_what_the_spec_forbids() {
    let good = json!({"cniVersion":"1.0.0",
        "interfaces":[{"name":"cali1","mac":"ee:ee:ee:ee:ee:ee"},{"name":"eth0","sandbox":"/run/netns/x"}],
        "ips":[{"address":"10.0.0.1/32","gateway":"169.254.1.1","interface":1}],
        "routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]});
    assert!(schema::result(&good, false).is_empty());
    let bad = [
        json!({"interfaces":[],"ips":[]}),
        json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1"}]}),
        json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/32","interface":0}]}),
        json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/32","version":"4"}]}),
        json!({"cniVersion":"0.4.0","ips":[{"address":"10.0.0.1/32"}]}),
        json!({"cniVersion":"1.0.0","ips":[],"interfaces":[{"name":"e","mac":"zz"}]}),
        json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.1/32","gateway":"fe80::1"}]}),
        json!({"cniVersion":"1.0.0","ips":[],"routes":[{"gw":"10.0.0.1"}]}),
        json!({"cniVersion":"1.0.0","ips":[],"extra":1}),
    ];
    for b in bad {
        assert!(!schema::result(&b, false).is_empty(), "accepted {b}");
    }
    assert!(
        !schema::result(&good, true).is_empty(),
        "IPAM result with interfaces"
    );
    assert!(schema::error(&json!({"cniVersion":"1.0.0","code":7,"msg":"m"})).is_empty());
    assert!(!schema::error(&json!({"cniVersion":"1.0.0","code":"7","msg":"m"})).is_empty());
    assert!(!schema::error(&json!({"cniVersion":"1.0.0","code":7})).is_empty());
    assert!(!schema::version(&json!({"cniVersion":"1.0.0","supportedVersions":[]})).is_empty());
}

#[test]
fn version_reports_every_supported_version() {
    for bin in [CALINET, CALINET_IPAM] {
        for stdin in ["", r#"{"cniVersion":"1.0.0"}"#] {
            let call = Call {
                command: "VERSION".into(),
                container: None,
                netns: None,
                ifname: None,
                args: None,
                path: None,
                config: stdin.into(),
            };
            let out = call.exec(bin, None);
            out.ok();
            let v = out.json();
            schema::assert_valid(schema::version(&v), &v);
            let supported: Vec<&str> = v["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for want in ["0.4.0", "1.0.0", "1.1.0"] {
                assert!(supported.contains(&want), "{bin}: {supported:?}");
            }
        }
    }
}

#[test]
fn missing_environment_variables_are_code_4_and_touch_nothing() {
    let lab = node_if_root("cni_missing_env");
    let host = lab.as_ref().map(|(_, n)| n.path());
    let host = host.as_deref();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.0.0/24", "");
    let base = Call::new("ADD", "c1", Path::new("/run/netns/none"), &cfg);
    type Unset = fn(&mut Call);
    let cases: [(&str, Unset); 4] = [
        ("CNI_CONTAINERID", |c| c.container = None),
        ("CNI_NETNS", |c| c.netns = None),
        ("CNI_IFNAME", |c| c.ifname = None),
        ("CNI_PATH", |c| c.path = None),
    ];
    for (var, unset) in cases {
        let mut c = base.clone();
        unset(&mut c);
        let msg = c.exec(CALINET, host).err(4);
        assert!(msg.contains(var), "{var}: {msg}");
    }
    let mut c = base.clone();
    c.command = String::new();
    assert!(c.exec(CALINET, host).err(4).contains("CNI_COMMAND"));
    c.command = "ATTACH".into();
    assert!(c.exec(CALINET, host).err(4).contains("ATTACH"));
    let mut c = base.clone();
    c.args = Some("K8S_POD_NAME".into());
    assert!(c.exec(CALINET, host).err(4).contains("CNI_ARGS"));
    assert!(!db.exists(), "a rejected call created the datastore");
    if let Some((_, node)) = &lab {
        assert!(cali_links(node).is_empty());
    }
}

#[test]
fn bad_configuration_gets_its_spec_code() {
    let lab = node_if_root("cni_bad_config");
    let host = lab.as_ref().map(|(_, n)| n.path());
    let host = host.as_deref();
    let (_dir, db) = common::temp_db();
    let netns = Path::new("/run/netns/none");
    let cases: [(String, u64, &str); 6] = [
        ("{\"cniVersion\":".into(), 6, "decode"),
        ("[1,2]".into(), 6, "decode"),
        (
            calinet_config(&db, "172.16.0.0/24", "").replace("1.0.0", "0.2.0"),
            1,
            "0.2.0",
        ),
        (
            calinet_config(&db, "172.16.0.0/24", "").replace("\"mtu\":1400", "\"mtu\":20"),
            7,
            "mtu",
        ),
        (calinet_config(&db, "172.16.0.1/24", ""), 7, "host bits"),
        (
            calinet_config(&db, "172.16.0.0/24", "")
                .replace("\"type\":\"calinet-ipam\"", "\"type\":\"host-local\""),
            2,
            "ipam.type",
        ),
    ];
    for (cfg, code, needle) in cases {
        let msg = Call::new("ADD", "c1", netns, &cfg)
            .exec(CALINET, host)
            .err(code);
        assert!(msg.to_lowercase().contains(needle), "{cfg}: {msg}");
    }
    assert!(
        !db.exists(),
        "a rejected configuration created the datastore"
    );
}

/// The IPAM plugin alone: ADD (twice: same address), CHECK, GC and STATUS
/// (CNI 1.1), DEL (twice). No kernel state is involved.
#[test]
fn ipam_plugin_add_check_gc_status_del() {
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.4.0/24", r#","gateway":"169.254.1.1""#)
        .replace("\"1.0.0\"", "\"1.1.0\"");
    let netns = Path::new("/run/netns/not-needed-by-ipam");
    let mut addrs = HashSet::new();
    for id in ["a", "b", "c"] {
        let call = Call::new("ADD", id, netns, &cfg);
        let out = call.exec(CALINET_IPAM, None);
        out.ok();
        let r = out.json();
        schema::assert_valid(schema::result(&r, true), &r);
        assert_eq!(r["ips"][0]["gateway"], "169.254.1.1");
        let ip = result_ip(&r);
        assert!(addrs.insert(ip), "duplicate {ip}");
        // A runtime's retry gets the same address.
        assert_eq!(result_ip(&call.exec(CALINET_IPAM, None).json()), ip);
        let check = call
            .with_command("CHECK")
            .with_prev_result(&r)
            .exec(CALINET_IPAM, None);
        assert_eq!(check.ok(), "", "CHECK prints nothing on success");
    }
    assert!(ipam_check(&db, &["a", "b", "c"]).is_clean());

    let status = Call::new("STATUS", "x", netns, &cfg);
    assert_eq!(status.exec(CALINET_IPAM, None).ok(), "");
    let missing_pool = cfg.replace("\"172.16.4.0/24\"", "\"no-such-pool\"");
    let msg = Call::new("STATUS", "x", netns, &missing_pool)
        .exec(CALINET_IPAM, None)
        .err(50);
    assert!(msg.contains("no-such-pool"), "{msg}");

    let unusable = cfg.replace(
        &db.display().to_string(),
        "/proc/calinet-no-such-dir/ipam.db",
    );
    let msg = Call::new("STATUS", "x", netns, &unusable)
        .exec(CALINET_IPAM, None)
        .err(50);
    assert!(msg.contains("/proc/calinet-no-such-dir"), "{msg}");

    let mut gc_cfg: Value = serde_json::from_str(&cfg).unwrap();
    gc_cfg["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    Call::new("GC", "x", netns, &gc_cfg.to_string())
        .exec(CALINET_IPAM, None)
        .ok();
    let handles = stored_handles(&db);
    assert_eq!(
        handles,
        ["k8s-pod-network.a"],
        "GC kept only the valid attachment"
    );
    assert!(ipam_check(&db, &["a"]).is_clean());

    for _ in 0..2 {
        Call::new("DEL", "a", netns, &cfg)
            .exec(CALINET_IPAM, None)
            .ok();
    }
    assert!(stored_handles(&db).is_empty());
    let report = ipam_check(&db, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
}

// ----- root: lab namespaces ---------------------------------------------------

#[test]
fn add_check_del_in_lab_namespaces() {
    testlab::require_root!();
    let lab = Lab::new("cni_add_check_del").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("web-0").unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.0.0/16", r#","ipv4_block_size":26"#);
    let add = Call::new("ADD", "web-0", &pod.path(), &cfg);
    let host = node.path();

    let out = add.exec(CALINET, Some(&host));
    out.ok();
    let r = out.json();
    let (ip, host_if) = assert_plumbed(&node, &pod, "web-0", &r);
    assert!(
        node.ping(ip, Duration::from_secs(3)),
        "node cannot ping pod {ip}"
    );

    // CHECK with prevResult, as a runtime sends it.
    let check = add.with_command("CHECK").with_prev_result(&r);
    assert_eq!(check.exec(CALINET, Some(&host)).ok(), "");

    // A retried ADD returns the same address and leaves one interface.
    let again = add.exec(CALINET, Some(&host)).json();
    assert_eq!(result_ip(&again), ip);
    assert_eq!(cali_links(&node), std::slice::from_ref(&host_if));

    // Changed by hand: CHECK says what differs.
    pod.ip(&["addr", "del", &format!("{ip}/32"), "dev", "eth0"])
        .unwrap();
    let msg = check.exec(CALINET, Some(&host)).err(103);
    assert!(msg.contains(&ip.to_string()), "{msg}");

    // DEL removes everything; a second DEL succeeds too.
    for _ in 0..2 {
        let out = add.with_command("DEL").exec(CALINET, Some(&host));
        assert_eq!(out.ok(), "", "DEL prints nothing");
    }
    assert_unplumbed(&node, &pod, ip);
    let report = ipam_check(&db, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
}

#[test]
fn del_succeeds_when_the_netns_is_already_gone() {
    testlab::require_root!();
    let lab = Lab::new("cni_del_gone").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("gone").unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.1.0/24", "");
    let add = Call::new("ADD", "gone", &pod.path(), &cfg);
    add.exec(CALINET, Some(&node.path())).ok();
    assert_eq!(cali_links(&node).len(), 1);
    // The runtime removed the sandbox first: DEL with a dangling path.
    let mut del = add.with_command("DEL");
    del.netns = Some("/run/netns/calinet-test-never-existed".into());
    del.exec(CALINET, Some(&node.path())).ok();
    assert!(cali_links(&node).is_empty());
    assert!(stored_handles(&db).is_empty());
    // And without CNI_NETNS at all.
    del.netns = None;
    del.exec(CALINET, Some(&node.path())).ok();
}

#[test]
fn twenty_parallel_adds_then_twenty_parallel_dels() {
    testlab::require_root!();
    let lab = Lab::new("cni_parallel").unwrap();
    let node = lab_node(&lab);
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.0.0/16", r#","ipv4_block_size":26"#);
    let pods: Vec<Netns> = (0..20)
        .map(|i| lab.pod(&format!("p{i}")).unwrap())
        .collect();
    let host = node.path();
    let run_all = |command: &str| -> Vec<common::Outcome> {
        std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let call = Call::new(command, &format!("pod{i}"), &p.path(), &cfg);
                    let host = host.clone();
                    s.spawn(move || call.exec(CALINET, Some(&host)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };

    let adds = run_all("ADD");
    let mut ips = HashSet::new();
    for out in &adds {
        out.ok();
        let r = out.json();
        schema::assert_valid(schema::result(&r, false), &r);
        assert!(
            ips.insert(result_ip(&r)),
            "duplicate address {}",
            result_ip(&r)
        );
    }
    assert_eq!(ips.len(), 20);
    assert_eq!(cali_links(&node).len(), 20);
    for (p, out) in pods.iter().zip(&adds) {
        let ip = result_ip(&out.json()).to_string();
        assert!(
            p.addrs().unwrap().iter().any(|a| a.local == ip),
            "{ip} not in {}",
            p.name()
        );
    }
    let live: Vec<String> = (0..20).map(|i| format!("pod{i}")).collect();
    let live: Vec<&str> = live.iter().map(String::as_str).collect();
    let report = ipam_check(&db, &live);
    assert!(
        report.is_clean() && report.addresses_in_use == 20,
        "{report:?}"
    );

    for out in run_all("DEL") {
        out.ok();
    }
    assert!(cali_links(&node).is_empty());
    let report = ipam_check(&db, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
    assert!(stored_handles(&db).is_empty());
}

#[test]
fn unknown_netns_is_code_3_and_leaves_nothing() {
    testlab::require_root!();
    let lab = Lab::new("cni_unknown_netns").unwrap();
    let node = lab_node(&lab);
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.2.0/24", "");
    let call = Call::new(
        "ADD",
        "ghost",
        Path::new("/run/netns/calinet-test-no-such-ns"),
        &cfg,
    );
    let msg = call.exec(CALINET, Some(&node.path())).err(3);
    assert!(msg.contains("calinet-test-no-such-ns"), "{msg}");
    assert!(cali_links(&node).is_empty());
    assert!(stored_handles(&db).is_empty());
    assert_eq!(ipam_check(&db, &[]).addresses_in_use, 0);
    let msg = call
        .with_command("CHECK")
        .exec(CALINET, Some(&node.path()))
        .err(3);
    assert!(msg.contains("does not exist"), "{msg}");
}

#[test]
fn exhausted_pool_is_code_100_and_leaves_nothing() {
    testlab::require_root!();
    let lab = Lab::new("cni_exhausted").unwrap();
    let node = lab_node(&lab);
    let (_dir, db) = common::temp_db();
    // A /30 pool in one /30 block: four addresses.
    let cfg = calinet_config(&db, "172.16.3.0/30", r#","ipv4_block_size":30"#);
    let pods: Vec<Netns> = (0..5).map(|i| lab.pod(&format!("x{i}")).unwrap()).collect();
    for (i, p) in pods.iter().enumerate().take(4) {
        Call::new("ADD", &format!("x{i}"), &p.path(), &cfg)
            .exec(CALINET, Some(&node.path()))
            .ok();
    }
    let msg = Call::new("ADD", "x4", &pods[4].path(), &cfg)
        .exec(CALINET, Some(&node.path()))
        .err(100);
    assert!(msg.contains("IPv4"), "{msg}");
    assert_eq!(cali_links(&node).len(), 4);
    assert!(pods[4].link("eth0").unwrap().is_none());
    assert!(!stored_handles(&db).contains(&"k8s-pod-network.x4".to_string()));
    let report = ipam_check(&db, &["x0", "x1", "x2", "x3"]);
    assert!(
        report.is_clean() && report.addresses_in_use == 4,
        "{report:?}"
    );
}

#[test]
fn a_plumbing_failure_after_allocation_releases_the_address() {
    testlab::require_root!();
    let lab = Lab::new("cni_rollback").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("broken").unwrap();
    // An `eth0` that is a veth pair made inside the pod's namespace is no
    // leftover of ours: setup refuses to replace it, after the address was
    // allocated.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ])
    .unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.5.0/24", "");
    let msg = Call::new("ADD", "broken", &pod.path(), &cfg)
        .exec(CALINET, Some(&node.path()))
        .err(102);
    assert!(msg.contains("eth0"), "{msg}");
    assert!(
        cali_links(&node).is_empty(),
        "half-created veth left behind"
    );
    assert!(
        pod.link("eth0").unwrap().is_some(),
        "the foreign eth0 stays"
    );
    assert!(stored_handles(&db).is_empty());
    let report = ipam_check(&db, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
}

/// A `CNI_NETNS` that exists but is no network namespace (a regular file, a
/// directory) fails with code 4 before anything is allocated or created.
#[test]
fn a_netns_path_that_is_not_a_namespace_fails_before_allocating() {
    testlab::require_root!();
    let lab = Lab::new("cni_notns").unwrap();
    let node = lab_node(&lab);
    let (dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.5.0/24", "");
    let file = dir.path().join("not-a-netns");
    std::fs::write(&file, b"").unwrap();
    for path in [file.as_path(), dir.path()] {
        let msg = Call::new("ADD", "nons", path, &cfg)
            .exec(CALINET, Some(&node.path()))
            .err(4);
        assert!(msg.contains("CNI_NETNS"), "{msg}");
        assert!(msg.contains("network namespace"), "{msg}");
        assert!(cali_links(&node).is_empty());
        assert!(stored_handles(&db).is_empty(), "allocated before the check");
    }
}

/// Issue 17: two sandboxes of one pod (same host veth name); DEL of the old
/// container releases its address and leaves the new one's networking alone.
#[test]
fn del_of_an_old_container_leaves_the_new_containers_interfaces() {
    testlab::require_root!();
    let lab = Lab::new("cni_two_sandboxes").unwrap();
    let node = lab_node(&lab);
    let (ns1, ns2) = (lab.pod("sb1").unwrap(), lab.pod("sb2").unwrap());
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.6.0/24", "");
    let pod_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".to_string();
    let mut a = Call::new("ADD", "ctr-a", &ns1.path(), &cfg);
    a.args = Some(pod_args.clone());
    let mut b = Call::new("ADD", "ctr-b", &ns2.path(), &cfg);
    b.args = Some(pod_args);
    a.exec(CALINET, Some(&node.path())).ok();
    let rb = b.exec(CALINET, Some(&node.path())).json();
    let host_if = IfName::calico_workload("default", "web").to_string();
    let before = node.link(&host_if).unwrap().expect("B's host veth");
    let b_eth0 = ns2.link("eth0").unwrap().expect("B's eth0");

    a.with_command("DEL").exec(CALINET, Some(&node.path())).ok();
    let after = node.link(&host_if).unwrap().expect("B's host veth stays");
    assert_eq!(after.ifindex, before.ifindex);
    assert_eq!(
        ns2.link("eth0").unwrap().expect("B's eth0 stays").ifindex,
        b_eth0.ifindex
    );
    assert_eq!(
        stored_handles(&db),
        vec!["k8s-pod-network.ctr-b".to_string()]
    );
    // The endpoint is B's (its ADD replaced A's record), and A's DEL left it.
    let weps = stored_weps(&db);
    assert_eq!(weps.len(), 1, "{weps:?}");
    assert_eq!(weps[0]["spec"]["containerID"], "ctr-b");
    b.with_command("CHECK")
        .with_prev_result(&rb)
        .exec(CALINET, Some(&node.path()))
        .ok();

    b.with_command("DEL").exec(CALINET, Some(&node.path())).ok();
    assert!(cali_links(&node).is_empty());
    assert!(ns2.link("eth0").unwrap().is_none());
    assert!(stored_handles(&db).is_empty());
    assert!(stored_weps(&db).is_empty());
}

/// Issue 17: DEL of a container id nobody added, with a namespace (and pod)
/// whose `eth0` is another container's, succeeds and touches nothing.
#[test]
fn del_of_an_unknown_container_touches_nothing() {
    testlab::require_root!();
    let lab = Lab::new("cni_del_unknown").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("known").unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.7.0/24", "");
    let add = Call::new("ADD", "known", &pod.path(), &cfg);
    let r = add.exec(CALINET, Some(&node.path())).json();
    let (ip, host_if) = assert_plumbed(&node, &pod, "known", &r);
    let index = node.link(&host_if).unwrap().unwrap().ifindex;

    // Same pod arguments (so the same host veth name) and another pod's.
    let mut ghost = add.with_command("DEL");
    ghost.container = Some("ghost".into());
    ghost.exec(CALINET, Some(&node.path())).ok();
    ghost.args = Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=other".into());
    ghost.exec(CALINET, Some(&node.path())).ok();

    assert_eq!(node.link(&host_if).unwrap().unwrap().ifindex, index);
    assert_plumbed(&node, &pod, "known", &r);
    assert_eq!(
        stored_handles(&db),
        vec!["k8s-pod-network.known".to_string()]
    );
    assert_eq!(stored_weps(&db).len(), 1);
    let report = ipam_check(&db, &["known"]);
    assert!(
        report.is_clean() && report.addresses_in_use == 1,
        "{report:?}"
    );
    add.with_command("DEL")
        .exec(CALINET, Some(&node.path()))
        .ok();
    assert_unplumbed(&node, &pod, ip);
    assert!(stored_weps(&db).is_empty());
}

/// ADD records the pod as Calico's WorkloadEndpoint (what agents program
/// routes and policy for); DEL removes it.
#[test]
fn add_records_a_workload_endpoint_and_del_removes_it() {
    testlab::require_root!();
    let lab = Lab::new("cni_wep").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("wep").unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.9.0/24", "");
    let add = Call::new("ADD", "wep-1", &pod.path(), &cfg);
    let r = add.exec(CALINET, Some(&node.path())).json();
    let (ip, host_if) = assert_plumbed(&node, &pod, "wep-1", &r);
    let weps = stored_weps(&db);
    assert_eq!(weps.len(), 1, "{weps:?}");
    let w = &weps[0];
    assert_eq!(w["apiVersion"], "projectcalico.org/v3");
    assert_eq!(w["kind"], "WorkloadEndpoint");
    let node_name = w["spec"]["node"].as_str().expect("node").to_owned();
    assert_eq!(
        w["metadata"]["name"],
        format!("{}-k8s-wep--1-eth0", node_name.replace('-', "--"))
    );
    assert_eq!(w["metadata"]["namespace"], "default");
    assert_eq!(
        w["metadata"]["labels"]["projectcalico.org/namespace"],
        "default"
    );
    assert_eq!(
        w["metadata"]["labels"]["projectcalico.org/orchestrator"],
        "k8s"
    );
    assert_eq!(w["spec"]["orchestrator"], "k8s");
    assert_eq!(w["spec"]["pod"], "wep-1");
    assert_eq!(w["spec"]["containerID"], "wep-1");
    assert_eq!(w["spec"]["endpoint"], "eth0");
    assert_eq!(w["spec"]["interfaceName"], host_if.as_str());
    assert_eq!(w["spec"]["ipNetworks"], json!([format!("{ip}/32")]));
    assert_eq!(w["spec"]["mac"], r["interfaces"][1]["mac"]);
    assert_eq!(w["spec"]["profiles"], json!(["kns.default"]));
    // A retried ADD leaves one record.
    add.exec(CALINET, Some(&node.path())).ok();
    assert_eq!(stored_weps(&db).len(), 1);
    add.with_command("DEL")
        .exec(CALINET, Some(&node.path()))
        .ok();
    assert_unplumbed(&node, &pod, ip);
    assert!(stored_weps(&db).is_empty());
}

/// Issue 17: ADD into a namespace whose `eth0` another container's ADD made
/// fails (the specification requires an error) with nothing allocated or
/// changed; a retried ADD of the owner still succeeds with the same address.
#[test]
fn add_over_another_containers_interface_fails_and_changes_nothing() {
    testlab::require_root!();
    let lab = Lab::new("cni_add_taken").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("taken").unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.8.0/24", "");
    let d1 = Call::new("ADD", "d1", &pod.path(), &cfg);
    let r1 = d1.exec(CALINET, Some(&node.path())).json();
    let (ip, host_if) = assert_plumbed(&node, &pod, "d1", &r1);
    let index = node.link(&host_if).unwrap().unwrap().ifindex;

    // The same pod name (same host veth) and another one.
    let mut d2 = Call::new("ADD", "d2", &pod.path(), &cfg);
    d2.args = d1.args.clone();
    for args in [
        d1.args.clone(),
        Call::new("ADD", "d2", &pod.path(), &cfg).args,
    ] {
        d2.args = args;
        let msg = d2.exec(CALINET, Some(&node.path())).err(105);
        assert!(msg.contains("eth0") && msg.contains("d1"), "{msg}");
        assert_eq!(stored_handles(&db), vec!["k8s-pod-network.d1".to_string()]);
        assert_eq!(node.link(&host_if).unwrap().unwrap().ifindex, index);
        assert_eq!(cali_links(&node), vec![host_if.clone()]);
    }

    let again = d1.exec(CALINET, Some(&node.path())).json();
    assert_eq!(result_ip(&again), ip);
    assert_eq!(node.link(&host_if).unwrap().unwrap().ifindex, index);
    d1.with_command("DEL")
        .exec(CALINET, Some(&node.path()))
        .ok();
    assert_unplumbed(&node, &pod, ip);
    assert!(stored_handles(&db).is_empty());
}

/// `calinet-ipam` under the reference `ptp` plugin, which execs it through
/// CNI_PATH for ADD, CHECK and DEL.
#[test]
fn ipam_plugin_under_the_reference_ptp_plugin() {
    testlab::require_root!();
    let ptp = Path::new(common::REFERENCE_DIR).join("ptp");
    if !ptp.exists() {
        testlab::skip!(
            "{} missing (Debian containernetworking-plugins)",
            ptp.display()
        );
    }
    let lab = Lab::new("cni_under_ptp").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("chained").unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ptp","mtu":1400,
            "nodename":"node-1",
            "ipam":{{"type":"calinet-ipam","datastore_path":"{}",
                     "ipv4_pools":["172.16.6.0/24"],"gateway":"169.254.1.1"}}}}"#,
        db.display()
    );
    let call = Call::new("ADD", "chained", &pod.path(), &cfg);
    let ptp = ptp.to_str().unwrap();
    let out = call.exec(ptp, Some(&node.path()));
    out.ok();
    let r = out.json();
    schema::assert_valid(schema::result(&r, false), &r);
    let ip = result_ip(&r);
    assert!(
        "172.16.6.0/24"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&ip),
        "{ip}"
    );
    assert_eq!(stored_handles(&db), ["k8s-pod-network.chained"]);
    assert!(
        pod.addrs()
            .unwrap()
            .iter()
            .any(|a| a.local == ip.to_string())
    );
    assert!(
        node.ping(ip, Duration::from_secs(3)),
        "node cannot ping {ip}"
    );
    call.with_command("CHECK")
        .with_prev_result(&r)
        .exec(ptp, Some(&node.path()))
        .ok();
    call.with_command("DEL").exec(ptp, Some(&node.path())).ok();
    assert!(stored_handles(&db).is_empty());
    assert!(pod.link("eth0").unwrap().is_none());
    let report = ipam_check(&db, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
}

/// Dual stack in CNI 1.1.0: a /32 and a /128, the IPv6 default route via the
/// host side's link-local address, `interfaces[].mtu`.
#[test]
fn dual_stack_add_check_del_in_cni_1_1() {
    testlab::require_root!();
    let lab = Lab::new("cni_dual_stack").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("ds").unwrap();
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(
        &db,
        "172.16.7.0/24",
        r#","assign_ipv6":"true","ipv6_pools":["fd00:10::/64"]"#,
    )
    .replace("\"1.0.0\"", "\"1.1.0\"");
    let add = Call::new("ADD", "ds", &pod.path(), &cfg);
    let out = add.exec(CALINET, Some(&node.path()));
    out.ok();
    let r = out.json();
    schema::assert_valid(schema::result(&r, false), &r);
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0]["mtu"], 1400);
    assert_eq!(r["interfaces"][1]["mtu"], 1400);
    let ips = r["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{r}");
    let v6: ipnet::IpNet = ips[1]["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(v6.prefix_len(), 128);
    assert!(
        "fd00:10::/64"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&v6.addr())
    );
    let gw6 = ips[1]["gateway"].as_str().expect("IPv6 gateway").to_owned();
    assert!(gw6.starts_with("fe80:"), "{gw6}");
    assert!(
        pod.addrs()
            .unwrap()
            .iter()
            .any(|a| a.family == "inet6" && a.local == v6.addr().to_string() && a.prefixlen == 128)
    );
    let routes6 = pod.routes6().unwrap();
    assert!(
        routes6
            .iter()
            .any(|r| r.dst == "default" && r.gateway.as_deref() == Some(gw6.as_str())),
        "{routes6:?}"
    );
    let host_if = r["interfaces"][0]["name"].as_str().unwrap();
    let host6 = node.routes6().unwrap();
    assert!(
        testlab::ipjson::routes_to(&host6, &v6.addr().to_string())
            .iter()
            .any(|r| r.dev.as_deref() == Some(host_if)),
        "{host6:?}"
    );
    let check = add.with_command("CHECK").with_prev_result(&r);
    assert_eq!(check.exec(CALINET, Some(&node.path())).ok(), "");
    add.with_command("DEL")
        .exec(CALINET, Some(&node.path()))
        .ok();
    assert!(cali_links(&node).is_empty());
    let report = ipam_check(&db, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
}

/// GC (CNI 1.1) in the lab: the attachment not listed as valid loses its veth
/// and its address; the valid one keeps both.
#[test]
fn gc_removes_the_interface_and_address_of_a_stale_attachment() {
    testlab::require_root!();
    let lab = Lab::new("cni_gc").unwrap();
    let node = lab_node(&lab);
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.8.0/24", "").replace("\"1.0.0\"", "\"1.1.0\"");
    let pods: Vec<Netns> = ["keep", "stale"]
        .iter()
        .map(|n| lab.pod(n).unwrap())
        .collect();
    for (p, id) in pods.iter().zip(["keep", "stale"]) {
        Call::new("ADD", id, &p.path(), &cfg)
            .exec(CALINET, Some(&node.path()))
            .ok();
    }
    assert_eq!(cali_links(&node).len(), 2);
    let mut gc_cfg: Value = serde_json::from_str(&cfg).unwrap();
    gc_cfg["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let mut gc = Call::new("GC", "unused", Path::new("/unused"), &gc_cfg.to_string());
    gc.container = None;
    gc.netns = None;
    gc.ifname = None;
    assert_eq!(gc.exec(CALINET, Some(&node.path())).ok(), "");
    let keep_if = IfName::calico_workload("default", "keep").to_string();
    assert_eq!(cali_links(&node), std::slice::from_ref(&keep_if));
    assert!(
        pods[1].link("eth0").unwrap().is_none(),
        "stale pod side left"
    );
    assert_eq!(stored_handles(&db), ["k8s-pod-network.keep"]);
    assert!(ipam_check(&db, &["keep"]).is_clean());
}

/// ADDs of new containers racing DELs of others (and a retried ADD of a
/// live one): the survivors keep distinct addresses, nothing leaks.
#[test]
fn parallel_adds_racing_dels_and_retries() {
    testlab::require_root!();
    let lab = Lab::new("cni_mixed").unwrap();
    let node = lab_node(&lab);
    let (_dir, db) = common::temp_db();
    let cfg = calinet_config(&db, "172.16.9.0/24", r#","ipv4_block_size":28"#);
    let pods: Vec<Netns> = (0..20)
        .map(|i| lab.pod(&format!("m{i}")).unwrap())
        .collect();
    let host = node.path();
    let call =
        |command: &str, i: usize| Call::new(command, &format!("m{i}"), &pods[i].path(), &cfg);
    // First half exists before the race.
    let mut first: Vec<IpAddr> = Vec::new();
    for i in 0..10 {
        first.push(result_ip(&call("ADD", i).exec(CALINET, Some(&host)).json()));
    }
    let outcomes: Vec<(String, usize, common::Outcome)> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for i in 0..20 {
            // 0..5: DEL; 5..10: retried ADD; 10..20: new ADD.
            let command = if i < 5 { "DEL" } else { "ADD" };
            let c = call(command, i);
            let host = host.clone();
            hs.push(s.spawn(move || (command.to_string(), i, c.exec(CALINET, Some(&host)))));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut live = HashSet::new();
    for (command, i, out) in &outcomes {
        out.ok();
        if command == "ADD" {
            let ip = result_ip(&out.json());
            if *i < 10 {
                assert_eq!(ip, first[*i], "retried ADD of m{i} changed its address");
            }
            assert!(live.insert(ip), "duplicate {ip}");
        }
    }
    assert_eq!(live.len(), 15);
    assert_eq!(cali_links(&node).len(), 15);
    let names: Vec<String> = (5..20).map(|i| format!("m{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let report = ipam_check(&db, &names);
    assert!(
        report.is_clean() && report.addresses_in_use == 15,
        "{report:?}"
    );
    for i in 5..20 {
        call("DEL", i).exec(CALINET, Some(&host)).ok();
    }
    assert!(cali_links(&node).is_empty());
    assert_eq!(ipam_check(&db, &[]).addresses_in_use, 0);
}

/// `datastore_type: etcdv3` against a real etcd (Debian etcd-server, started
/// by the lab on a loopback port): allocations land under Calico's keys, a
/// retry gets the same address, DEL releases, and etcd being down is code 11
/// (try again later) with nothing allocated. The IPAM plugin runs in the test's
/// own namespace, where the lab's etcd listens (127.0.0.1).
#[cfg(feature = "etcd")]
#[test]
fn ipam_plugin_on_a_real_etcd() {
    testlab::require!(testlab::Feature::Etcd);
    let lab = Lab::new("cni_etcd").unwrap();
    let etcd = lab.etcd().unwrap();
    let endpoint = etcd.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({
        "cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "ptp", "nodename": "node-1",
        "datastore_type": "etcdv3", "etcd_endpoints": endpoint,
        "ipam_lock_file": dir.path().join("ipam.lock"),
        "ipam": {"type": "calinet-ipam", "ipv4_pools": ["172.16.10.0/24"]}
    })
    .to_string();
    let netns = Path::new("/run/netns/not-needed-by-ipam");
    let store = || {
        calinet_ipam::EtcdStore::connect(calinet_ipam::EtcdConfig::new([endpoint.clone()])).unwrap()
    };
    let live = |ids: &[&str]| -> HashSet<calinet_ipam::HandleId> {
        ids.iter().map(|i| common::handle(i)).collect()
    };

    let mut ips = HashSet::new();
    for id in ["a", "b"] {
        let out = Call::new("ADD", id, netns, &cfg).exec(CALINET_IPAM, None);
        out.ok();
        let r = out.json();
        schema::assert_valid(schema::result(&r, true), &r);
        assert!(ips.insert(result_ip(&r)));
    }
    let again = Call::new("ADD", "a", netns, &cfg).exec(CALINET_IPAM, None);
    assert!(ips.contains(&result_ip(&again.json())));
    let keys = etcd_handle_keys(&etcd);
    for id in ["a", "b"] {
        assert!(
            keys.contains(&format!("{HANDLES_PREFIX}k8s-pod-network.{id}")),
            "{keys:?}"
        );
    }
    let report = calinet_ipam::report::check(&store(), Some(&live(&["a", "b"]))).unwrap();
    assert!(
        report.is_clean() && report.addresses_in_use == 2,
        "{report:?}"
    );

    etcd.stop();
    let msg = Call::new("ADD", "c", netns, &cfg)
        .exec(CALINET_IPAM, None)
        .err(11);
    assert!(msg.contains("etcd") || msg.contains("datastore"), "{msg}");
    etcd.start().unwrap();
    let report = calinet_ipam::report::check(&store(), Some(&live(&["a", "b"]))).unwrap();
    assert!(
        report.is_clean() && report.addresses_in_use == 2,
        "{report:?}"
    );

    for id in ["a", "b"] {
        Call::new("DEL", id, netns, &cfg)
            .exec(CALINET_IPAM, None)
            .ok();
    }
    let report = calinet_ipam::report::check(&store(), Some(&live(&[]))).unwrap();
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
}

/// Calico's etcd prefix of IPAM handles.
#[cfg(feature = "etcd")]
const HANDLES_PREFIX: &str = "/calico/ipam/v2/handle/";

/// The handle keys in `etcd` (`etcdctl get --prefix --keys-only`, run in the
/// server's namespace).
#[cfg(feature = "etcd")]
fn etcd_handle_keys(etcd: &testlab::Etcd) -> Vec<String> {
    etcd.ctl(&["get", "--prefix", "--keys-only", HANDLES_PREFIX])
        .expect("etcdctl get handles")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `ipam check` of the datastore in `etcd` with `live` as the live
/// containers, from the server's namespace (the client's runtime and its
/// connections are made on a thread inside it).
#[cfg(feature = "etcd")]
fn etcd_check(etcd: &testlab::Etcd, live: &[&str]) -> calinet_ipam::report::CheckReport {
    let endpoint = etcd.endpoint();
    let live: HashSet<calinet_ipam::HandleId> = live.iter().map(|c| common::handle(c)).collect();
    let check = move || {
        let store = calinet_ipam::EtcdStore::connect(calinet_ipam::EtcdConfig::new([endpoint]))
            .expect("etcd client");
        calinet_ipam::report::check(&store, Some(&live)).expect("ipam check on etcd")
    };
    match etcd.netns() {
        Some(ns) => ns.enter(check).expect("enter the etcd's namespace"),
        None => check(),
    }
}

/// The block in `etcd` holding `ip` (Calico's JSON, read with `etcdctl`): its
/// affinity and the handle its allocation of `ip` carries.
#[cfg(feature = "etcd")]
fn etcd_block_owner(etcd: &testlab::Etcd, ip: IpAddr) -> (String, String) {
    let out = etcd
        .ctl(&["get", "--prefix", "/calico/ipam/v2/assignment/ipv4/block/"])
        .expect("etcdctl get blocks");
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    for pair in lines.chunks(2) {
        let block: Value = serde_json::from_str(pair[1]).expect("block value is JSON");
        let cidr: ipnet::IpNet = block["cidr"].as_str().unwrap().parse().unwrap();
        if !cidr.contains(&ip) {
            continue;
        }
        let (IpAddr::V4(ip4), IpAddr::V4(net4)) = (ip, cidr.network()) else {
            panic!("IPv4 block {cidr} for {ip}");
        };
        let ordinal = (u32::from(ip4) - u32::from(net4)) as usize;
        let attr = block["allocations"][ordinal]
            .as_u64()
            .unwrap_or_else(|| panic!("{ip} not allocated in {}: {block}", pair[0]));
        let handle = block["attributes"][attr as usize]["handle_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let affinity = block["affinity"].as_str().unwrap_or_default().to_owned();
        return (affinity, handle);
    }
    panic!("no block holds {ip}: {out}");
}

/// The full plugin, exec'd in the node's namespace as a runtime does, with
/// `datastore_type: etcdv3` in its ipam section and a real etcd the lab runs
/// inside that namespace (so `127.0.0.1` is the node's loopback, as for a
/// plugin talking to a local etcd): ADD allocates in etcd and plumbs the pod,
/// a retried ADD keeps the address, CHECK passes, DEL releases and unplumbs
/// (twice), and with etcd down ADD is code 11 naming etcd, with nothing left
/// behind.
#[cfg(feature = "etcd")]
#[test]
fn full_plugin_on_a_real_etcd_in_the_node_namespace() {
    testlab::require_root!();
    testlab::require!(testlab::Feature::Etcd);
    let lab = Lab::new("cni_full_etcd").unwrap();
    let node = lab_node(&lab);
    let pod = lab.pod("db-0").unwrap();
    let etcd = lab.etcd_in(&node).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pool: ipnet::IpNet = "172.16.11.0/24".parse().unwrap();
    let cfg = json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "calinet", "mtu": 1400,
        "nodename": "node-1",
        "ipam": {"type": "calinet-ipam", "ipv4_pools": [pool.to_string()],
                 "datastore_type": "etcdv3", "etcd_endpoints": etcd.endpoint(),
                 "ipam_lock_file": dir.path().join("ipam.lock")}
    })
    .to_string();
    let host = node.path();
    let add = Call::new("ADD", "db-0", &pod.path(), &cfg);

    let out = add.exec(CALINET, Some(&host));
    out.ok();
    let r = out.json();
    let (ip, host_if) = assert_plumbed(&node, &pod, "db-0", &r);
    assert!(pool.contains(&ip), "{ip} not from {pool}");
    assert!(
        node.ping(ip, Duration::from_secs(3)),
        "node cannot ping pod {ip}"
    );

    // The allocation is in etcd under Calico's keys: the handle, and the
    // address in a block affine to this node carrying that handle.
    let handle_key = format!("{HANDLES_PREFIX}k8s-pod-network.db-0");
    assert_eq!(etcd_handle_keys(&etcd), std::slice::from_ref(&handle_key));
    let (affinity, owner) = etcd_block_owner(&etcd, ip);
    assert_eq!(affinity, "host:node-1");
    assert_eq!(owner, "k8s-pod-network.db-0");
    let report = etcd_check(&etcd, &["db-0"]);
    assert!(
        report.is_clean() && report.addresses_in_use == 1,
        "{report:?}"
    );

    // A runtime's retry: same address, still one interface and one allocation.
    let again = add.exec(CALINET, Some(&host));
    again.ok();
    assert_eq!(result_ip(&again.json()), ip);
    assert_eq!(cali_links(&node), std::slice::from_ref(&host_if));
    assert_eq!(etcd_check(&etcd, &["db-0"]).addresses_in_use, 1);

    let check = add.with_command("CHECK").with_prev_result(&r);
    assert_eq!(check.exec(CALINET, Some(&host)).ok(), "");

    // DEL releases in etcd and removes the interface; a second DEL succeeds.
    for _ in 0..2 {
        let out = add.with_command("DEL").exec(CALINET, Some(&host));
        assert_eq!(out.ok(), "", "DEL prints nothing");
    }
    assert_unplumbed(&node, &pod, ip);
    assert!(etcd_handle_keys(&etcd).is_empty(), "handle left in etcd");
    let report = etcd_check(&etcd, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );

    // etcd down: a spec error naming the datastore, and no interface.
    etcd.stop();
    let pod2 = lab.pod("db-1").unwrap();
    let down = Call::new("ADD", "db-1", &pod2.path(), &cfg).exec(CALINET, Some(&host));
    let msg = down.err(11);
    println!("ADD with etcd stopped: {}", down.stdout);
    let lower = msg.to_lowercase();
    assert!(
        lower.contains("etcd") || lower.contains("datastore"),
        "{msg}"
    );
    // `details` says which etcd could not be reached.
    let details = down.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(details.contains(&etcd.endpoint()), "{details}");
    assert!(cali_links(&node).is_empty(), "interface left behind");
    assert!(pod2.link("eth0").unwrap().is_none(), "pod side left behind");
    etcd.start().unwrap();
    assert!(
        etcd_handle_keys(&etcd).is_empty(),
        "handle of the failed ADD"
    );
    let report = etcd_check(&etcd, &[]);
    assert!(
        report.is_clean() && report.addresses_in_use == 0,
        "{report:?}"
    );
}

/// Without the `etcd` feature, `etcdv3` is an unsupported field (code 2).
#[cfg(not(feature = "etcd"))]
#[test]
fn etcd_without_the_feature_is_code_2() {
    let cfg = json!({
        "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ptp",
        "datastore_type": "etcdv3", "etcd_endpoints": "http://127.0.0.1:1",
        "ipam": {"type": "calinet-ipam"}
    })
    .to_string();
    let msg = Call::new("ADD", "a", Path::new("/run/netns/x"), &cfg)
        .exec(CALINET_IPAM, None)
        .err(2);
    assert!(msg.contains("etcd"), "{msg}");
}
