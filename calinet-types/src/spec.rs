//! Desired-state types: plain values that calinet-encap, calinet-wg and the CNI
//! plugin produce and calinet-route programs into the kernel.
//!
//! Nothing here touches the kernel. Every type is `serde`-able and validated once, at
//! construction or deserialisation.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mac::MacAddr;
use crate::names::IfName;

/// The main routing table (`ip route` without `table`).
pub const MAIN_TABLE: u32 = 254;

/// A route's protocol (`ip route ... proto N`): who installed it. Ownership of routes
/// is decided by this number.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RouteProtocol(pub u8);

impl RouteProtocol {
    /// `unspec` (0).
    pub const UNSPEC: RouteProtocol = RouteProtocol(0);
    /// `redirect` (1).
    pub const REDIRECT: RouteProtocol = RouteProtocol(1);
    /// `kernel` (2): routes the kernel derives from addresses.
    pub const KERNEL: RouteProtocol = RouteProtocol(2);
    /// `boot` (3): the default of `ip route add`.
    pub const BOOT: RouteProtocol = RouteProtocol(3);
    /// `static` (4).
    pub const STATIC: RouteProtocol = RouteProtocol(4);
    /// `bird` (12): Calico's BGP daemon.
    pub const BIRD: RouteProtocol = RouteProtocol(12);
    /// 80: the protocol Calico's Felix tags its routes with (calinet's default).
    pub const CALICO: RouteProtocol = RouteProtocol(80);
}

impl Default for RouteProtocol {
    fn default() -> Self {
        RouteProtocol::CALICO
    }
}

impl fmt::Display for RouteProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("unspec"),
            1 => f.write_str("redirect"),
            2 => f.write_str("kernel"),
            3 => f.write_str("boot"),
            4 => f.write_str("static"),
            12 => f.write_str("bird"),
            n => write!(f, "{n}"),
        }
    }
}

impl fmt::Debug for RouteProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RouteProtocol({self})")
    }
}

/// A route's type (`ip route add TYPE ...`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RouteType {
    /// Forward to a device / gateway.
    #[default]
    Unicast,
    /// Silently drop.
    Blackhole,
    /// Drop with ICMP unreachable.
    Unreachable,
    /// Drop with ICMP prohibited.
    Prohibit,
    /// Continue the lookup in the next table (policy routing).
    Throw,
}

impl RouteType {
    /// Whether routes of this type carry a device / gateway.
    pub fn forwards(self) -> bool {
        matches!(self, RouteType::Unicast)
    }
}

impl fmt::Display for RouteType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteType::Unicast => "unicast",
            RouteType::Blackhole => "blackhole",
            RouteType::Unreachable => "unreachable",
            RouteType::Prohibit => "prohibit",
            RouteType::Throw => "throw",
        })
    }
}

impl FromStr for RouteType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "unicast" => RouteType::Unicast,
            "blackhole" => RouteType::Blackhole,
            "unreachable" => RouteType::Unreachable,
            "prohibit" => RouteType::Prohibit,
            "throw" => RouteType::Throw,
            _ => {
                return Err(Error::InvalidRouteType {
                    input: s.to_string(),
                });
            }
        })
    }
}

/// A route's scope (`ip route ... scope S`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RouteScope {
    /// `global` (0): reached through a gateway or not a forwarding route.
    #[default]
    Universe,
    /// `site` (200).
    Site,
    /// `link` (253): directly attached on the device.
    Link,
    /// `host` (254).
    Host,
}

impl RouteScope {
    /// The kernel's number for this scope.
    pub fn number(self) -> u8 {
        match self {
            RouteScope::Universe => 0,
            RouteScope::Site => 200,
            RouteScope::Link => 253,
            RouteScope::Host => 254,
        }
    }
}

impl fmt::Display for RouteScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteScope::Universe => "global",
            RouteScope::Site => "site",
            RouteScope::Link => "link",
            RouteScope::Host => "host",
        })
    }
}

/// What identifies a route in the kernel: two routes with the same key cannot
/// coexist, so a key is replaced, never duplicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteKey {
    /// Routing table id.
    pub table: u32,
    /// Destination prefix (host bits cleared).
    pub destination: IpNet,
    /// IPv4 type of service (always 0 for IPv6).
    pub tos: u8,
    /// Metric / priority (IPv6 0 is stored by the kernel as 1024).
    pub metric: u32,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.destination)?;
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        if self.tos != 0 {
            write!(f, " tos {:#x}", self.tos)?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        Ok(())
    }
}

/// One desired (or observed) route, IPv4 or IPv6, in any table.
///
/// Built with a constructor for its type and refined with builder methods:
///
/// ```
/// use calinet_types::{IfName, RouteSpec, RouteScope};
/// let dev: IfName = "eth0".parse().unwrap();
/// let r = RouteSpec::via("172.16.158.0/24".parse().unwrap(), "198.51.100.11".parse().unwrap())
///     .device(dev)
///     .onlink();
/// assert_eq!(r.to_string(), "172.16.158.0/24 via 198.51.100.11 dev eth0 proto 80 onlink");
/// assert_eq!(r.scope, RouteScope::Universe);
/// let b = RouteSpec::blackhole("172.16.101.0/26".parse().unwrap());
/// assert_eq!(b.to_string(), "blackhole 172.16.101.0/26 proto 80");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Routing table id (default [`MAIN_TABLE`]).
    #[serde(default = "main_table")]
    pub table: u32,
    /// Destination prefix.
    pub destination: IpNet,
    /// IPv4 type of service.
    #[serde(default)]
    pub tos: u8,
    /// Metric / priority.
    #[serde(default)]
    pub metric: u32,
    /// Route type.
    #[serde(default, rename = "type")]
    pub kind: RouteType,
    /// Output device (unicast routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<IfName>,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// `onlink`: the gateway is reachable on the device without a covering route.
    #[serde(default)]
    pub onlink: bool,
    /// Scope.
    #[serde(default)]
    pub scope: RouteScope,
    /// Protocol; decides ownership.
    #[serde(default)]
    pub protocol: RouteProtocol,
    /// Path MTU (`mtu N`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Preferred source address (`src A`), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
}

fn main_table() -> u32 {
    MAIN_TABLE
}

impl RouteSpec {
    fn base(destination: IpNet, kind: RouteType) -> Self {
        RouteSpec {
            table: MAIN_TABLE,
            destination: destination.trunc(),
            tos: 0,
            metric: 0,
            kind,
            device: None,
            gateway: None,
            onlink: false,
            scope: RouteScope::Universe,
            protocol: RouteProtocol::CALICO,
            mtu: None,
            source: None,
        }
    }

    /// A directly attached route: `destination dev device scope link`.
    pub fn direct(destination: IpNet, device: IfName) -> Self {
        RouteSpec {
            device: Some(device),
            scope: RouteScope::Link,
            ..RouteSpec::base(destination, RouteType::Unicast)
        }
    }

    /// Calico's host route to a workload: `podIP/32 dev caliX scope link` (or /128).
    pub fn workload(pod_ip: IpAddr, device: IfName) -> Self {
        RouteSpec::direct(IpNet::from(pod_ip), device)
    }

    /// A route through a gateway: `destination via gateway` (scope global). Add the
    /// device with [`RouteSpec::device`] and `onlink` with [`RouteSpec::onlink`].
    pub fn via(destination: IpNet, gateway: IpAddr) -> Self {
        RouteSpec {
            gateway: Some(gateway),
            ..RouteSpec::base(destination, RouteType::Unicast)
        }
    }

    /// `blackhole destination` (Calico's route for a local affine block).
    pub fn blackhole(destination: IpNet) -> Self {
        RouteSpec::base(destination, RouteType::Blackhole)
    }

    /// `unreachable destination`.
    pub fn unreachable(destination: IpNet) -> Self {
        RouteSpec::base(destination, RouteType::Unreachable)
    }

    /// `prohibit destination`.
    pub fn prohibit(destination: IpNet) -> Self {
        RouteSpec::base(destination, RouteType::Prohibit)
    }

    /// `throw destination` (policy routing: continue in the next table).
    pub fn throw(destination: IpNet) -> Self {
        RouteSpec::base(destination, RouteType::Throw)
    }

    /// Sets the output device.
    pub fn device(mut self, device: IfName) -> Self {
        self.device = Some(device);
        self
    }

    /// Sets `onlink`.
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// Sets the table.
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// Sets the metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = metric;
        self
    }

    /// Sets the IPv4 TOS.
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    /// Sets the scope.
    pub fn scope(mut self, scope: RouteScope) -> Self {
        self.scope = scope;
        self
    }

    /// Sets the protocol.
    pub fn protocol(mut self, protocol: RouteProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets the path MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Sets the preferred source address.
    pub fn source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// Whether this is an IPv6 route.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.destination, IpNet::V6(_))
    }

    /// The kernel key of this route, normalised the way the kernel stores it
    /// (host bits cleared; IPv6 metric 0 becomes 1024; IPv6 has no TOS).
    pub fn key(&self) -> RouteKey {
        let v6 = self.is_ipv6();
        RouteKey {
            table: self.table,
            destination: self.destination.trunc(),
            tos: if v6 { 0 } else { self.tos },
            metric: if v6 && self.metric == 0 {
                1024
            } else {
                self.metric
            },
        }
    }

    /// This route as the kernel would report it back: the key normalised, and for
    /// IPv6 the scope forced to global (the kernel keeps no scope for IPv6 routes).
    pub fn normalized(&self) -> RouteSpec {
        let key = self.key();
        let mut out = self.clone();
        out.destination = key.destination;
        out.tos = key.tos;
        out.metric = key.metric;
        if self.is_ipv6() {
            out.scope = RouteScope::Universe;
        }
        out
    }

    /// Checks internal consistency: address families agree, forwarding attributes
    /// only on unicast routes, a unicast route has a device or a gateway, `onlink`
    /// needs a device and a gateway.
    pub fn validate(&self) -> Result<()> {
        let bad = |rule: &str| {
            Err(Error::InvalidRoute {
                route: self.to_string(),
                rule: rule.to_string(),
            })
        };
        let v6 = self.is_ipv6();
        if let Some(gw) = self.gateway
            && gw.is_ipv6() != v6
        {
            return bad("gateway family differs from the destination's");
        }
        if let Some(src) = self.source
            && src.is_ipv6() != v6
        {
            return bad("source family differs from the destination's");
        }
        if v6 && self.tos != 0 {
            return bad("IPv6 routes have no TOS");
        }
        if self.kind.forwards() {
            if self.device.is_none() && self.gateway.is_none() {
                return bad("a unicast route needs a device or a gateway");
            }
        } else if self.device.is_some() || self.gateway.is_some() || self.onlink {
            return bad("only unicast routes take a device, gateway or onlink");
        }
        if self.onlink && (self.device.is_none() || self.gateway.is_none()) {
            return bad("onlink needs both a device and a gateway");
        }
        if self.mtu == Some(0) {
            return bad("mtu must be positive");
        }
        Ok(())
    }
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != RouteType::Unicast {
            write!(f, "{} ", self.kind)?;
        }
        write!(f, "{}", self.destination)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.device {
            write!(f, " dev {dev}")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        write!(f, " proto {}", self.protocol)?;
        if self.scope != RouteScope::Universe {
            write!(f, " scope {}", self.scope)?;
        }
        if let Some(src) = self.source {
            write!(f, " src {src}")?;
        }
        if self.tos != 0 {
            write!(f, " tos {:#x}", self.tos)?;
        }
        if self.metric != 0 {
            write!(f, " metric {}", self.metric)?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, " mtu {mtu}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        Ok(())
    }
}

/// A permanent neighbour entry (`ip neigh replace ADDR lladdr MAC dev DEV nud permanent`),
/// e.g. a remote VTEP's tunnel address on `vxlan.calico`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NeighbourSpec {
    /// Device the entry lives on.
    pub device: IfName,
    /// The IP address (key together with the device).
    pub address: IpAddr,
    /// The link-layer address it resolves to.
    pub lladdr: MacAddr,
}

impl NeighbourSpec {
    /// A permanent entry `address -> lladdr` on `device`.
    pub fn new(device: IfName, address: IpAddr, lladdr: MacAddr) -> Self {
        NeighbourSpec {
            device,
            address,
            lladdr,
        }
    }

    /// The identity of this entry in the kernel.
    pub fn key(&self) -> (IfName, IpAddr) {
        (self.device.clone(), self.address)
    }
}

impl fmt::Display for NeighbourSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dev {} lladdr {} PERMANENT",
            self.address, self.device, self.lladdr
        )
    }
}

/// A permanent forwarding-database entry on a VXLAN device
/// (`bridge fdb replace MAC dev DEV dst IP self permanent`): frames for `mac` go to
/// the VTEP at `destination`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FdbSpec {
    /// The VXLAN device.
    pub device: IfName,
    /// The remote VTEP's MAC.
    pub mac: MacAddr,
    /// The remote VTEP's underlay address.
    pub destination: IpAddr,
}

impl FdbSpec {
    /// A permanent `self` entry `mac -> destination` on `device`.
    pub fn new(device: IfName, mac: MacAddr, destination: IpAddr) -> Self {
        FdbSpec {
            device,
            mac,
            destination,
        }
    }

    /// The identity of this entry as the reconciler sees it: one destination per
    /// VTEP MAC (a second destination for the same MAC is an extra to delete).
    pub fn key(&self) -> (IfName, MacAddr) {
        (self.device.clone(), self.mac)
    }
}

impl fmt::Display for FdbSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dev {} dst {} self permanent",
            self.mac, self.device, self.destination
        )
    }
}

/// Default VXLAN UDP port (IANA; what Calico uses).
pub const VXLAN_PORT: u16 = 4789;
/// Calico's default VXLAN network identifier.
pub const CALICO_VNI: u32 = 4096;

/// Parameters of a VXLAN device. A mismatch of any of these on an existing device
/// makes the reconciler recreate it (the kernel cannot change them in place).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanSpec {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Destination UDP port.
    #[serde(default = "vxlan_port")]
    pub port: u16,
    /// Underlay device the tunnel sends through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<IfName>,
    /// Local underlay address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    /// Whether the device learns FDB entries from traffic (Calico: off).
    #[serde(default)]
    pub learning: bool,
}

fn vxlan_port() -> u16 {
    VXLAN_PORT
}

impl VxlanSpec {
    /// VNI `vni`, port 4789, learning off, no parent or local address.
    pub fn new(vni: u32) -> Self {
        VxlanSpec {
            vni,
            port: VXLAN_PORT,
            parent: None,
            local: None,
            learning: false,
        }
    }
}

/// Parameters of an IPIP device (`tunl0` has neither local nor remote).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpipSpec {
    /// Local tunnel endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<Ipv4Addr>,
    /// Remote tunnel endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<Ipv4Addr>,
}

/// The kind of a tunnel link.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
#[non_exhaustive]
pub enum LinkKind {
    /// A VXLAN device.
    Vxlan(VxlanSpec),
    /// An IPIP device.
    Ipip(IpipSpec),
}

/// A desired tunnel link with its addresses, MTU, MAC and admin state.
///
/// ```
/// use calinet_types::{LinkSpec, VxlanSpec, CALICO_VNI};
/// let spec = LinkSpec::vxlan("vxlan.calico".parse().unwrap(), VxlanSpec::new(CALICO_VNI))
///     .mtu(1450)
///     .address("172.16.101.0/32".parse().unwrap());
/// assert!(spec.up);
/// spec.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// Interface name.
    pub name: IfName,
    /// Kind and kind-specific parameters.
    pub kind: LinkKind,
    /// MTU, if it should be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// MAC address, if it should be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// Addresses the link should carry (others it carries are removed, except IPv6
    /// link-local ones the kernel adds).
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// Administrative state.
    #[serde(default = "yes")]
    pub up: bool,
}

fn yes() -> bool {
    true
}

/// Calico's IPIP device name.
pub const TUNL0: &str = "tunl0";

impl LinkSpec {
    /// A VXLAN link, up, no MTU/MAC/addresses yet.
    pub fn vxlan(name: IfName, vxlan: VxlanSpec) -> Self {
        LinkSpec {
            name,
            kind: LinkKind::Vxlan(vxlan),
            mtu: None,
            mac: None,
            addresses: Vec::new(),
            up: true,
        }
    }

    /// Calico's `tunl0`: IPIP with no local or remote, up.
    pub fn ipip_tunl0() -> Self {
        LinkSpec {
            name: IfName::from_static(TUNL0),
            kind: LinkKind::Ipip(IpipSpec::default()),
            mtu: None,
            mac: None,
            addresses: Vec::new(),
            up: true,
        }
    }

    /// Sets the MTU.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }

    /// Sets the MAC.
    pub fn mac(mut self, mac: MacAddr) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Adds an address.
    pub fn address(mut self, address: IpNet) -> Self {
        self.addresses.push(address);
        self
    }

    /// Sets the admin state.
    pub fn up(mut self, up: bool) -> Self {
        self.up = up;
        self
    }

    /// Checks consistency: MTU within 68..=65535, no duplicate address, an IPIP
    /// device carries no MAC, VXLAN VNI fits 24 bits.
    pub fn validate(&self) -> Result<()> {
        let bad = |rule: String| {
            Err(Error::InvalidLink {
                name: self.name.to_string(),
                rule,
            })
        };
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return bad(format!("mtu {mtu} outside 68..=65535"));
        }
        let mut seen = BTreeSet::new();
        for a in &self.addresses {
            if !seen.insert(*a) {
                return bad(format!("address {a} listed twice"));
            }
        }
        match &self.kind {
            LinkKind::Vxlan(v) => {
                if v.vni >= 1 << 24 {
                    return bad(format!("vni {} does not fit 24 bits", v.vni));
                }
                if v.port == 0 {
                    return bad("port must not be 0".to_string());
                }
            }
            LinkKind::Ipip(_) => {
                if self.mac.is_some() {
                    return bad("an IPIP device has no MAC".to_string());
                }
            }
        }
        Ok(())
    }
}

/// One workload's plumbing: a veth pair from the host into the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Host-side interface name (see [`IfName::workload`]).
    pub host_ifname: IfName,
    /// The pod's network namespace (e.g. `/run/netns/NAME` or `/proc/PID/ns/net`).
    pub pod_netns: PathBuf,
    /// Interface name inside the pod (default `eth0`).
    #[serde(default = "eth0")]
    pub pod_ifname: IfName,
    /// The pod's IPv4 address (gets a /32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// The pod's IPv6 address (gets a /128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// MTU of both ends.
    pub mtu: u32,
}

fn eth0() -> IfName {
    IfName::from_static("eth0")
}

/// The pod side's IPv4 gateway: Calico's link-local next hop, answered by proxy ARP.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

impl WorkloadSpec {
    /// A workload with pod interface `eth0` and no addresses yet.
    pub fn new(host_ifname: IfName, pod_netns: impl Into<PathBuf>, mtu: u32) -> Self {
        WorkloadSpec {
            host_ifname,
            pod_netns: pod_netns.into(),
            pod_ifname: eth0(),
            ipv4: None,
            ipv6: None,
            mtu,
        }
    }

    /// Sets the IPv4 address.
    pub fn ipv4(mut self, addr: Ipv4Addr) -> Self {
        self.ipv4 = Some(addr);
        self
    }

    /// Sets the IPv6 address.
    pub fn ipv6(mut self, addr: Ipv6Addr) -> Self {
        self.ipv6 = Some(addr);
        self
    }

    /// Sets the pod-side interface name.
    pub fn pod_ifname(mut self, name: IfName) -> Self {
        self.pod_ifname = name;
        self
    }

    /// The host routes this workload needs (`podIP/32 dev caliX scope link`, and the
    /// /128), with protocol `protocol`.
    pub fn host_routes(&self, protocol: RouteProtocol) -> Vec<RouteSpec> {
        let mut out = Vec::new();
        if let Some(v4) = self.ipv4 {
            out.push(
                RouteSpec::workload(IpAddr::V4(v4), self.host_ifname.clone()).protocol(protocol),
            );
        }
        if let Some(v6) = self.ipv6 {
            out.push(
                RouteSpec::workload(IpAddr::V6(v6), self.host_ifname.clone()).protocol(protocol),
            );
        }
        out
    }

    /// Checks the MTU (68..=65535) and that at least one address is set.
    pub fn validate(&self) -> Result<()> {
        if !(68..=65535).contains(&self.mtu) {
            return Err(Error::InvalidLink {
                name: self.host_ifname.to_string(),
                rule: format!("workload mtu {} outside 68..=65535", self.mtu),
            });
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(Error::InvalidLink {
                name: self.host_ifname.to_string(),
                rule: "a workload needs an IPv4 or IPv6 address".to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_serde_round_trip() {
        let r = RouteSpec::via(
            "172.16.0.0/26".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        )
        .device("eth0".parse().unwrap())
        .onlink()
        .mtu(1400)
        .table(100);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"type\":\"unicast\""), "{json}");
        let back: RouteSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let min: RouteSpec =
            serde_json::from_str(r#"{"destination":"10.0.0.0/8","type":"blackhole"}"#).unwrap();
        assert_eq!(min, RouteSpec::blackhole("10.0.0.0/8".parse().unwrap()));
    }

    #[test]
    fn route_validation() {
        let dev: IfName = "eth0".parse().unwrap();
        assert!(
            RouteSpec::direct("10.0.0.1/32".parse().unwrap(), dev.clone())
                .validate()
                .is_ok()
        );
        let gw_family = RouteSpec::via("10.0.0.0/24".parse().unwrap(), "fd00::1".parse().unwrap());
        assert!(
            gw_family
                .validate()
                .unwrap_err()
                .to_string()
                .contains("family")
        );
        let mut bh = RouteSpec::blackhole("10.0.0.0/24".parse().unwrap());
        bh.device = Some(dev.clone());
        assert!(bh.validate().is_err());
        let onlink =
            RouteSpec::via("10.0.0.0/24".parse().unwrap(), "10.1.1.1".parse().unwrap()).onlink();
        assert!(onlink.validate().is_err());
    }

    #[test]
    fn key_normalisation() {
        let r = RouteSpec::blackhole("fd00::/64".parse().unwrap());
        assert_eq!(r.key().metric, 1024);
        let r = RouteSpec::blackhole("10.1.2.3/24".parse().unwrap());
        assert_eq!(r.key().destination.to_string(), "10.1.2.0/24");
    }

    #[test]
    fn link_spec_validation() {
        let name: IfName = "vxlan.calico".parse().unwrap();
        let v = LinkSpec::vxlan(name.clone(), VxlanSpec::new(1 << 24));
        assert!(v.validate().unwrap_err().to_string().contains("24 bits"));
        let v = LinkSpec::vxlan(name, VxlanSpec::new(CALICO_VNI)).mtu(20);
        assert!(v.validate().is_err());
        let t = LinkSpec::ipip_tunl0().mac(MacAddr::WORKLOAD_HOST);
        assert!(t.validate().is_err());
        let json = serde_json::to_string(&LinkSpec::ipip_tunl0()).unwrap();
        let back: LinkSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, LinkSpec::ipip_tunl0());
    }
}
