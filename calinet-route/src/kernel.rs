//! Translation between this crate's specs and `netlink-packet-route` messages.
//! Pure functions (no socket), unit-tested on messages.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol as NlProtocol, RouteScope as NlScope, RouteType as NlType,
};
use serde::{Deserialize, Serialize};

use crate::plan::{ObservedFdb, ObservedNeighbour};
use crate::spec::{
    FdbSpec, IfName, IpipSpec, MacAddr, NeighbourSpec, RouteProtocol, RouteScope, RouteSpec,
    RouteType,
};

/// A link as observed in the kernel: what routing, ownership and the tunnel
/// reconciler need to know about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: IfName,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Lower layer up (carrier).
    pub lower_up: bool,
    /// Loopback device.
    pub loopback: bool,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, when it is a MAC.
    pub mac: Option<MacAddr>,
    /// `IFLA_INFO_KIND` (`veth`, `vxlan`, `ipip`, `bridge`...), if any.
    pub kind: Option<String>,
    /// VXLAN parameters, for VXLAN devices.
    pub vxlan: Option<ObservedVxlan>,
    /// IPIP parameters, for IPIP devices.
    pub ipip: Option<IpipSpec>,
}

/// VXLAN parameters as the kernel reports them (parent as an index).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObservedVxlan {
    /// VNI.
    pub vni: Option<u32>,
    /// Destination port.
    pub port: Option<u16>,
    /// Parent interface index.
    pub parent_index: Option<u32>,
    /// Local address.
    pub local: Option<IpAddr>,
    /// Learning.
    pub learning: Option<bool>,
}

/// Name <-> index maps of one namespace's links.
#[derive(Clone, Debug, Default)]
pub struct LinkIndex {
    by_index: HashMap<u32, LinkState>,
    by_name: HashMap<IfName, u32>,
}

impl LinkIndex {
    /// Builds the maps.
    pub fn new(links: impl IntoIterator<Item = LinkState>) -> Self {
        let mut idx = LinkIndex::default();
        for l in links {
            idx.by_name.insert(l.name.clone(), l.index);
            idx.by_index.insert(l.index, l);
        }
        idx
    }

    /// The link named `name`.
    pub fn by_name(&self, name: &IfName) -> Option<&LinkState> {
        self.by_name.get(name).and_then(|i| self.by_index.get(i))
    }

    /// The link with index `index`.
    pub fn by_index(&self, index: u32) -> Option<&LinkState> {
        self.by_index.get(&index)
    }

    /// All links.
    pub fn links(&self) -> impl Iterator<Item = &LinkState> {
        self.by_index.values()
    }
}

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn to_nl_type(t: RouteType) -> NlType {
    match t {
        RouteType::Unicast => NlType::Unicast,
        RouteType::Blackhole => NlType::BlackHole,
        RouteType::Unreachable => NlType::Unreachable,
        RouteType::Prohibit => NlType::Prohibit,
        RouteType::Throw => NlType::Throw,
        // A type calinet-types gained after this crate: the kernel refuses
        // `unspec`, so the request fails with an error naming the route.
        _ => NlType::Unspec,
    }
}

fn from_nl_type(t: NlType) -> Option<RouteType> {
    Some(match t {
        NlType::Unicast => RouteType::Unicast,
        NlType::BlackHole => RouteType::Blackhole,
        NlType::Unreachable => RouteType::Unreachable,
        NlType::Prohibit => RouteType::Prohibit,
        NlType::Throw => RouteType::Throw,
        _ => return None,
    })
}

fn to_nl_scope(s: RouteScope) -> NlScope {
    NlScope::from(s.number())
}

fn from_nl_scope(s: NlScope) -> RouteScope {
    match u8::from(s) {
        200 => RouteScope::Site,
        253 => RouteScope::Link,
        254 => RouteScope::Host,
        _ => RouteScope::Universe,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Converts a dumped route into a spec. Returns `None` for routes this crate does not
/// model (other families, cache clones, local/broadcast/multicast types).
pub fn route_from_message(m: &RouteMessage, links: &LinkIndex) -> Option<RouteSpec> {
    let v6 = match m.header.address_family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    if m.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let kind = from_nl_type(m.header.kind)?;
    let mut table = u32::from(m.header.table);
    let mut dst: Option<IpAddr> = None;
    let mut device = None;
    let mut gateway = None;
    let mut metric = 0;
    let mut mtu = None;
    let mut source = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Oif(i) => device = links.by_index(*i).map(|l| l.name.clone()),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::PrefSource(s) => source = route_ip(s),
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    if let RouteMetric::Mtu(v) = x {
                        mtu = Some(*v);
                    }
                }
            }
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    });
    let destination = IpNet::new(dst, m.header.destination_prefix_length).ok()?;
    if !kind.forwards() {
        // IPv6 reports blackhole/unreachable/prohibit/throw routes as `dev lo`; they
        // have no device.
        device = None;
    }
    Some(RouteSpec {
        table,
        destination,
        tos: m.header.tos,
        metric,
        kind,
        device,
        gateway,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        scope: from_nl_scope(m.header.scope),
        protocol: RouteProtocol(u8::from(m.header.protocol)),
        mtu,
        source,
    })
}

/// What a route message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteMsgKind {
    /// `RTM_NEWROUTE`: every attribute.
    New,
    /// `RTM_DELROUTE`: the key plus protocol, type, device and gateway, so exactly
    /// the observed route is deleted (never a foreign one sharing its key).
    Delete,
}

/// Builds the route message for `r` (already normalised), with the device resolved to
/// `oif`.
pub fn route_message(r: &RouteSpec, oif: Option<u32>, kind: RouteMsgKind) -> RouteMessage {
    let v6 = r.is_ipv6();
    let mut header = RouteHeader {
        address_family: family(v6),
        destination_prefix_length: r.destination.prefix_len(),
        tos: r.tos,
        table: if r.table < 256 { r.table as u8 } else { 0 },
        protocol: NlProtocol::from(r.protocol.0),
        scope: to_nl_scope(r.scope),
        kind: to_nl_type(r.kind),
        ..RouteHeader::default()
    };
    if r.onlink {
        header.flags |= RouteFlags::Onlink;
    }
    if kind == RouteMsgKind::Delete {
        // Like iproute2: do not constrain the scope on delete.
        header.scope = NlScope::NoWhere;
    }
    let mut attrs = Vec::with_capacity(6);
    if r.destination.prefix_len() > 0 {
        attrs.push(RouteAttribute::Destination(RouteAddress::from(
            r.destination.addr(),
        )));
    }
    attrs.push(RouteAttribute::Table(r.table));
    if let Some(i) = oif {
        attrs.push(RouteAttribute::Oif(i));
    }
    if let Some(gw) = r.gateway {
        attrs.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if r.metric != 0 {
        attrs.push(RouteAttribute::Priority(r.metric));
    }
    if kind == RouteMsgKind::New {
        if let Some(src) = r.source {
            attrs.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        if let Some(mtu) = r.mtu {
            attrs.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
    }
    let mut m = RouteMessage::default();
    m.header = header;
    m.attributes = attrs;
    m
}

/// Builds a route dump request (all families, all tables).
pub fn route_dump_request() -> RouteMessage {
    RouteMessage::default()
}

fn mac_from(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // Bridge-family (FDB) messages carry the VTEP address raw: the parser cannot
        // tell its family from the header.
        NeighbourAddress::Other(raw) => match raw.len() {
            4 => <[u8; 4]>::try_from(&raw[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&raw[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// Converts a dumped IPv4/IPv6 neighbour entry.
pub fn neighbour_from_message(
    m: &NeighbourMessage,
    links: &LinkIndex,
) -> Option<ObservedNeighbour> {
    if !matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let device = links.by_index(m.header.ifindex)?.name.clone();
    let mut address = None;
    let mut lladdr = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => address = neigh_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => lladdr = mac_from(b),
            _ => {}
        }
    }
    Some(ObservedNeighbour {
        spec: NeighbourSpec {
            device,
            address: address?,
            lladdr: lladdr.unwrap_or(MacAddr::ZERO),
        },
        permanent: m.header.state == NeighbourState::Permanent,
        incomplete: lladdr.is_none(),
    })
}

/// Converts a dumped bridge-family FDB entry (only entries with a destination IP, as
/// on VXLAN devices).
pub fn fdb_from_message(m: &NeighbourMessage, links: &LinkIndex) -> Option<ObservedFdb> {
    if m.header.family != AddressFamily::Bridge {
        return None;
    }
    let device = links.by_index(m.header.ifindex)?.name.clone();
    let mut dst = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => dst = neigh_ip(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from(b),
            _ => {}
        }
    }
    Some(ObservedFdb {
        spec: FdbSpec {
            device,
            mac: mac?,
            destination: dst?,
        },
        permanent: m.header.state == NeighbourState::Permanent,
        is_self: m.header.flags.contains(NeighbourFlags::Own),
    })
}

/// `ip neigh replace ADDR lladdr MAC dev DEV nud permanent` (or the delete).
pub fn neighbour_message(n: &NeighbourSpec, ifindex: u32, delete: bool) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(n.address.is_ipv6());
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            n.address,
        )));
    if !delete {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(n.lladdr.0.to_vec()));
    }
    m
}

/// `bridge fdb replace MAC dev DEV dst IP self permanent` (or the delete).
pub fn fdb_message(f: &FdbSpec, ifindex: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
            f.destination,
        )));
    m
}

/// Converts a dumped link.
pub fn link_from_message(m: &LinkMessage) -> Option<LinkState> {
    let mut name = None;
    let mut mtu = 0;
    let mut mac = None;
    let mut kind = None;
    let mut vxlan = None;
    let mut ipip = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = IfName::new(n.clone()).ok(),
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Address(b) => mac = mac_from(b),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            let mut o = ObservedVxlan::default();
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => o.vni = Some(*id),
                                    InfoVxlan::Port(p) => o.port = Some(*p),
                                    InfoVxlan::Link(l) => o.parent_index = Some(*l),
                                    InfoVxlan::Local(a) => o.local = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Local6(a) => o.local = Some(IpAddr::V6(*a)),
                                    InfoVxlan::Learning(l) => o.learning = Some(*l),
                                    _ => {}
                                }
                            }
                            vxlan = Some(o);
                        }
                        LinkInfo::Data(InfoData::IpTunnel(v)) => {
                            let mut o = IpipSpec::default();
                            for x in v {
                                match x {
                                    InfoIpTunnel::Local(IpAddr::V4(a)) if !a.is_unspecified() => {
                                        o.local = Some(*a)
                                    }
                                    InfoIpTunnel::Remote(IpAddr::V4(a)) if !a.is_unspecified() => {
                                        o.remote = Some(*a)
                                    }
                                    _ => {}
                                }
                            }
                            ipip = Some(o);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if kind.as_deref() == Some("ipip") && ipip.is_none() {
        ipip = Some(IpipSpec::default());
    }
    Some(LinkState {
        index: m.header.index,
        name: name?,
        up: m.header.flags.contains(LinkFlags::Up),
        lower_up: m.header.flags.contains(LinkFlags::LowerUp),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
        mtu,
        mac,
        kind,
        vxlan,
        ipip,
    })
}

/// The `InfoKind` for a kind name this crate creates.
pub fn info_kind(name: &str) -> InfoKind {
    match name {
        "vxlan" => InfoKind::Vxlan,
        "ipip" => InfoKind::IpIp,
        "veth" => InfoKind::Veth,
        other => InfoKind::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::RouteNetlinkMessage;

    fn links() -> LinkIndex {
        LinkIndex::new([LinkState {
            index: 7,
            name: "eth0".parse().unwrap(),
            up: true,
            lower_up: true,
            loopback: false,
            mtu: 1500,
            mac: None,
            kind: None,
            vxlan: None,
            ipip: None,
        }])
    }

    #[test]
    fn route_round_trips_through_a_message() {
        let l = links();
        let specs = [
            RouteSpec::via(
                "172.16.0.0/26".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            )
            .device("eth0".parse().unwrap())
            .onlink()
            .mtu(1400)
            .metric(5)
            .table(1000),
            RouteSpec::blackhole("172.16.1.0/26".parse().unwrap()),
            RouteSpec::direct("fd00::1/128".parse().unwrap(), "eth0".parse().unwrap()).normalized(),
            RouteSpec::throw("0.0.0.0/0".parse().unwrap()).table(1),
        ];
        for s in specs {
            let oif = s.device.as_ref().map(|_| 7);
            let m = route_message(&s, oif, RouteMsgKind::New);
            // Serialise and parse back, as the kernel would see and echo it.
            use netlink_packet_core::{NetlinkSerializable, ParseableParametrized};
            let msg = RouteNetlinkMessage::NewRoute(m);
            let mut buf = vec![0; msg.buffer_len()];
            msg.serialize(&mut buf);
            let RouteNetlinkMessage::NewRoute(parsed) =
                RouteNetlinkMessage::parse_with_param(&buf[..], msg.message_type()).unwrap()
            else {
                panic!("not a route message")
            };
            assert_eq!(route_from_message(&parsed, &l).unwrap(), s, "{s}");
        }
    }

    #[test]
    fn delete_message_pins_protocol_and_type() {
        let s = RouteSpec::blackhole("172.16.1.0/26".parse().unwrap());
        let m = route_message(&s, None, RouteMsgKind::Delete);
        assert_eq!(u8::from(m.header.protocol), 80);
        assert_eq!(m.header.kind, NlType::BlackHole);
        assert_eq!(m.header.scope, NlScope::NoWhere);
    }
}
