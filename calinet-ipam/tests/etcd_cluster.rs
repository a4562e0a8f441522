//! Multi-process tests against a real etcd: 4 processes acting as 8 nodes
//! allocate and release 5,000 addresses, with and without etcd going down in
//! the middle; and watches fed by another process, across an etcd restart,
//! and from a compacted revision.
//!
//! The worker processes are this test binary run again with
//! `CALINET_ETCD_ROLE` set: the test that started them is re-run in worker
//! mode (`--exact <name>`), does its part and writes its result to a file.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use calinet_ipam::report::check;
use calinet_ipam::{
    AutoAssignRequest, Error, EtcdStore, HandleId, IpPool, IpPoolSpec, Ipam, Store, StoreError,
    WatchError, WatchEvent, keys,
};

const ROLE: &str = "CALINET_ETCD_ROLE";
const ENDPOINT: &str = "CALINET_ETCD_ENDPOINT";
const OUT: &str = "CALINET_ETCD_OUT";
const WORKERS: usize = 4;
const NODES_PER_WORKER: usize = 2;
const ADDRESSES: usize = 5_000;

/// Start this test again as worker `id` of `role`.
fn spawn_worker(test: &str, role: &str, id: usize, endpoint: &str, out: &Path) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, format!("{role}:{id}"))
        .env(ENDPOINT, endpoint)
        .env(OUT, out)
        .env_remove("CALINET_SKIP_LOG")
        // libtest's summary of the worker run must not be counted as a test
        // of its own by scripts/test.sh; panics still show on stderr.
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn worker process")
}

/// `Some(id)` when this process is worker `id` of `role`.
fn worker_role(role: &str) -> Option<usize> {
    let v = std::env::var(ROLE).ok()?;
    let (r, id) = v.split_once(':')?;
    (r == role).then(|| id.parse().expect("worker id"))
}

/// Worker processes, killed and reaped on drop (also when a test panics).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_all(mut workers: Workers, limit: Duration) {
    let deadline = Instant::now() + limit;
    for c in &mut workers.0 {
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                assert!(status.success(), "worker failed: {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not finish within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Run `f` until it succeeds, counting the typed retryable error; any other
/// error fails the worker.
fn retry_unavailable<T>(
    what: &str,
    unavailable: &mut u64,
    mut f: impl FnMut() -> calinet_ipam::Result<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match f() {
            Ok(v) => return v,
            Err(Error::Store(StoreError::Unavailable { .. })) if Instant::now() < deadline => {
                *unavailable += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{what}: {e} ({:?})", std::error::Error::source(&e)),
        }
    }
}

/// One worker: two nodes (one thread each, each with its own allocator over
/// the process's one `EtcdStore`). Node thread allocates one address per
/// handle, releases every second handle, and reports the handles it keeps.
fn alloc_worker(id: usize) {
    let endpoint = std::env::var(ENDPOINT).expect("endpoint");
    let out = PathBuf::from(std::env::var(OUT).expect("out"));
    let s = Arc::new(common::store(&endpoint));
    let per_node = ADDRESSES / (WORKERS * NODES_PER_WORKER);
    let results: Vec<(Vec<String>, Vec<String>, u64)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..NODES_PER_WORKER)
            .map(|n| {
                let s = s.clone();
                sc.spawn(move || {
                    let node_no = id * NODES_PER_WORKER + n;
                    let node: calinet_ipam::NodeName =
                        format!("node-{node_no}").parse().expect("node");
                    let ipam = Ipam::new(s);
                    let mut unavailable = 0;
                    let mut kept = Vec::new();
                    let mut addrs = Vec::new();
                    for k in 0..per_node {
                        let handle: HandleId =
                            format!("stress.n{node_no}.{k}").parse().expect("handle");
                        let req = AutoAssignRequest::v4(handle.clone(), node.clone(), 1);
                        let got = retry_unavailable("auto_assign", &mut unavailable, || {
                            // After a lost answer the first try may have
                            // succeeded: ask the store before assigning again.
                            let mine = ipam.addresses_of(&handle)?;
                            if !mine.is_empty() {
                                return Ok(mine.into_iter().map(|a| a.addr).collect::<Vec<_>>());
                            }
                            ipam.auto_assign(&req, SystemTime::now())
                                .map(|a| a.v4.into_iter().map(|a| a.addr).collect())
                        });
                        assert_eq!(got.len(), 1, "handle {handle} holds {got:?}");
                        addrs.push(got[0].to_string());
                        kept.push(handle.to_string());
                        if k % 2 == 1 {
                            let prev: HandleId = format!("stress.n{node_no}.{}", k - 1)
                                .parse()
                                .expect("handle");
                            retry_unavailable("release_handle", &mut unavailable, || {
                                ipam.release_handle(&prev, SystemTime::now())
                            });
                            kept.retain(|h| *h != prev.to_string());
                        }
                    }
                    (kept, addrs, unavailable)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("node thread"))
            .collect()
    });
    let mut text = String::new();
    for (kept, addrs, unavailable) in results {
        text.push_str(&format!("unavailable {unavailable}\n"));
        for h in kept {
            text.push_str(&format!("keep {h}\n"));
        }
        for a in addrs {
            text.push_str(&format!("assigned {a}\n"));
        }
    }
    std::fs::write(&out, text).expect("write worker result");
}

struct RunResult {
    live: HashSet<HandleId>,
    unavailable: u64,
    assigned: usize,
}

fn read_results(dir: &Path) -> RunResult {
    let mut r = RunResult {
        live: HashSet::new(),
        unavailable: 0,
        assigned: 0,
    };
    for id in 0..WORKERS {
        let text = std::fs::read_to_string(dir.join(format!("w{id}"))).expect("worker result");
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("keep", h)) => {
                    r.live.insert(h.parse().expect("handle"));
                }
                Some(("unavailable", n)) => r.unavailable += n.parse::<u64>().expect("count"),
                Some(("assigned", _)) => r.assigned += 1,
                _ => panic!("bad worker line {line:?}"),
            }
        }
    }
    r
}

fn setup_pool(s: &EtcdStore) {
    let mut spec = IpPoolSpec::with_cidr("172.16.0.0/16".parse().expect("cidr"));
    spec.block_size = Some(26);
    Ipam::new(s)
        .put_pool(&IpPool::new("stress-pool", spec))
        .expect("put pool");
}

/// Every address held at most once, handles agree with blocks, and the
/// held handles are exactly the ones the workers kept.
fn assert_clean(s: &EtcdStore, r: &RunResult) {
    let report = check(s, Some(&r.live)).expect("check");
    assert!(
        report.duplicates.is_empty(),
        "duplicates: {:?}",
        report.duplicates
    );
    assert!(report.is_clean(), "check not clean: {report:#?}");
    let handles = s.list(keys::HANDLES_PREFIX).expect("list handles");
    assert_eq!(
        handles.len(),
        r.live.len(),
        "handle records vs kept handles"
    );
}

#[test]
fn etcd_four_processes_eight_nodes_5000_addresses() -> testlab::Result<()> {
    const NAME: &str = "etcd_four_processes_eight_nodes_5000_addresses";
    if let Some(id) = worker_role("alloc") {
        alloc_worker(id);
        return Ok(());
    }
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_stress")?;
    let etcd = lab.etcd()?;
    let s = common::store(&etcd.endpoint());
    setup_pool(&s);
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    let children = (0..WORKERS)
        .map(|id| {
            spawn_worker(
                NAME,
                "alloc",
                id,
                &etcd.endpoint(),
                &dir.path().join(format!("w{id}")),
            )
        })
        .collect();
    let children = Workers(children);
    wait_all(children, Duration::from_secs(150));
    let r = read_results(dir.path());
    eprintln!(
        "{} assignments by {WORKERS} processes in {:?}",
        r.assigned,
        t0.elapsed()
    );
    assert_eq!(r.assigned, ADDRESSES);
    // Every second handle is released; a node's last odd one is kept.
    let per_node = ADDRESSES / (WORKERS * NODES_PER_WORKER);
    assert_eq!(
        r.live.len(),
        WORKERS * NODES_PER_WORKER * per_node.div_ceil(2)
    );
    assert_eq!(r.unavailable, 0, "etcd was up the whole time");
    assert_clean(&s, &r);
    Ok(())
}

#[test]
fn etcd_stopped_mid_run_then_restarted() -> testlab::Result<()> {
    const NAME: &str = "etcd_stopped_mid_run_then_restarted";
    if let Some(id) = worker_role("alloc") {
        alloc_worker(id);
        return Ok(());
    }
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_fault")?;
    let etcd = lab.etcd()?;
    let s = common::store(&etcd.endpoint());
    setup_pool(&s);
    let dir = tempfile::tempdir().expect("tempdir");
    let children = (0..WORKERS)
        .map(|id| {
            spawn_worker(
                NAME,
                "alloc",
                id,
                &etcd.endpoint(),
                &dir.path().join(format!("w{id}")),
            )
        })
        .collect();
    let children = Workers(children);
    // Stop etcd once a good part of the run is done, keep it down for 2 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = s.list(keys::HANDLES_PREFIX).map(|l| l.len()).unwrap_or(0);
        if n >= 600 {
            break;
        }
        assert!(Instant::now() < deadline, "workers made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    etcd.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    etcd.start()?;
    eprintln!("etcd was down for {:?}", down.elapsed());
    wait_all(children, Duration::from_secs(150));
    let r = read_results(dir.path());
    assert_eq!(r.assigned, ADDRESSES);
    assert!(
        r.unavailable > 0,
        "the outage must surface as StoreError::Unavailable"
    );
    eprintln!(
        "{} typed retryable errors while etcd was down",
        r.unavailable
    );
    let report = check(&s, Some(&r.live)).expect("check");
    assert!(
        report.duplicates.is_empty(),
        "duplicates: {:?}",
        report.duplicates
    );
    assert!(report.is_consistent(), "corruption: {report:#?}");
    // Writes whose answer was lost may have left in-flight state (a pending
    // affinity, an address of a handle that was then re-assigned); garbage
    // collection reclaims it and the store ends clean.
    let ipam = Ipam::new(&s);
    ipam.release_leaked(&r.live, SystemTime::now())
        .expect("release leaked");
    ipam.release_empty_affinities().expect("gc affinities");
    assert_clean(&s, &r);
    Ok(())
}

/// The writer process of the watch tests: bumps `/calinet-test/counter` from
/// 1 to `n` (each a CAS update), retrying through outages.
fn counter_writer(n: u64) {
    let endpoint = std::env::var(ENDPOINT).expect("endpoint");
    let s = common::store(&endpoint);
    let key = "/calinet-test/counter";
    let mut i = 1;
    while i <= n {
        let cur = match s.get(key) {
            Ok(kv) => kv.expect("counter exists"),
            Err(StoreError::Unavailable { .. }) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => panic!("get: {e}"),
        };
        let have: u64 = String::from_utf8_lossy(&cur.value).parse().expect("number");
        if have >= i {
            // A write whose answer was lost did happen.
            i = have + 1;
            continue;
        }
        match s.update(key, i.to_string().as_bytes(), cur.mod_revision) {
            Ok(_) => i += 1,
            Err(StoreError::Unavailable { .. }) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("update: {e}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn counter_values(events: &[WatchEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| match e {
            WatchEvent::Put(kv) => String::from_utf8_lossy(&kv.value).parse().expect("number"),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn etcd_watch_sees_other_process_in_order_across_restart() -> testlab::Result<()> {
    const NAME: &str = "etcd_watch_sees_other_process_in_order_across_restart";
    const N: u64 = 300;
    if worker_role("counter").is_some() {
        counter_writer(N);
        return Ok(());
    }
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_watch")?;
    let etcd = lab.etcd()?;
    let s = common::store(&etcd.endpoint());
    let start = s
        .create("/calinet-test/counter", b"0")
        .expect("create counter");
    let mut live = s.watch("/calinet-test/", start + 1).expect("watch");
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Workers(vec![spawn_worker(
        NAME,
        "counter",
        0,
        &etcd.endpoint(),
        &dir.path().join("w"),
    )]);
    // Take some events, remember where we are, then restart etcd under the
    // running writer and watcher.
    let mut seen = live
        .collect_timeout(50, Duration::from_secs(30))
        .expect("first events");
    let resume_from = live.next_revision();
    etcd.stop();
    std::thread::sleep(Duration::from_secs(1));
    etcd.start()?;
    wait_all(writer, Duration::from_secs(120));
    // The running watch reconnected by itself and missed nothing.
    let rest = live
        .collect_timeout((N as usize) - seen.len(), Duration::from_secs(30))
        .expect("events after restart");
    seen.extend(rest);
    assert_eq!(counter_values(&seen), (1..=N).collect::<Vec<_>>());
    assert!(seen.windows(2).all(|w| w[0].revision() < w[1].revision()));
    // A new watch resumed from the position taken before the restart sees
    // exactly the remaining changes.
    let mut resumed = s.watch("/calinet-test/", resume_from).expect("resume");
    let after = resumed
        .collect_timeout(N as usize - 50, Duration::from_secs(30))
        .expect("resumed events");
    assert_eq!(counter_values(&after), (51..=N).collect::<Vec<_>>());
    assert!(resumed.try_next().expect("watch").is_none());
    Ok(())
}

#[test]
fn etcd_watch_reports_compaction() -> testlab::Result<()> {
    testlab::require!(testlab::Feature::Etcd);
    let lab = testlab::Lab::new("etcd_compact")?;
    let etcd = lab.etcd()?;
    let s = common::store(&etcd.endpoint());
    let first = s.create("/c/a", b"1").expect("create");
    let mut rev = first;
    for i in 2..10 {
        rev = s
            .update("/c/a", i.to_string().as_bytes(), rev)
            .expect("update");
    }
    // Compact with etcd's own tool, as an operator (or Calico) would.
    let out = Command::new("etcdctl")
        .args(["--endpoints", &etcd.endpoint(), "compact", &rev.to_string()])
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl");
    assert!(
        out.status.success(),
        "etcdctl compact: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut w = s.watch("/c/", first).expect("watch");
    match w.next_timeout(Duration::from_secs(10)) {
        Err(e @ WatchError::Compacted { .. }) => {
            assert!(e.needs_relist());
            let WatchError::Compacted {
                requested,
                compact_revision,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!((requested, compact_revision), (first, rev));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(w.next().is_none(), "a failed watch ends");
    // Re-list and watch again: the recovery the error asks for works.
    let l = s.list_with_revision("/c/").expect("relist");
    assert_eq!(l.kvs[0].value, b"9");
    let mut w = s.watch("/c/", l.revision + 1).expect("watch again");
    let r = s.update("/c/a", b"10", rev).expect("update");
    let ev = w
        .next_timeout(Duration::from_secs(10))
        .expect("watch")
        .expect("event");
    assert_eq!(ev.revision(), r);
    // The store's own compact call gives the same signal.
    s.compact(r).expect("compact");
    let mut w = s.watch("/c/", r - 1).expect("watch");
    assert!(
        matches!(w.next_timeout(Duration::from_secs(10)), Err(WatchError::Compacted { compact_revision, .. }) if compact_revision == r)
    );
    Ok(())
}
