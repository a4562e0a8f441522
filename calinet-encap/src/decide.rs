//! The decisions: paths, blackholes, tunnel devices, VTEP entries and MTUs.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::Serialize;

use crate::Error;
use crate::model::{Input, Node, Pool};
use crate::mtu::{EncapsInUse, Mtus};
use calinet_types::{EncapMode, Family, IfName, MacAddr, NodeName};

/// Name of the IPIP device.
pub const IPIP_DEVICE: &str = "tunl0";
/// Name of the IPv4 VXLAN device.
pub const VXLAN_DEVICE_V4: &str = "vxlan.calico";
/// Name of the IPv6 VXLAN device.
pub const VXLAN_DEVICE_V6: &str = "vxlan-v6.calico";
/// The VXLAN network identifier Calico uses.
pub const VXLAN_VNI: u32 = 4096;
/// The VXLAN UDP port Calico uses (the IANA port).
pub const VXLAN_PORT: u16 = 4789;

/// The name of the VXLAN device of a family.
#[must_use]
pub fn vxlan_device_name(family: Family) -> IfName {
    let name = match family {
        Family::V4 => VXLAN_DEVICE_V4,
        Family::V6 => VXLAN_DEVICE_V6,
    };
    name.parse().expect("constant interface names are valid")
}

fn ipip_device_name() -> IfName {
    IPIP_DEVICE
        .parse()
        .expect("constant interface names are valid")
}

/// How traffic to a remote block or borrowed address leaves the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum PathKind {
    /// Plain routing over the uplink: pod addresses are visible on the wire.
    Direct,
    /// IP-in-IP through `tunl0`.
    Ipip,
    /// VXLAN through `vxlan.calico` / `vxlan-v6.calico`.
    Vxlan,
}

impl PathKind {
    /// True for IPIP and VXLAN.
    #[must_use]
    pub fn is_tunnel(self) -> bool {
        self != Self::Direct
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Ipip => "ipip",
            Self::Vxlan => "vxlan",
        })
    }
}

/// The route to one remote block or borrowed address.
///
/// `Display` prints it as `ip route` would take it:
/// `172.16.158.0/24 via 192.168.10.101 dev tunl0 onlink`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Path {
    /// The destination: a block CIDR or a borrowed address as /32 or /128.
    pub dst: IpNet,
    /// Direct, IPIP or VXLAN.
    pub kind: PathKind,
    /// The remote node the destination lives on.
    pub node: NodeName,
    /// The next hop: the node IP (direct, IPIP), the remote tunnel address
    /// (VXLAN), or the uplink gateway (direct to a node in another subnet).
    pub via: IpAddr,
    /// The output device.
    pub dev: IfName,
    /// Whether the route carries `onlink` (the next hop is not checked against
    /// the device's subnets).
    pub onlink: bool,
    /// Whether the local uplink subnet contains the remote node's address.
    pub same_subnet: bool,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {} dev {}", self.dst, self.via, self.dev)?;
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// The IPIP device `tunl0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpipDevice {
    /// Always `tunl0`.
    pub name: IfName,
    /// The node's IPIP tunnel address (configured as /32).
    pub address: Ipv4Addr,
    /// Host MTU minus 20.
    pub mtu: u32,
}

/// A VXLAN device (`vxlan.calico` or `vxlan-v6.calico`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VxlanDevice {
    /// `vxlan.calico` or `vxlan-v6.calico`.
    pub name: IfName,
    /// Which family it carries (inner and outer are the same family).
    pub family: Family,
    /// VNI, 4096.
    pub vni: u32,
    /// UDP destination port, 4789.
    pub port: u16,
    /// The uplink the device sends through.
    pub parent: IfName,
    /// Local underlay address: the node IP.
    pub local: IpAddr,
    /// The device's MAC (the node's VTEP MAC).
    pub mac: MacAddr,
    /// The node's VXLAN tunnel address (configured as /32 or /128).
    pub address: IpAddr,
    /// Host MTU minus 50 (IPv4) or 70 (IPv6).
    pub mtu: u32,
    /// MAC learning: always off, the FDB is programmed.
    pub learning: bool,
}

/// A tunnel device the node needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum Device {
    /// `tunl0`.
    Ipip(IpipDevice),
    /// `vxlan.calico` / `vxlan-v6.calico`.
    Vxlan(VxlanDevice),
}

impl Device {
    /// The device name.
    #[must_use]
    pub fn name(&self) -> &IfName {
        match self {
            Self::Ipip(d) => &d.name,
            Self::Vxlan(d) => &d.name,
        }
    }

    /// The device MTU.
    #[must_use]
    pub fn mtu(&self) -> u32 {
        match self {
            Self::Ipip(d) => d.mtu,
            Self::Vxlan(d) => d.mtu,
        }
    }

    /// The device's own address as a host network (/32 or /128).
    #[must_use]
    pub fn address(&self) -> IpNet {
        match self {
            Self::Ipip(d) => IpNet::from(IpAddr::V4(d.address)),
            Self::Vxlan(d) => IpNet::from(d.address),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipip(d) => write!(f, "{} ipip mtu {} address {}/32", d.name, d.mtu, d.address),
            Self::Vxlan(d) => write!(
                f,
                "{} vxlan id {} dstport {} dev {} local {} mac {}{} mtu {} address {}",
                d.name,
                d.vni,
                d.port,
                d.parent,
                d.local,
                d.mac,
                if d.learning { "" } else { " nolearning" },
                d.mtu,
                IpNet::from(d.address)
            ),
        }
    }
}

/// A permanent neighbour entry: remote tunnel address -> remote VTEP MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    /// The VXLAN device.
    pub dev: IfName,
    /// The remote node's VXLAN tunnel address.
    pub ip: IpAddr,
    /// The remote node's VTEP MAC.
    pub mac: MacAddr,
    /// The remote node.
    pub node: NodeName,
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lladdr {} dev {} nud permanent",
            self.ip, self.mac, self.dev
        )
    }
}

/// A permanent FDB entry (`self`): remote VTEP MAC -> remote node IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FdbEntry {
    /// The VXLAN device.
    pub dev: IfName,
    /// The remote node's VTEP MAC.
    pub mac: MacAddr,
    /// The remote node's underlay address.
    pub dst: IpAddr,
    /// The remote node.
    pub node: NodeName,
}

impl fmt::Display for FdbEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dev {} dst {} self permanent",
            self.mac, self.dev, self.dst
        )
    }
}

/// All decisions for one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decisions {
    /// The node they are for.
    pub node: NodeName,
    /// One path per remote block and per borrowed address used on a remote
    /// node, sorted by destination.
    pub paths: Vec<Path>,
    /// `blackhole <block>` for each local block, sorted.
    pub blackholes: Vec<IpNet>,
    /// Tunnel devices wanted, in the order tunl0, vxlan.calico, vxlan-v6.calico.
    pub devices: Vec<Device>,
    /// VTEP neighbours, one per remote VTEP, sorted by device then address.
    pub neighbours: Vec<Neighbour>,
    /// VTEP FDB entries, one per remote VTEP, in the same order as `neighbours`.
    pub fdb: Vec<FdbEntry>,
    /// MTUs of devices and pods.
    pub mtu: Mtus,
}

impl Decisions {
    /// The path whose destination is exactly `dst`.
    #[must_use]
    pub fn path(&self, dst: IpNet) -> Option<&Path> {
        self.paths
            .binary_search_by(|p| p.dst.cmp(&dst))
            .ok()
            .map(|i| &self.paths[i])
    }

    /// The wanted device with this name.
    #[must_use]
    pub fn device(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name().as_str() == name)
    }

    /// The Calico tunnel devices that are NOT wanted: what an agent removes
    /// (or, for `tunl0`, which the kernel never deletes, takes down and strips
    /// of its address) after a mode switch.
    #[must_use]
    pub fn unwanted_devices(&self) -> Vec<IfName> {
        [IPIP_DEVICE, VXLAN_DEVICE_V4, VXLAN_DEVICE_V6]
            .into_iter()
            .filter(|n| self.device(n).is_none())
            .map(|n| n.parse().expect("constant interface names are valid"))
            .collect()
    }

    /// Count of paths of each kind: (direct, ipip, vxlan).
    #[must_use]
    pub fn path_counts(&self) -> (usize, usize, usize) {
        let count = |k| self.paths.iter().filter(|p| p.kind == k).count();
        (
            count(PathKind::Direct),
            count(PathKind::Ipip),
            count(PathKind::Vxlan),
        )
    }
}

impl fmt::Display for Decisions {
    /// An `ip`-style listing: routes (paths and blackholes, by destination),
    /// devices, neighbours, FDB entries and MTUs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node {}", self.node)?;
        let mut routes: Vec<(IpNet, String)> = self
            .paths
            .iter()
            .map(|p| (p.dst, p.to_string()))
            .chain(
                self.blackholes
                    .iter()
                    .map(|b| (*b, format!("blackhole {b}"))),
            )
            .collect();
        routes.sort();
        for (_, r) in routes {
            writeln!(f, "  route {r}")?;
        }
        for d in &self.devices {
            writeln!(f, "  link  {d}")?;
        }
        for n in &self.neighbours {
            writeln!(f, "  neigh {n}")?;
        }
        for e in &self.fdb {
            writeln!(f, "  fdb   {e}")?;
        }
        writeln!(f, "  mtu   {}", self.mtu)
    }
}

/// Decides everything for `input.local`: validates the whole input first and
/// returns the first rule broken, so nothing is decided from a bad input.
///
/// # Errors
/// Any [`Error`] describing an invalid or impossible configuration.
pub fn decide(input: &Input) -> Result<Decisions, Error> {
    validate_pools(&input.pools)?;
    let nodes = validate_nodes(input)?;
    let blocks = validate_blocks(input, &nodes)?;
    let borrowed = validate_borrowed(input, &nodes, &blocks)?;

    let in_use = EncapsInUse::of_pools(&input.pools, input.wireguard);
    let min_pod_mtu = if input.pools.iter().any(|p| p.cidr.addr().is_ipv6()) {
        1280
    } else {
        68
    };
    let mtu = Mtus::compute(input.uplink.mtu, in_use, min_pod_mtu)?;
    let devices = wanted_devices(input, in_use, &mtu)?;

    let mut paths = Vec::new();
    let mut blackholes = Vec::new();
    for block in &input.blocks {
        let cidr = block.cidr.trunc();
        if block.node == input.local.name {
            blackholes.push(cidr);
        } else {
            let remote = nodes[&block.node];
            paths.push(path_for(input, cidr, remote, input.pool_of(cidr))?);
        }
    }
    for (addr, borrower) in borrowed {
        if borrower.name == input.local.name {
            // The workload's own `/32 dev caliX` route covers it; that is not ours.
            continue;
        }
        let dst = IpNet::from(addr);
        paths.push(path_for(input, dst, borrower, input.pool_of(dst))?);
    }
    paths.sort_by_key(|p| p.dst);
    blackholes.sort();

    let (neighbours, fdb) = vtep_entries(input, &devices)?;
    Ok(Decisions {
        node: input.local.name.clone(),
        paths,
        blackholes,
        devices,
        neighbours,
        fdb,
        mtu,
    })
}

/// Whether the local uplink subnet of the remote's family contains `remote_ip`.
#[must_use]
pub fn same_subnet(local: &Node, remote_ip: IpAddr) -> bool {
    local
        .address(Family::of(remote_ip))
        .is_some_and(|net| net.contains(&remote_ip))
}

fn tunnels(mode: EncapMode, same_subnet: bool) -> bool {
    match mode {
        EncapMode::Never => false,
        EncapMode::Always => true,
        EncapMode::CrossSubnet => !same_subnet,
    }
}

fn path_for(input: &Input, dst: IpNet, remote: &Node, pool: Option<&Pool>) -> Result<Path, Error> {
    let family = Family::of(dst);
    let (ipip, vxlan) = pool.map_or((EncapMode::Never, EncapMode::Never), |p| {
        (p.ipip_mode, p.vxlan_mode)
    });
    let missing = |what, purpose: String| Error::NoUsableAddress {
        node: remote.name.clone(),
        family,
        what,
        purpose,
    };
    // Every kind of path needs the remote node's underlay address of the family:
    // direct and IPIP route via it, VXLAN's FDB entry points at it.
    let node_ip = remote
        .address(family)
        .map(|n| n.addr())
        .ok_or_else(|| missing("node address", format!("path to {dst}")))?;
    let same = same_subnet(&input.local, node_ip);
    let base = |kind, via, dev, onlink| Path {
        dst,
        kind,
        node: remote.name.clone(),
        via,
        dev,
        onlink,
        same_subnet: same,
    };
    if tunnels(vxlan, same) {
        let via = remote
            .vxlan_tunnel_addr(family)
            .ok_or_else(|| missing("VXLAN tunnel address", format!("VXLAN path to {dst}")))?;
        return Ok(base(PathKind::Vxlan, via, vxlan_device_name(family), true));
    }
    if tunnels(ipip, same) {
        return Ok(base(PathKind::Ipip, node_ip, ipip_device_name(), true));
    }
    let uplink = input.uplink.name.clone();
    match input.uplink.gateway(family) {
        Some(gw) if !same => Ok(base(PathKind::Direct, gw, uplink, false)),
        _ => Ok(base(PathKind::Direct, node_ip, uplink, true)),
    }
}

fn wanted_devices(input: &Input, in_use: EncapsInUse, mtu: &Mtus) -> Result<Vec<Device>, Error> {
    let local = &input.local;
    let missing = |family, what, dev: &str| Error::NoUsableAddress {
        node: local.name.clone(),
        family,
        what,
        purpose: format!("device {dev}"),
    };
    let mut devices = Vec::new();
    if in_use.ipip {
        let address = local
            .spec
            .ipip_tunnel_addr()
            .ok_or_else(|| missing(Family::V4, "IPIP tunnel address", IPIP_DEVICE))?;
        devices.push(Device::Ipip(IpipDevice {
            name: ipip_device_name(),
            address,
            mtu: mtu.ipip.expect("IPIP in use has an MTU"),
        }));
    }
    for (family, wanted, dev_mtu) in [
        (Family::V4, in_use.vxlan_v4, mtu.vxlan_v4),
        (Family::V6, in_use.vxlan_v6, mtu.vxlan_v6),
    ] {
        if !wanted {
            continue;
        }
        let name = vxlan_device_name(family);
        let node_ip = local
            .address(family)
            .ok_or_else(|| missing(family, "node address", name.as_str()))?;
        let address = local
            .vxlan_tunnel_addr(family)
            .ok_or_else(|| missing(family, "VXLAN tunnel address", name.as_str()))?;
        devices.push(Device::Vxlan(VxlanDevice {
            name,
            family,
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            parent: input.uplink.name.clone(),
            local: node_ip.addr(),
            mac: local.vtep_mac(family),
            address,
            mtu: dev_mtu.expect("VXLAN in use has an MTU"),
            learning: false,
        }));
    }
    Ok(devices)
}

fn vtep_entries(
    input: &Input,
    devices: &[Device],
) -> Result<(Vec<Neighbour>, Vec<FdbEntry>), Error> {
    let mut neighbours = Vec::new();
    let mut fdb = Vec::new();
    for dev in devices {
        let Device::Vxlan(vx) = dev else { continue };
        let mut macs: HashMap<MacAddr, &NodeName> = HashMap::from([(vx.mac, &input.local.name)]);
        let mut remotes: Vec<&Node> = input.remotes.iter().collect();
        remotes.sort_by_key(|n| n.vxlan_tunnel_addr(vx.family));
        for remote in remotes {
            // A remote without both addresses has no VTEP; a VXLAN path that
            // would need it has already failed with `NoUsableAddress`.
            let (Some(ip), Some(node_ip)) = (
                remote.vxlan_tunnel_addr(vx.family),
                remote.address(vx.family),
            ) else {
                continue;
            };
            let mac = remote.vtep_mac(vx.family);
            if let Some(other) = macs.insert(mac, &remote.name) {
                return Err(Error::DuplicateVtepMac {
                    mac: mac.to_string(),
                    family: vx.family,
                    first: other.clone(),
                    second: remote.name.clone(),
                });
            }
            neighbours.push(Neighbour {
                dev: vx.name.clone(),
                ip,
                mac,
                node: remote.name.clone(),
            });
            fdb.push(FdbEntry {
                dev: vx.name.clone(),
                mac,
                dst: node_ip.addr(),
                node: remote.name.clone(),
            });
        }
    }
    Ok((neighbours, fdb))
}

/// Sorted by start address, two CIDRs overlap iff one contains the other, and
/// some overlapping pair is then adjacent: checking neighbours is enough.
fn first_overlap<T>(items: &[T], cidr: impl Fn(&T) -> IpNet) -> Option<(&T, &T)> {
    let mut sorted: Vec<&T> = items.iter().collect();
    sorted.sort_by_key(|t| {
        let c = cidr(t).trunc();
        (c.network(), c.prefix_len())
    });
    sorted.windows(2).find_map(|w| {
        let (a, b) = (cidr(w[0]).trunc(), cidr(w[1]).trunc());
        (a.contains(&b) || b.contains(&a)).then_some((w[0], w[1]))
    })
}

fn validate_pools(pools: &[Pool]) -> Result<(), Error> {
    for p in pools {
        if p.ipip_mode.enabled() && p.vxlan_mode.enabled() {
            return Err(Error::BothEncapsEnabled {
                pool: p.name.clone(),
                cidr: p.cidr,
            });
        }
        if p.ipip_mode.enabled() && p.cidr.addr().is_ipv6() {
            return Err(Error::IpipOnIpv6 {
                pool: p.name.clone(),
                cidr: p.cidr,
            });
        }
    }
    if let Some((a, b)) = first_overlap(pools, |p| p.cidr) {
        return Err(Error::OverlappingPools {
            a: a.name.clone(),
            a_cidr: a.cidr,
            b: b.name.clone(),
            b_cidr: b.cidr,
        });
    }
    Ok(())
}

fn validate_nodes(input: &Input) -> Result<HashMap<&NodeName, &Node>, Error> {
    let mut nodes = HashMap::new();
    let mut owners: HashMap<IpAddr, (&NodeName, &'static str)> = HashMap::new();
    for node in std::iter::once(&input.local).chain(&input.remotes) {
        if nodes.insert(&node.name, node).is_some() {
            return Err(Error::DuplicateNode {
                node: node.name.clone(),
            });
        }
        let addrs = [
            (
                node.address(Family::V4).map(|a| a.addr()),
                "IPv4 node address",
            ),
            (
                node.address(Family::V6).map(|a| a.addr()),
                "IPv6 node address",
            ),
            (
                node.spec.ipip_tunnel_addr().map(IpAddr::V4),
                "IPIP tunnel address",
            ),
            (node.vxlan_tunnel_addr(Family::V4), "VXLAN tunnel address"),
            (
                node.vxlan_tunnel_addr(Family::V6),
                "IPv6 VXLAN tunnel address",
            ),
        ];
        for (addr, what) in addrs {
            let Some(addr) = addr else { continue };
            match owners.get(&addr) {
                // One node may use one address for several purposes (e.g. the
                // IPIP and VXLAN tunnel address across a mode switch).
                Some((owner, _)) if *owner == &node.name => {}
                Some((owner, owner_what)) => {
                    return Err(Error::DuplicateAddress {
                        addr,
                        first: (*owner).clone(),
                        first_what: owner_what,
                        second: node.name.clone(),
                        second_what: what,
                    });
                }
                None => {
                    owners.insert(addr, (&node.name, what));
                }
            }
        }
        for mac in [
            node.spec.vxlan_tunnel_mac_addr,
            node.spec.vxlan_tunnel_mac_addr_v6,
        ]
        .into_iter()
        .flatten()
        {
            if mac.is_multicast() {
                return Err(Error::MulticastVtepMac {
                    node: node.name.clone(),
                    mac: mac.to_string(),
                });
            }
        }
    }
    Ok(nodes)
}

/// Returns the blocks sorted by network address (for address lookups).
fn validate_blocks<'a>(
    input: &'a Input,
    nodes: &HashMap<&NodeName, &Node>,
) -> Result<Vec<&'a crate::model::Block>, Error> {
    if let Some((a, b)) = first_overlap(&input.blocks, |b| b.cidr) {
        return Err(Error::OverlappingBlocks {
            a: a.cidr.trunc(),
            b: b.cidr.trunc(),
        });
    }
    for block in &input.blocks {
        let cidr = block.cidr.trunc();
        if !nodes.contains_key(&block.node) {
            return Err(Error::UnknownNode {
                what: format!("block {cidr}"),
                node: block.node.clone(),
            });
        }
        if let Some(p) = input
            .pools
            .iter()
            .find(|p| p.cidr.contains(&cidr.network()) || cidr.contains(&p.cidr.network()))
            .filter(|p| !p.cidr.contains(&cidr))
        {
            return Err(Error::BlockStraddlesPool {
                block: cidr,
                pool: p.name.clone(),
                cidr: p.cidr,
            });
        }
    }
    let mut sorted: Vec<_> = input.blocks.iter().collect();
    sorted.sort_by_key(|b| b.cidr.trunc().network());
    Ok(sorted)
}

fn validate_borrowed<'a>(
    input: &'a Input,
    nodes: &HashMap<&NodeName, &'a Node>,
    blocks: &[&crate::model::Block],
) -> Result<Vec<(IpAddr, &'a Node)>, Error> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(input.borrowed.len());
    for b in &input.borrowed {
        if !seen.insert(b.addr) {
            return Err(Error::DuplicateBorrowed { addr: b.addr });
        }
        let Some(&borrower) = nodes.get(&b.node) else {
            return Err(Error::UnknownNode {
                what: format!("borrowed address {}", b.addr),
                node: b.node.clone(),
            });
        };
        let idx = blocks.partition_point(|blk| blk.cidr.trunc().network() <= b.addr);
        let block = idx
            .checked_sub(1)
            .map(|i| blocks[i])
            .filter(|blk| blk.cidr.contains(&b.addr))
            .ok_or_else(|| Error::BorrowedOutsideBlocks {
                addr: b.addr,
                node: b.node.clone(),
            })?;
        if block.node == b.node {
            return Err(Error::BorrowedFromSelf {
                addr: b.addr,
                node: b.node.clone(),
                block: block.cidr.trunc(),
            });
        }
        out.push((b.addr, borrower));
    }
    Ok(out)
}
