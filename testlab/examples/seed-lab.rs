//! The lab self-test as a program: builds the seed article's cluster in network
//! namespaces (three nodes on 198.51.100.0/24, one on 203.0.113.0/24, a router
//! between), one pod per node with hand-made Calico-style plumbing and direct
//! routes, then prints each node's routes, the pod-to-pod connectivity matrix
//! and what an underlay capture saw, and tears everything down.
//!
//! Run as root: `cargo run -p calinet-testlab --example seed-lab`.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use testlab::seed::{self, SeedCluster};
use testlab::{Lab, leftover_namespaces};

fn main() -> ExitCode {
    if !testlab::skip::is_root() {
        eprintln!(
            "seed-lab builds network namespaces and needs root: sudo -E cargo run -p calinet-testlab --example seed-lab"
        );
        return ExitCode::from(2);
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("seed-lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> testlab::Result<bool> {
    let lab = Lab::new("seed-lab")?;
    println!(
        "building the seed cluster in namespaces {}-* ...",
        lab.prefix()
    );
    let cluster = SeedCluster::build(&lab)?;
    for node in &cluster.nodes {
        println!(
            "  node {:<7} {} on {}",
            node.name, node.addr, node.segment.net
        );
    }
    println!(
        "  outside {} on {}",
        cluster.outside.addr, cluster.outside.segment.net
    );
    println!("plumbing one pod per node and routing the blocks directly ...");
    let pods = cluster.plumb_pods_by_hand(&lab)?;
    cluster.route_blocks_directly(&lab)?;

    for node in &cluster.nodes {
        println!("\n$ ip route   # on {}", node.name);
        print!("{}", node.ip(&["route"])?);
    }

    let sources: Vec<_> = pods
        .iter()
        .map(|p| (p.name.clone(), p.ns.clone()))
        .collect();
    let targets: Vec<_> = pods
        .iter()
        .map(|p| (p.name.clone(), IpAddr::V4(p.addr)))
        .collect();
    let matrix = seed::ping_matrix(&sources, &targets, Duration::from_secs(3));
    println!("\npod-to-pod ping matrix:\n{matrix}");

    let (from, to) = (&pods[0], &pods[3]);
    let capture = cluster.router.capture(&cluster.lan2.bridge, "icmp")?;
    from.ns.ping(IpAddr::V4(to.addr), Duration::from_secs(3));
    let seen = capture.stop()?;
    println!(
        "capture on {} (203.0.113.0/24) during {} -> {}:",
        cluster.lan2.bridge, from.name, to.name
    );
    print!("{seen}");

    let names = lab.namespaces();
    drop(lab);
    let left: Vec<_> = leftover_namespaces()
        .into_iter()
        .filter(|n| names.iter().any(|m| m.name() == n))
        .collect();
    println!(
        "\nteardown: {} namespaces removed, {} left",
        names.len(),
        left.len()
    );
    Ok(matrix.failures().is_empty() && left.is_empty())
}
