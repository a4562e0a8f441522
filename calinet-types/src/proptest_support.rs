//! Proptest strategies for the spec types, for calinet's property tests and
//! for downstream crates that produce or consume route specs (enable the
//! `proptest` feature).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;

use crate::{IfName, RouteProtocol, RouteScope, RouteSpec, RouteType};

/// Interface names from a small pool, so that routes collide on devices.
pub fn ifname() -> impl Strategy<Value = IfName> {
    prop::sample::select(vec!["cali1", "cali2", "eth0", "vxlan.calico", "tunl0"])
        .prop_map(|s| IfName::new(s).expect("valid"))
}

/// Destinations from a small pool of IPv4 and IPv6 prefixes, so that keys collide.
pub fn destination() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (0u8..8, prop::sample::select(vec![24u8, 26, 32])).prop_map(|(i, len)| IpNet::new(
            IpAddr::V4(Ipv4Addr::new(172, 16, i, 0)),
            len
        )
        .expect("valid")
        .trunc()),
        (0u16..4).prop_map(|i| IpNet::new(
            IpAddr::V6(Ipv6Addr::new(0xfd00, i, 0, 0, 0, 0, 0, 0)),
            64
        )
        .expect("valid")),
    ]
}

/// A protocol: mostly Calico's, sometimes BIRD's or `boot`.
pub fn protocol() -> impl Strategy<Value = RouteProtocol> {
    prop::sample::select(vec![
        RouteProtocol::CALICO,
        RouteProtocol::CALICO,
        RouteProtocol::BIRD,
        RouteProtocol::BOOT,
    ])
}

/// A valid route (as [`RouteSpec::validate`] accepts), normalised like the kernel
/// reports it.
pub fn route() -> impl Strategy<Value = RouteSpec> {
    (
        destination(),
        0u8..4,
        ifname(),
        any::<bool>(),
        prop::sample::select(vec![0u32, 100]),
        protocol(),
        prop::option::of(prop::sample::select(vec![1400u32, 1450])),
        prop::sample::select(vec![254u32, 254, 1]),
    )
        .prop_map(|(dst, kind, dev, onlink, metric, proto, mtu, table)| {
            let gw: IpAddr = match dst {
                IpNet::V4(_) => "198.51.100.2".parse().expect("valid"),
                IpNet::V6(_) => "fd99::2".parse().expect("valid"),
            };
            let mut r = match kind {
                0 => RouteSpec::direct(dst, dev),
                1 => {
                    let r = RouteSpec::via(dst, gw).device(dev);
                    if onlink { r.onlink() } else { r }
                }
                2 => RouteSpec::blackhole(dst),
                _ => RouteSpec::throw(dst),
            };
            if let Some(m) = mtu
                && r.kind == RouteType::Unicast
            {
                r = r.mtu(m);
            }
            r.metric(metric).protocol(proto).table(table).normalized()
        })
}

/// A scope strategy (for downstream use).
pub fn scope() -> impl Strategy<Value = RouteScope> {
    prop::sample::select(vec![
        RouteScope::Universe,
        RouteScope::Link,
        RouteScope::Host,
    ])
}
