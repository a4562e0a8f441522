//! Allocator rules, each with its error cases.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use calinet_ipam::report::{check, show};
use calinet_ipam::{
    AllOnlySelector, AllowedUse, AutoAssignRequest, CountingStore, Error, HandleId, IpPool,
    IpPoolSpec, IpReservation, IpReservationSpec, Ipam, IpamConfigSpec, IpamOptions, MemStore,
    NodeName, Store, StoreError, TxnOp, keys,
};

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}
fn node(s: &str) -> NodeName {
    s.parse().expect("node")
}
fn h(s: &str) -> HandleId {
    s.parse().expect("handle")
}
fn pool(name: &str, cidr: &str, bs: u8) -> IpPool {
    let mut spec = IpPoolSpec::with_cidr(cidr.parse().expect("cidr"));
    spec.block_size = Some(bs);
    IpPool::new(name, spec)
}
fn ipam_with(
    pools: &[IpPool],
    cfg: Option<IpamConfigSpec>,
    opts: IpamOptions,
) -> Ipam<Arc<CountingStore<MemStore>>> {
    let store = Arc::new(CountingStore::new(MemStore::new()));
    let ipam = Ipam::with_options(store, Box::new(AllOnlySelector), opts);
    for p in pools {
        ipam.put_pool(p).expect("put pool");
    }
    if let Some(c) = cfg {
        ipam.put_config(&c).expect("put config");
    }
    ipam
}
fn strict(max: u32) -> IpamConfigSpec {
    IpamConfigSpec {
        strict_affinity: true,
        max_blocks_per_host: max,
        ..Default::default()
    }
}
fn v4(
    ipam: &Ipam<impl Store>,
    handle: &str,
    n: &str,
    count: u32,
    now: SystemTime,
) -> calinet_ipam::Result<Vec<IpAddr>> {
    ipam.auto_assign(&AutoAssignRequest::v4(h(handle), node(n), count), now)
        .map(|a| a.v4.into_iter().map(|a| a.addr).collect())
}
fn assert_clean(ipam: &Ipam<impl Store>) {
    let r = check(ipam.store(), None).expect("check");
    assert!(r.is_clean(), "check not clean: {r:#?}");
}

#[test]
fn nodes_get_their_own_blocks_and_steady_state_takes_one_round_trip() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let a = v4(&ipam, "a1", "n1", 1, t(0)).expect("n1");
    let b = v4(&ipam, "b1", "n2", 1, t(0)).expect("n2");
    let blk = |ip: IpAddr| ipnet::IpNet::new(ip, 26).expect("net").trunc();
    assert_ne!(blk(a[0]), blk(b[0]), "two nodes share a block");
    let aff = ipam.store().list(keys::HOSTS_PREFIX).expect("list");
    assert_eq!(aff.len(), 2);
    ipam.store().reset();
    for i in 0..10 {
        let before = ipam.store().round_trips().total();
        let ip = v4(&ipam, &format!("s{i}"), "n1", 1, t(1)).expect("steady");
        assert_eq!(blk(ip[0]), blk(a[0]));
        assert!(ipam.store().round_trips().total() - before <= 2);
    }
    let rt = ipam.store().round_trips();
    assert_eq!(
        rt.total(),
        10,
        "steady state should be one transaction per AutoAssign: {rt:?}"
    );
    ipam.store().reset();
    ipam.release_handle(&h("s3"), t(2)).expect("release");
    assert_eq!(
        ipam.store().round_trips().total(),
        1,
        "release of a cached handle is one transaction"
    );
    assert_clean(&ipam);
}

#[test]
fn released_addresses_go_to_the_back_of_the_fifo() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/29", 29)],
        Some(strict(1)),
        IpamOptions::default(),
    );
    let first = v4(&ipam, "a", "n1", 1, t(0)).expect("a");
    ipam.release_handle(&h("a"), t(1)).expect("release");
    let next = v4(&ipam, "b", "n1", 7, t(2)).expect("b");
    assert!(
        !next.contains(&first[0]),
        "released address reused while older free ones exist"
    );
    let last = v4(&ipam, "c", "n1", 1, t(3)).expect("c");
    assert_eq!(last, first, "the released address comes back last");
    assert!(matches!(
        v4(&ipam, "d", "n1", 1, t(4)),
        Err(Error::Exhausted { .. })
    ));
}

#[test]
fn reuse_cooldown_uses_the_time_passed_in() {
    let opts = IpamOptions {
        reuse_cooldown: Duration::from_secs(60),
        ..Default::default()
    };
    let ipam = ipam_with(&[pool("p", "10.0.0.0/31", 31)], Some(strict(1)), opts);
    let _ = v4(&ipam, "a", "n1", 2, t(0)).expect("fill");
    ipam.release_handle(&h("a"), t(10)).expect("release");
    assert!(
        matches!(v4(&ipam, "b", "n1", 1, t(69)), Err(Error::Exhausted { .. })),
        "cooldown not honoured"
    );
    assert_eq!(
        v4(&ipam, "b", "n1", 2, t(70))
            .expect("after cooldown")
            .len(),
        2
    );
}

#[test]
fn release_by_address_checks_handle_and_sequence_and_is_idempotent() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let a = ipam
        .auto_assign(&AutoAssignRequest::v4(h("a"), node("n1"), 1), t(0))
        .expect("assign")
        .v4[0]
        .clone();
    assert!(matches!(
        ipam.release_ip(a.addr, Some(&h("other")), None, t(1)),
        Err(Error::HandleMismatch { .. })
    ));
    assert!(matches!(
        ipam.release_ip(a.addr, Some(&h("a")), Some(a.sequence + 7), t(1)),
        Err(Error::SequenceMismatch { .. })
    ));
    assert!(
        ipam.release_ip(a.addr, Some(&h("a")), Some(a.sequence), t(1))
            .expect("release")
    );
    assert!(
        !ipam
            .release_ip(a.addr, Some(&h("a")), None, t(1))
            .expect("again"),
        "second release must be a no-op"
    );
    assert!(
        ipam.release_handle(&h("a"), t(1))
            .expect("handle")
            .is_empty()
    );
    assert!(
        ipam.store()
            .get(&keys::handle(&h("a")))
            .expect("get")
            .is_none(),
        "handle record left behind"
    );
    assert_clean(&ipam);
}

#[test]
fn release_by_handle_releases_everything_across_blocks() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 30)],
        None,
        IpamOptions::default(),
    );
    let ips = v4(&ipam, "multi", "n1", 6, t(0)).expect("six over two blocks");
    assert_eq!(ips.len(), 6);
    let mut released = ipam.release_handle(&h("multi"), t(1)).expect("release");
    released.sort();
    let mut want = ips.clone();
    want.sort();
    assert_eq!(released, want);
    assert!(
        ipam.release_handle(&h("multi"), t(1))
            .expect("again")
            .is_empty()
    );
    assert_clean(&ipam);
}

#[test]
fn strict_affinity_caps_blocks_and_never_borrows() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/28", 30)],
        Some(strict(1)),
        IpamOptions::default(),
    );
    assert_eq!(v4(&ipam, "a", "n1", 4, t(0)).expect("a").len(), 4);
    let _ = v4(&ipam, "b", "n2", 1, t(0)).expect("b");
    match v4(&ipam, "c", "n1", 1, t(0)) {
        Err(Error::Exhausted {
            requested: 1,
            available: 0,
            ..
        }) => {}
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_clean(&ipam);
}

#[test]
fn non_strict_borrows_from_other_nodes_and_show_lists_it() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/29", 30)],
        None,
        IpamOptions::default(),
    );
    let a = v4(&ipam, "a", "n1", 4, t(0)).expect("n1 block 1");
    let b = v4(&ipam, "b", "n2", 3, t(0)).expect("n2 block 2");
    let got = ipam
        .auto_assign(&AutoAssignRequest::v4(h("c"), node("n1"), 1), t(0))
        .expect("borrow");
    assert!(got.v4[0].borrowed, "address should be borrowed");
    assert!(!a.contains(&got.v4[0].addr) && !b.contains(&got.v4[0].addr));
    let s = show(ipam.store()).expect("show");
    assert_eq!(s.borrowed.len(), 1);
    assert_eq!(s.borrowed[0].borrowing_node, "n1");
    assert_eq!(s.borrowed[0].block_owner, "n2");
    assert!(s.render_borrowed().contains("BORROWING-NODE"));
    assert_clean(&ipam);
}

#[test]
fn auto_allocate_blocks_off_means_no_claims() {
    let cfg = IpamConfigSpec {
        strict_affinity: true,
        auto_allocate_blocks: false,
        ..Default::default()
    };
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        Some(cfg),
        IpamOptions::default(),
    );
    assert!(matches!(
        v4(&ipam, "a", "n1", 1, t(0)),
        Err(Error::Exhausted { .. })
    ));
    assert!(
        ipam.store()
            .list(keys::HOSTS_PREFIX)
            .expect("list")
            .is_empty(),
        "a block was claimed"
    );
    // A specific assignment still claims the block.
    let ip: IpAddr = "10.0.0.5".parse().expect("ip");
    ipam.assign_ip(ip, &h("x"), &BTreeMap::new(), &node("n1"), t(0))
        .expect("assign");
    assert_eq!(
        v4(&ipam, "a", "n1", 1, t(0))
            .expect("now from the affine block")
            .len(),
        1
    );
}

#[test]
fn max_blocks_per_host_is_honoured() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 30)],
        Some(strict(2)),
        IpamOptions::default(),
    );
    assert_eq!(v4(&ipam, "a", "n1", 8, t(0)).expect("two blocks").len(), 8);
    assert!(matches!(
        v4(&ipam, "b", "n1", 1, t(0)),
        Err(Error::Exhausted { .. })
    ));
    assert_eq!(
        ipam.store()
            .list(&keys::affinities_prefix(
                &node("n1"),
                calinet_ipam::Family::V4
            ))
            .expect("l")
            .len(),
        2
    );
}

#[test]
fn reservations_are_never_handed_out() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/29", 29)],
        Some(strict(1)),
        IpamOptions::default(),
    );
    let spec = IpReservationSpec {
        reserved_cidrs: vec!["10.0.0.0/30".parse().expect("net")],
        extra: Default::default(),
    };
    ipam.put_reservation(&IpReservation::new("r", spec))
        .expect("reservation");
    let got = v4(&ipam, "a", "n1", 4, t(0)).expect("four free");
    assert!(got.iter().all(|ip| {
        !"10.0.0.0/30"
            .parse::<ipnet::IpNet>()
            .expect("n")
            .contains(ip)
    }));
    assert!(matches!(
        v4(&ipam, "b", "n1", 1, t(0)),
        Err(Error::Exhausted { .. })
    ));
    let r = ipam.assign_ip(
        "10.0.0.1".parse().expect("ip"),
        &h("x"),
        &BTreeMap::new(),
        &node("n1"),
        t(0),
    );
    assert!(matches!(r, Err(Error::AddressReserved { .. })), "got {r:?}");
    let s = show(ipam.store()).expect("show");
    assert_eq!(
        (s.pools[0].in_use, s.pools[0].reserved, s.pools[0].free),
        (4, 4, 0)
    );
}

#[test]
fn windows_reserved_addresses_are_skipped_and_reported() {
    let opts = IpamOptions {
        windows_reserved: true,
        ..Default::default()
    };
    let ipam = ipam_with(&[pool("p", "10.0.0.0/28", 28)], Some(strict(1)), opts);
    let got = v4(&ipam, "a", "n1", 12, t(0)).expect("twelve");
    for bad in ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.15"] {
        assert!(!got.contains(&bad.parse().expect("ip")), "{bad} handed out");
    }
    assert!(matches!(
        v4(&ipam, "b", "n1", 1, t(0)),
        Err(Error::Exhausted { .. })
    ));
    let s = show(ipam.store()).expect("show");
    assert_eq!(
        (s.blocks[0].in_use, s.blocks[0].reserved, s.blocks[0].free),
        (12, 4, 0)
    );
    assert_clean(&ipam);
}

#[test]
fn pool_selection_honours_disabled_uses_and_selectors() {
    let mut disabled = pool("off", "10.1.0.0/24", 26);
    disabled.spec.disabled = Some(true);
    let mut tunnel_only = pool("tun", "10.2.0.0/24", 26);
    tunnel_only.spec.allowed_uses = Some(vec![AllowedUse::Tunnel]);
    let ipam = ipam_with(&[disabled, tunnel_only], None, IpamOptions::default());
    assert!(matches!(
        v4(&ipam, "a", "n1", 1, t(0)),
        Err(Error::NoPool { .. })
    ));
    let tun = ipam
        .assign_tunnel_addr(
            calinet_ipam::TunnelKind::Vxlan,
            &node("n1"),
            &BTreeMap::new(),
            t(0),
        )
        .expect("tunnel");
    assert!(
        "10.2.0.0/24"
            .parse::<ipnet::IpNet>()
            .expect("n")
            .contains(&tun.addr)
    );
    let again = ipam
        .assign_tunnel_addr(
            calinet_ipam::TunnelKind::Vxlan,
            &node("n1"),
            &BTreeMap::new(),
            t(1),
        )
        .expect("tunnel again");
    assert_eq!(again.addr, tun.addr, "tunnel address must be stable");

    let mut sel = pool("sel", "10.3.0.0/24", 26);
    sel.spec.node_selector = Some("zone == 'a'".into());
    let plain = ipam_with(&[sel.clone()], None, IpamOptions::default());
    assert!(matches!(
        v4(&plain, "a", "n1", 1, t(0)),
        Err(Error::Selector { .. })
    ));
    let eval = |s: &str, l: &BTreeMap<String, String>| -> Result<bool, String> {
        Ok(s == "zone == 'a'" && l.get("zone").map(String::as_str) == Some("a"))
    };
    let store = Arc::new(CountingStore::new(MemStore::new()));
    let custom = Ipam::with_options(store, Box::new(eval), IpamOptions::default());
    custom.put_pool(&sel).expect("pool");
    let mut req = AutoAssignRequest::v4(h("z"), node("n1"), 1);
    assert!(matches!(
        custom.auto_assign(&req, t(0)),
        Err(Error::NoPool { .. })
    ));
    req.node_labels.insert("zone".into(), "a".into());
    assert_eq!(custom.auto_assign(&req, t(0)).expect("matches").v4.len(), 1);
}

#[test]
fn dual_stack_is_all_or_nothing() {
    let ipam = ipam_with(
        &[pool("p4", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let mut req = AutoAssignRequest::v4(h("ds"), node("n1"), 1);
    req.num_v6 = 1;
    assert!(matches!(
        ipam.auto_assign(&req, t(0)),
        Err(Error::NoPool { family: "IPv6", .. })
    ));
    let r = check(ipam.store(), None).expect("check");
    assert_eq!(r.addresses_in_use, 0, "the IPv4 address was kept: {r:?}");
    assert!(r.is_clean());
    ipam.put_pool(&pool("p6", "fd00::/120", 122))
        .expect("v6 pool");
    let got = ipam.auto_assign(&req, t(0)).expect("dual");
    assert_eq!((got.v4.len(), got.v6.len()), (1, 1));
    assert_eq!(got.v6[0].net().prefix_len(), 122);
}

#[test]
fn reclaims_another_nodes_empty_block_only_after_the_grace_period() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/30", 30)],
        Some(strict(1)),
        IpamOptions::default(),
    );
    v4(&ipam, "a", "n1", 1, t(0)).expect("n1 claims the only block");
    ipam.release_handle(&h("a"), t(1)).expect("release");
    assert!(
        matches!(v4(&ipam, "b", "n2", 1, t(2)), Err(Error::Exhausted { .. })),
        "reclaimed too early"
    );
    assert!(
        matches!(v4(&ipam, "b", "n2", 1, t(50)), Err(Error::Exhausted { .. })),
        "reclaimed before 60 s"
    );
    let got = v4(&ipam, "b", "n2", 1, t(63)).expect("reclaimed after the grace period");
    assert_eq!(got.len(), 1);
    assert!(
        ipam.store()
            .get(&keys::affinity(
                &node("n1"),
                &"10.0.0.0/30".parse().expect("b")
            ))
            .expect("g")
            .is_none()
    );
    assert_clean(&ipam);
}

#[test]
fn assign_specific_ip_claims_checks_and_is_idempotent() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let ip: IpAddr = "10.0.0.77".parse().expect("ip");
    let a = ipam
        .assign_ip(ip, &h("x"), &BTreeMap::new(), &node("n1"), t(0))
        .expect("assign");
    assert!(!a.borrowed);
    let again = ipam
        .assign_ip(ip, &h("x"), &BTreeMap::new(), &node("n1"), t(0))
        .expect("idempotent");
    assert_eq!(again.sequence, a.sequence);
    assert!(matches!(
        ipam.assign_ip(ip, &h("y"), &BTreeMap::new(), &node("n2"), t(0)),
        Err(Error::AddressInUse { .. })
    ));
    assert!(matches!(
        ipam.assign_ip(
            "192.0.2.1".parse().expect("ip"),
            &h("y"),
            &BTreeMap::new(),
            &node("n1"),
            t(0)
        ),
        Err(Error::NotInPool { .. })
    ));
    // Auto-assign on n1 now uses the claimed block.
    let b = v4(&ipam, "z", "n1", 1, t(0)).expect("auto");
    assert!(
        "10.0.0.64/26"
            .parse::<ipnet::IpNet>()
            .expect("n")
            .contains(&b[0])
    );
    assert_clean(&ipam);
}

#[test]
fn gc_releases_empty_blocks_after_two_observations_but_never_the_last() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 30)],
        None,
        IpamOptions::default(),
    );
    v4(&ipam, "a", "n1", 8, t(0)).expect("two blocks");
    ipam.release_handle(&h("a"), t(1)).expect("release");
    let first = ipam.release_empty_affinities().expect("gc1");
    assert!(first.released_blocks.is_empty());
    assert_eq!(first.pending_candidates, 2);
    let second = ipam.release_empty_affinities().expect("gc2");
    assert_eq!(
        second.released_blocks.len(),
        1,
        "exactly one of two empty blocks goes: {second:?}"
    );
    let third = ipam.release_empty_affinities().expect("gc3");
    assert!(
        third.released_blocks.is_empty(),
        "the node's last block must stay"
    );
    assert_clean(&ipam);
    assert_eq!(
        v4(&ipam, "b", "n1", 1, t(2))
            .expect("still allocates")
            .len(),
        1
    );
}

#[test]
fn gc_removes_pending_affinity_of_a_crashed_claim() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let cidr = "10.0.0.128/26".parse().expect("b");
    let pending = br#"{"state":"pending","node":"n9","type":"host","cidr":"10.0.0.128/26","deleted":"false"}"#;
    ipam.store()
        .create(&keys::affinity(&node("n9"), &cidr), pending)
        .expect("create");
    let r = check(ipam.store(), None).expect("check");
    assert!(
        r.is_consistent() && !r.is_clean(),
        "pending affinity is in flight, not corruption: {r:?}"
    );
    ipam.release_empty_affinities().expect("gc1");
    let g = ipam.release_empty_affinities().expect("gc2");
    assert_eq!(g.stale_affinities, vec![(node("n9"), cidr)]);
    assert_clean(&ipam);
}

#[test]
fn leaked_allocations_are_found_and_released() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    v4(&ipam, "live", "n1", 1, t(0)).expect("live");
    v4(&ipam, "dead", "n1", 2, t(0)).expect("dead");
    let live: HashSet<HandleId> = [h("live")].into();
    let r = check(ipam.store(), Some(&live)).expect("check");
    assert_eq!(r.leaked.len(), 2);
    assert!(r.is_consistent());
    assert_eq!(ipam.release_leaked(&live, t(1)).expect("gc").len(), 2);
    assert!(check(ipam.store(), Some(&live)).expect("check").is_clean());
}

#[test]
fn check_finds_orphan_handles_and_disagreeing_blocks() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let ip = v4(&ipam, "a", "n1", 1, t(0)).expect("a")[0];
    ipam.store()
        .create(
            &keys::handle(&h("orphan")),
            br#"{"handleID":"orphan","block":{"10.0.0.64/26":1},"deleted":false}"#,
        )
        .expect("orphan");
    let key = keys::handle(&h("a"));
    let kv = ipam.store().get(&key).expect("get").expect("handle a");
    let blk = ipnet::IpNet::new(ip, 26).expect("n").trunc();
    let bad = format!(r#"{{"handleID":"a","block":{{"{blk}":3}},"deleted":false}}"#);
    ipam.store()
        .update(&key, bad.as_bytes(), kv.mod_revision)
        .expect("update");
    let r = check(ipam.store(), None).expect("check");
    assert_eq!(r.orphan_handles, vec!["orphan".to_string()]);
    assert_eq!(r.handle_mismatches.len(), 1);
    assert_eq!(
        (
            r.handle_mismatches[0].recorded,
            r.handle_mismatches[0].actual
        ),
        (3, 1)
    );
    assert!(!r.is_consistent());
}

/// A store whose transactions always conflict.
struct AlwaysConflict(MemStore);
impl Store for AlwaysConflict {
    fn get(&self, k: &str) -> calinet_ipam::store::StoreResult<Option<calinet_ipam::KeyValue>> {
        self.0.get(k)
    }
    fn list(&self, p: &str) -> calinet_ipam::store::StoreResult<Vec<calinet_ipam::KeyValue>> {
        self.0.list(p)
    }
    fn create(&self, k: &str, v: &[u8]) -> calinet_ipam::store::StoreResult<i64> {
        self.0.create(k, v)
    }
    fn update(&self, k: &str, v: &[u8], r: i64) -> calinet_ipam::store::StoreResult<i64> {
        self.0.update(k, v, r)
    }
    fn delete(&self, k: &str, r: i64) -> calinet_ipam::store::StoreResult<()> {
        self.0.delete(k, r)
    }
    fn txn(&self, ops: &[TxnOp]) -> calinet_ipam::store::StoreResult<i64> {
        if ops.iter().any(|o| {
            o.key().starts_with("/calico/ipam/v2/assignment/") && matches!(o, TxnOp::Update { .. })
        }) {
            Err(StoreError::TxnConflict {
                keys: ops.iter().map(|o| o.key().to_owned()).collect(),
            })
        } else {
            self.0.txn(ops)
        }
    }
}

#[test]
fn endless_conflicts_end_in_a_typed_error_after_bounded_retries() {
    let opts = IpamOptions {
        max_retries: 5,
        ..Default::default()
    };
    let ipam = Ipam::with_options(
        AlwaysConflict(MemStore::new()),
        Box::new(AllOnlySelector),
        opts,
    );
    ipam.put_pool(&pool("p", "10.0.0.0/24", 26)).expect("pool");
    match v4(&ipam, "a", "n1", 1, t(0)) {
        Err(Error::Conflict { attempts, keys, .. }) => {
            assert_eq!(attempts, 6);
            assert!(keys.iter().any(|k| k.contains("/block/")));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
}

#[test]
fn stale_caches_in_two_allocators_never_duplicate() {
    let store = Arc::new(MemStore::new());
    let a = Ipam::new(store.clone());
    let b = Ipam::new(store.clone());
    a.put_pool(&pool("p", "10.0.0.0/28", 28)).expect("pool");
    let mut all = HashSet::new();
    for i in 0..8 {
        for (ipam, tag) in [(&a, "a"), (&b, "b")] {
            for ip in v4(ipam, &format!("{tag}{i}"), "n1", 1, t(0)).expect("assign") {
                assert!(all.insert(ip), "duplicate {ip}");
            }
        }
    }
    assert_eq!(all.len(), 16);
    assert!(check(&*store, None).expect("check").is_clean());
}

#[test]
fn specific_assignment_respects_strict_affinity_and_windows_reservations() {
    let opts = IpamOptions {
        windows_reserved: true,
        ..Default::default()
    };
    let ipam = ipam_with(&[pool("p", "10.0.0.0/24", 28)], Some(strict(2)), opts);
    let got = v4(&ipam, "a", "n1", 1, t(0)).expect("n1 claims a block");
    let blk = ipnet::IpNet::new(got[0], 28).expect("net").trunc();
    // Another node may not take an address from n1's block under strict affinity.
    let inside = match blk.network() {
        IpAddr::V4(n) => IpAddr::V4((u32::from(n) + 9).into()),
        IpAddr::V6(_) => unreachable!(),
    };
    match ipam.assign_ip(inside, &h("b"), &BTreeMap::new(), &node("n2"), t(0)) {
        Err(Error::StrictAffinity { owner, .. }) => assert_eq!(owner, "host:n1"),
        other => panic!("expected StrictAffinity, got {other:?}"),
    }
    // The block's first address is Windows-reserved.
    match ipam.assign_ip(blk.network(), &h("c"), &BTreeMap::new(), &node("n1"), t(0)) {
        Err(Error::AddressReserved { addr }) => assert_eq!(addr, blk.network()),
        other => panic!("expected AddressReserved, got {other:?}"),
    }
    assert_clean(&ipam);
}

#[test]
fn pool_cidr_and_block_size_are_immutable_and_overlaps_rejected() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let mut changed = pool("p", "10.0.0.0/24", 27);
    assert!(
        matches!(ipam.put_pool(&changed), Err(Error::InvalidPool { rule, .. }) if rule.contains("immutable"))
    );
    changed.spec.block_size = Some(26);
    changed.spec.nat_outgoing = Some(true);
    ipam.put_pool(&changed).expect("other fields may change");
    assert!(matches!(
        ipam.put_pool(&pool("q", "10.0.0.128/25", 26)),
        Err(Error::OverlappingPools { .. })
    ));
    let bad_cfg = IpamConfigSpec {
        max_blocks_per_host: 4,
        ..Default::default()
    };
    assert!(matches!(
        ipam.put_config(&bad_cfg),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(
        ipam.store().get(keys::IPAM_CONFIG).expect("get").is_none(),
        "invalid config was written"
    );
}

#[test]
fn store_keys_and_values_follow_calicos_layout() {
    let ipam = ipam_with(
        &[pool("default-ipv4-ippool", "10.0.0.0/24", 26)],
        None,
        IpamOptions::default(),
    );
    let ip = v4(&ipam, "k8s-pod-network.abc", "node-a", 1, t(0)).expect("assign")[0];
    let keys: Vec<String> = ipam
        .store()
        .list("/calico/")
        .expect("list")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    let block = ipnet::IpNet::new(ip, 26).expect("net").trunc();
    let bk = format!("{}-26", block.network());
    assert_eq!(
        keys,
        vec![
            format!("/calico/ipam/v2/assignment/ipv4/block/{bk}"),
            "/calico/ipam/v2/handle/k8s-pod-network.abc".to_string(),
            format!("/calico/ipam/v2/host/node-a/ipv4/block/{bk}"),
            "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool".to_string(),
        ]
    );
    let blk: calinet_ipam::IpamBlock = serde_json::from_slice(
        &ipam
            .store()
            .get(&keys[0])
            .expect("get")
            .expect("block")
            .value,
    )
    .expect("IPAMBlock JSON");
    assert_eq!(blk.affinity.as_deref(), Some("host:node-a"));
    assert_eq!(blk.allocations.iter().flatten().count(), 1);
    let aff: calinet_ipam::BlockAffinity =
        serde_json::from_slice(&ipam.store().get(&keys[2]).expect("get").expect("aff").value)
            .expect("affinity JSON");
    assert_eq!(aff.state, calinet_ipam::AffinityState::Confirmed);
    // Calico's IPAMHandle value: the id is only in the key.
    let hd: serde_json::Value = serde_json::from_slice(
        &ipam
            .store()
            .get(&keys[1])
            .expect("get")
            .expect("handle")
            .value,
    )
    .expect("handle JSON");
    assert_eq!(
        hd,
        serde_json::json!({"block": {block.to_string(): 1}, "deleted": false})
    );
}

#[test]
fn one_allocator_shared_by_four_threads() {
    let ipam = ipam_with(
        &[pool("p", "10.0.0.0/24", 28)],
        None,
        IpamOptions::default(),
    );
    let all: Vec<Vec<IpAddr>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|tid| {
                let ipam = &ipam;
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..60 {
                        let ip = v4(
                            ipam,
                            &format!("t{tid}-{i}"),
                            &format!("n{}", tid % 2),
                            1,
                            t(0),
                        )
                        .expect("assign");
                        held.push(ip[0]);
                        if i % 3 == 0 {
                            ipam.release_handle(&h(&format!("t{tid}-{i}")), t(0))
                                .expect("release");
                            held.pop();
                        }
                    }
                    held
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let flat: Vec<IpAddr> = all.into_iter().flatten().collect();
    let distinct: HashSet<IpAddr> = flat.iter().copied().collect();
    assert_eq!(distinct.len(), flat.len(), "an address was held twice");
    let r = check(ipam.store(), None).expect("check");
    assert!(r.is_clean(), "{r:#?}");
    assert_eq!(r.addresses_in_use, flat.len());
}

/// A store whose block updates conflict once `on` is set.
struct ConflictsWhenOn {
    inner: MemStore,
    on: std::sync::atomic::AtomicBool,
}
impl Store for ConflictsWhenOn {
    fn get(&self, k: &str) -> calinet_ipam::store::StoreResult<Option<calinet_ipam::KeyValue>> {
        self.inner.get(k)
    }
    fn list(&self, p: &str) -> calinet_ipam::store::StoreResult<Vec<calinet_ipam::KeyValue>> {
        self.inner.list(p)
    }
    fn create(&self, k: &str, v: &[u8]) -> calinet_ipam::store::StoreResult<i64> {
        self.inner.create(k, v)
    }
    fn update(&self, k: &str, v: &[u8], r: i64) -> calinet_ipam::store::StoreResult<i64> {
        self.inner.update(k, v, r)
    }
    fn delete(&self, k: &str, r: i64) -> calinet_ipam::store::StoreResult<()> {
        self.inner.delete(k, r)
    }
    fn txn(&self, ops: &[TxnOp]) -> calinet_ipam::store::StoreResult<i64> {
        let block_update = ops.iter().any(|o| {
            o.key().starts_with("/calico/ipam/v2/assignment/") && matches!(o, TxnOp::Update { .. })
        });
        if block_update && self.on.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::TxnConflict {
                keys: ops.iter().map(|o| o.key().to_owned()).collect(),
            })
        } else {
            self.inner.txn(ops)
        }
    }
}

#[test]
fn every_operation_retries_conflicts_the_same_bounded_way() {
    let ipam = Ipam::with_options(
        ConflictsWhenOn {
            inner: MemStore::new(),
            on: false.into(),
        },
        Box::new(AllOnlySelector),
        IpamOptions {
            max_retries: 5,
            ..Default::default()
        },
    );
    ipam.put_pool(&pool("p", "10.0.0.0/24", 26)).expect("pool");
    let held = v4(&ipam, "a", "n1", 1, t(0)).expect("assign")[0];
    let also = v4(&ipam, "b", "n1", 1, t(0)).expect("assign")[0];
    ipam.store()
        .on
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let free: IpAddr = "10.0.0.200".parse().expect("ip");
    let outcomes = [
        (
            "assign_ip",
            ipam.assign_ip(free, &h("c"), &Default::default(), &node("n1"), t(1))
                .map(|_| ()),
        ),
        (
            "release_ip",
            ipam.release_ip(held, None, None, t(1)).map(|_| ()),
        ),
        (
            "release_handle",
            ipam.release_handle(&h("b"), t(1)).map(|_| ()),
        ),
    ];
    for (op, outcome) in outcomes {
        match outcome {
            Err(Error::Conflict {
                operation,
                attempts,
                keys,
            }) => {
                assert!(operation.starts_with(op), "{operation:?} for {op}");
                assert_eq!(attempts, 6, "{op}: first try plus max_retries");
                assert!(keys.iter().any(|k| k.contains("/block/")), "{op}: {keys:?}");
            }
            other => panic!("{op}: expected Conflict, got {other:?}"),
        }
    }
    // Nothing was half-applied: both addresses are still held.
    ipam.store()
        .on
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ipam.refresh();
    let mut still: Vec<IpAddr> = [h("a"), h("b")]
        .iter()
        .flat_map(|x| ipam.addresses_of(x).expect("addresses"))
        .map(|a| a.addr)
        .collect();
    still.sort();
    let mut want = vec![held, also];
    want.sort();
    assert_eq!(still, want);
}
