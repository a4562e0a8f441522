//! Median ADD latency by exec, as a runtime sees it: the `calinet` plugin vs
//! the CNI reference `ptp` plugin with `host-local` IPAM (Debian
//! `containernetworking-plugins`, /usr/lib/cni), each ADD into a fresh pod
//! namespace, from a lab node namespace, interleaved in the same run. Also the
//! IPAM plugins alone: `calinet-ipam` vs `host-local`. And a node's first
//! ADD (the one that claims a block) in a datastore where 5,000 other nodes
//! hold a block each, against the same in an empty datastore (target: within
//! 2x).
//!
//! Run: `cargo bench -p calinet-cni --bench add` (root; otherwise it reports
//! SKIPPED), or `bash scripts/bench-cni.sh`, which also builds the static
//! plugin (`scripts/build-cni.sh`) and measures both builds in the same run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{CALINET, CALINET_IPAM, Call, REFERENCE_DIR, calinet_config};

const WARMUP: usize = 3;
const RUNS: usize = 40;
/// Nodes already holding a block in the "big" store of the first-ADD rows.
const CLUSTER_NODES: usize = 5_000;
const FIRST_ADD_RUNS: usize = 15;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(v: &mut [Duration]) -> Duration {
    v.sort();
    v[(v.len() * 9) / 10]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// One plugin build under test: where its two binaries are.
struct Build {
    label: &'static str,
    plugin: String,
    ipam: String,
}

/// The builds to measure: the one cargo built for this bench and, when
/// `CALINET_CNI_STATIC_DIR` names a directory holding them, the static builds
/// `scripts/build-cni.sh` makes (how the plugin is meant to be installed).
fn builds() -> Vec<Build> {
    let mut b = vec![Build {
        label: "calinet (cargo build, dynamic)",
        plugin: CALINET.to_owned(),
        ipam: CALINET_IPAM.to_owned(),
    }];
    if let Some(dir) = std::env::var_os("CALINET_CNI_STATIC_DIR") {
        let dir = Path::new(&dir);
        let (plugin, ipam) = (dir.join("calinet"), dir.join("calinet-ipam"));
        assert!(
            plugin.exists() && ipam.exists(),
            "CALINET_CNI_STATIC_DIR={} lacks calinet or calinet-ipam",
            dir.display()
        );
        b.push(Build {
            label: "calinet (static, scripts/build-cni.sh)",
            plugin: plugin.to_str().expect("utf-8 path").to_owned(),
            ipam: ipam.to_str().expect("utf-8 path").to_owned(),
        });
    }
    b
}

/// A datastore in which `nodes` nodes each hold one /26 block of
/// `pool` (16,384 blocks), scattered over the pool (position `13 i`), as
/// blocks and confirmed affinities written in one transaction. The plugin
/// creates the pool itself on its first ADD.
fn cluster_store(db: &Path, pool: &str, nodes: usize) {
    use calinet_ipam::block::Block;
    use calinet_ipam::{BlockCidr, NodeName, SqliteStore, Store, TxnOp, keys};
    let store = SqliteStore::open(db).expect("open datastore");
    let base: ipnet::Ipv4Net = pool.parse().expect("pool");
    let base = u32::from(base.network());
    let mut ops = Vec::with_capacity(nodes * 2);
    for i in 0..nodes {
        let pos = (i as u32 * 13) % 16_384;
        let cidr: BlockCidr = format!("{}/26", std::net::Ipv4Addr::from(base + (pos << 6)))
            .parse()
            .expect("block cidr");
        let node: NodeName = format!("cluster-{i}").parse().expect("node");
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
        store.txn(&ops).expect("populate datastore");
    }
}

/// A node's first ADD (a block claim) with 0 and `CLUSTER_NODES` claimed
/// blocks in the datastore, interleaved; each run is a new node name.
fn first_add_rows(lab: &testlab::Lab, host: &Path, dir: &Path, build: &Build) {
    let stores = [
        (
            "empty datastore",
            dir.join("first-empty.db"),
            "10.80.0.0/12",
            0,
        ),
        (
            "5,000 nodes' blocks in the datastore",
            dir.join("first-5000.db"),
            "10.64.0.0/12",
            CLUSTER_NODES,
        ),
    ];
    for (_, db, pool, nodes) in &stores {
        cluster_store(db, pool, *nodes);
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); stores.len()];
    let mut cpu: Vec<Vec<Duration>> = vec![Vec::new(); stores.len()];
    for r in 0..WARMUP + FIRST_ADD_RUNS {
        for k in 0..stores.len() {
            let slot = (r + k) % stores.len();
            let (_, db, pool, _) = &stores[slot];
            let config = calinet_config(db, pool, r#","ipv4_block_size":26"#).replace(
                r#""nodename":"node-1""#,
                &format!(r#""nodename":"first-{r}""#),
            );
            let pod = lab.pod(&format!("f{slot}-{r}")).expect("pod");
            let call = Call::new("ADD", &format!("f{slot}-{r}"), &pod.path(), &config);
            let out = call.exec(&build.plugin, Some(host));
            out.ok();
            if r >= WARMUP {
                samples[slot].push(out.elapsed);
                cpu[slot].push(out.cpu);
            }
            call.with_command("DEL")
                .exec(&build.plugin, Some(host))
                .ok();
        }
    }
    println!(
        "A node's first ADD (claims a block), {FIRST_ADD_RUNS} runs each (after {WARMUP} warm-up), {}:",
        build.label
    );
    let empty = median(&mut samples[0]);
    for (k, (label, ..)) in stores.iter().enumerate() {
        let m = median(&mut samples[k]);
        println!(
            "  {:<44} median {}  p90 {}  CPU {}  ratio to empty {:.2} (target <= 2)",
            label,
            ms(m),
            ms(p90(&mut samples[k])),
            ms(median(&mut cpu[k])),
            m.as_secs_f64() / empty.as_secs_f64()
        );
    }
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    cpu: Vec<Duration>,
    ipam: Vec<Duration>,
}

fn main() {
    if !testlab::skip::is_root() {
        testlab::skip::skip("CNI ADD benchmark needs root (network namespaces)");
        return;
    }
    let ptp = Path::new(REFERENCE_DIR).join("ptp");
    if !ptp.exists() {
        testlab::skip::skip("reference ptp plugin missing (containernetworking-plugins)");
        return;
    }
    let ptp = ptp.to_str().expect("utf-8 path");
    let host_local = Path::new(REFERENCE_DIR).join("host-local");
    let host_local = host_local.to_str().expect("utf-8 path");
    let builds = builds();
    if std::env::var("CNI_BENCH_ONLY").as_deref() == Ok("first") {
        let lab = testlab::Lab::new("cni_first").expect("lab");
        let seg = lab.segment("198.51.100.0/24").expect("segment");
        let node = lab
            .node("node1", &seg, "198.51.100.10".parse().unwrap())
            .expect("node");
        let dir = tempfile::tempdir().expect("temp dir");
        first_add_rows(&lab, &node.path(), dir.path(), &builds[0]);
        return;
    }

    let lab = testlab::Lab::new("cni_bench").expect("lab");
    let seg = lab.segment("198.51.100.0/24").expect("segment");
    let node = lab
        .node("node1", &seg, "198.51.100.10".parse().unwrap())
        .expect("node");
    let host = node.path();
    let dir = tempfile::tempdir().expect("temp dir");
    // Each build gets its own datastore and pool, so they never share state.
    let configs: Vec<(String, String)> = (0..builds.len())
        .map(|b| {
            let full = calinet_config(
                &dir.path().join(format!("ipam-{b}.db")),
                &format!("172.{}.0.0/16", 16 + b),
                r#","ipv4_block_size":26"#,
            );
            let ipam_only = format!(
                r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ptp","nodename":"node-1",
                    "ipam":{{"type":"calinet-ipam","datastore_path":"{}","ipv4_pools":["172.{}.0.0/16"]}}}}"#,
                dir.path().join(format!("ipam-only-{b}.db")).display(),
                20 + b
            );
            (full, ipam_only)
        })
        .collect();
    let ptp_cfg = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-ptp","type":"ptp","mtu":1400,
            "ipam":{{"type":"host-local","subnet":"172.31.0.0/16","dataDir":"{}"}}}}"#,
        dir.path().join("host-local").display()
    );
    let hl_cfg = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-hl","type":"ptp",
            "ipam":{{"type":"host-local","subnet":"172.30.0.0/16","dataDir":"{}"}}}}"#,
        dir.path().join("host-local-only").display()
    );

    let mut ours: Vec<Samples> = builds.iter().map(|_| Samples::default()).collect();
    let mut reference = Samples::default();
    let mut floor = Vec::new();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for i in 0..WARMUP + RUNS {
        // Fresh pod namespaces (not timed), one per plugin.
        let pods: Vec<_> = (0..=builds.len())
            .map(|b| lab.pod(&format!("p{b}-{i}")).expect("pod"))
            .collect();
        // Each plugin's ADD, in an order that rotates, so none always runs on
        // a warmer (or colder) cache; the reference is the last slot.
        let n = builds.len() + 1;
        let mut adds: Vec<Option<(Call, common::Outcome)>> = (0..n).map(|_| None).collect();
        for k in 0..n {
            let slot = (i + k) % n;
            let call = if slot < builds.len() {
                Call::new(
                    "ADD",
                    &format!("c{slot}-{i}"),
                    &pods[slot].path(),
                    &configs[slot].0,
                )
            } else {
                Call::new("ADD", &format!("ref{i}"), &pods[slot].path(), &ptp_cfg)
            };
            let bin = builds.get(slot).map_or(ptp, |b| b.plugin.as_str());
            let out = call.exec(bin, Some(&host));
            out.ok();
            adds[slot] = Some((call, out));
        }
        // The exec path itself: /bin/true spawned the same way (setns, env, stdin).
        let (first, _) = adds[0].as_ref().expect("ran");
        let tt = first.exec("/bin/true", Some(&host));
        // The IPAM plugins alone.
        let ipam_calls: Vec<_> = (0..builds.len())
            .map(|b| Call::new("ADD", &format!("i{b}-{i}"), &pods[b].path(), &configs[b].1))
            .collect();
        let ipam_outs: Vec<_> = ipam_calls
            .iter()
            .zip(&builds)
            .map(|(c, b)| c.exec(&b.ipam, None))
            .collect();
        let hl = Call::new(
            "ADD",
            &format!("hl{i}"),
            &pods[builds.len()].path(),
            &hl_cfg,
        );
        let td = hl.exec(host_local, None);
        td.ok();
        if i >= WARMUP {
            for (b, s) in ours.iter_mut().enumerate() {
                let (_, out) = adds[b].as_ref().expect("ran");
                s.add.push(out.elapsed);
                s.cpu.push(out.cpu);
                ipam_outs[b].ok();
                s.ipam.push(ipam_outs[b].elapsed);
            }
            let (_, out) = adds[builds.len()].as_ref().expect("ran");
            reference.add.push(out.elapsed);
            reference.cpu.push(out.cpu);
            reference.ipam.push(td.elapsed);
            floor.push(tt.elapsed);
        }
        // Not timed: DEL everything so each run starts from the same state.
        for (slot, a) in adds.iter().enumerate() {
            let (call, _) = a.as_ref().expect("ran");
            let bin = builds.get(slot).map_or(ptp, |b| b.plugin.as_str());
            call.with_command("DEL").exec(bin, Some(&host)).ok();
        }
        for (c, b) in ipam_calls.iter().zip(&builds) {
            c.with_command("DEL").exec(&b.ipam, None).ok();
        }
        hl.with_command("DEL").exec(host_local, None).ok();
    }

    let mr = median(&mut reference.add);
    let rc = median(&mut reference.cpu);
    let mh = median(&mut reference.ipam);
    let mf = median(&mut floor);
    println!("CNI ADD by exec, {RUNS} runs each (after {WARMUP} warm-up), fresh pod netns each:");
    println!(
        "  {:<44} median {}  p90 {}  CPU {}",
        "ptp + host-local (reference)",
        ms(mr),
        ms(p90(&mut reference.add)),
        ms(rc)
    );
    println!(
        "  {:<44} median {}",
        "exec floor (/bin/true, same spawn path)",
        ms(mf)
    );
    for (b, s) in builds.iter().zip(&mut ours) {
        let (mc, cc) = (median(&mut s.add), median(&mut s.cpu));
        println!(
            "  {:<44} median {}  p90 {}  CPU {}",
            b.label,
            ms(mc),
            ms(p90(&mut s.add)),
            ms(cc)
        );
        println!(
            "    ratio to the reference: {:.2} wall (target <= 0.33), {:.2} CPU; with the exec floor subtracted from both: {:.2}",
            mc.as_secs_f64() / mr.as_secs_f64(),
            cc.as_secs_f64() / rc.as_secs_f64(),
            (mc.as_secs_f64() - mf.as_secs_f64()) / (mr.as_secs_f64() - mf.as_secs_f64())
        );
    }
    first_add_rows(&lab, &host, dir.path(), &builds[0]);
    println!("IPAM plugin alone by exec:");
    println!("  {:<44} median {}", "host-local (files)", ms(mh));
    for (b, s) in builds.iter().zip(&mut ours) {
        let mi = median(&mut s.ipam);
        println!(
            "  {:<44} median {}  ratio to host-local {:.2}",
            b.label.replace("calinet", "calinet-ipam"),
            ms(mi),
            mi.as_secs_f64() / mh.as_secs_f64()
        );
    }
    println!(
        "  load average before / after: {} / {}",
        load_before.trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
