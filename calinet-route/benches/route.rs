//! calinet-route benchmarks against the real alternative, in the same run and the
//! same namespace setup (needs root; prints SKIPPED otherwise).
//!
//! `cargo bench -p calinet-route --bench route`
//!
//! 1. Install 10,000 `/32 dev X scope link proto 80` routes: calinet (one reconcile
//!    from empty: dump + plan + pipelined writes) vs `ip -batch` of the same routes.
//! 2. Reconcile of 10,000 unchanged routes (dump + diff, zero writes).
//! 3. One route changed by hand among 10,000: exactly one write.
//! 4. Workload setup per pod: calinet vs the same plumbing with `ip`/`sysctl`
//!    commands (the lab's hand-made Calico plumbing).

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use calinet_route::nl::Conn;
use calinet_route::workload::setup_workload;
use calinet_route::{
    IfName, NetlinkBackend, Netns, Ownership, Reconciler, RouteProtocol, RouteSpec, WorkloadSpec,
};

const ROUTES: usize = 10_000;
const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// CPU time (user + system) of `who` (`RUSAGE_THREAD` or `RUSAGE_CHILDREN`): on a
/// shared, loaded machine this is the fairer comparison, wall time is also shown.
fn cpu(who: i32) -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn main() {
    if !testlab::skip::is_root() {
        eprintln!("SKIPPED: calinet-route benchmarks need root (network namespaces)");
        return;
    }
    let lab = testlab::Lab::new("calinet-route-bench").expect("lab");
    let ns = lab.netns("bench").expect("netns");
    ns.ip(&["link", "add", "bx0", "type", "veth", "peer", "name", "bx1"])
        .unwrap();
    ns.ip(&["link", "set", "bx0", "up"]).unwrap();
    ns.ip(&["link", "set", "bx1", "up"]).unwrap();
    let netns = Netns::open(ns.path()).unwrap();
    let dev: IfName = "bx0".parse().unwrap();
    let desired: Vec<RouteSpec> = (0..ROUTES)
        .map(|i| RouteSpec::workload(addr(i).into(), dev.clone()))
        .collect();

    // The ip -batch files, written once.
    let dir = tempfile::tempdir().unwrap();
    let add_path = dir.path().join("add.batch");
    let del_path = dir.path().join("del.batch");
    {
        let mut add = std::fs::File::create(&add_path).unwrap();
        let mut del = std::fs::File::create(&del_path).unwrap();
        for i in 0..ROUTES {
            writeln!(add, "route add {}/32 dev bx0 scope link proto 80", addr(i)).unwrap();
            writeln!(del, "route del {}/32 dev bx0 scope link proto 80", addr(i)).unwrap();
        }
    }
    let ip_batch = |path: &std::path::Path| {
        let c = cpu(libc::RUSAGE_CHILDREN);
        let t = Instant::now();
        let out = std::process::Command::new("ip")
            .args(["-n", ns.name(), "-batch"])
            .arg(path)
            .output()
            .unwrap();
        let d = t.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (d, cpu(libc::RUSAGE_CHILDREN) - c)
    };
    let count_routes = || {
        ns.ip(&["-4", "route", "show", "proto", "80"])
            .unwrap()
            .lines()
            .count()
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rec = Reconciler::new(
            NetlinkBackend::open(&netns).await.unwrap(),
            Ownership::default().interface_prefix("bx"),
        );

        // 1. Install, alternating so both see the same machine state.
        let (mut ip_add, mut ip_del, mut cn_add, mut cn_del) = (vec![], vec![], vec![], vec![]);
        let (mut ip_add_c, mut ip_del_c, mut cn_add_c, mut cn_del_c) =
            (vec![], vec![], vec![], vec![]);
        for _ in 0..RUNS {
            let (w, c) = ip_batch(&add_path);
            ip_add.push(w);
            ip_add_c.push(c);
            assert_eq!(count_routes(), ROUTES);
            let (w, c) = ip_batch(&del_path);
            ip_del.push(w);
            ip_del_c.push(c);
            assert_eq!(count_routes(), 0);

            let c = cpu(libc::RUSAGE_THREAD);
            let t = Instant::now();
            let r = rec.reconcile_routes(&desired).await.unwrap();
            cn_add.push(t.elapsed());
            cn_add_c.push(cpu(libc::RUSAGE_THREAD) - c);
            assert!(r.converged() && r.writes == ROUTES as u64);
            assert_eq!(count_routes(), ROUTES);
            let c = cpu(libc::RUSAGE_THREAD);
            let t = Instant::now();
            let r = rec.reconcile_routes(&[]).await.unwrap();
            cn_del.push(t.elapsed());
            cn_del_c.push(cpu(libc::RUSAGE_THREAD) - c);
            assert!(r.converged() && r.writes == ROUTES as u64);
            assert_eq!(count_routes(), 0);
        }
        for (what, ip_w, cn_w, ip_c, cn_c) in [
            ("install", ip_add, cn_add, ip_add_c, cn_add_c),
            ("delete ", ip_del, cn_del, ip_del_c, cn_del_c),
        ] {
            let (iw, cw, ic, cc) = (median(ip_w), median(cn_w), median(ip_c), median(cn_c));
            println!(
                "{what} {ROUTES} /32 routes: wall ip -batch {} calinet {} ratio {:.2} | cpu ip -batch {} calinet {} ratio {:.2}",
                ms(iw),
                ms(cw),
                cw.as_secs_f64() / iw.as_secs_f64(),
                ms(ic),
                ms(cc),
                cc.as_secs_f64() / ic.as_secs_f64()
            );
        }

        // 2. Converged reconcile of 10,000 routes.
        rec.reconcile_routes(&desired).await.unwrap();
        let (mut conv, mut conv_c) = (Vec::new(), Vec::new());
        for _ in 0..(RUNS * 2 + 1) {
            let c = cpu(libc::RUSAGE_THREAD);
            let t = Instant::now();
            let r = rec.reconcile_routes(&desired).await.unwrap();
            conv.push(t.elapsed());
            conv_c.push(cpu(libc::RUSAGE_THREAD) - c);
            assert_eq!(r.writes, 0, "converged reconcile must not write");
        }
        println!(
            "reconcile {ROUTES} unchanged routes (dump + diff): median wall {} cpu {}   writes 0",
            ms(median(conv)),
            ms(median(conv_c))
        );

        // 3. One route changed by hand.
        let victim = addr(4242).to_string();
        ns.ip(&[
            "route",
            "change",
            &format!("{victim}/32"),
            "dev",
            "bx0",
            "scope",
            "link",
            "proto",
            "80",
            "mtu",
            "1300",
        ])
        .unwrap();
        let t = Instant::now();
        let r = rec.reconcile_routes(&desired).await.unwrap();
        let d = t.elapsed();
        assert_eq!(r.writes, 1);
        assert_eq!(r.plan.replacements.len(), 1);
        println!(
            "one changed route among {ROUTES}: writes {}   ({})   repaired: {}",
            r.writes,
            ms(d),
            r.plan.replacements[0].observed
        );
        rec.reconcile_routes(&[]).await.unwrap();
    });

    // 5. Many interfaces: 400 workload veths (800 links), one /32 each, the
    //    converged full resync (links + routes dumped, diffed, zero writes).
    const IFACES: usize = 400;
    let many = lab.netns("many").unwrap();
    {
        let path = dir.path().join("links.batch");
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..IFACES {
            writeln!(f, "link add cali{i:011} type veth peer name peer{i}").unwrap();
            writeln!(f, "link set cali{i:011} up").unwrap();
            writeln!(f, "link set peer{i} up").unwrap();
        }
        let out = std::process::Command::new("ip")
            .args(["-n", many.name(), "-batch"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let many_ns = Netns::open(many.path()).unwrap();
    rt.block_on(async {
        let mut rec = Reconciler::new(
            NetlinkBackend::open(&many_ns).await.unwrap(),
            Ownership::default().interface_prefix("cali"),
        );
        let desired: Vec<RouteSpec> = (0..IFACES)
            .map(|i| {
                RouteSpec::workload(
                    Ipv4Addr::new(172, 16, (i / 250) as u8, (i % 250) as u8 + 1).into(),
                    format!("cali{i:011}").parse().unwrap(),
                )
            })
            .collect();
        let t = Instant::now();
        let r = rec.reconcile_routes(&desired).await.unwrap();
        let first = t.elapsed();
        assert!(r.converged() && r.writes == IFACES as u64);
        let mut conv = Vec::new();
        for _ in 0..(RUNS * 2 + 1) {
            let t = Instant::now();
            let r = rec.reconcile_routes(&desired).await.unwrap();
            conv.push(t.elapsed());
            assert_eq!(r.writes, 0);
        }
        println!(
            "{IFACES} workload interfaces ({} links), one route each: first reconcile {}   converged full resync median {}   writes 0",
            IFACES * 2 + 1,
            ms(first),
            ms(median(conv))
        );
    });

    // 4. Workload setup per pod.
    const PODS: usize = 15;
    let node = lab.netns("node").unwrap();
    let node_ns = Netns::open(node.path()).unwrap();
    let (mut ours, mut ours_c) = (Vec::new(), Vec::new());
    let (mut anchor, mut anchor_c) = (Vec::new(), Vec::new());
    rt.block_on(async {
        let mut host = Conn::open(&node_ns).await.unwrap();
        for i in 0..PODS {
            let pod = lab.pod(&format!("p{i}")).unwrap();
            let spec = WorkloadSpec::new(
                IfName::calico_workload("bench", &format!("pod{i}")),
                pod.path(),
                1440,
            )
            .ipv4(Ipv4Addr::new(172, 16, 101, 1 + i as u8))
            .ipv6(format!("fd00:10:244::{:x}", i + 1).parse().unwrap());
            let c = cpu(libc::RUSAGE_SELF);
            let t = Instant::now();
            setup_workload(&mut host, &spec, RouteProtocol::CALICO)
                .await
                .unwrap();
            ours.push(t.elapsed());
            ours_c.push(cpu(libc::RUSAGE_SELF) - c);

            let apod = lab.pod(&format!("a{i}")).unwrap();
            let c = cpu(libc::RUSAGE_CHILDREN);
            let t = Instant::now();
            lab.plumb_pod(
                &node,
                &apod,
                &format!("anc{i}"),
                Ipv4Addr::new(172, 16, 102, 1 + i as u8),
            )
            .unwrap();
            anchor.push(t.elapsed());
            anchor_c.push(cpu(libc::RUSAGE_CHILDREN) - c);
        }
    });
    let (o, a, oc, ac) = (
        median(ours),
        median(anchor),
        median(ours_c),
        median(anchor_c),
    );
    println!(
        "workload setup per pod (veth, MAC, sysctls, addresses, routes; IPv4+IPv6) vs ip/sysctl commands (IPv4 only): wall calinet {} commands {} ratio {:.2} | cpu calinet {} commands {} ratio {:.2}",
        ms(o),
        ms(a),
        o.as_secs_f64() / a.as_secs_f64(),
        ms(oc),
        ms(ac),
        oc.as_secs_f64() / ac.as_secs_f64()
    );
}
