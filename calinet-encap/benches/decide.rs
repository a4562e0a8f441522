//! How expensive are the decisions next to applying them?
//!
//! `cargo bench -p calinet-encap --features route --bench decide`
//!
//! A 500-node cluster (250 nodes on 198.51.100.0/24, 250 on 203.0.113.0/24),
//! ten /26 blocks per node (5,000 blocks), VXLAN CrossSubnet, seen from one node:
//!
//! 1. `decide` alone, and `decide` + conversion to calinet-route specs;
//! 2. anchor, in the same run: `ip -batch` installing the same 5,000 routes
//!    (the `Never` decisions, every route on the uplink) into a lab namespace
//!    (needs root; reported as SKIPPED otherwise).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use calinet_encap::{Block, Decisions, EncapMode, Input, Node, Pool, Uplink, decide};
use calinet_route::RouteProtocol;
use ipnet::{IpNet, Ipv4Net};

const NODES: u32 = 500;
const BLOCKS_PER_NODE: u32 = 10;
const RUNS: usize = 11;
const IP_RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn node_addr(i: u32) -> Ipv4Net {
    let host = u8::try_from(2 + i % 250).expect("small");
    let addr = if i < NODES / 2 {
        Ipv4Addr::new(198, 51, 100, host)
    } else {
        Ipv4Addr::new(203, 0, 113, host)
    };
    Ipv4Net::new(addr, 24).expect("valid")
}

fn block(i: u32, k: u32) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(172, 16, 0, 0));
    Ipv4Net::new(Ipv4Addr::from(base + (i * BLOCKS_PER_NODE + k) * 64), 26).expect("valid")
}

fn cluster(vxlan: EncapMode) -> Input {
    let nodes: Vec<Node> = (0..NODES)
        .map(|i| {
            Node::new(format!("node-{i}").parse().expect("valid"))
                .with_address(IpNet::V4(node_addr(i)))
                .with_vxlan_tunnel(IpAddr::V4(block(i, 0).network()))
        })
        .collect();
    let mut input = Input::new(
        nodes[0].clone(),
        Uplink::new("eth0".parse().expect("valid"), 1500)
            .with_gateway(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))),
    );
    input.blocks = (0..NODES)
        .flat_map(|i| (0..BLOCKS_PER_NODE).map(move |k| (i, k)))
        .map(|(i, k)| Block::new(IpNet::V4(block(i, k)), nodes[i as usize].name.clone()))
        .collect();
    input.remotes = nodes[1..].to_vec();
    input.pools = vec![Pool::new("pool", "172.16.0.0/12".parse().expect("valid")).vxlan(vxlan)];
    input
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn batch(d: &Decisions) -> String {
    let mut out = String::new();
    for p in &d.paths {
        let onlink = if p.onlink { " onlink" } else { "" };
        out.push_str(&format!(
            "route add {} via {} dev {}{onlink} proto 80\n",
            p.dst, p.via, p.dev
        ));
    }
    for b in &d.blackholes {
        out.push_str(&format!("route add blackhole {b} proto 80\n"));
    }
    out
}

fn main() {
    let cross = cluster(EncapMode::CrossSubnet);
    let blocks = cross.blocks.len();
    let d = decide(&cross).expect("valid cluster");
    let (direct, _, vxlan) = d.path_counts();
    println!(
        "cluster: {NODES} nodes, {blocks} blocks; CrossSubnet from node-0: {direct} direct, {vxlan} VXLAN paths, {} blackholes, {} VTEPs",
        d.blackholes.len(),
        d.neighbours.len()
    );
    let t_decide = time(RUNS, || decide(&cross).expect("valid"));
    let t_specs = time(RUNS, || {
        decide(&cross)
            .expect("valid")
            .route_specs(RouteProtocol::CALICO)
    });
    println!(
        "decide:                     median {} ({RUNS} runs)",
        ms(t_decide)
    );
    println!(
        "decide + route_specs:       median {} ({RUNS} runs)",
        ms(t_specs)
    );

    if !testlab::skip::is_root() {
        eprintln!("SKIPPED: the ip -batch anchor needs root (network namespaces)");
        return;
    }
    let never = decide(&cluster(EncapMode::Never)).expect("valid");
    let routes = never.paths.len() + never.blackholes.len();
    let text = batch(&never);
    let lab = testlab::Lab::new("calinet-encap-bench").expect("lab");
    let ns = lab.netns("bench").expect("netns");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])
    .unwrap();
    ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])
        .unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns.ip(&["link", "set", "eth1", "up"]).unwrap();
    let t_ip = median(
        (0..IP_RUNS)
            .map(|_| {
                let start = Instant::now();
                let mut child = Command::new("ip")
                    .args(["-n", ns.name(), "-batch", "-"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .expect("ip");
                child
                    .stdin
                    .take()
                    .expect("piped")
                    .write_all(text.as_bytes())
                    .expect("write batch");
                assert!(child.wait().expect("ip -batch").success());
                let took = start.elapsed();
                ns.ip(&["route", "flush", "proto", "80"]).unwrap();
                took
            })
            .collect(),
    );
    let t_never = time(RUNS, || decide(&cluster(EncapMode::Never)).expect("valid"));
    println!(
        "ip -batch, {routes} routes:     median {} ({IP_RUNS} runs, anchor)",
        ms(t_ip)
    );
    println!(
        "ratio (decide + route_specs) / ip -batch install: {:.3}",
        t_specs.as_secs_f64() / t_ip.as_secs_f64()
    );
    println!(
        "(building the 500-node input + decide for Never: median {})",
        ms(t_never)
    );
}
