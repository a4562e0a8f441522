//! `EtcdStore` against a real etcd (Debian `etcd-server`, started by the test
//! lab on a loopback port with a temporary data directory).

mod common;

use std::time::Duration;

use calinet_ipam::{EtcdConfig, EtcdStore, RetryPolicy, Store, StoreError, conformance};

#[test]
fn etcd_store_conforms() -> testlab::Result<()> {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_conf")?;
    let etcd = lab.etcd()?;
    let s = common::store(&etcd.endpoint());
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
    let s = common::store(&etcd.endpoint());
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
    let ipam = Ipam::new(common::store(&etcd.endpoint()));
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
    // Calico's IPAMHandle value: the handle id is only in the key.
    assert_eq!(
        h,
        serde_json::json!({"block": {block.as_str(): 2}, "deleted": false})
    );
    let a = json(&format!(
        "/calico/ipam/v2/host/node-a/ipv4/block/{block_key_part}"
    ));
    assert_eq!(
        a,
        serde_json::json!({"state": "confirmed", "deleted": false})
    );
    let p = json("/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool");
    assert_eq!(p["kind"], "IPPool");
    assert_eq!(p["spec"]["cidr"], "172.16.0.0/16");
    Ok(())
}

/// A loopback TCP proxy in front of etcd that can swallow etcd's answers
/// (requests still get through), to lose the answer of a write in flight.
struct AnswerEater {
    port: u16,
    swallow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl AnswerEater {
    fn start(target: std::net::SocketAddr) -> AnswerEater {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let swallow = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sw = swallow.clone();
        // Threads end when the test process ends or the sockets close.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream, eat: Option<_>| {
                    std::thread::spawn(move || {
                        let eat: Option<std::sync::Arc<std::sync::atomic::AtomicBool>> = eat;
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if eat.as_ref().is_some_and(|e| e.load(Ordering::SeqCst)) {
                                continue;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                let (c2, s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                pipe(client, server, None);
                pipe(s2, c2, Some(sw.clone()));
            }
        });
        AnswerEater { port, swallow }
    }
}

/// A write whose answer is lost is reported as retryable with an unknown
/// outcome, not repeated blindly: here it was in fact applied, and a blind
/// retry of the compare-and-swap would have failed with a confusing conflict.
#[test]
fn etcd_lost_answer_to_a_write_is_not_retried_blindly() -> testlab::Result<()> {
    use std::sync::atomic::Ordering;
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_lost_answer")?;
    let etcd = lab.etcd()?;
    let proxy = AnswerEater::start(etcd.client_addr());
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let s = EtcdStore::connect(
        EtcdConfig::new([endpoint.as_str()])
            .with_timeouts(Duration::from_secs(1), Duration::from_secs(1))
            .with_retry(RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            }),
    )
    .expect("connect");
    let key = "/calico/ipam/v2/handle/lost";
    let r1 = s.create(key, b"1").expect("create through the proxy");
    proxy.swallow.store(true, Ordering::SeqCst);
    let e = s
        .update(key, b"2", r1)
        .expect_err("the answer is swallowed");
    proxy.swallow.store(false, Ordering::SeqCst);
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    let src = std::error::Error::source(&e).expect("source");
    let etcd_err = src
        .downcast_ref::<calinet_ipam::EtcdError>()
        .expect("an EtcdError");
    assert!(etcd_err.outcome_unknown(), "{etcd_err}");
    assert!(
        matches!(
            etcd_err,
            calinet_ipam::EtcdError::Endpoint { attempts: 1, .. }
        ),
        "a write with a lost answer must not be sent again: {etcd_err:?}"
    );
    assert!(etcd_err.to_string().contains(&endpoint), "{etcd_err}");
    // The broken connection was dropped; the next call reconnects and shows
    // that the update did happen, exactly once.
    let kv = s.get(key).expect("get after reconnect").expect("present");
    assert_eq!(kv.value, b"2");
    assert!(kv.mod_revision > r1);
    Ok(())
}

/// With etcd authentication enabled, the right credentials work and a
/// missing or wrong password is a (non-retryable) error naming the endpoint.
#[test]
fn etcd_with_authentication() -> testlab::Result<()> {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_auth")?;
    let etcd = lab.etcd()?;
    let etcdctl = |args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint()])
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    etcdctl(&["user", "add", "root:calinet-test-pw", "--interactive=false"]);
    etcdctl(&["auth", "enable"]);
    let with = |user: Option<(&str, &str)>| {
        let mut cfg = EtcdConfig::new([etcd.endpoint()]).with_retry(RetryPolicy {
            attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        });
        if let Some((u, p)) = user {
            cfg = cfg.with_credentials(u, p);
        }
        EtcdStore::connect(cfg).expect("connect")
    };
    let good = with(Some(("root", "calinet-test-pw")));
    let r = good
        .create("/calico/ipam/v2/handle/auth", b"{}")
        .expect("create");
    assert_eq!(
        good.get("/calico/ipam/v2/handle/auth")
            .expect("get")
            .expect("present")
            .mod_revision,
        r
    );
    for (what, user) in [
        ("no credentials", None),
        ("wrong password", Some(("root", "not-the-password"))),
    ] {
        let e = with(user)
            .get("/calico/ipam/v2/handle/auth")
            .expect_err(what);
        assert!(matches!(e, StoreError::Backend { .. }), "{what}: {e:?}");
        let src = std::error::Error::source(&e).expect("source").to_string();
        assert!(src.contains(&etcd.endpoint()), "{what}: {src}");
    }
    Ok(())
}
