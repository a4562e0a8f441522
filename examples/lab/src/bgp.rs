//! BGP in the lab: the router's own BIRD (AS 64513, eBGP to the nodes' AS
//! 64512), the `BGPPeer`s that make the nodes peer with it (`--peer-router`,
//! `calinet-lab peer-router on|off`), the route reflector setup
//! (`--route-reflector NODE`), and waiting for the sessions.
//!
//! The router learns pod blocks only over BGP: nothing writes routes into it
//! by hand. Its BIRD accepts sessions from every node (passively) but a node
//! only connects when a `BGPPeer` asks it to, so without one the router
//! learns nothing.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use calinet_bgp::{Bird as _, BirdProcess};

use crate::error::{Error, Result};
use crate::state::{LabNode, LabState};

/// The router's AS: a private AS of its own, so nodes and router speak eBGP
/// (the nodes keep Calico's default, 64512).
pub const ROUTER_AS: u32 = 64513;
/// The nodes' AS (Calico's default).
pub const NODE_AS: u32 = 64512;
/// The route reflector cluster id of `--route-reflector`.
pub const RR_CLUSTER_ID: &str = "244.0.0.1";

/// The router's address on `node`'s segment (its gateway).
pub fn router_addr(node: &LabNode) -> Ipv4Addr {
    let lan = if testlab::seed::LAN1.contains(&node.addr) {
        testlab::seed::LAN1
    } else {
        testlab::seed::LAN2
    };
    lan.hosts().next().expect("a /24 has hosts")
}

/// The runtime directory of `node`'s BIRD (the agent's `--bgp-runtime-dir`).
pub fn node_bird_dir(state: &LabState, node: &str) -> PathBuf {
    state.state_dir.join(format!("bird-{node}"))
}

/// The runtime directory of the router's BIRD.
pub fn router_bird_dir(state: &LabState) -> PathBuf {
    state.state_dir.join("bird-router")
}

/// The router's BIRD configuration: one passive eBGP session per node,
/// routes learned into the kernel (`proto bird`), nothing advertised. A route
/// is accepted only from the node it points at, so a block re-advertised by
/// another node of the mesh never sends traffic the long way round.
pub fn router_config(state: &LabState) -> String {
    let id = state
        .nodes
        .first()
        .map(router_addr)
        .unwrap_or(Ipv4Addr::new(198, 51, 100, 1));
    let mut c = format!(
        "# The lab router's BIRD (calinet-lab): learns pod blocks from the nodes.\n\
         router id {id};\n\
         protocol device {{ scan time 2; }}\n\
         protocol kernel {{\n  scan time 2;\n  ipv4 {{ import none; export all; }};\n}}\n\
         filter from_owner {{\n  if gw = from then accept;\n  reject;\n}}\n"
    );
    for n in &state.nodes {
        let name = n.name.replace('-', "_");
        let _ = write!(
            c,
            "protocol bgp node_{name} {{\n  local {} as {ROUTER_AS};\n  neighbor {} as {NODE_AS};\n  \
             passive on;\n  graceful restart;\n  connect retry time 2;\n  error wait time 1,5;\n  \
             ipv4 {{ import filter from_owner; export none; }};\n}}\n",
            router_addr(n),
            n.addr
        );
    }
    c
}

/// Starts the router's BIRD (in the router namespace) and detaches it: it
/// belongs to the lab, which stops it with [`stop_bird`].
pub fn start_router_bird(state: &LabState) -> Result<()> {
    if !testlab::cmd::have("bird") {
        return Err(Error::Usage(
            "BGP modes need `bird` (Debian: bird2) for the lab router".into(),
        ));
    }
    let mut bird = BirdProcess::new(router_bird_dir(state)).in_netns(&state.router);
    bird.write_config(&router_config(state))
        .and_then(|()| bird.start(false))
        .map_err(|e| Error::Lab(format!("router BIRD: {}", crate::error::chain(&e))))?;
    bird.detach();
    Ok(())
}

/// Whether the router's BIRD answers on its control socket (already started).
pub fn sessions_of_router_answer(state: &LabState) -> bool {
    BirdProcess::new(router_bird_dir(state)).connect().is_ok()
}

/// Stops the BIRD whose runtime directory is `dir` (found by its pid file and
/// command line), if it runs.
pub fn stop_bird(dir: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("bird.pid")) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    let conf = dir.join("bird.conf").display().to_string();
    if testlab::is_alive(pid) && testlab::cmdline(pid).contains(&conf) {
        testlab::stop_pid(pid, false, Duration::from_secs(5));
    }
}

/// Every BIRD of the lab: the nodes' (started by their agents, which leave
/// them running as calico-node does) and the router's.
pub fn stop_all(state: &LabState) {
    for n in &state.nodes {
        stop_bird(&node_bird_dir(state, &n.name));
    }
    stop_bird(&router_bird_dir(state));
}

/// The `BGPPeer`s of `--peer-router`: the nodes of each segment peer with
/// the router's address on it (as Calico's per-rack ToR peers do).
pub fn peer_router_yaml(state: &LabState) -> String {
    let mut y = String::new();
    for (name, lan) in [
        ("router-lan1", testlab::seed::LAN1),
        ("router-lan2", testlab::seed::LAN2),
    ] {
        let members: Vec<String> = state
            .nodes
            .iter()
            .filter(|n| lan.contains(&n.addr))
            .map(|n| format!("'{}'", n.name))
            .collect();
        let Some(first) = state.nodes.iter().find(|n| lan.contains(&n.addr)) else {
            continue;
        };
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: {name}\n\
             spec:\n  nodeSelector: kubernetes.io/hostname in {{{}}}\n  peerIP: {}\n  asNumber: {ROUTER_AS}\n",
            members.join(", "),
            router_addr(first)
        );
    }
    y
}

/// `--route-reflector NODE`: no mesh; `NODE` reflects (cluster id
/// [`RR_CLUSTER_ID`], label `route-reflector`), every other node peers only
/// with it.
pub fn route_reflector_yaml(state: &LabState, rr: &str) -> Result<String> {
    let n = state
        .nodes
        .iter()
        .find(|n| n.name == rr)
        .ok_or_else(|| Error::Usage(format!("--route-reflector {rr}: no such node")))?;
    let prefix = if testlab::seed::LAN1.contains(&n.addr) {
        testlab::seed::LAN1.prefix_len()
    } else {
        testlab::seed::LAN2.prefix_len()
    };
    Ok(format!(
        "---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\n\
         spec:\n  nodeToNodeMeshEnabled: false\n  asNumber: {NODE_AS}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: {rr}\n  labels:\n    \
         kubernetes.io/hostname: {rr}\n    route-reflector: \"true\"\n\
         spec:\n  bgp:\n    ipv4Address: {}/{prefix}\n    routeReflectorClusterID: {RR_CLUSTER_ID}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata:\n  name: peer-with-route-reflectors\n\
         spec:\n  nodeSelector: all()\n  peerSelector: route-reflector == 'true'\n",
        n.addr
    ))
}

/// The protocols of the BIRD in `dir`, or why they cannot be read.
fn protocols(
    dir: &std::path::Path,
) -> std::result::Result<Vec<calinet_bgp::ProtocolStatus>, String> {
    BirdProcess::new(dir)
        .connect()
        .and_then(|mut c| c.protocols())
        .map_err(|e| crate::error::chain(&e))
}

/// BGP sessions of the nodes that are not `Established` yet, as text (empty
/// when every session of every node is up).
pub fn sessions_down(state: &LabState) -> Vec<String> {
    let mut down = Vec::new();
    for n in &state.nodes {
        match protocols(&node_bird_dir(state, &n.name)) {
            Err(e) => down.push(format!("{}: BIRD not answering ({e})", n.name)),
            Ok(ps) => {
                for p in ps
                    .iter()
                    .filter(|p| p.proto == "BGP" && !p.is_established())
                {
                    down.push(format!("{}: {} {} {}", n.name, p.name, p.state, p.info));
                }
            }
        }
    }
    down
}

/// Waits until every node's BGP sessions are `Established` and, with the
/// router peering on, the router has a `proto bird` route for every block.
pub fn wait_established(state: &LabState, blocks: usize, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let mut down = sessions_down(state);
        if state.peer_router {
            let learned = router_learned(state)?;
            if learned.len() < blocks {
                down.push(format!(
                    "router: {} of {blocks} blocks learned",
                    learned.len()
                ));
            }
        }
        if down.is_empty() {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            return Err(Error::Lab(format!(
                "BGP not established after {timeout:?}: {}",
                down.join("; ")
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The router's `proto bird` routes (destinations).
pub fn router_learned(state: &LabState) -> Result<Vec<String>> {
    let text = testlab::cmd::run(
        "ip",
        &["-n", &state.router, "route", "show", "proto", "bird"],
    )?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}
