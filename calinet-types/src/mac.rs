//! Ethernet MAC addresses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};
use crate::family::Family;
use crate::names::NodeName;

/// An Ethernet MAC address, written (and serialised, as Calico does)
/// `66:0a:1b:2c:3d:4e`.
///
/// ```
/// use calinet_types::{Family, MacAddr};
/// let mac: MacAddr = "66:0A:1b:2c:3d:4e".parse().unwrap();
/// assert_eq!(mac.to_string(), "66:0a:1b:2c:3d:4e");
/// let vtep = MacAddr::calico_vtep(&"k8s-w1".parse().unwrap(), Family::V4);
/// assert_eq!(vtep.octets()[0], 0x66);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The MAC Calico gives every host-side workload interface.
    pub const WORKLOAD_HOST: MacAddr = MacAddr([0xee; 6]);
    /// All zeros (the VXLAN default-destination FDB entry).
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The six octets.
    #[must_use]
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The VTEP MAC Calico derives for a node: `66:` followed by the first five
    /// bytes of SHA-1 of the node name (IPv4), or of `"<node>-v6"` (IPv6).
    ///
    /// `0x66` has the locally-administered bit set and the multicast bit clear,
    /// so the result is always a valid unicast address.
    #[must_use]
    pub fn calico_vtep(node: &NodeName, family: Family) -> Self {
        let digest = match family {
            Family::V4 => Sha1::digest(node.as_str().as_bytes()),
            Family::V6 => Sha1::digest(format!("{node}-v6").as_bytes()),
        };
        let mut mac = [0x66, 0, 0, 0, 0, 0];
        mac[1..].copy_from_slice(&digest[..5]);
        MacAddr(mac)
    }

    /// True for a multicast/broadcast address (low bit of the first octet).
    #[must_use]
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidMac {
            mac: s.to_owned(),
            rule: "must be six two-digit hex octets separated by ':'",
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_serde() {
        let m: MacAddr = "EE:ee:ee:ee:ee:ee".parse().unwrap();
        assert_eq!(m, MacAddr::WORKLOAD_HOST);
        assert_eq!(m.to_string(), "ee:ee:ee:ee:ee:ee");
        assert_eq!(format!("{m:?}"), "ee:ee:ee:ee:ee:ee");
        for bad in [
            "",
            "ee:ee:ee:ee:ee",
            "ee:ee:ee:ee:ee:ee:ee",
            "eee:ee:ee:ee:ee:e",
            "e:ee:ee:ee:ee:ee",
            "zz:ee:ee:ee:ee:ee",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"ee:ee:ee:ee:ee:ee\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), m);
    }

    #[test]
    fn vtep_mac_is_calicos() {
        // `printf k8s-w1 | sha1sum` starts 7491327c04...
        let n: NodeName = "k8s-w1".parse().unwrap();
        let mac = MacAddr::calico_vtep(&n, Family::V4);
        assert_eq!(mac.to_string(), "66:74:91:32:7c:04");
        assert!(!mac.is_multicast());
        assert_ne!(MacAddr::calico_vtep(&n, Family::V6), mac);
    }
}
