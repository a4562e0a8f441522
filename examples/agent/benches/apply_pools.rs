//! `apply` of N IPPools from one file into a new SQLite datastore, as
//! `calinet-agent apply -f` does it: parse and validate the documents, then
//! one checked transaction. Checking every pool against all the others used
//! to happen once per pool (N^3 overall); this shows how the time grows.
//!
//! Run: `cargo bench -p calinet-agent --bench apply_pools` (optionally with
//! pool counts as arguments, e.g. `-- 1000 5000 20000`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use calinet_agent::datastore::apply;
use calinet_agent::resources::parse_documents;
use calinet_ipam::{SqliteStore, Store};

fn pools_yaml(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        // Disjoint /24s in 10.0.0.0/8 (n <= 65,536).
        write!(
            s,
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool-{i}\nspec:\n  cidr: 10.{}.{}.0/24\n  blockSize: 26\n---\n",
            i / 256,
            i % 256
        )
        .unwrap();
    }
    s
}

fn run(n: usize) -> (Duration, Duration, Duration) {
    let text = pools_yaml(n);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("ds.db")).expect("store");
    let t = Instant::now();
    let docs = parse_documents("pools.yaml", &text).expect("valid pools");
    let parse = t.elapsed();
    let t = Instant::now();
    let out = apply(&store, &docs).expect("applied");
    let first = t.elapsed();
    assert_eq!(out.len(), n);
    assert_eq!(
        store
            .list(calinet_ipam::keys::POOLS_PREFIX)
            .expect("list")
            .len(),
        n
    );
    // The same file again: every pool is read, checked and found unchanged.
    let t = Instant::now();
    apply(&store, &docs).expect("re-applied");
    (parse, first, t.elapsed())
}

fn main() {
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if counts.is_empty() {
        counts = vec![1_000, 5_000];
    }
    println!("pools  parse     apply(new)  apply(again)  per pool (parse+apply)");
    let mut base: Option<(usize, Duration)> = None;
    for n in counts {
        let (parse, first, again) = run(n);
        let total = parse + first;
        println!(
            "{n:>5}  {:>7.3}s  {:>9.3}s  {:>11.3}s  {:>8.1} us",
            parse.as_secs_f64(),
            first.as_secs_f64(),
            again.as_secs_f64(),
            total.as_secs_f64() * 1e6 / n as f64
        );
        match base {
            None => base = Some((n, total)),
            Some((n0, t0)) => println!(
                "       {n} / {n0} pools: {:.1}x the time for {:.1}x the pools",
                total.as_secs_f64() / t0.as_secs_f64(),
                n as f64 / n0 as f64
            ),
        }
    }
}
