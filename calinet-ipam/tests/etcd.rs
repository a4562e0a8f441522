//! `EtcdStore` against a real etcd (Debian `etcd-server`, started by the test
//! lab on a loopback port with a temporary data directory).

use std::time::Duration;

use calinet_ipam::{EtcdConfig, EtcdStore, RetryPolicy, Store, StoreError, conformance};

/// A store on `endpoint` with short timeouts, so fault tests stay quick.
fn store(endpoint: &str) -> EtcdStore {
    EtcdStore::connect(
        EtcdConfig::new([endpoint])
            .with_timeouts(Duration::from_secs(1), Duration::from_secs(3))
            .with_retry(RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
            }),
    )
    .expect("connect")
}

#[test]
fn etcd_store_conforms() -> testlab::Result<()> {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_conf")?;
    let etcd = lab.etcd()?;
    let s = store(&etcd.endpoint());
    // Every case needs an empty store: wipe the keyspace between cases.
    conformance::run_all(|| {
        for kv in s.list("").expect("list all") {
            s.delete(&kv.key, kv.mod_revision).expect("wipe");
        }
        &s
    });
    Ok(())
}

#[test]
fn etcd_list_pages_are_one_snapshot() -> testlab::Result<()> {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_page")?;
    let etcd = lab.etcd()?;
    let small =
        EtcdStore::connect(EtcdConfig::new([etcd.endpoint()]).with_page_size(7)).expect("connect");
    for i in 0..50 {
        small
            .create(&format!("/calico/ipam/v2/handle/h{i:03}"), b"{}")
            .expect("create");
    }
    small
        .create("/calico/ipam/v2/handlex", b"{}")
        .expect("create outside");
    let l = small
        .list_with_revision("/calico/ipam/v2/handle/")
        .expect("list");
    assert_eq!(l.kvs.len(), 50);
    assert!(l.kvs.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(l.kvs[49].key, "/calico/ipam/v2/handle/h049");
    assert!(l.revision >= l.kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0));
    Ok(())
}

#[test]
fn etcd_down_is_a_typed_retryable_error_naming_endpoint_and_key() -> testlab::Result<()> {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_down")?;
    let etcd = lab.etcd()?;
    let s = store(&etcd.endpoint());
    let r = s.create("/calico/ipam/v2/handle/a", b"1").expect("create");
    etcd.stop();
    let key = "/calico/ipam/v2/handle/a";
    let e = s.update(key, b"2", r).expect_err("etcd is down");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    let chain = format!("{e}: {}", std::error::Error::source(&e).expect("source"));
    assert!(
        chain.contains(key) && chain.contains(&etcd.endpoint()),
        "{chain}"
    );
    etcd.start()?;
    // The same handle reconnects; the update either never happened or (if it
    // was in flight) happened once: a re-read decides.
    let kv = s.get(key).expect("get after restart").expect("present");
    if kv.value == b"1" {
        s.update(key, b"2", kv.mod_revision)
            .expect("update after restart");
    }
    assert_eq!(s.get(key).expect("get").expect("present").value, b"2");
    Ok(())
}

#[test]
fn etcd_second_endpoint_takes_over() -> testlab::Result<()> {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_failover")?;
    let etcd = lab.etcd()?;
    // The first endpoint refuses connections; calls move on to the second.
    let s = EtcdStore::connect(
        EtcdConfig::new(["http://127.0.0.1:1".to_owned(), etcd.endpoint()]).with_retry(
            RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            },
        ),
    )
    .expect("connect");
    let r = s
        .create("/t/failover", b"x")
        .expect("create via the second endpoint");
    assert_eq!(
        s.get("/t/failover")
            .expect("get")
            .expect("present")
            .mod_revision,
        r
    );
    Ok(())
}

/// `etcdctl` (the independent reader) sees Calico's key layout and JSON for
/// what the allocator wrote through `EtcdStore`.
#[test]
fn etcdctl_reads_calico_layout_written_by_the_allocator() -> testlab::Result<()> {
    use calinet_ipam::{AutoAssignRequest, IpPool, IpPoolSpec, Ipam};
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_layout")?;
    let etcd = lab.etcd()?;
    let ipam = Ipam::new(store(&etcd.endpoint()));
    let mut spec = IpPoolSpec::with_cidr("172.16.0.0/16".parse().expect("cidr"));
    spec.block_size = Some(26);
    ipam.put_pool(&IpPool::new("default-ipv4-ippool", spec))
        .expect("pool");
    let got = ipam
        .auto_assign(
            &AutoAssignRequest::v4(
                "k8s-pod-network.abc".parse().expect("handle"),
                "node-a".parse().expect("node"),
                2,
            ),
            std::time::SystemTime::now(),
        )
        .expect("auto_assign");
    let block = got.v4[0].block.net().to_string(); // e.g. 172.16.12.64/26
    let block_key_part = block.replace('/', "-");
    let etcdctl = |args: &[&str]| -> String {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint()])
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl {args:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let keys: Vec<String> = etcdctl(&["get", "--prefix", "/calico/", "--keys-only"])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    for want in [
        format!("/calico/ipam/v2/assignment/ipv4/block/{block_key_part}"),
        format!("/calico/ipam/v2/host/node-a/ipv4/block/{block_key_part}"),
        "/calico/ipam/v2/handle/k8s-pod-network.abc".to_owned(),
        "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool".to_owned(),
    ] {
        assert!(keys.contains(&want), "{want} not in {keys:?}");
    }
    let json = |key: &str| -> serde_json::Value {
        serde_json::from_str(etcdctl(&["get", "--print-value-only", key]).trim()).expect("JSON")
    };
    let b = json(&format!(
        "/calico/ipam/v2/assignment/ipv4/block/{block_key_part}"
    ));
    assert_eq!(b["cidr"], block.as_str());
    assert_eq!(b["affinity"], "host:node-a");
    let allocations = b["allocations"].as_array().expect("allocations");
    assert_eq!(allocations.len(), 64);
    assert_eq!(allocations.iter().filter(|a| !a.is_null()).count(), 2);
    assert_eq!(b["unallocated"].as_array().expect("unallocated").len(), 62);
    assert_eq!(b["attributes"][0]["handle_id"], "k8s-pod-network.abc");
    let h = json("/calico/ipam/v2/handle/k8s-pod-network.abc");
    assert_eq!(h["handleID"], "k8s-pod-network.abc");
    assert_eq!(h["block"][block.as_str()], 2);
    let a = json(&format!(
        "/calico/ipam/v2/host/node-a/ipv4/block/{block_key_part}"
    ));
    assert_eq!(a["state"], "confirmed");
    let p = json("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool");
    assert_eq!(p["kind"], "IPPool");
    assert_eq!(p["spec"]["cidr"], "172.16.0.0/16");
    Ok(())
}
