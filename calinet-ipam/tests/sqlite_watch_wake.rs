//! The SQLite watch wakes on a change instead of re-reading the file: an
//! idle watcher over a store with a full history reads (almost) nothing, and
//! a write by another process is delivered within the poll interval.
#![cfg(feature = "sqlite")]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calinet_ipam::{SqliteStore, Store, WatchEvent};

/// Bytes this thread has read through read(2)-like calls (`rchar`).
fn thread_rchar() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .expect("rchar line")
        .trim()
        .parse()
        .expect("rchar number")
}

#[test]
fn an_idle_watch_reads_almost_nothing() {
    const POLL: Duration = Duration::from_millis(10);
    const IDLE: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("idle.db");
    let s = SqliteStore::open(&path).expect("open");
    // A full history of block-sized values (a /26 block's JSON is a few KiB).
    let value = vec![b'x'; 3000];
    for i in 0..SqliteStore::DEFAULT_WATCH_HISTORY {
        s.create(
            &format!("/calico/ipam/v2/assignment/ipv4/block/{i}"),
            &value,
        )
        .expect("create");
    }
    let s = s.with_watch_poll(POLL);
    let mut w = s.watch("/calico/ipam/v2/", 0).expect("watch");
    // The first look after creating the watch may read the file once.
    assert!(w.try_next().expect("watch").is_none());
    let before = thread_rchar();
    let t = Instant::now();
    assert!(
        w.next_timeout(IDLE).expect("watch").is_none(),
        "no change was made"
    );
    let read = thread_rchar() - before;
    let per_min = read as f64 * 60.0 / t.elapsed().as_secs_f64();
    println!(
        "idle SQLite watch (poll {POLL:?}, {} revisions of history): {read} bytes read in {:?}, {:.0} bytes/min",
        SqliteStore::DEFAULT_WATCH_HISTORY,
        t.elapsed(),
        per_min
    );
    // Each poll may read a few bytes of bookkeeping, never history pages
    // (one 4 KiB page per poll would be 24 MiB/min).
    assert!(
        per_min < 1024.0 * 1024.0,
        "an idle watch read {per_min:.0} bytes/min"
    );
}

/// A write by another process (this test binary run again as the writer,
/// started after the watch exists) reaches the watcher within the poll
/// interval plus scheduling slack; the writer stamps its value with the time
/// just before the write.
#[test]
fn a_write_by_another_process_is_seen_within_the_poll_interval() {
    const POLL: Duration = Duration::from_millis(20);
    const ROLE: &str = "CALINET_SQLITE_WAKE_WRITER";
    if let Ok(path) = std::env::var(ROLE) {
        let s = SqliteStore::open(&path).expect("open in writer");
        // Let the watcher settle into its idle polling first.
        std::thread::sleep(Duration::from_millis(300));
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        s.create("/w/stamp", stamp.to_string().as_bytes())
            .expect("create");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let s = SqliteStore::open(&path)
        .expect("open")
        .with_watch_poll(POLL);
    let mut w = s.watch("/w/", 0).expect("watch");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "a_write_by_another_process_is_seen_within_the_poll_interval",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn writer");
    let ev = w
        .next_timeout(Duration::from_secs(30))
        .expect("watch")
        .expect("the writer's event");
    let seen = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    assert!(
        child.wait().expect("wait writer").success(),
        "writer failed"
    );
    let WatchEvent::Put(kv) = ev else {
        panic!("unexpected {ev:?}")
    };
    let stamp: u128 = String::from_utf8_lossy(&kv.value).parse().expect("stamp");
    let latency = Duration::from_nanos((seen.as_nanos() - stamp) as u64);
    println!("write by another process seen after {latency:?} (poll {POLL:?})");
    // The poll interval plus the write itself and scheduling on a shared,
    // loaded machine.
    assert!(
        latency < POLL + Duration::from_millis(250),
        "seen after {latency:?}"
    );
}
