//! Address families and encapsulation modes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An address family: of an address, a network, a pool, a device, or a
/// family-specific nftables match.
///
/// ```
/// use calinet_types::Family;
/// let net: ipnet::IpNet = "fd00::/64".parse().unwrap();
/// assert_eq!(Family::of(net), Family::V6);
/// assert_eq!(Family::of("192.0.2.1".parse::<std::net::IpAddr>().unwrap()), Family::V4);
/// assert_eq!(Family::V4.to_string(), "IPv4");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address or network (`IpAddr`, `IpNet` and their
    /// per-family and borrowed forms).
    #[must_use]
    pub fn of(x: impl Into<Family>) -> Family {
        x.into()
    }

    /// Whether `addr` belongs to this family.
    #[must_use]
    pub fn contains(self, addr: IpAddr) -> bool {
        Family::of(addr) == self
    }

    /// `"IPv4"` / `"IPv6"`, for messages.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// `"ipv4"` / `"ipv6"`, as in Calico's datastore keys
    /// (`/calico/ipam/v2/assignment/ipv4/block/...`).
    #[must_use]
    pub fn key_part(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl From<IpAddr> for Family {
    fn from(a: IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

impl From<&IpAddr> for Family {
    fn from(a: &IpAddr) -> Family {
        Family::from(*a)
    }
}

impl From<Ipv4Addr> for Family {
    fn from(_: Ipv4Addr) -> Family {
        Family::V4
    }
}

impl From<Ipv6Addr> for Family {
    fn from(_: Ipv6Addr) -> Family {
        Family::V6
    }
}

impl From<IpNet> for Family {
    fn from(n: IpNet) -> Family {
        Family::from(n.addr())
    }
}

impl From<&IpNet> for Family {
    fn from(n: &IpNet) -> Family {
        Family::from(n.addr())
    }
}

impl From<Ipv4Net> for Family {
    fn from(_: Ipv4Net) -> Family {
        Family::V4
    }
}

impl From<Ipv6Net> for Family {
    fn from(_: Ipv6Net) -> Family {
        Family::V6
    }
}

/// A pool's `ipipMode` / `vxlanMode`, with Calico's spelling.
///
/// Exhaustive on purpose: these are Calico's three values, and every decision
/// that depends on a mode should fail to compile if a fourth appeared.
///
/// ```
/// use calinet_types::EncapMode;
/// let m: EncapMode = "CrossSubnet".parse().unwrap();
/// assert!(m.enabled());
/// assert_eq!(EncapMode::default(), EncapMode::Never);
/// assert!("sometimes".parse::<EncapMode>().is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EncapMode {
    /// No encapsulation for this pool.
    #[default]
    Never,
    /// Encapsulate traffic to every remote node.
    Always,
    /// Encapsulate only when the remote node is outside the local node's subnet.
    CrossSubnet,
}

impl EncapMode {
    /// True unless `Never`.
    #[must_use]
    pub fn enabled(self) -> bool {
        self != EncapMode::Never
    }
}

impl FromStr for EncapMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "Never" => Ok(EncapMode::Never),
            "Always" => Ok(EncapMode::Always),
            "CrossSubnet" => Ok(EncapMode::CrossSubnet),
            _ => Err(Error::InvalidEncapMode { mode: s.to_owned() }),
        }
    }
}

impl fmt::Display for EncapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncapMode::Never => "Never",
            EncapMode::Always => "Always",
            EncapMode::CrossSubnet => "CrossSubnet",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_of_everything() {
        let v4: IpNet = "10.0.0.0/8".parse().unwrap();
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert_eq!(Family::of(v4), Family::V4);
        let by_ref: Vec<Family> = [v4, v6].iter().map(Family::of).collect();
        assert_eq!(by_ref, [Family::V4, Family::V6]);
        assert_eq!(Family::of(v4.addr()), Family::V4);
        assert!(Family::V6.contains(v6.addr()));
        assert!(!Family::V6.contains(v4.addr()));
        assert_eq!(Family::V6.key_part(), "ipv6");
    }

    #[test]
    fn encap_mode_round_trips() {
        for m in [EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet] {
            assert_eq!(m.to_string().parse::<EncapMode>().unwrap(), m);
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{m}\""));
        }
        let err = "always".parse::<EncapMode>().unwrap_err();
        assert!(err.to_string().contains("\"always\""), "{err}");
    }
}
