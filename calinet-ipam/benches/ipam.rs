//! calinet-ipam benchmarks (harness = false):
//!
//! 1. block bitmap allocate + release per address, against a naive anchor
//!    (first-free scan over a `Vec<Option<String>>`, no FIFO);
//! 2. AutoAssign + release on `MemStore`, per second, one thread;
//! 3. AutoAssign on `SqliteStore` per second and datastore round trips per
//!    AutoAssign in the steady state, against Calico's sequence of datastore
//!    operations (list affinities, get block, update block, create handle)
//!    run on the same SQLite store in the same run;
//! 4. a node's first AutoAssign (a block claim) by a fresh allocator, as a
//!    CNI plugin process does it, on SqliteStore holding 100, 1,000 and 5,000
//!    claimed blocks (one per node): CPU per claim and bytes read from the
//!    store, against the same claim on an empty store in the same run.
//!
//! Run: `cargo bench -p calinet-ipam --bench ipam`

use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use calinet_ipam::block::{Block, Pick};
use calinet_ipam::{
    AutoAssignRequest, BlockCidr, CountingStore, Family, HandleId, IpPool, IpPoolSpec, Ipam,
    MemStore, NodeName, SqliteStore, Store, TxnOp, keys,
};

const TRIALS: usize = 7;

/// CPU time of this thread. The machine is shared and often overloaded, so
/// wall time includes waiting for a CPU; "per second on one core" is CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes to the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn bitmap_ns_per_pair() -> f64 {
    let mut b = Block::new(
        "10.0.0.0/26".parse().expect("cidr"),
        Some("host:n1".into()),
        false,
    );
    let pick = Pick::default();
    // Half full, so the FIFO is realistic.
    b.allocate(32, &"warm".into(), None, &pick);
    let handle: std::sync::Arc<str> = "k8s-pod-network.h".into();
    let n = 2_000_000u32;
    let t = thread_cpu();
    for _ in 0..n {
        let o = b.allocate_one(&handle, None, &pick).expect("room");
        b.release(black_box(o), 0, 0);
    }
    (thread_cpu() - t).as_nanos() as f64 / f64::from(n)
}

/// Anchor: the simplest allocator one would write (first free slot by scan).
fn naive_ns_per_pair() -> f64 {
    let mut slots: Vec<Option<String>> = vec![None; 64];
    for s in slots.iter_mut().take(32) {
        *s = Some("warm".into());
    }
    let n = 2_000_000u32;
    let t = thread_cpu();
    for _ in 0..n {
        let i = slots.iter().position(Option::is_none).expect("free");
        slots[i] = Some("k8s-pod-network.h".to_owned());
        slots[black_box(i)] = None;
    }
    (thread_cpu() - t).as_nanos() as f64 / f64::from(n)
}

fn pool() -> IpPool {
    let mut spec = IpPoolSpec::with_cidr("172.16.0.0/16".parse().expect("cidr"));
    spec.block_size = Some(26);
    IpPool::new("bench", spec)
}

fn handles(n: usize, tag: &str) -> Vec<HandleId> {
    (0..n)
        .map(|i| format!("k8s-pod-network.{tag}{i}").parse().expect("handle"))
        .collect()
}

/// (pairs per wall-clock second, pairs per CPU second)
fn mem_pairs_per_sec(now: SystemTime) -> (f64, f64) {
    let ipam = Ipam::new(MemStore::new());
    ipam.put_pool(&pool()).expect("pool");
    let node: NodeName = "n1".parse().expect("node");
    let hs = handles(200_000, "m");
    // Warm up: claim the block, fill the caches.
    let mut reqs: Vec<AutoAssignRequest> = hs
        .iter()
        .map(|h| AutoAssignRequest::v4(h.clone(), node.clone(), 1))
        .collect();
    ipam.auto_assign(&reqs[0], now).expect("warm");
    ipam.release_handle(&hs[0], now).expect("warm release");
    let t = Instant::now();
    let cpu = thread_cpu();
    for (r, h) in reqs.iter_mut().zip(&hs).skip(1) {
        black_box(ipam.auto_assign(r, now).expect("assign"));
        black_box(ipam.release_handle(h, now).expect("release"));
    }
    let cpu = (thread_cpu() - cpu).as_secs_f64();
    let n = (hs.len() - 1) as f64;
    (n / t.elapsed().as_secs_f64(), n / cpu)
}

struct SqliteFigures {
    assigns_per_sec: f64,
    round_trips: f64,
    calico_style_per_sec: f64,
    calico_round_trips: f64,
}

fn sqlite_figures(dir: &std::path::Path, trial: usize, now: SystemTime) -> SqliteFigures {
    let n = 1500usize;
    let node: NodeName = "n1".parse().expect("node");

    // calinet allocator.
    let store =
        CountingStore::new(SqliteStore::open(dir.join(format!("c{trial}.db"))).expect("open"));
    let ipam = Ipam::new(store);
    ipam.put_pool(&pool()).expect("pool");
    let hs = handles(n + 1, "s");
    ipam.auto_assign(&AutoAssignRequest::v4(hs[0].clone(), node.clone(), 1), now)
        .expect("warm");
    ipam.store().reset();
    let mut assign_time = Duration::ZERO;
    let mut assign_trips = 0u64;
    for h in &hs[1..] {
        let req = AutoAssignRequest::v4(h.clone(), node.clone(), 1);
        let before = ipam.store().round_trips().total();
        let t = Instant::now();
        black_box(ipam.auto_assign(&req, now).expect("assign"));
        assign_time += t.elapsed();
        assign_trips += ipam.store().round_trips().total() - before;
        ipam.release_handle(h, now).expect("release");
    }

    // Anchor: Calico's datastore sequence per AutoAssign on the same kind of
    // store: list the host's affinities, get the block, update the block
    // (CAS), create the handle; release: get handle, get block, update block,
    // delete handle.
    let store =
        CountingStore::new(SqliteStore::open(dir.join(format!("k{trial}.db"))).expect("open"));
    let cidr: BlockCidr = "172.16.0.0/26".parse().expect("cidr");
    let mut block = Block::new(cidr, Some("host:n1".into()), false);
    store
        .create(&keys::affinity(&node, &cidr), br#"{"state":"confirmed"}"#)
        .expect("affinity");
    store
        .create(&keys::block(&cidr), &block.to_json())
        .expect("block");
    let pick = Pick::default();
    let mut calico_time = Duration::ZERO;
    let mut calico_trips = 0u64;
    for h in &hs[1..] {
        let before = store.round_trips().total();
        let t = Instant::now();
        let affs = store
            .list(&keys::affinities_prefix(&node, Family::V4))
            .expect("list");
        black_box(affs);
        let kv = store.get(&keys::block(&cidr)).expect("get").expect("block");
        block = Block::from_json(&kv.key, &kv.value).expect("decode");
        let o = block.allocate(1, &h.as_str().into(), None, &pick);
        store
            .update(&keys::block(&cidr), &block.to_json(), kv.mod_revision)
            .expect("update");
        let handle = format!(r#"{{"handleID":"{h}","block":{{"{cidr}":1}},"deleted":false}}"#);
        store
            .create(&keys::handle(h), handle.as_bytes())
            .expect("handle");
        calico_time += t.elapsed();
        calico_trips += store.round_trips().total() - before;
        // Release (untimed).
        let hk = store.get(&keys::handle(h)).expect("get").expect("handle");
        let kv = store.get(&keys::block(&cidr)).expect("get").expect("block");
        block = Block::from_json(&kv.key, &kv.value).expect("decode");
        block.release(o[0], 0, 0);
        store
            .update(&keys::block(&cidr), &block.to_json(), kv.mod_revision)
            .expect("update");
        store
            .delete(&keys::handle(h), hk.mod_revision)
            .expect("delete");
    }
    SqliteFigures {
        assigns_per_sec: n as f64 / assign_time.as_secs_f64(),
        round_trips: assign_trips as f64 / n as f64,
        calico_style_per_sec: n as f64 / calico_time.as_secs_f64(),
        calico_round_trips: calico_trips as f64 / n as f64,
    }
}

/// The claim bench's pool: 16,384 /26 blocks, room for every row.
fn claim_pool() -> IpPool {
    let mut spec = IpPoolSpec::with_cidr("10.64.0.0/12".parse().expect("cidr"));
    spec.block_size = Some(26);
    IpPool::new("claim", spec)
}

/// A store where `nodes` nodes each hold one block, placed where the
/// allocator's own walk would put them (FNV-1a start per node, then the next
/// free CIDR), written in one transaction.
fn populated(path: &std::path::Path, nodes: usize) -> CountingStore<SqliteStore> {
    use std::hash::Hasher;
    let store = CountingStore::new(SqliteStore::open(path).expect("open"));
    let ipam = Ipam::new(&store);
    let pool = claim_pool();
    ipam.put_pool(&pool).expect("pool");
    let count = pool.block_count();
    let mut taken = std::collections::HashSet::new();
    let mut ops = Vec::with_capacity(nodes * 2);
    for i in 0..nodes {
        let node: NodeName = format!("node-{i}").parse().expect("node");
        let mut h = fnv::FnvHasher::default();
        h.write(node.as_str().as_bytes());
        let mut k = u128::from(h.finish()) % count;
        while !taken.insert(k) {
            k = (k + 1) % count;
        }
        let cidr = pool.block(k);
        let block = Block::new(cidr, Some(format!("host:{node}")), false);
        ops.push(TxnOp::Create {
            key: keys::block(&cidr),
            value: block.to_json(),
        });
        ops.push(TxnOp::Create {
            key: keys::affinity(&node, &cidr),
            value: br#"{"state":"confirmed","deleted":false}"#.to_vec(),
        });
    }
    if !ops.is_empty() {
        store.txn(&ops).expect("populate");
    }
    store
}

/// (CPU microseconds per first AutoAssign, bytes read per first AutoAssign)
/// for `reps` new nodes, each with a fresh allocator on the same store.
fn claim_cost(
    store: &CountingStore<SqliteStore>,
    reps: usize,
    tag: &str,
    now: SystemTime,
) -> (f64, f64) {
    let mut cpu = Vec::new();
    let mut bytes = Vec::new();
    for r in 0..reps {
        let node: NodeName = format!("new-{tag}-{r}").parse().expect("node");
        let h: HandleId = format!("k8s-pod-network.{tag}{r}").parse().expect("handle");
        let req = AutoAssignRequest::v4(h, node, 1);
        let ipam = Ipam::new(store);
        // Pools and configuration are read by every process anyway; the
        // claim is what is measured.
        ipam.cached_snapshot(now).expect("snapshot");
        store.reset();
        let t = thread_cpu();
        black_box(ipam.auto_assign(&req, now).expect("assign"));
        cpu.push((thread_cpu() - t).as_secs_f64() * 1e6);
        bytes.push(store.bytes_read() as f64);
    }
    (median(cpu), median(bytes))
}

fn claim_rows(dir: &std::path::Path, now: SystemTime) {
    const REPS: usize = 15;
    let empty = populated(&dir.join("claim-0.db"), 0);
    let (e_cpu, e_bytes) = claim_cost(&empty, REPS, "e", now);
    println!(
        "first AutoAssign (block claim) by a fresh allocator on SqliteStore, median of {REPS}:"
    );
    println!("  empty store: {e_cpu:.0} us CPU, {e_bytes:.0} bytes read");
    for n in [100, 1_000, 5_000] {
        let store = populated(&dir.join(format!("claim-{n}.db")), n);
        let (cpu, bytes) = claim_cost(&store, REPS, &n.to_string(), now);
        println!(
            "  {n:>5} claimed blocks: {cpu:.0} us CPU ({:.2}x empty), {bytes:.0} bytes read",
            cpu / e_cpu
        );
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').next().unwrap_or("?").to_owned())
        .unwrap_or_default()
}

fn main() {
    let now = SystemTime::now();
    // For profiling one part: IPAM_BENCH_ONLY=mem (or bitmap).
    match std::env::var("IPAM_BENCH_ONLY").as_deref() {
        Ok("mem") => {
            println!("{:?} pairs/s (wall, cpu)", mem_pairs_per_sec(now));
            return;
        }
        Ok("json") => {
            let mut b = Block::new(
                "10.0.0.0/26".parse().expect("cidr"),
                Some("host:n1".into()),
                false,
            );
            b.allocate(1, &"k8s-pod-network.x".into(), None, &Pick::default());
            let t = thread_cpu();
            for _ in 0..200_000 {
                black_box(b.to_json());
            }
            println!(
                "block to_json: {:.0} ns",
                (thread_cpu() - t).as_nanos() as f64 / 200_000.0
            );
            return;
        }
        Ok("claim") => {
            let dir = tempfile::tempdir().expect("tempdir");
            claim_rows(dir.path(), now);
            return;
        }
        Ok("bitmap") => {
            println!("{:.1} ns", bitmap_ns_per_pair());
            return;
        }
        _ => {}
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bitmap = Vec::new();
    let mut naive = Vec::new();
    let mut mem = Vec::new();
    let mut mem_cpu = Vec::new();
    let mut sq = Vec::new();
    let mut sq_rt = Vec::new();
    let mut cal = Vec::new();
    let mut cal_rt = Vec::new();
    for trial in 0..TRIALS {
        bitmap.push(bitmap_ns_per_pair());
        naive.push(naive_ns_per_pair());
        let (wall, cpu) = mem_pairs_per_sec(now);
        mem.push(wall);
        mem_cpu.push(cpu);
        let f = sqlite_figures(dir.path(), trial, now);
        sq.push(f.assigns_per_sec);
        sq_rt.push(f.round_trips);
        cal.push(f.calico_style_per_sec);
        cal_rt.push(f.calico_round_trips);
    }
    let (bitmap, naive, mem, mem_cpu) =
        (median(bitmap), median(naive), median(mem), median(mem_cpu));
    let (sq, sq_rt, cal, cal_rt) = (median(sq), median(sq_rt), median(cal), median(cal_rt));
    println!(
        "calinet-ipam benchmarks, medians of {TRIALS} trials (load average at start: {})",
        load()
    );
    println!(
        "block bitmap allocate+release (/26, half full): {bitmap:.1} ns CPU per address; naive first-free scan anchor: {naive:.1} ns (ratio {:.2}x)",
        naive / bitmap
    );
    println!(
        "AutoAssign+release on MemStore, 1 thread: {mem_cpu:.0} pairs per CPU-second ({:.2} us CPU per pair); \
         {mem:.0} pairs per wall-clock second",
        1e6 / mem_cpu
    );
    claim_rows(dir.path(), now);
    println!(
        "AutoAssign on SqliteStore (steady state): {sq:.0} /s, {sq_rt:.2} round trips per AutoAssign; \
         Calico's datastore sequence on SqliteStore: {cal:.0} /s, {cal_rt:.2} round trips (speed-up {:.2}x)",
        sq / cal
    );
}
