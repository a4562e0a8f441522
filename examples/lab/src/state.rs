//! What `calinet-lab up` records for the other lab commands (the state file
//! `<state dir>/state.json`), and the lab's modes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where `calinet-lab up` records the running lab.
pub const DEFAULT_STATE_DIR: &str = "/run/calinet-lab";

/// The lab's networking modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `vxlanMode: Always`.
    Vxlan,
    /// `vxlanMode: CrossSubnet`: direct inside a subnet, VXLAN across.
    Crosssubnet,
    /// No encapsulation: BIRD on every node distributes the blocks over BGP;
    /// the router learns them only when peered (`--peer-router`).
    Direct,
    /// WireGuard between nodes (`FelixConfiguration wireguardEnabled`).
    Wireguard,
    /// `ipipMode: Always` (only where the kernel has IPIP).
    Ipip,
}

impl Mode {
    /// The pool's `vxlanMode` in this mode.
    pub fn vxlan_mode(self) -> &'static str {
        match self {
            Mode::Vxlan => "Always",
            Mode::Crosssubnet => "CrossSubnet",
            _ => "Never",
        }
    }

    /// The pool's `ipipMode` in this mode.
    pub fn ipip_mode(self) -> &'static str {
        match self {
            Mode::Ipip => "Always",
            _ => "Never",
        }
    }

    /// Whether the agents run BIRD in this mode (the pool has no VXLAN, as
    /// with Calico's BIRD backend; WireGuard runs over BGP-routed underlay).
    pub fn bgp(self) -> bool {
        matches!(self, Mode::Direct | Mode::Ipip | Mode::Wireguard)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Vxlan => "vxlan",
            Mode::Crosssubnet => "crosssubnet",
            Mode::Direct => "direct",
            Mode::Wireguard => "wireguard",
            Mode::Ipip => "ipip",
        })
    }
}

/// A node of the running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// Node name.
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub addr: Ipv4Addr,
}

/// A pod of the running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// Pod name (namespace `default`).
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its namespace.
    pub netns: String,
}

/// An agent process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabAgent {
    /// Node.
    pub node: String,
    /// Process id (of `ip netns exec`, which execs the agent).
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// The lab's etcd server (in the router namespace, reachable from every node).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabEtcd {
    /// Process id (of `ip netns exec`, which execs etcd).
    pub pid: u32,
    /// Client URL.
    pub endpoint: String,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
}

/// What `calinet-lab up` leaves behind for the other lab commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Every namespace, in creation order.
    pub namespaces: Vec<String>,
    /// The router (underlay) namespace.
    pub router: String,
    /// Nodes.
    pub nodes: Vec<LabNode>,
    /// The outside host.
    pub outside: LabNode,
    /// Pods.
    pub pods: Vec<LabPod>,
    /// Agents.
    pub agents: Vec<LabAgent>,
    /// The datastore file.
    pub datastore: PathBuf,
    /// Current mode.
    pub mode: Mode,
    /// The pool.
    pub pool: ipnet::Ipv4Net,
    /// Whether the nodes peer with the router (`BGPPeer`s `router-lan1/2`).
    #[serde(default)]
    pub peer_router: bool,
    /// The route reflector node (`--route-reflector`), when the mesh is off.
    #[serde(default)]
    pub route_reflector: Option<String>,
    /// The agent binary.
    pub agent_bin: PathBuf,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The `calinet-lab hold` process that owns the namespaces (`calinet-lab up`).
    #[serde(default)]
    pub holder: Option<u32>,
    /// The etcd server, when the lab keeps its cluster in etcd.
    #[serde(default)]
    pub etcd: Option<LabEtcd>,
}

/// The state file in `dir`.
pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Writes `state` to the state file in `dir`.
pub fn save(dir: &Path, state: &LabState) -> Result<()> {
    let path = state_file(dir);
    let json = serde_json::to_vec_pretty(state).map_err(|source| Error::State {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json).map_err(|source| Error::Io {
        what: "write the lab state file",
        path,
        source,
    })
}

/// Reads the state file in `dir`.
pub fn load(dir: &Path) -> Result<LabState> {
    let path = state_file(dir);
    let bytes = std::fs::read(&path).map_err(|source| Error::Io {
        what: "read the lab state file (is a lab up? `calinet-lab up` writes it)",
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| Error::State { path, source })
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let node = |name: &str, addr: &str| LabNode {
            name: name.into(),
            netns: format!("ns-{name}"),
            addr: addr.parse().unwrap(),
        };
        let state = LabState {
            namespaces: vec!["ns-router".into(), "ns-k8s-m".into()],
            router: "ns-router".into(),
            nodes: vec![node("k8s-m", "198.51.100.10")],
            outside: node("outside", "192.0.2.100"),
            pods: vec![],
            agents: vec![],
            datastore: dir.path().join("datastore.db"),
            mode: Mode::Crosssubnet,
            pool: "172.16.0.0/16".parse().unwrap(),
            peer_router: false,
            route_reflector: None,
            agent_bin: "/x/calinet-agent".into(),
            state_dir: dir.path().into(),
            holder: Some(7),
            etcd: None,
        };
        save(dir.path(), &state).unwrap();
        let back = load(dir.path()).unwrap();
        assert_eq!(back.mode, Mode::Crosssubnet);
        assert_eq!(back.nodes[0].addr, state.nodes[0].addr);
        assert_eq!(back.holder, Some(7));
        std::fs::write(state_file(dir.path()), b"{").unwrap();
        let err = crate::error::chain(&load(dir.path()).unwrap_err());
        assert!(err.starts_with("lab state file "), "{err}");
        assert!(err.contains("state.json"), "{err}");
        let err = crate::error::chain(&load(&dir.path().join("none")).unwrap_err());
        assert!(err.contains("is a lab up?"), "{err}");
    }
}
