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
