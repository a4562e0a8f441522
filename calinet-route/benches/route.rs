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
        d
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
        let mut ip_add = Vec::new();
        let mut ip_del = Vec::new();
        let mut cn_add = Vec::new();
        let mut cn_del = Vec::new();
        for _ in 0..RUNS {
            ip_add.push(ip_batch(&add_path));
            assert_eq!(count_routes(), ROUTES);
            ip_del.push(ip_batch(&del_path));
            assert_eq!(count_routes(), 0);

            let t = Instant::now();
            let r = rec.reconcile_routes(&desired).await.unwrap();
            cn_add.push(t.elapsed());
            assert!(r.converged() && r.writes == ROUTES as u64);
            assert_eq!(count_routes(), ROUTES);
            let t = Instant::now();
            let r = rec.reconcile_routes(&[]).await.unwrap();
            cn_del.push(t.elapsed());
            assert!(r.converged() && r.writes == ROUTES as u64);
            assert_eq!(count_routes(), 0);
        }
        let (ia, id, ca, cd) = (
            median(ip_add),
            median(ip_del),
            median(cn_add),
            median(cn_del),
        );
        println!(
            "install {ROUTES} /32 routes:  ip -batch {}   calinet {}   ratio {:.2}",
            ms(ia),
            ms(ca),
            ca.as_secs_f64() / ia.as_secs_f64()
        );
        println!(
            "delete  {ROUTES} /32 routes:  ip -batch {}   calinet {}   ratio {:.2}",
            ms(id),
            ms(cd),
            cd.as_secs_f64() / id.as_secs_f64()
        );

        // 2. Converged reconcile of 10,000 routes.
        rec.reconcile_routes(&desired).await.unwrap();
        let mut conv = Vec::new();
        for _ in 0..(RUNS * 2 + 1) {
            let t = Instant::now();
            let r = rec.reconcile_routes(&desired).await.unwrap();
            conv.push(t.elapsed());
            assert_eq!(r.writes, 0, "converged reconcile must not write");
        }
        println!(
            "reconcile {ROUTES} unchanged routes (dump + diff): median {}   writes 0",
            ms(median(conv))
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
    let mut ours = Vec::new();
    let mut anchor = Vec::new();
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
            let t = Instant::now();
            setup_workload(&mut host, &spec, RouteProtocol::CALICO)
                .await
                .unwrap();
            ours.push(t.elapsed());

            let apod = lab.pod(&format!("a{i}")).unwrap();
            let t = Instant::now();
            lab.plumb_pod(
                &node,
                &apod,
                &format!("anc{i}"),
                Ipv4Addr::new(172, 16, 102, 1 + i as u8),
            )
            .unwrap();
            anchor.push(t.elapsed());
        }
    });
    let (o, a) = (median(ours), median(anchor));
    println!(
        "workload setup per pod (veth, MAC, sysctls, addresses, routes; IPv4+IPv6): calinet median {}   ip/sysctl commands (IPv4 only) median {}   ratio {:.2}",
        ms(o),
        ms(a),
        o.as_secs_f64() / a.as_secs_f64()
    );
}
