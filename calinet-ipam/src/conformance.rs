//! The store conformance suite, written once and run against every backend
//! ([`MemStore`](crate::MemStore), [`SqliteStore`](crate::SqliteStore), and
//! later etcd). A backend passes when [`run_all`] returns without panicking.
//!
//! ```
//! calinet_ipam::conformance::run_all(calinet_ipam::MemStore::new);
//! ```

use std::time::Duration;

use crate::store::{Store, StoreError, TxnOp, WatchEvent};

/// A named conformance case.
pub type Case<S> = (&'static str, fn(&S));

/// All cases. Each needs a fresh, empty store.
pub fn cases<S: Store>() -> Vec<Case<S>> {
    vec![
        ("get_missing_is_none", get_missing_is_none::<S>),
        ("create_then_get", create_then_get::<S>),
        ("create_existing_fails", create_existing_fails::<S>),
        ("update_cas", update_cas::<S>),
        ("update_missing_fails", update_missing_fails::<S>),
        ("delete_cas", delete_cas::<S>),
        (
            "revisions_are_store_wide_and_increasing",
            revisions_are_store_wide_and_increasing::<S>,
        ),
        (
            "recreate_after_delete_gets_new_revision",
            recreate_after_delete_gets_new_revision::<S>,
        ),
        (
            "list_by_prefix_in_key_order",
            list_by_prefix_in_key_order::<S>,
        ),
        (
            "txn_applies_all_with_one_revision",
            txn_applies_all_with_one_revision::<S>,
        ),
        ("txn_is_all_or_nothing", txn_is_all_or_nothing::<S>),
        (
            "txn_rejects_duplicate_keys",
            txn_rejects_duplicate_keys::<S>,
        ),
        ("values_are_opaque_bytes", values_are_opaque_bytes::<S>),
        (
            "concurrent_cas_loses_no_update",
            concurrent_cas_loses_no_update::<S>,
        ),
        (
            "list_with_revision_is_consistent",
            list_with_revision_is_consistent::<S>,
        ),
        (
            "watch_delivers_changes_in_order",
            watch_delivers_changes_in_order::<S>,
        ),
        ("watch_resumes_without_gap", watch_resumes_without_gap::<S>),
        ("watch_from_now", watch_from_now::<S>),
    ]
}

/// Run every case, each on a fresh store from `make`. Panics naming the
/// failing case.
pub fn run_all<S: Store, F: Fn() -> S>(make: F) {
    for (name, case) in cases::<S>() {
        let store = make();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&store)));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("store conformance case {name} failed: {msg}");
        }
    }
}

/// A missing key reads as `None`.
pub fn get_missing_is_none<S: Store>(s: &S) {
    assert_eq!(s.get("/t/missing").expect("get"), None);
}

/// A created key reads back with its value and a positive revision.
pub fn create_then_get<S: Store>(s: &S) {
    let r = s.create("/t/a", b"one").expect("create");
    assert!(r > 0, "revision {r} must be positive");
    let kv = s.get("/t/a").expect("get").expect("present");
    assert_eq!(kv.key, "/t/a");
    assert_eq!(kv.value, b"one");
    assert_eq!(kv.mod_revision, r);
}

/// Creating an existing key fails and changes nothing.
pub fn create_existing_fails<S: Store>(s: &S) {
    let r = s.create("/t/a", b"one").expect("create");
    match s.create("/t/a", b"two") {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/t/a"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let kv = s.get("/t/a").expect("get").expect("present");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"one"[..], r));
}

/// Update succeeds only at the current revision.
pub fn update_cas<S: Store>(s: &S) {
    let r1 = s.create("/t/a", b"one").expect("create");
    let r2 = s
        .update("/t/a", b"two", r1)
        .expect("update at current revision");
    assert!(r2 > r1);
    match s.update("/t/a", b"three", r1) {
        Err(StoreError::RevisionMismatch {
            key,
            expected,
            actual,
        }) => {
            assert_eq!((key.as_str(), expected, actual), ("/t/a", r1, r2));
        }
        other => panic!("expected RevisionMismatch, got {other:?}"),
    }
    let kv = s.get("/t/a").expect("get").expect("present");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"two"[..], r2));
}

/// Updating a missing key fails with NotFound.
pub fn update_missing_fails<S: Store>(s: &S) {
    match s.update("/t/none", b"x", 1) {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/t/none"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert_eq!(s.get("/t/none").expect("get"), None);
}

/// Delete succeeds only at the current revision; deleting a missing key fails.
pub fn delete_cas<S: Store>(s: &S) {
    let r1 = s.create("/t/a", b"one").expect("create");
    let r2 = s.update("/t/a", b"two", r1).expect("update");
    assert!(
        matches!(
            s.delete("/t/a", r1),
            Err(StoreError::RevisionMismatch { .. })
        ),
        "stale delete must fail"
    );
    assert!(
        s.get("/t/a").expect("get").is_some(),
        "stale delete removed the key"
    );
    s.delete("/t/a", r2).expect("delete at current revision");
    assert_eq!(s.get("/t/a").expect("get"), None);
    assert!(matches!(
        s.delete("/t/a", r2),
        Err(StoreError::NotFound { .. })
    ));
}

/// Revisions grow across different keys (etcd's store-wide revision).
pub fn revisions_are_store_wide_and_increasing<S: Store>(s: &S) {
    let a = s.create("/t/a", b"1").expect("create a");
    let b = s.create("/t/b", b"1").expect("create b");
    let a2 = s.update("/t/a", b"2", a).expect("update a");
    assert!(a < b && b < a2, "revisions {a} {b} {a2} must increase");
    assert_eq!(
        s.get("/t/b").expect("get").expect("b").mod_revision,
        b,
        "b's revision moved"
    );
}

/// A key deleted and created again gets a fresh, higher revision, so a stale
/// compare against the old incarnation fails.
pub fn recreate_after_delete_gets_new_revision<S: Store>(s: &S) {
    let r1 = s.create("/t/a", b"1").expect("create");
    s.delete("/t/a", r1).expect("delete");
    let r2 = s.create("/t/a", b"2").expect("recreate");
    assert!(r2 > r1);
    assert!(matches!(
        s.update("/t/a", b"3", r1),
        Err(StoreError::RevisionMismatch { .. })
    ));
}

/// `list` returns exactly the keys under the prefix, in key order.
pub fn list_by_prefix_in_key_order<S: Store>(s: &S) {
    for k in [
        "/t/b/2", "/t/a/2", "/t/a/10", "/t/a/1", "/t/ab/1", "/t/a", "/u/a/1",
    ] {
        s.create(k, k.as_bytes()).expect("create");
    }
    let keys: Vec<String> = s
        .list("/t/a/")
        .expect("list")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/t/a/1", "/t/a/10", "/t/a/2"]);
    let all = s.list("/t/").expect("list");
    assert_eq!(all.len(), 6);
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "not in key order"
    );
    assert!(all.iter().all(|kv| kv.value == kv.key.as_bytes()));
    assert!(s.list("/zz/").expect("list").is_empty());
    assert_eq!(s.list("").expect("list").len(), 7);
}

/// A successful transaction applies every op with one revision.
pub fn txn_applies_all_with_one_revision<S: Store>(s: &S) {
    let ra = s.create("/t/a", b"a").expect("create a");
    let rb = s.create("/t/b", b"b").expect("create b");
    let rev = s
        .txn(&[
            TxnOp::Create {
                key: "/t/c".into(),
                value: b"c".to_vec(),
            },
            TxnOp::Update {
                key: "/t/a".into(),
                value: b"a2".to_vec(),
                expected: ra,
            },
            TxnOp::Delete {
                key: "/t/b".into(),
                expected: rb,
            },
        ])
        .expect("txn");
    assert!(rev > rb);
    let a = s.get("/t/a").expect("get").expect("a");
    let c = s.get("/t/c").expect("get").expect("c");
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"a2"[..], rev));
    assert_eq!((c.value.as_slice(), c.mod_revision), (&b"c"[..], rev));
    assert_eq!(s.get("/t/b").expect("get"), None);
}

/// A transaction with one failing condition writes nothing.
pub fn txn_is_all_or_nothing<S: Store>(s: &S) {
    let ra = s.create("/t/a", b"a").expect("create a");
    let ra2 = s.update("/t/a", b"a2", ra).expect("update a");
    for bad in [
        TxnOp::Update {
            key: "/t/a".into(),
            value: b"x".to_vec(),
            expected: ra,
        },
        TxnOp::Create {
            key: "/t/a".into(),
            value: b"x".to_vec(),
        },
        TxnOp::Delete {
            key: "/t/missing".into(),
            expected: 1,
        },
    ] {
        let bad_key = bad.key().to_owned();
        match s.txn(&[
            TxnOp::Create {
                key: "/t/new".into(),
                value: b"n".to_vec(),
            },
            bad,
        ]) {
            Err(StoreError::TxnConflict { keys }) => {
                assert!(
                    keys.contains(&bad_key),
                    "conflict keys {keys:?} must name {bad_key}"
                )
            }
            other => panic!("expected TxnConflict, got {other:?}"),
        }
        assert_eq!(
            s.get("/t/new").expect("get"),
            None,
            "failed txn created a key"
        );
        assert_eq!(
            s.get("/t/a").expect("get").expect("a").mod_revision,
            ra2,
            "failed txn changed a key"
        );
    }
}

/// A transaction naming a key twice is rejected.
pub fn txn_rejects_duplicate_keys<S: Store>(s: &S) {
    let r = s.txn(&[
        TxnOp::Create {
            key: "/t/a".into(),
            value: b"1".to_vec(),
        },
        TxnOp::Create {
            key: "/t/a".into(),
            value: b"2".to_vec(),
        },
    ]);
    assert!(
        matches!(r, Err(StoreError::DuplicateKey { .. })),
        "got {r:?}"
    );
    assert_eq!(s.get("/t/a").expect("get"), None);
}

/// Values are stored byte for byte.
pub fn values_are_opaque_bytes<S: Store>(s: &S) {
    let v: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    s.create("/t/bin", &v).expect("create");
    assert_eq!(s.get("/t/bin").expect("get").expect("bin").value, v);
    s.create("/t/empty", b"").expect("create empty");
    assert_eq!(s.get("/t/empty").expect("get").expect("empty").value, b"");
}

/// Four threads incrementing one counter with CAS retries lose no update.
pub fn concurrent_cas_loses_no_update<S: Store>(s: &S) {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 50;
    s.create("/t/counter", b"0").expect("create");
    std::thread::scope(|sc| {
        for _ in 0..THREADS {
            sc.spawn(|| {
                for _ in 0..PER_THREAD {
                    loop {
                        let kv = s.get("/t/counter").expect("get").expect("counter");
                        let n: u64 = String::from_utf8_lossy(&kv.value).parse().expect("number");
                        match s.update(
                            "/t/counter",
                            (n + 1).to_string().as_bytes(),
                            kv.mod_revision,
                        ) {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => continue,
                            Err(StoreError::Unavailable { .. }) => continue,
                            Err(e) => panic!("update: {e}"),
                        }
                    }
                }
            });
        }
    });
    let kv = s.get("/t/counter").expect("get").expect("counter");
    assert_eq!(
        String::from_utf8_lossy(&kv.value),
        (THREADS * PER_THREAD).to_string()
    );
}

/// How long the watch cases wait for an event that must come.
const WATCH_WAIT: Duration = Duration::from_secs(10);

/// `list_with_revision` returns what `list` does plus the store revision,
/// which is at least every listed key's revision and moves with writes.
pub fn list_with_revision_is_consistent<S: Store>(s: &S) {
    let empty = s.list_with_revision("/t/").expect("list_with_revision");
    assert!(empty.kvs.is_empty());
    s.create("/t/a", b"1").expect("create");
    let rb = s.create("/t/b", b"2").expect("create");
    s.create("/u/c", b"3").expect("create outside the prefix");
    let l = s.list_with_revision("/t/").expect("list_with_revision");
    let keys: Vec<&str> = l.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/a", "/t/b"]);
    assert!(
        l.revision > rb,
        "listing revision {} must cover the later write to /u/c",
        l.revision
    );
    assert_eq!(l.kvs, s.list("/t/").expect("list"));
}

/// A watch from a listing's revision + 1 delivers every later change under
/// the prefix, in revision order, transactions as same-revision events in op
/// order, and nothing outside the prefix.
pub fn watch_delivers_changes_in_order<S: Store>(s: &S) {
    s.create("/w/before", b"0").expect("create");
    let l = s.list_with_revision("/w/").expect("list_with_revision");
    let mut w = s.watch("/w/", l.revision + 1).expect("watch");
    let r1 = s.create("/w/a", b"1").expect("create a");
    s.create("/x/outside", b"x").expect("create outside");
    let r2 = s.update("/w/a", b"2", r1).expect("update a");
    let r3 = s
        .txn(&[
            TxnOp::Create {
                key: "/w/b".into(),
                value: b"b".to_vec(),
            },
            TxnOp::Delete {
                key: "/w/a".into(),
                expected: r2,
            },
        ])
        .expect("txn");
    let got = w.collect_timeout(4, WATCH_WAIT).expect("watch events");
    let summary: Vec<(String, i64, Option<Vec<u8>>)> = got
        .iter()
        .map(|e| match e {
            WatchEvent::Put(kv) => (kv.key.clone(), kv.mod_revision, Some(kv.value.clone())),
            WatchEvent::Delete { key, revision } => (key.clone(), *revision, None),
            #[allow(unreachable_patterns)]
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("/w/a".to_owned(), r1, Some(b"1".to_vec())),
            ("/w/a".to_owned(), r2, Some(b"2".to_vec())),
            ("/w/b".to_owned(), r3, Some(b"b".to_vec())),
            ("/w/a".to_owned(), r3, None),
        ]
    );
    assert_eq!(w.next_revision(), r3 + 1);
    assert!(
        w.next_timeout(Duration::from_millis(200))
            .expect("watch")
            .is_none(),
        "no further event expected"
    );
}

/// Dropping a watcher and watching again from its `next_revision` misses
/// nothing and repeats nothing.
pub fn watch_resumes_without_gap<S: Store>(s: &S) {
    let mut w = s.watch("/r/", 0).expect("watch");
    let mut revs = Vec::new();
    for i in 0..3 {
        revs.push(s.create(&format!("/r/{i}"), b"v").expect("create"));
    }
    let first = w.collect_timeout(2, WATCH_WAIT).expect("events");
    assert_eq!(
        first.iter().map(|e| e.revision()).collect::<Vec<_>>(),
        revs[..2]
    );
    let resume = w.next_revision();
    assert_eq!(resume, revs[1] + 1);
    drop(w);
    for i in 3..5 {
        revs.push(s.create(&format!("/r/{i}"), b"v").expect("create"));
    }
    let mut w2 = s.watch("/r/", resume).expect("resume watch");
    let rest = w2.collect_timeout(3, WATCH_WAIT).expect("events");
    assert_eq!(
        rest.iter().map(|e| e.revision()).collect::<Vec<_>>(),
        revs[2..]
    );
    let keys: Vec<&str> = rest.iter().map(|e| e.key()).collect();
    assert_eq!(keys, ["/r/2", "/r/3", "/r/4"]);
}

/// `watch(prefix, 0)` starts after the current revision.
pub fn watch_from_now<S: Store>(s: &S) {
    s.create("/n/old", b"old").expect("create");
    let mut w = s.watch("/n/", 0).expect("watch");
    let r = s.create("/n/new", b"new").expect("create");
    let ev = w
        .next_timeout(WATCH_WAIT)
        .expect("watch")
        .expect("an event");
    assert_eq!((ev.key(), ev.revision()), ("/n/new", r));
}
