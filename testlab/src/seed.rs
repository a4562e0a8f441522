//! The seed article's cluster, rebuilt on documentation ranges: three nodes on
//! one subnet, one on another, a router between, and an outside host.
//!
//! | article          | lab              | block (article)   |
//! |------------------|------------------|-------------------|
//! | k8s-m  192.168.10.10  | 198.51.100.10  | 172.16.116.0/24 |
//! | k8s-w1 192.168.10.101 | 198.51.100.101 | 172.16.158.0/24 |
//! | k8s-w2 192.168.10.102 | 198.51.100.102 | 172.16.184.0/24 |
//! | k8s-w0 192.168.20.100 | 203.0.113.100  | 172.16.34.0/24  |
//! | (internet)            | 192.0.2.100 "outside" |          |

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::lab::{Lab, Node, Segment};
use crate::netns::Netns;
use crate::{Error, Result};

/// One node of the seed cluster as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedNodeSpec {
    /// Node name.
    pub name: &'static str,
    /// Underlay address.
    pub addr: Ipv4Addr,
    /// The /24 pod block the article shows for it.
    pub block: Ipv4Net,
}

const fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    match Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len) {
        Ok(n) => n,
        Err(_) => panic!("invalid constant prefix"),
    }
}

/// The first subnet (the article's 192.168.10.0/24).
pub const LAN1: Ipv4Net = net(198, 51, 100, 0, 24);
/// The second subnet (the article's 192.168.20.0/24).
pub const LAN2: Ipv4Net = net(203, 0, 113, 0, 24);
/// The "outside world" subnet, for NAT tests.
pub const OUTSIDE_NET: Ipv4Net = net(192, 0, 2, 0, 24);
/// The outside host's address.
pub const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The article's pool.
pub const POOL: Ipv4Net = net(172, 16, 0, 0, 16);

/// The four nodes, in the article's order.
pub const NODES: [SeedNodeSpec; 4] = [
    SeedNodeSpec {
        name: "k8s-m",
        addr: Ipv4Addr::new(198, 51, 100, 10),
        block: net(172, 16, 116, 0, 24),
    },
    SeedNodeSpec {
        name: "k8s-w1",
        addr: Ipv4Addr::new(198, 51, 100, 101),
        block: net(172, 16, 158, 0, 24),
    },
    SeedNodeSpec {
        name: "k8s-w2",
        addr: Ipv4Addr::new(198, 51, 100, 102),
        block: net(172, 16, 184, 0, 24),
    },
    SeedNodeSpec {
        name: "k8s-w0",
        addr: Ipv4Addr::new(203, 0, 113, 100),
        block: net(172, 16, 34, 0, 24),
    },
];

/// The seed cluster built in a [`Lab`].
#[derive(Debug, Clone)]
pub struct SeedCluster {
    /// Segment for 198.51.100.0/24.
    pub lan1: Segment,
    /// Segment for 203.0.113.0/24.
    pub lan2: Segment,
    /// Segment for 192.0.2.0/24 (the outside host).
    pub outside_lan: Segment,
    /// The nodes, in the order of [`NODES`].
    pub nodes: Vec<Node>,
    /// A host outside the cluster (192.0.2.100), e.g. for masquerade tests.
    pub outside: Node,
    /// The router (the underlay namespace).
    pub router: Netns,
}

impl SeedCluster {
    /// Builds segments, router, nodes and the outside host. Pod routes are the
    /// caller's business (the router knows no pod block).
    pub fn build(lab: &Lab) -> Result<Self> {
        let lan1 = lab.segment(&LAN1.to_string())?;
        let lan2 = lab.segment(&LAN2.to_string())?;
        let outside_lan = lab.segment(&OUTSIDE_NET.to_string())?;
        let nodes = NODES
            .iter()
            .map(|spec| {
                let segment = if LAN1.contains(&spec.addr) {
                    &lan1
                } else {
                    &lan2
                };
                lab.node(spec.name, segment, spec.addr)
            })
            .collect::<Result<Vec<_>>>()?;
        let outside = lab.node("outside", &outside_lan, OUTSIDE_HOST)?;
        Ok(Self {
            lan1,
            lan2,
            outside_lan,
            nodes,
            outside,
            router: lab.router()?,
        })
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::Invalid(format!("no seed node named {name:?}")))
    }

    /// The spec of a node by name.
    pub fn spec(name: &str) -> Option<&'static SeedNodeSpec> {
        NODES.iter().find(|s| s.name == name)
    }
}

/// A pod plumbed by hand into a seed node (see [`SeedCluster::plumb_pods_by_hand`]).
#[derive(Debug, Clone)]
pub struct SeedPod {
    /// `pod@<node>`.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its address (the second host of its node's block).
    pub addr: Ipv4Addr,
}

impl SeedCluster {
    /// One pod per node, plumbed with `ip` commands the way Calico does (host
    /// side `calilab0`), addressed from the node's seed block.
    pub fn plumb_pods_by_hand(&self, lab: &Lab) -> Result<Vec<SeedPod>> {
        self.nodes
            .iter()
            .map(|node| {
                let spec = Self::spec(&node.name)
                    .ok_or_else(|| Error::Invalid(format!("{} is no seed node", node.name)))?;
                let addr = spec.block.hosts().nth(1).expect("a /24 has hosts");
                let ns = lab.pod(&format!("pod-{}", node.name))?;
                lab.plumb_pod(node, &ns, "calilab0", addr)?;
                Ok(SeedPod {
                    name: format!("pod@{}", node.name),
                    node: node.name.clone(),
                    ns,
                    addr,
                })
            })
            .collect()
    }

    /// Hand-made direct routing of the seed blocks: each node routes a
    /// same-subnet peer's block `via <peer> dev eth0 onlink`; the router routes
    /// every block to its node (what BGP would teach it).
    pub fn route_blocks_directly(&self, lab: &Lab) -> Result<()> {
        for node in &self.nodes {
            for peer in &self.nodes {
                if peer.name == node.name || !node.segment.net.contains(&peer.address()) {
                    continue;
                }
                let block = Self::spec(&peer.name).expect("seed node").block.to_string();
                node.ip(&[
                    "route",
                    "add",
                    &block,
                    "via",
                    &peer.address().to_string(),
                    "dev",
                    &node.uplink,
                    "onlink",
                ])?;
            }
            let block = Self::spec(&node.name).expect("seed node").block.to_string();
            lab.router_route(&block, node.address().into())?;
        }
        Ok(())
    }
}

/// Who can reach whom: rows are sources, columns targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Source names.
    pub sources: Vec<String>,
    /// Target names.
    pub targets: Vec<String>,
    /// `reachable[source][target]`.
    pub reachable: Vec<Vec<bool>>,
}

impl Matrix {
    /// Whether `source` reached `target` (false for unknown names).
    pub fn get(&self, source: &str, target: &str) -> bool {
        let s = self.sources.iter().position(|n| n == source);
        let t = self.targets.iter().position(|n| n == target);
        matches!((s, t), (Some(s), Some(t)) if self.reachable[s][t])
    }

    /// Every (source, target) pair that failed.
    pub fn failures(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (s, row) in self.reachable.iter().enumerate() {
            for (t, ok) in row.iter().enumerate() {
                if !ok {
                    out.push((self.sources[s].clone(), self.targets[t].clone()));
                }
            }
        }
        out
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .sources
            .iter()
            .chain(&self.targets)
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(4);
        write!(f, "{:width$}", "from \\ to")?;
        for t in &self.targets {
            write!(f, "  {t:>width$}")?;
        }
        writeln!(f)?;
        for (s, row) in self.sources.iter().zip(&self.reachable) {
            write!(f, "{s:width$}")?;
            for ok in row {
                write!(f, "  {:>width$}", if *ok { "ok" } else { "FAIL" })?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Pings every target from every source (in parallel; a source does not ping
/// itself, which counts as reachable).
pub fn ping_matrix(
    sources: &[(String, Netns)],
    targets: &[(String, IpAddr)],
    timeout: Duration,
) -> Matrix {
    let reachable = std::thread::scope(|scope| {
        let handles: Vec<Vec<_>> = sources
            .iter()
            .map(|(source, ns)| {
                targets
                    .iter()
                    .map(|(target, addr)| {
                        scope.spawn(move || source == target || ns.ping(*addr, timeout))
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| row.into_iter().map(|h| h.join().unwrap_or(false)).collect())
            .collect()
    });
    Matrix {
        sources: sources.iter().map(|(n, _)| n.clone()).collect(),
        targets: targets.iter().map(|(n, _)| n.clone()).collect(),
        reachable,
    }
}
