//! Proptest strategies and invariant checkers, for this crate's tests and for
//! downstream projects (feature `proptest`).
//!
//! [`arb_cluster`] generates a whole valid cluster (nodes in a few subnets, one
//! IPv4 pool, optionally one IPv6 pool, one block per node per pool, some
//! borrowed addresses); [`Cluster::input_for`] gives one node's [`Input`].
//! [`check_decisions`] checks one node's decisions against its input;
//! [`check_symmetry`] checks that two nodes choose the same kind of path to
//! each other.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

use crate::{
    Block, Borrowed, Decisions, Device, EncapMode, Family, Input, Node, PathKind, Pool, Uplink,
    Wireguard, same_subnet,
};

/// A whole cluster: every node with its uplink, the pools, blocks, borrowed addresses.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Nodes and their uplinks.
    pub nodes: Vec<(Node, Uplink)>,
    /// Pools.
    pub pools: Vec<Pool>,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Borrowed addresses.
    pub borrowed: Vec<Borrowed>,
    /// WireGuard settings.
    pub wireguard: Wireguard,
}

impl Cluster {
    /// The input of node `index` (its view of the cluster).
    ///
    /// # Panics
    /// When `index` is out of range.
    #[must_use]
    pub fn input_for(&self, index: usize) -> Input {
        let (local, uplink) = self.nodes[index].clone();
        let mut input = Input::new(local, uplink);
        input.remotes = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, (n, _))| n.clone())
            .collect();
        input.pools = self.pools.clone();
        input.blocks = self.blocks.clone();
        input.borrowed = self.borrowed.clone();
        input.wireguard = self.wireguard;
        input
    }
}

/// Any encapsulation mode.
pub fn arb_mode() -> impl Strategy<Value = EncapMode> {
    prop_oneof![
        Just(EncapMode::Never),
        Just(EncapMode::Always),
        Just(EncapMode::CrossSubnet)
    ]
}

/// A valid (`ipipMode`, `vxlanMode`) pair for an IPv4 pool: at most one enabled.
pub fn arb_v4_modes() -> impl Strategy<Value = (EncapMode, EncapMode)> {
    (arb_mode(), any::<bool>()).prop_map(|(m, ipip)| {
        if ipip {
            (m, EncapMode::Never)
        } else {
            (EncapMode::Never, m)
        }
    })
}

/// Underlay subnets the generated nodes live in (documentation ranges).
pub const SUBNETS_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 0),
    Ipv4Addr::new(203, 0, 113, 0),
    Ipv4Addr::new(192, 0, 2, 0),
];

/// A valid cluster of 2..=`max_nodes` nodes.
///
/// Nodes in the same subnet share its prefix length, so "same subnet" is
/// mutual (the premise of [`check_symmetry`]).
pub fn arb_cluster(max_nodes: usize) -> impl Strategy<Value = Cluster> {
    let max_nodes = max_nodes.max(2);
    (
        proptest::collection::vec(0..SUBNETS_V4.len(), 2..=max_nodes),
        arb_v4_modes(),
        proptest::option::of(arb_mode()),
        1300u32..=9001,
        any::<(bool, bool)>(),
        proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(subnets, (ipip, vxlan), v6_vxlan, mtu, (wg4, wg6), borrows, gateways)| {
                build_cluster(
                    &subnets,
                    ipip,
                    vxlan,
                    v6_vxlan,
                    mtu,
                    (wg4, wg6),
                    &borrows,
                    gateways,
                )
            },
        )
}

#[allow(clippy::too_many_arguments)]
fn build_cluster(
    subnets: &[usize],
    ipip: EncapMode,
    vxlan: EncapMode,
    v6_vxlan: Option<EncapMode>,
    mtu: u32,
    (wg4, wg6): (bool, bool),
    borrows: &[(proptest::sample::Index, u8)],
    gateways: bool,
) -> Cluster {
    let mut pools = vec![
        Pool::new("pool-v4", "172.16.0.0/16".parse().expect("literal"))
            .ipip(ipip)
            .vxlan(vxlan),
    ];
    if let Some(m) = v6_vxlan {
        pools.push(Pool::new("pool-v6", "fd00:10::/48".parse().expect("literal")).vxlan(m));
    }
    // v6 pools force a 1280 minimum pod MTU; keep the generated MTU above it.
    let mtu = if v6_vxlan.is_some() {
        mtu.max(1360)
    } else {
        mtu
    };
    let mut nodes = Vec::new();
    let mut blocks = Vec::new();
    for (i, &s) in subnets.iter().enumerate() {
        let i8 = u8::try_from(i).expect("few nodes");
        let i16 = u16::from(i8);
        let name = format!("node-{i}").parse().expect("valid name");
        let [a, b, c, _] = SUBNETS_V4[s].octets();
        let v4 = Ipv4Net::new(Ipv4Addr::new(a, b, c, 10 + i8), 24).expect("valid");
        let v6 = Ipv6Net::new(
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                u16::try_from(s).expect("small"),
                0,
                0,
                0,
                0,
                10 + i16,
            ),
            64,
        )
        .expect("valid");
        let block4 = Ipv4Net::new(Ipv4Addr::new(172, 16, i8, 0), 24).expect("valid");
        let block6 =
            Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0, i16, 0, 0, 0, 0), 64).expect("valid");
        let mut node = Node::new(name)
            .with_address(IpNet::V4(v4))
            .with_ipip_tunnel(block4.network())
            .with_vxlan_tunnel(IpAddr::V4(Ipv4Addr::new(172, 16, i8, 1)));
        blocks.push(Block::new(IpNet::V4(block4), node.name.clone()));
        if v6_vxlan.is_some() {
            node = node
                .with_address(IpNet::V6(v6))
                .with_vxlan_tunnel(IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0, i16, 0, 0, 0, 1)));
            blocks.push(Block::new(IpNet::V6(block6), node.name.clone()));
        }
        let mut uplink = Uplink::new("eth0".parse().expect("valid"), mtu);
        if gateways {
            uplink = uplink.with_gateway(IpAddr::V4(Ipv4Addr::new(a, b, c, 1)));
        }
        nodes.push((node, uplink));
    }
    // Borrowed: an address (ordinal >= 2, past the tunnel addresses) of one
    // node's IPv4 block used on the next node.
    let mut borrowed: Vec<Borrowed> = Vec::new();
    for (idx, ordinal) in borrows {
        let owner = idx.index(nodes.len());
        let borrower = (owner + 1) % nodes.len();
        let addr = IpAddr::V4(Ipv4Addr::new(
            172,
            16,
            u8::try_from(owner).expect("few nodes"),
            ordinal.max(&2).to_owned(),
        ));
        if borrowed.iter().all(|b| b.addr != addr) {
            borrowed.push(Borrowed {
                addr,
                node: nodes[borrower].0.name.clone(),
            });
        }
    }
    Cluster {
        nodes,
        pools,
        blocks,
        borrowed,
        wireguard: Wireguard {
            ipv4: wg4,
            ipv6: wg6 && v6_vxlan.is_some(),
        },
    }
}

/// Checks one node's decisions against its input:
///
/// 1. every remote block has exactly one path (to its owner) and no blackhole;
///    every local block exactly one blackhole and no path; every borrowed
///    address used on a remote node exactly one /32 (/128) path to the borrower;
/// 2. the path kind follows the pool: `Always` tunnels, `Never` on both is
///    direct, `CrossSubnet` is direct exactly when the remote is in the local subnet;
/// 3. the pod MTU is no larger than any device MTU on the path (uplink, tunnel,
///    and WireGuard when enabled);
/// 4. every VXLAN path has the neighbour for its next hop and an FDB entry for
///    that MAC pointing at the remote node's address; every path's device is
///    the uplink or a wanted device.
///
/// # Errors
/// A description of the first invariant broken.
pub fn check_decisions(input: &Input, d: &Decisions) -> Result<(), String> {
    let mut expected: Vec<(IpNet, &Node)> = Vec::new();
    for b in &input.blocks {
        let count_bh = d.blackholes.iter().filter(|x| **x == b.cidr).count();
        let count_p = d.paths.iter().filter(|p| p.dst == b.cidr).count();
        if b.node == input.local.name {
            if (count_bh, count_p) != (1, 0) {
                return Err(format!(
                    "local block {}: {count_bh} blackholes, {count_p} paths",
                    b.cidr
                ));
            }
        } else {
            if (count_bh, count_p) != (0, 1) {
                return Err(format!(
                    "remote block {}: {count_bh} blackholes, {count_p} paths",
                    b.cidr
                ));
            }
            expected.push((b.cidr, input.node(&b.node).ok_or("unknown owner")?));
        }
    }
    for b in &input.borrowed {
        let dst = IpNet::from(b.addr);
        let count = d.paths.iter().filter(|p| p.dst == dst).count();
        let want = usize::from(b.node != input.local.name);
        if count != want {
            return Err(format!("borrowed {}: {count} paths, want {want}", b.addr));
        }
        if want == 1 {
            expected.push((dst, input.node(&b.node).ok_or("unknown borrower")?));
        }
    }
    if expected.len() != d.paths.len() {
        return Err(format!(
            "{} paths for {} remote destinations",
            d.paths.len(),
            expected.len()
        ));
    }
    for (dst, remote) in expected {
        let p = d.path(dst).ok_or_else(|| format!("no path to {dst}"))?;
        if p.node != remote.name {
            return Err(format!(
                "path to {dst} goes to {}, not {}",
                p.node, remote.name
            ));
        }
        let family = Family::of(dst);
        let node_ip = remote
            .address(family)
            .ok_or("path to a node without address")?
            .addr();
        let same = same_subnet(&input.local, node_ip);
        if p.same_subnet != same {
            return Err(format!("path to {dst}: same_subnet flag {}", p.same_subnet));
        }
        let (ipip, vxlan) = input
            .pool_of(dst)
            .map_or((EncapMode::Never, EncapMode::Never), |p| {
                (p.ipip_mode, p.vxlan_mode)
            });
        let mode = if vxlan.enabled() { vxlan } else { ipip };
        let want_tunnel = match mode {
            EncapMode::Never => false,
            EncapMode::Always => true,
            EncapMode::CrossSubnet => !same,
        };
        if p.kind.is_tunnel() != want_tunnel {
            return Err(format!(
                "path to {dst} ({mode}, same subnet {same}) is {}",
                p.kind
            ));
        }
        if want_tunnel && (p.kind == PathKind::Vxlan) != vxlan.enabled() {
            return Err(format!("path to {dst} uses the wrong tunnel {}", p.kind));
        }
        let dev_mtu = if p.dev == input.uplink.name {
            input.uplink.mtu
        } else {
            d.device(p.dev.as_str())
                .ok_or_else(|| format!("path to {dst} uses unwanted device {}", p.dev))?
                .mtu()
        };
        if d.mtu.pod > dev_mtu {
            return Err(format!(
                "pod MTU {} exceeds {} MTU {dev_mtu} on the path to {dst}",
                d.mtu.pod, p.dev
            ));
        }
        for wg in [d.mtu.wireguard_v4, d.mtu.wireguard_v6]
            .into_iter()
            .flatten()
        {
            if d.mtu.pod > wg {
                return Err(format!("pod MTU {} exceeds WireGuard MTU {wg}", d.mtu.pod));
            }
        }
        if p.kind == PathKind::Vxlan {
            let n = d
                .neighbours
                .iter()
                .find(|n| n.ip == p.via && n.dev == p.dev)
                .ok_or_else(|| format!("no neighbour for VXLAN next hop {}", p.via))?;
            if n.mac != remote.vtep_mac(family) {
                return Err(format!("neighbour {} has MAC {}", n.ip, n.mac));
            }
            if !d
                .fdb
                .iter()
                .any(|f| f.mac == n.mac && f.dst == node_ip && f.dev == p.dev)
            {
                return Err(format!("no FDB entry {} -> {node_ip}", n.mac));
            }
        }
    }
    for dev in &d.devices {
        if let Device::Vxlan(v) = dev
            && (v.vni, v.port, v.learning) != (crate::VXLAN_VNI, crate::VXLAN_PORT, false)
        {
            return Err(format!("{} has vni {} port {}", v.name, v.vni, v.port));
        }
    }
    Ok(())
}

/// Checks that nodes `a` and `b` of `cluster` choose the same kind of path to
/// each other's blocks of the same pool.
///
/// # Errors
/// A description of the first asymmetry found, or a decision error.
pub fn check_symmetry(cluster: &Cluster, a: usize, b: usize) -> Result<(), String> {
    let da = crate::decide(&cluster.input_for(a)).map_err(|e| e.to_string())?;
    let db = crate::decide(&cluster.input_for(b)).map_err(|e| e.to_string())?;
    let (na, nb) = (&cluster.nodes[a].0.name, &cluster.nodes[b].0.name);
    for pool in &cluster.pools {
        let kind_to = |d: &Decisions, owner| {
            cluster
                .blocks
                .iter()
                .filter(|bl| &bl.node == owner && pool.cidr.contains(&bl.cidr))
                .map(|bl| d.path(bl.cidr).map(|p| p.kind))
                .collect::<Vec<_>>()
        };
        let (ab, ba) = (kind_to(&da, nb), kind_to(&db, na));
        if ab != ba {
            return Err(format!(
                "pool {}: {na} -> {nb} is {ab:?} but {nb} -> {na} is {ba:?}",
                pool.name
            ));
        }
    }
    Ok(())
}
