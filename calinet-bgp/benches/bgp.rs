//! Render + apply of a 1,000-peer mesh, and route propagation of 1,000 blocks
//! between two BIRDs, in network namespaces (root and `bird` needed).
//!
//! `cargo bench -p calinet-bgp` prints medians; the apply figure is compared
//! with `birdc configure` on the same file (the floor: BIRD's own work).

use std::time::{Duration, Instant};

use calinet_bgp::{
    Applied, Bird, BirdProcess, Controller, Input, NodeBgpSpec, NodeInfo, Pool, plan, render,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Node n0 (IPv4 + IPv6) and `peers` IPv6-only nodes: one v6 mesh session each.
/// The peers do not exist; in the namespace their addresses are unroutable,
/// so connection attempts fail at once and nothing leaves the namespace.
fn mesh_input(peers: usize, blocks: usize) -> Input {
    let mut input = Input::new("n0");
    let mut me = NodeBgpSpec::ipv4("198.51.100.10/24".parse().unwrap());
    me.ipv6_address = Some("2001:db8:ffff::a/64".parse().unwrap());
    input.nodes.push(NodeInfo::new("n0", me));
    for i in 0..peers {
        let mut bgp = NodeBgpSpec::default();
        bgp.ipv6_address = Some(
            format!("2001:db8:{:x}::{:x}/64", i / 256 + 1, i % 256 + 1)
                .parse()
                .unwrap(),
        );
        input.nodes.push(NodeInfo::new(format!("peer{i}"), bgp));
    }
    input.pools.push(Pool::new("10.64.0.0/10".parse().unwrap()));
    for b in 0..blocks {
        input.blocks.push(
            format!("10.{}.{}.0/26", 64 + b / 256, b % 256)
                .parse()
                .unwrap(),
        );
    }
    input
}

fn main() {
    if !testlab::skip::is_root() {
        testlab::skip::skip("bgp bench: needs root (network namespaces)");
        return;
    }
    if !testlab::cmd::have("bird") {
        testlab::skip::skip("bgp bench: bird (Debian bird2) is not installed");
        return;
    }
    let lab = testlab::Lab::new("bgp_bench").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let n0 = lab
        .node("n0", &seg, "198.51.100.10".parse().unwrap())
        .unwrap();
    let runtime = tempfile::tempdir().unwrap();

    // 1. Render + apply of a 1,000-peer mesh.
    let mut input = mesh_input(1000, 1);
    let mut plan_render = Vec::new();
    let mut config = String::new();
    for _ in 0..20 {
        let t = Instant::now();
        config = render(&plan(&input).unwrap());
        plan_render.push(t.elapsed());
    }
    let mut c = Controller::new(BirdProcess::new(runtime.path().join("n0")).in_netns(n0.name()));
    let t = Instant::now();
    assert_eq!(c.apply(&config, Instant::now()).unwrap(), Applied::Started);
    let start = t.elapsed();
    let pid = c.bird_mut().pid().unwrap();
    let mut apply = Vec::new();
    let mut total = Vec::new();
    for round in 0..10 {
        // A changed block each round: a real change for BIRD to apply.
        input.blocks = vec![format!("10.65.{round}.0/26").parse().unwrap()];
        let t = Instant::now();
        let cfg = render(&plan(&input).unwrap());
        let t_apply = Instant::now();
        assert_eq!(
            c.apply(&cfg, Instant::now()).unwrap(),
            Applied::Reconfigured
        );
        apply.push(t_apply.elapsed());
        total.push(t.elapsed());
    }
    assert_eq!(
        c.bird_mut().pid(),
        Some(pid),
        "configure must not restart BIRD"
    );
    let sessions = c
        .protocols()
        .unwrap()
        .iter()
        .filter(|p| p.proto == "BGP")
        .count();
    assert_eq!(sessions, 1000);
    // The floor: the same file write and a changed config, applied by birdc.
    let sock = c.bird().socket_path();
    let mut birdc = Vec::new();
    for round in 0..10 {
        input.blocks = vec![format!("10.66.{round}.0/26").parse().unwrap()];
        let cfg = render(&plan(&input).unwrap());
        let t = Instant::now();
        c.bird_mut().write_config(&cfg).unwrap();
        let out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(&sock)
            .arg("configure")
            .output()
            .unwrap();
        assert!(out.status.success());
        birdc.push(t.elapsed());
    }
    let (pr, ap, to, bc) = (
        median(plan_render),
        median(apply),
        median(total),
        median(birdc),
    );
    println!(
        "1,000-peer mesh ({} config lines, {} bytes):",
        config.lines().count(),
        config.len()
    );
    println!("  plan + render            {}", ms(pr));
    println!("  configure (socket)       {}", ms(ap));
    println!(
        "  render + apply           {}  (target < 50 ms; BIRD pid unchanged)",
        ms(to)
    );
    println!(
        "  write + birdc configure  {}  (ours/birdc = {:.2})",
        ms(bc),
        ap.as_secs_f64() / bc.as_secs_f64()
    );
    println!("  first start of BIRD      {}", ms(start));
    c.stop().unwrap();
    drop(c);

    // 2. 1,000 blocks announced by n1, time until all are in n2's kernel.
    let n1 = lab
        .node("n1", &seg, "198.51.100.11".parse().unwrap())
        .unwrap();
    let n2 = lab
        .node("n2", &seg, "198.51.100.12".parse().unwrap())
        .unwrap();
    let two = |me: &str, blocks: usize| {
        let mut input = Input::new(me);
        input.nodes.push(NodeInfo::new(
            "n1",
            NodeBgpSpec::ipv4("198.51.100.11/24".parse().unwrap()),
        ));
        input.nodes.push(NodeInfo::new(
            "n2",
            NodeBgpSpec::ipv4("198.51.100.12/24".parse().unwrap()),
        ));
        input.pools.push(Pool::new("10.64.0.0/10".parse().unwrap()));
        for b in 0..blocks {
            input.blocks.push(
                format!("10.{}.{}.0/26", 64 + b / 256, b % 256)
                    .parse()
                    .unwrap(),
            );
        }
        render(&plan(&input).unwrap())
    };
    let count = |ns: &testlab::Netns| {
        ns.routes()
            .unwrap()
            .iter()
            .filter(|r| r.protocol.as_deref() == Some("bird"))
            .count()
    };
    let mut b1 = Controller::new(BirdProcess::new(runtime.path().join("n1")).in_netns(n1.name()));
    let mut b2 = Controller::new(BirdProcess::new(runtime.path().join("n2")).in_netns(n2.name()));
    b2.apply(&two("n2", 0), Instant::now()).unwrap();
    b1.apply(&two("n1", 0), Instant::now()).unwrap();
    testlab::wait_for("session up", Duration::from_secs(30), || {
        Ok(b1
            .protocols()
            .map(|p| p.iter().any(|p| p.is_established()))
            .unwrap_or(false))
    })
    .unwrap();
    let t = Instant::now();
    b1.apply(&two("n1", 1000), Instant::now()).unwrap();
    testlab::wait_for("1,000 routes in n2", Duration::from_secs(60), || {
        Ok(count(&n2) == 1000)
    })
    .unwrap();
    let via_configure = t.elapsed();
    b1.stop().unwrap();
    b2.stop().unwrap();
    drop((b1, b2));
    n2.ip(&["route", "flush", "proto", "bird"]).unwrap();

    // The floor: BIRD alone, hand-written minimal configs (a static protocol,
    // `export all`, no calinet filters), the same 1,000 routes added by a
    // configure on a live session.
    let plain = |me: &str, peer: &str, routes: usize| {
        let mut cfg = format!(
            "router id {me};\nprotocol device {{}}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
             protocol static {{ ipv4;\n"
        );
        for b in 0..routes {
            cfg.push_str(&format!(
                "  route 10.{}.{}.0/26 blackhole;\n",
                64 + b / 256,
                b % 256
            ));
        }
        cfg.push_str(&format!(
            "}}\nprotocol bgp peer {{ local as 64512; neighbor {peer} as 64512; direct; \
             ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n"
        ));
        cfg
    };
    let count_nonlocal = |ns: &testlab::Netns| {
        ns.routes()
            .unwrap()
            .iter()
            .filter(|r| r.protocol.as_deref() == Some("bird") && r.gateway.is_some())
            .count()
    };
    let mut p1 = Controller::new(BirdProcess::new(runtime.path().join("p1")).in_netns(n1.name()));
    let mut p2 = Controller::new(BirdProcess::new(runtime.path().join("p2")).in_netns(n2.name()));
    p2.apply(&plain("198.51.100.12", "198.51.100.11", 0), Instant::now())
        .unwrap();
    p1.apply(&plain("198.51.100.11", "198.51.100.12", 0), Instant::now())
        .unwrap();
    testlab::wait_for("plain session up", Duration::from_secs(30), || {
        Ok(p1
            .protocols()
            .map(|p| p.iter().any(|p| p.is_established()))
            .unwrap_or(false))
    })
    .unwrap();
    let t = Instant::now();
    p1.apply(
        &plain("198.51.100.11", "198.51.100.12", 1000),
        Instant::now(),
    )
    .unwrap();
    testlab::wait_for("1,000 plain routes in n2", Duration::from_secs(60), || {
        Ok(count_nonlocal(&n2) == 1000)
    })
    .unwrap();
    let floor = t.elapsed();
    p1.stop().unwrap();
    p2.stop().unwrap();
    println!("1,000 blocks from n1 to n2's kernel:");
    println!("  configure on a live session    {}", ms(via_configure));
    println!(
        "  BIRD alone, minimal config     {}  (ours/floor = {:.2})",
        ms(floor),
        via_configure.as_secs_f64() / floor.as_secs_f64()
    );
}
