//! Median ADD latency by exec, as a runtime sees it: the `calinet` plugin vs
//! the CNI reference `ptp` plugin with `host-local` IPAM (Debian
//! `containernetworking-plugins`, /usr/lib/cni), each ADD into a fresh pod
//! namespace, from a lab node namespace, interleaved in the same run. Also the
//! IPAM plugins alone: `calinet-ipam` vs `host-local`.
//!
//! Run: `cargo bench -p calinet-cni --bench add` (root; otherwise it reports
//! SKIPPED).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{CALINET, CALINET_IPAM, Call, REFERENCE_DIR, calinet_config};

const WARMUP: usize = 3;
const RUNS: usize = 40;

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

    let lab = testlab::Lab::new("cni_bench").expect("lab");
    let seg = lab.segment("198.51.100.0/24").expect("segment");
    let node = lab
        .node("node1", &seg, "198.51.100.10".parse().unwrap())
        .expect("node");
    let host = node.path();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ipam.db");
    let calinet_cfg = calinet_config(&db, "172.16.0.0/16", r#","ipv4_block_size":26"#);
    let ptp_cfg = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-ptp","type":"ptp","mtu":1400,
            "ipam":{{"type":"host-local","subnet":"172.31.0.0/16","dataDir":"{}"}}}}"#,
        dir.path().join("host-local").display()
    );
    let ipam_db = dir.path().join("ipam-only.db");
    let ipam_cfg = format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ptp","nodename":"node-1",
            "ipam":{{"type":"calinet-ipam","datastore_path":"{}","ipv4_pools":["172.17.0.0/16"]}}}}"#,
        ipam_db.display()
    );
    let hl_cfg = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench-hl","type":"ptp",
            "ipam":{{"type":"host-local","subnet":"172.30.0.0/16","dataDir":"{}"}}}}"#,
        dir.path().join("host-local-only").display()
    );

    let (mut cal, mut refr, mut cal_ipam, mut ref_ipam) = (vec![], vec![], vec![], vec![]);
    let (mut cal_cpu, mut ref_cpu, mut floor) = (vec![], vec![], vec![]);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    for i in 0..WARMUP + RUNS {
        // Fresh pod namespaces (not timed), one per plugin.
        let p1 = lab.pod(&format!("c{i}")).expect("pod");
        let p2 = lab.pod(&format!("r{i}")).expect("pod");
        let a = Call::new("ADD", &format!("cal{i}"), &p1.path(), &calinet_cfg);
        let b = Call::new("ADD", &format!("ref{i}"), &p2.path(), &ptp_cfg);
        let c = Call::new("ADD", &format!("ipam{i}"), &p1.path(), &ipam_cfg);
        let d = Call::new("ADD", &format!("hl{i}"), &p2.path(), &hl_cfg);
        // Alternate which goes first, so neither always runs on a warmer cache.
        let (ta, tb) = if i % 2 == 0 {
            let ta = a.exec(CALINET, Some(&host));
            (ta, b.exec(ptp, Some(&host)))
        } else {
            let tb = b.exec(ptp, Some(&host));
            (a.exec(CALINET, Some(&host)), tb)
        };
        ta.ok();
        tb.ok();
        // The exec path itself: /bin/true spawned the same way (setns, env, stdin).
        let tt = a.exec("/bin/true", Some(&host));
        let tc = c.exec(CALINET_IPAM, None);
        let td = d.exec(host_local, None);
        tc.ok();
        td.ok();
        if i >= WARMUP {
            cal.push(ta.elapsed);
            refr.push(tb.elapsed);
            cal_cpu.push(ta.cpu);
            floor.push(tt.elapsed);
            ref_cpu.push(tb.cpu);
            cal_ipam.push(tc.elapsed);
            ref_ipam.push(td.elapsed);
        }
        // Not timed: DEL everything so each run starts from the same state.
        a.with_command("DEL").exec(CALINET, Some(&host)).ok();
        b.with_command("DEL").exec(ptp, Some(&host)).ok();
        c.with_command("DEL").exec(CALINET_IPAM, None).ok();
        d.with_command("DEL").exec(host_local, None).ok();
    }

    let (mc, mr) = (median(&mut cal), median(&mut refr));
    let (mi, mh) = (median(&mut cal_ipam), median(&mut ref_ipam));
    println!("CNI ADD by exec, {RUNS} runs each (after {WARMUP} warm-up), fresh pod netns each:");
    println!(
        "  calinet (IPAM + veth + routes)         median {}  p90 {}",
        ms(mc),
        ms(p90(&mut cal))
    );
    println!(
        "  ptp + host-local (reference)           median {}  p90 {}",
        ms(mr),
        ms(p90(&mut refr))
    );
    println!(
        "  ratio calinet / reference: {:.2} (target <= 0.33)",
        mc.as_secs_f64() / mr.as_secs_f64()
    );
    let (cc, rc) = (median(&mut cal_cpu), median(&mut ref_cpu));
    println!(
        "  CPU time (user+sys, incl. children): calinet {} vs reference {}: ratio {:.2}",
        ms(cc),
        ms(rc),
        cc.as_secs_f64() / rc.as_secs_f64()
    );
    println!(
        "  calinet-ipam alone (SQLite)            median {}  p90 {}",
        ms(mi),
        ms(p90(&mut cal_ipam))
    );
    println!(
        "  host-local alone (files)               median {}  p90 {}",
        ms(mh),
        ms(p90(&mut ref_ipam))
    );
    println!(
        "  ratio calinet-ipam / host-local: {:.2}",
        mi.as_secs_f64() / mh.as_secs_f64()
    );
    let mf = median(&mut floor);
    println!(
        "  exec floor (/bin/true, same spawn path): median {}; ratio with it subtracted: {:.2}",
        ms(mf),
        (mc.as_secs_f64() - mf.as_secs_f64()) / (mr.as_secs_f64() - mf.as_secs_f64())
    );
    println!(
        "  load average before / after: {} / {}",
        load_before.trim(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
