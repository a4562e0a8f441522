//! MTUs of tunnel devices and pods, from the host MTU and the overheads in use.

use std::fmt;

use serde::Serialize;

use crate::Error;
use crate::model::{Pool, Wireguard};

/// IPIP overhead: one outer IPv4 header.
pub const IPIP_OVERHEAD: u32 = 20;
/// VXLAN over IPv4: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN over IPv6: as IPv4 with a 40-byte outer header.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// WireGuard over IPv4: outer IPv4 (20) + UDP (8) + WireGuard header and tag (32).
pub const WIREGUARD_OVERHEAD_V4: u32 = 60;
/// WireGuard over IPv6.
pub const WIREGUARD_OVERHEAD_V6: u32 = 80;

/// Which encapsulations a node has devices for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EncapsInUse {
    /// `tunl0`: some IPv4 pool has `ipipMode` other than `Never`.
    pub ipip: bool,
    /// `vxlan.calico`: some IPv4 pool has `vxlanMode` other than `Never`.
    pub vxlan_v4: bool,
    /// `vxlan-v6.calico`: some IPv6 pool has `vxlanMode` other than `Never`.
    pub vxlan_v6: bool,
    /// `wireguard.cali`.
    pub wireguard_v4: bool,
    /// `wg-v6.cali`.
    pub wireguard_v6: bool,
}

impl EncapsInUse {
    /// Derived from the pools (an encapsulation is in use when any pool of its
    /// family enables it, `CrossSubnet` included, as in Calico) and WireGuard.
    #[must_use]
    pub fn of_pools(pools: &[Pool], wireguard: Wireguard) -> Self {
        let any = |v6: bool, f: &dyn Fn(&Pool) -> bool| {
            pools.iter().any(|p| p.cidr.addr().is_ipv6() == v6 && f(p))
        };
        Self {
            ipip: any(false, &|p| p.ipip_mode.enabled()),
            vxlan_v4: any(false, &|p| p.vxlan_mode.enabled()),
            vxlan_v6: any(true, &|p| p.vxlan_mode.enabled()),
            wireguard_v4: wireguard.ipv4,
            wireguard_v6: wireguard.ipv6,
        }
    }

    /// The largest overhead in use and its name (0, "none" when nothing is).
    #[must_use]
    pub fn largest_overhead(self) -> (u32, &'static str) {
        [
            (self.ipip, IPIP_OVERHEAD, "IPIP"),
            (self.vxlan_v4, VXLAN_OVERHEAD_V4, "VXLAN"),
            (self.vxlan_v6, VXLAN_OVERHEAD_V6, "VXLAN over IPv6"),
            (self.wireguard_v4, WIREGUARD_OVERHEAD_V4, "WireGuard"),
            (
                self.wireguard_v6,
                WIREGUARD_OVERHEAD_V6,
                "WireGuard over IPv6",
            ),
        ]
        .into_iter()
        .filter(|(on, _, _)| *on)
        .map(|(_, o, name)| (o, name))
        .max_by_key(|(o, _)| *o)
        .unwrap_or((0, "none"))
    }
}

/// The MTUs of a node's devices and pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mtus {
    /// Host MTU (smallest MTU of the up uplinks).
    pub host: u32,
    /// `tunl0`: host - 20, when IPIP is in use.
    pub ipip: Option<u32>,
    /// `vxlan.calico`: host - 50, when in use.
    pub vxlan_v4: Option<u32>,
    /// `vxlan-v6.calico`: host - 70, when in use.
    pub vxlan_v6: Option<u32>,
    /// `wireguard.cali`: host - 60, when enabled.
    pub wireguard_v4: Option<u32>,
    /// `wg-v6.cali`: host - 80, when enabled.
    pub wireguard_v6: Option<u32>,
    /// Pods (both veth ends): host minus the largest overhead in use, so a pod
    /// packet fits whichever path it takes.
    pub pod: u32,
}

impl Mtus {
    /// Computes all MTUs.
    ///
    /// # Errors
    /// [`Error::MtuTooSmall`] when the pod MTU would fall below `min_pod_mtu`.
    pub fn compute(host: u32, in_use: EncapsInUse, min_pod_mtu: u32) -> Result<Self, Error> {
        let (overhead, cause) = in_use.largest_overhead();
        let pod = host
            .checked_sub(overhead)
            .filter(|pod| *pod >= min_pod_mtu)
            .ok_or(Error::MtuTooSmall {
                host_mtu: host,
                overhead,
                cause,
                min: min_pod_mtu,
            })?;
        // Every device overhead is <= the largest, so these cannot underflow.
        let dev = |on: bool, o: u32| on.then(|| host - o);
        Ok(Self {
            host,
            ipip: dev(in_use.ipip, IPIP_OVERHEAD),
            vxlan_v4: dev(in_use.vxlan_v4, VXLAN_OVERHEAD_V4),
            vxlan_v6: dev(in_use.vxlan_v6, VXLAN_OVERHEAD_V6),
            wireguard_v4: dev(in_use.wireguard_v4, WIREGUARD_OVERHEAD_V4),
            wireguard_v6: dev(in_use.wireguard_v6, WIREGUARD_OVERHEAD_V6),
            pod,
        })
    }
}

impl fmt::Display for Mtus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {}", self.host)?;
        for (name, v) in [
            ("tunl0", self.ipip),
            ("vxlan.calico", self.vxlan_v4),
            ("vxlan-v6.calico", self.vxlan_v6),
            ("wireguard.cali", self.wireguard_v4),
            ("wg-v6.cali", self.wireguard_v6),
        ] {
            if let Some(v) = v {
                write!(f, " {name} {v}")?;
            }
        }
        write!(f, " pod {}", self.pod)
    }
}
