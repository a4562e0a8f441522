//! Block claims from one nearly full pool by several threads and processes
//! at once, each with its own allocator (so each builds its own free-block
//! index and races the others with it): no CIDR is claimed twice and every
//! free one is claimed exactly once.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::SystemTime;

use calinet_ipam::report::{check, dump};
use calinet_ipam::{AutoAssignRequest, Error, IpPool, IpPoolSpec, Ipam, SqliteStore};

const WORKER_ENV: &str = "CALINET_IPAM_CLAIM_WORKER";
/// 64 blocks of /28.
const POOL: &str = "10.11.0.0/22";
const BLOCKS: usize = 64;
const PRECLAIMED: usize = 52;
/// Claimants: more than the 12 free blocks, so the pool runs out mid-race.
const THREADS: usize = 4;
const PROCESSES: usize = 2;
const NODES_EACH: usize = 3;

fn pool() -> IpPool {
    let mut spec = IpPoolSpec::with_cidr(POOL.parse().expect("cidr"));
    spec.block_size = Some(28);
    IpPool::new("nearly-full", spec)
}

fn ipam(path: &Path) -> Ipam<SqliteStore> {
    Ipam::new(SqliteStore::open(path).expect("open"))
}

/// The pool, and strict affinity: a node that finds no free block gets
/// `Exhausted` rather than borrowing, so every success is a claim.
fn setup(path: &Path) {
    let ipam = ipam(path);
    let cfg: calinet_ipam::IpamConfigSpec =
        serde_json::from_str(r#"{"strictAffinity":true}"#).expect("config");
    ipam.put_config(&cfg).expect("config");
    ipam.put_pool(&pool()).expect("pool");
}

/// Claim one address for each of `nodes`; the nodes that got one.
fn claim_for(path: &Path, nodes: &[String]) -> Vec<String> {
    let ipam = ipam(path);
    let mut won = Vec::new();
    for node in nodes {
        let req = AutoAssignRequest::v4(
            format!("k8s-pod-network.{node}").parse().expect("handle"),
            node.parse().expect("node"),
            1,
        );
        match ipam.auto_assign(&req, SystemTime::now()) {
            Ok(_) => won.push(node.clone()),
            Err(Error::Exhausted { .. }) => {}
            Err(e) => panic!("{node}: auto_assign: {e:?}"),
        }
    }
    won
}

/// Worker process entry point (re-executed test binary).
#[test]
#[ignore = "worker process for the nearly-full-pool claim test; started by it"]
fn claim_worker_process() {
    let spec = std::env::var(WORKER_ENV).expect("run by the claim test only");
    let (path, nodes) = spec.split_once(',').expect("path,nodes");
    let nodes: Vec<String> = nodes.split(',').map(str::to_owned).collect();
    // libtest prints "test claim_worker_process ... " first, on the same line.
    for node in claim_for(Path::new(path), &nodes) {
        println!("WON {node}");
    }
}

#[test]
fn claims_from_a_nearly_full_pool_by_threads_and_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ipam.db");
    setup(&path);
    let pre: Vec<String> = (0..PRECLAIMED).map(|i| format!("pre-{i}")).collect();
    assert_eq!(claim_for(&path, &pre).len(), PRECLAIMED, "pre-claims");

    let names =
        |who: &str| -> Vec<String> { (0..NODES_EACH).map(|k| format!("{who}-n{k}")).collect() };
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "claim_worker_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    WORKER_ENV,
                    format!("{},{}", path.display(), names(&format!("p{p}")).join(",")),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    let mut won: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let (path, nodes) = (&path, names(&format!("t{t}")));
                s.spawn(move || claim_for(path, &nodes))
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    for child in children {
        let out = child.wait_with_output().expect("worker");
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        won.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once("WON ").map(|(_, n)| n.trim().to_owned())),
        );
    }

    let d = dump(&SqliteStore::open(&path).expect("open")).expect("dump");
    assert_eq!(
        d.blocks.len(),
        BLOCKS,
        "every block claimed; winners {won:?}, affinities {:?}",
        d.affinities
    );
    // Each block is affine to one node and each node holds at most one; the
    // new blocks are held exactly by the winners.
    let mut owner_of: BTreeMap<String, String> = BTreeMap::new();
    for (b, _) in &d.blocks {
        let aff = b.affinity().expect("affine block").to_owned();
        let node = aff.strip_prefix("host:").expect("host affinity").to_owned();
        assert!(
            owner_of
                .insert(node.clone(), b.cidr().to_string())
                .is_none(),
            "{node} holds two blocks"
        );
    }
    let winners: HashSet<&String> = won.iter().collect();
    let new_owners: HashSet<&String> = owner_of.keys().filter(|n| !n.starts_with("pre-")).collect();
    assert_eq!(new_owners, winners, "the winners hold the new blocks");
    assert_eq!(
        d.affinities.len(),
        BLOCKS,
        "one affinity per block, no pending leftovers"
    );
    let claimants = (THREADS + PROCESSES) * NODES_EACH;
    assert_eq!(
        won.len(),
        BLOCKS - PRECLAIMED,
        "of {claimants} claimants exactly as many as there were free blocks win: {won:?}"
    );
    let r = check(&SqliteStore::open(&path).expect("open"), None).expect("check");
    assert!(r.is_clean(), "{r:#?}");
}
