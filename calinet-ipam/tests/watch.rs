//! Watch behaviour of the embedded backends beyond the shared conformance
//! cases: compaction is reported, history is bounded, SQLite watchers see
//! writes made through another connection to the file.

use std::time::Duration;

use calinet_ipam::{MemStore, Store, WatchError};

fn expect_compacted(r: Result<Option<calinet_ipam::WatchEvent>, WatchError>, oldest: i64) {
    match r {
        Err(e @ WatchError::Compacted { .. }) => {
            assert!(e.needs_relist());
            assert!(e.to_string().contains("re-list"), "{e}");
            let WatchError::Compacted {
                compact_revision, ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(compact_revision, oldest);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
}

#[test]
fn mem_compaction_is_reported_and_relist_recovers() {
    let s = MemStore::with_watch_history(1000);
    let r1 = s.create("/c/a", b"1").expect("create");
    let r2 = s.update("/c/a", b"2", r1).expect("update");
    let r3 = s.update("/c/a", b"3", r2).expect("update");
    s.compact(r3);
    // r3 itself is still watchable (etcd's rule), r2 is not.
    let mut ok = s.watch("/c/", r3).expect("watch");
    assert_eq!(
        ok.next_timeout(Duration::from_secs(1))
            .expect("watch")
            .expect("event")
            .revision(),
        r3
    );
    let mut w = s.watch("/c/", r2).expect("watch");
    expect_compacted(w.next_timeout(Duration::from_secs(1)), r3);
    assert!(w.next().is_none(), "a failed watch ends");
    let l = s.list_with_revision("/c/").expect("relist");
    let mut w = s.watch("/c/", l.revision + 1).expect("watch");
    let r4 = s.update("/c/a", b"4", r3).expect("update");
    assert_eq!(
        w.next_timeout(Duration::from_secs(1))
            .expect("watch")
            .expect("event")
            .revision(),
        r4
    );
}

#[test]
fn mem_history_is_bounded_by_whole_revisions() {
    let s = MemStore::with_watch_history(4);
    let mut rev = s.create("/b/k", b"0").expect("create");
    for i in 1..10 {
        rev = s
            .update("/b/k", i.to_string().as_bytes(), rev)
            .expect("update");
    }
    let mut w = s.watch("/b/", 1).expect("watch");
    expect_compacted(w.next_timeout(Duration::from_secs(1)), rev - 3);
    let mut w = s.watch("/b/", rev - 3).expect("watch");
    let got = w
        .collect_timeout(10, Duration::from_millis(200))
        .expect("events");
    assert_eq!(got.len(), 4);
}

#[test]
fn mem_store_without_history_reports_earlier_revisions_as_compacted() {
    // MemStore::new records history only from the first watch on.
    let s = MemStore::new();
    let r1 = s.create("/x/a", b"1").expect("create");
    let mut w = s.watch("/x/", r1).expect("watch");
    expect_compacted(w.next_timeout(Duration::from_secs(1)), r1 + 1);
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_watch_sees_other_connections_and_reports_compaction() {
    use calinet_ipam::SqliteStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("w.db");
    let a = SqliteStore::open(&p).expect("open a");
    let b = SqliteStore::open(&p).expect("open b");
    let start = a.list_with_revision("/s/").expect("list").revision;
    let mut w = a.watch("/s/", start + 1).expect("watch");
    let r1 = b.create("/s/k", b"1").expect("create via b");
    let r2 = b.update("/s/k", b"2", r1).expect("update via b");
    let got = w
        .collect_timeout(2, Duration::from_secs(5))
        .expect("events");
    assert_eq!(
        got.iter().map(|e| e.revision()).collect::<Vec<_>>(),
        [r1, r2]
    );
    b.compact(r2).expect("compact");
    let mut w = a.watch("/s/", r1).expect("watch");
    expect_compacted(w.next_timeout(Duration::from_secs(2)), r2);
    // History survives reopening the file.
    drop((a, b));
    let c = SqliteStore::open(&p).expect("reopen");
    let mut w = c.watch("/s/", r2).expect("watch");
    let ev = w
        .next_timeout(Duration::from_secs(2))
        .expect("watch")
        .expect("event");
    assert_eq!(ev.revision(), r2);
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_history_is_pruned_to_its_bound() {
    use calinet_ipam::SqliteStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(dir.path().join("p.db"))
        .expect("open")
        .with_watch_history(10);
    let mut rev = s.create("/p/k", b"0").expect("create");
    for i in 1..200 {
        rev = s
            .update("/p/k", i.to_string().as_bytes(), rev)
            .expect("update");
    }
    let mut w = s.watch("/p/", 1).expect("watch");
    assert!(matches!(
        w.next_timeout(Duration::from_secs(2)),
        Err(WatchError::Compacted { .. })
    ));
    // The most recent 10 revisions are still there.
    let mut w = s.watch("/p/", rev - 9).expect("watch");
    let got = w
        .collect_timeout(10, Duration::from_secs(2))
        .expect("events");
    assert_eq!(got.len(), 10);
}

/// A watcher sees the writes of another process on the same SQLite file, in
/// order. The writer is this test binary run again in writer mode.
#[cfg(feature = "sqlite")]
#[test]
fn sqlite_watch_sees_another_process_in_order() {
    use calinet_ipam::{SqliteStore, StoreError, WatchEvent};
    const N: u64 = 200;
    const ROLE: &str = "CALINET_SQLITE_WATCH_WRITER";
    if let Ok(path) = std::env::var(ROLE) {
        let s = SqliteStore::open(&path).expect("open in writer");
        for i in 1..=N {
            loop {
                let kv = s.get("/w/counter").expect("get").expect("counter");
                match s.update("/w/counter", i.to_string().as_bytes(), kv.mod_revision) {
                    Ok(_) => break,
                    Err(e) if e.is_conflict() => continue,
                    Err(StoreError::Unavailable { .. }) => continue,
                    Err(e) => panic!("update: {e}"),
                }
            }
        }
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shared.db");
    let s = SqliteStore::open(&path).expect("open");
    let start = s.create("/w/counter", b"0").expect("create");
    let mut w = s.watch("/w/", start + 1).expect("watch");
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "sqlite_watch_sees_another_process_in_order",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, &path)
        .env_remove("CALINET_SKIP_LOG")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn writer");
    let got = w
        .collect_timeout(N as usize, Duration::from_secs(60))
        .expect("events");
    let status = child.wait().expect("wait writer");
    assert!(status.success(), "writer failed: {status}");
    let values: Vec<u64> = got
        .iter()
        .map(|e| match e {
            WatchEvent::Put(kv) => String::from_utf8_lossy(&kv.value).parse().expect("number"),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(values, (1..=N).collect::<Vec<_>>());
    assert!(got.windows(2).all(|p| p[0].revision() < p[1].revision()));
}
