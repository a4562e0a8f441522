//! The store conformance suite against every built-in backend.

use calinet_ipam::{CountingStore, MemStore, conformance};

#[test]
fn mem_store_conforms() {
    conformance::run_all(MemStore::new);
}

#[test]
fn counting_store_conforms() {
    conformance::run_all(|| CountingStore::new(MemStore::new()));
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = std::sync::atomic::AtomicU32::new(0);
    conformance::run_all(|| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        calinet_ipam::SqliteStore::open(dir.path().join(format!("c{i}.db"))).expect("open sqlite")
    });
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_two_connections_see_each_others_writes() {
    use calinet_ipam::{Store, StoreError};
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("shared.db");
    let a = calinet_ipam::SqliteStore::open(&p).expect("open a");
    let b = calinet_ipam::SqliteStore::open(&p).expect("open b");
    let r = a.create("/k", b"1").expect("create via a");
    assert_eq!(
        b.get("/k")
            .expect("get via b")
            .expect("present")
            .mod_revision,
        r
    );
    b.update("/k", b"2", r).expect("update via b");
    assert!(matches!(
        a.update("/k", b"3", r),
        Err(StoreError::RevisionMismatch { .. })
    ));
    a.integrity_check().expect("integrity");
}
