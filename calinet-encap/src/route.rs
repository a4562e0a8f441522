//! [`Decisions`] as calinet-types' spec types, which calinet-route's reconciler
//! applies, so an agent composes the two crates in a few lines:
//!
//! ```
//! use calinet_encap::{Block, EncapMode, Input, Node, Pool, RouteProtocol, Uplink, decide};
//!
//! let local = Node::new("n1".parse().unwrap())
//!     .with_address("198.51.100.11/24".parse().unwrap())
//!     .with_vxlan_tunnel("172.16.1.0".parse().unwrap());
//! let remote = Node::new("n2".parse().unwrap())
//!     .with_address("203.0.113.12/24".parse().unwrap())
//!     .with_vxlan_tunnel("172.16.2.0".parse().unwrap());
//! let mut input = Input::new(local, Uplink::new("eth0".parse().unwrap(), 1500));
//! input.remotes = vec![remote];
//! input.pools = vec![Pool::new("p", "172.16.0.0/16".parse().unwrap()).vxlan(EncapMode::Always)];
//! input.blocks = vec![
//!     Block::new("172.16.1.0/24".parse().unwrap(), "n1".parse().unwrap()),
//!     Block::new("172.16.2.0/24".parse().unwrap(), "n2".parse().unwrap()),
//! ];
//! let specs = decide(&input).unwrap().route_specs(RouteProtocol::CALICO);
//! let routes: Vec<String> = specs.routes.iter().map(ToString::to_string).collect();
//! assert_eq!(routes, [
//!     "blackhole 172.16.1.0/24 proto 80",
//!     "172.16.2.0/24 via 172.16.2.0 dev vxlan.calico proto 80 onlink",
//! ]);
//! assert_eq!(specs.links[0].name.as_str(), "vxlan.calico");
//! assert_eq!(specs.fdb[0].to_string(),
//!            format!("{} dev vxlan.calico dst 203.0.113.12 self permanent", specs.neighbours[0].lladdr));
//! assert_eq!(specs.remove_links.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
//!            ["vxlan-v6.calico"]);
//! // tunl0 cannot be deleted: if it exists, it is set down without addresses.
//! assert_eq!(specs.quiesce_links[0].name.as_str(), "tunl0");
//! assert!(!specs.quiesce_links[0].up && specs.quiesce_links[0].addresses.is_empty());
//! ```

use calinet_types::{
    FdbSpec, IfName, LinkSpec, NeighbourSpec, RouteProtocol, RouteSpec, VxlanSpec,
};
use ipnet::IpNet;

use crate::{Decisions, Device, FdbEntry, Neighbour, Path};

/// Everything calinet-route needs to make a node match its decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpecs {
    /// Paths and blackholes, sorted by destination; hand them to the route
    /// reconciler (which deletes owned routes that are not listed).
    pub routes: Vec<RouteSpec>,
    /// Wanted tunnel links with MTU, MAC and addresses.
    pub links: Vec<LinkSpec>,
    /// VTEP neighbours.
    pub neighbours: Vec<NeighbourSpec>,
    /// VTEP FDB entries.
    pub fdb: Vec<FdbSpec>,
    /// VXLAN links that must not exist (after a mode switch): delete them.
    pub remove_links: Vec<IfName>,
    /// Links to quiesce only if they exist, never to create: `tunl0` when IPIP
    /// is not wanted. The kernel creates `tunl0` itself with the `ipip` module
    /// and refuses to delete it, so it is set down with no address instead.
    pub quiesce_links: Vec<LinkSpec>,
}

/// The route of one path: `dst via X dev D [onlink] proto P`.
#[must_use]
pub fn path_route(path: &Path, protocol: RouteProtocol) -> RouteSpec {
    let r = RouteSpec::via(path.dst, path.via)
        .device(path.dev.clone())
        .protocol(protocol);
    if path.onlink { r.onlink() } else { r }
}

/// `blackhole <block> proto P`.
#[must_use]
pub fn blackhole_route(block: IpNet, protocol: RouteProtocol) -> RouteSpec {
    RouteSpec::blackhole(block).protocol(protocol)
}

/// The link spec of a tunnel device.
#[must_use]
pub fn link(device: &Device) -> LinkSpec {
    match device {
        Device::Ipip(d) => LinkSpec::ipip_tunl0()
            .mtu(d.mtu)
            .address(IpNet::from(std::net::IpAddr::V4(d.address))),
        Device::Vxlan(d) => {
            let mut vx = VxlanSpec::new(d.vni);
            vx.port = d.port;
            vx.parent = Some(d.parent.clone());
            vx.local = Some(d.local);
            vx.learning = d.learning;
            LinkSpec::vxlan(d.name.clone(), vx)
                .mtu(d.mtu)
                .mac(d.mac)
                .address(IpNet::from(d.address))
        }
    }
}

/// The neighbour spec of a VTEP neighbour.
#[must_use]
pub fn neighbour(n: &Neighbour) -> NeighbourSpec {
    NeighbourSpec::new(n.dev.clone(), n.ip, n.mac)
}

/// The FDB spec of a VTEP FDB entry.
#[must_use]
pub fn fdb(e: &FdbEntry) -> FdbSpec {
    FdbSpec::new(e.dev.clone(), e.mac, e.dst)
}

impl Decisions {
    /// The decisions as specs for calinet-route, routes tagged with
    /// `protocol` (Calico uses 80, [`RouteProtocol::CALICO`]).
    #[must_use]
    pub fn route_specs(&self, protocol: RouteProtocol) -> RouteSpecs {
        let mut routes: Vec<RouteSpec> = self
            .paths
            .iter()
            .map(|p| path_route(p, protocol))
            .chain(
                self.blackholes
                    .iter()
                    .map(|b| blackhole_route(*b, protocol)),
            )
            .collect();
        routes.sort_by_key(|r| r.destination);
        RouteSpecs {
            routes,
            links: self.devices.iter().map(link).collect(),
            neighbours: self.neighbours.iter().map(neighbour).collect(),
            fdb: self.fdb.iter().map(fdb).collect(),
            remove_links: self
                .unwanted_devices()
                .iter()
                .filter(|n| n.as_str() != crate::IPIP_DEVICE)
                .cloned()
                .collect(),
            quiesce_links: if self.device(crate::IPIP_DEVICE).is_none() {
                vec![LinkSpec::ipip_tunl0().up(false)]
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_validates() {
        let vx = Device::Vxlan(crate::VxlanDevice {
            name: "vxlan-v6.calico".parse().unwrap(),
            family: crate::Family::V6,
            vni: 4096,
            port: 4789,
            parent: "eth0".parse().unwrap(),
            local: "2001:db8::1".parse().unwrap(),
            mac: "66:01:02:03:04:05".parse().unwrap(),
            address: "fd00:10::".parse().unwrap(),
            mtu: 1430,
            learning: false,
        });
        let l = link(&vx);
        l.validate().unwrap();
        assert_eq!(l.addresses, ["fd00:10::/128".parse::<IpNet>().unwrap()]);
        let ipip = Device::Ipip(crate::IpipDevice {
            name: "tunl0".parse().unwrap(),
            address: "172.16.1.0".parse().unwrap(),
            mtu: 1480,
        });
        let l = link(&ipip);
        l.validate().unwrap();
        assert_eq!((l.mtu, l.addresses.len()), (Some(1480), 1));
    }
}
