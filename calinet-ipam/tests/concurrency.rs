//! Concurrency and crash safety on one SQLite file: 4 threads, 4 processes,
//! and processes SIGKILLed mid-allocation.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use calinet_ipam::report::check;
use calinet_ipam::{AutoAssignRequest, Error, HandleId, IpPool, IpPoolSpec, Ipam, SqliteStore};

const WORKER_ENV: &str = "CALINET_IPAM_WORKER";

fn setup(path: &Path) {
    let ipam = Ipam::new(SqliteStore::open(path).expect("open"));
    let mut spec = IpPoolSpec::with_cidr("10.9.0.0/24".parse().expect("cidr"));
    spec.block_size = Some(28);
    ipam.put_pool(&IpPool::new("stress", spec)).expect("pool");
}

/// Deterministic xorshift so workers need no RNG crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Allocate and release `iterations` times (forever if 0) as `node`; return
/// the addresses still held. With `out`, append each held set line to it
/// after every step so a parent sees progress.
fn work(path: &Path, node: &str, tag: &str, iterations: u64) -> BTreeSet<(IpAddr, String)> {
    let ipam = Ipam::new(SqliteStore::open(path).expect("open"));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15
        ^ tag
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31) + u64::from(b)));
    let mut held: Vec<(IpAddr, HandleId)> = Vec::new();
    let mut i = 0u64;
    while iterations == 0 || i < iterations {
        i += 1;
        if held.len() < 20 && (held.is_empty() || !rng.next().is_multiple_of(3)) {
            let h: HandleId = format!("{tag}-{i}").parse().expect("handle");
            let req = AutoAssignRequest::v4(h.clone(), node.parse().expect("node"), 1);
            match ipam.auto_assign(&req, SystemTime::now()) {
                Ok(a) => {
                    let addr = a.v4[0].addr;
                    assert!(
                        !held.iter().any(|(x, _)| *x == addr),
                        "{tag}: {addr} handed out twice"
                    );
                    held.push((addr, h));
                }
                Err(Error::Exhausted { .. }) => {}
                Err(e) => panic!("{tag}: auto_assign: {e:?}"),
            }
        } else {
            let k = (rng.next() % held.len() as u64) as usize;
            let (addr, h) = held.swap_remove(k);
            let got = ipam.release_handle(&h, SystemTime::now()).expect("release");
            assert_eq!(got, vec![addr], "{tag}: release of {h} returned {got:?}");
        }
    }
    held.into_iter().map(|(a, h)| (a, h.to_string())).collect()
}

/// Worker process entry point (re-executed test binary).
#[test]
#[ignore = "worker process for the multi-process tests; started by them"]
fn worker_process() {
    let spec = std::env::var(WORKER_ENV).expect("run by the multi-process tests only");
    let mut parts = spec.split(',');
    let (path, node, tag, iters) = (
        parts.next().expect("path"),
        parts.next().expect("node"),
        parts.next().expect("tag"),
        parts
            .next()
            .expect("iterations")
            .parse::<u64>()
            .expect("number"),
    );
    let held = work(Path::new(path), node, tag, iters);
    for (a, h) in held {
        println!("HELD {a} {h}");
    }
}

fn spawn_worker(path: &Path, node: &str, tag: &str, iterations: u64) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "worker_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            WORKER_ENV,
            format!("{},{node},{tag},{iterations}", path.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

fn store_allocations(path: &Path) -> BTreeSet<(IpAddr, String)> {
    let d = calinet_ipam::report::dump(&SqliteStore::open(path).expect("open")).expect("dump");
    d.blocks
        .iter()
        .flat_map(|(b, _)| {
            b.allocations()
                .map(|(o, a)| {
                    (
                        b.addr(o),
                        a.handle.as_deref().unwrap_or_default().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_no_duplicates(held: &BTreeSet<(IpAddr, String)>) {
    let mut seen = HashSet::new();
    for (a, h) in held {
        assert!(seen.insert(*a), "{a} held twice (second by {h})");
    }
}

#[test]
fn four_threads_on_one_sqlite_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ipam.db");
    setup(&path);
    let mut all = BTreeSet::new();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                let path = &path;
                // Two threads share a node so they contend for the same blocks.
                s.spawn(move || work(path, &format!("node-{}", t / 2), &format!("t{t}"), 150))
            })
            .collect();
        for h in hs {
            all.extend(h.join().expect("thread"));
        }
    });
    assert_no_duplicates(&all);
    assert_eq!(
        store_allocations(&path),
        all,
        "store and threads disagree on held addresses"
    );
    let r = check(&SqliteStore::open(&path).expect("open"), None).expect("check");
    assert!(r.is_clean(), "{r:#?}");
}

#[test]
fn four_processes_on_one_sqlite_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ipam.db");
    setup(&path);
    let children: Vec<Child> = (0..4)
        .map(|p| spawn_worker(&path, &format!("node-{}", p % 3), &format!("p{p}"), 150))
        .collect();
    let mut all = BTreeSet::new();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("1 passed"), "worker did not run: {stdout}");
        // libtest may print "test worker_process ... " on the same line as the first HELD.
        for line in stdout
            .lines()
            .filter_map(|l| l.find("HELD ").map(|i| &l[i + 5..]))
        {
            let (a, h) = line.split_once(' ').expect("HELD line");
            assert!(
                all.insert((a.parse().expect("addr"), h.to_owned())),
                "duplicate line {line}"
            );
        }
    }
    assert_no_duplicates(&all);
    assert_eq!(
        store_allocations(&path),
        all,
        "store and processes disagree on held addresses"
    );
    let store = SqliteStore::open(&path).expect("open");
    store.integrity_check().expect("sqlite integrity");
    let r = check(&store, None).expect("check");
    assert!(r.is_clean(), "{r:#?}");
}

#[test]
fn processes_killed_mid_allocation_leave_no_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ipam.db");
    setup(&path);
    for round in 0..3 {
        // Endless workers, killed at staggered moments.
        let mut children: Vec<Child> = (0..4)
            .map(|p| spawn_worker(&path, &format!("node-{p}"), &format!("r{round}p{p}"), 0))
            .collect();
        let start = Instant::now();
        for (i, c) in children.iter_mut().enumerate() {
            let at = Duration::from_millis(400 + 150 * i as u64 + 37 * round);
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            assert!(
                c.try_wait().expect("try_wait").is_none(),
                "worker {i} exited early"
            );
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
        let store = SqliteStore::open(&path).expect("open");
        store
            .integrity_check()
            .expect("sqlite integrity after SIGKILL");
        let r = check(&store, None).expect("check");
        assert!(
            r.is_consistent(),
            "corruption after SIGKILL in round {round}: {r:#?}"
        );
        assert!(r.duplicates.is_empty());
    }
    // Every worker is dead, so every allocation is in flight from the
    // caller's point of view; GC reclaims all of it.
    let ipam = Ipam::new(SqliteStore::open(&path).expect("open"));
    let before = check(ipam.store(), None).expect("check").addresses_in_use;
    assert!(before > 0, "workers allocated nothing before being killed");
    let released = ipam
        .release_leaked(&HashSet::new(), SystemTime::now())
        .expect("release leaked");
    assert_eq!(released.len(), before);
    ipam.release_empty_affinities().expect("gc pass 1");
    ipam.release_empty_affinities().expect("gc pass 2");
    let r = check(ipam.store(), None).expect("check");
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.addresses_in_use, 0);
}
