//! AutoAssign against a loopback etcd, with the embedded SQLite store as the
//! anchor in the same run: addresses per second and datastore round trips per
//! AutoAssign in the steady state (a node whose affine block has room).
//!
//! `cargo bench -p calinet-ipam --features etcd --bench etcd`
//!
//! Each round: one node assigns one address to a fresh handle and releases
//! that handle again, so its one affine /26 always has room; only the
//! AutoAssign calls are timed and counted. Rounds alternate between the
//! stores; medians over the rounds are printed.

use std::time::{Duration, Instant, SystemTime};

use calinet_ipam::{
    AutoAssignRequest, CountingStore, EtcdConfig, EtcdStore, HandleId, IpPool, IpPoolSpec, Ipam,
    NodeName, SqliteStore, Store,
};

const PER_ROUND: usize = 300;
const ROUNDS: usize = 9;

struct Round {
    per_sec: f64,
    trips_per_assign: f64,
    reads: f64,
    writes: f64,
}

fn setup<S: Store>(ipam: &Ipam<S>) {
    let mut spec = IpPoolSpec::with_cidr("172.16.0.0/16".parse().expect("cidr"));
    spec.block_size = Some(26);
    ipam.put_pool(&IpPool::new("bench-pool", spec))
        .expect("put pool");
}

fn round<S: Store>(
    ipam: &Ipam<&CountingStore<S>>,
    node: &NodeName,
    tag: &str,
    n: &mut u64,
) -> Round {
    let mut busy = Duration::ZERO;
    let mut trips = calinet_ipam::RoundTrips::default();
    for _ in 0..PER_ROUND {
        *n += 1;
        let handle: HandleId = format!("bench.{tag}.{n}").parse().expect("handle");
        let req = AutoAssignRequest::v4(handle.clone(), node.clone(), 1);
        let store = *ipam.store();
        store.reset();
        let t = Instant::now();
        let got = ipam
            .auto_assign(&req, SystemTime::now())
            .expect("auto_assign");
        busy += t.elapsed();
        let rt = store.round_trips();
        trips.get += rt.get;
        trips.list += rt.list;
        trips.create += rt.create;
        trips.update += rt.update;
        trips.delete += rt.delete;
        trips.txn += rt.txn;
        assert_eq!(got.v4.len(), 1);
        ipam.release_handle(&handle, SystemTime::now())
            .expect("release");
    }
    let k = PER_ROUND as f64;
    Round {
        per_sec: k / busy.as_secs_f64(),
        trips_per_assign: trips.total() as f64 / k,
        reads: trips.reads() as f64 / k,
        writes: trips.writes() as f64 / k,
    }
}

/// Bare compare-and-swap updates of one key per second: the floor one
/// datastore round trip sets for AutoAssign.
fn cas_per_sec<S: Store>(s: &S, key: &str) -> f64 {
    let mut rev = match s.get(key).expect("get") {
        Some(kv) => kv.mod_revision,
        None => s.create(key, b"0").expect("create"),
    };
    let t = Instant::now();
    for i in 0..PER_ROUND {
        rev = s
            .update(key, i.to_string().as_bytes(), rev)
            .expect("cas update");
    }
    PER_ROUND as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !testlab::Feature::Etcd.available() {
        eprintln!("SKIPPED: etcd is not installed; the etcd benchmark needs it");
        return Ok(());
    }
    let lab = testlab::Lab::new("bench_etcd")?;
    let etcd = lab.etcd()?;
    let dir = tempfile::tempdir()?;
    let etcd_store = CountingStore::new(EtcdStore::connect(EtcdConfig::new([etcd.endpoint()]))?);
    let sqlite_store = CountingStore::new(SqliteStore::open(dir.path().join("bench.db"))?);
    let on_etcd = Ipam::new(&etcd_store);
    let on_sqlite = Ipam::new(&sqlite_store);
    setup(&on_etcd);
    setup(&on_sqlite);
    let node: NodeName = "bench-node".parse()?;
    let mut n = 0;
    // Warm up: claim the node's block and fill the caches on both.
    round(&on_etcd, &node, "e", &mut n);
    round(&on_sqlite, &node, "s", &mut n);
    let (mut e, mut s) = (Vec::new(), Vec::new());
    let (mut ce, mut cs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        e.push(round(&on_etcd, &node, "e", &mut n));
        s.push(round(&on_sqlite, &node, "s", &mut n));
        ce.push(cas_per_sec(etcd_store.inner(), "/bench/cas"));
        cs.push(cas_per_sec(sqlite_store.inner(), "/bench/cas"));
    }
    let show = |name: &str, r: &[Round]| {
        let rates: Vec<f64> = r.iter().map(|x| x.per_sec).collect();
        let per_sec = median(rates.clone());
        let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rates.iter().copied().fold(0.0, f64::max);
        println!(
            "{name:<28} {per_sec:>7.0} AutoAssign/s (rounds {lo:.0}..{hi:.0})   {:.2} round trips/AutoAssign ({:.2} reads, {:.2} writes)",
            median(r.iter().map(|x| x.trips_per_assign).collect()),
            median(r.iter().map(|x| x.reads).collect()),
            median(r.iter().map(|x| x.writes).collect()),
        );
        per_sec
    };
    println!(
        "AutoAssign of 1 IPv4 address, steady state (affine /26 with room), {ROUNDS} rounds x {PER_ROUND}, medians"
    );
    let se = show("EtcdStore (loopback etcd)", &e);
    let ss = show("SqliteStore (anchor)", &s);
    println!("etcd / SQLite throughput ratio: {:.2}", se / ss);
    let (ce, cs) = (median(ce), median(cs));
    println!(
        "bare CAS update of one key:  etcd {ce:.0}/s, SQLite {cs:.0}/s \
         (AutoAssign reaches {:.2} and {:.2} of these)",
        se / ce,
        ss / cs
    );
    Ok(())
}
