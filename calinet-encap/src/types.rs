//! Validated newtypes and small enums shared by inputs and outputs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A Calico node name (the Kubernetes node name).
///
/// Validated once: 1..=253 bytes of lowercase ASCII letters, digits, `-` and `.`,
/// starting and ending with a letter or digit (a DNS subdomain, as Kubernetes
/// requires of node names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |rule: &'static str| Error::InvalidNodeName {
            name: s.to_owned(),
            rule,
        };
        if s.is_empty() || s.len() > 253 {
            return Err(bad("must be 1..=253 bytes long"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(bad(
                "only lowercase letters, digits, '-' and '.' are allowed",
            ));
        }
        let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !edge_ok(s.as_bytes()[0]) || !edge_ok(s.as_bytes()[s.len() - 1]) {
            return Err(bad("must start and end with a letter or digit"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for NodeName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A Linux interface name: 1..=15 bytes, no `/`, no whitespace, not `.` or `..`
/// (the kernel's `dev_valid_name` rules).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IfName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |rule: &'static str| Error::InvalidIfName {
            name: s.to_owned(),
            rule,
        };
        if s.is_empty() || s.len() > 15 {
            return Err(bad("must be 1..=15 bytes long"));
        }
        if s == "." || s == ".." {
            return Err(bad("must not be '.' or '..'"));
        }
        if s.bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
        {
            return Err(bad("must not contain '/', ':', NUL or whitespace"));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for IfName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<IfName> for String {
    fn from(n: IfName) -> String {
        n.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ethernet MAC address, written `66:0a:1b:2c:3d:4e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six octets.
    #[must_use]
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// The VTEP MAC Calico derives for a node: `66:` followed by the first five
    /// bytes of SHA-1 of the node name (IPv4), or of `"<node>-v6"` (IPv6).
    ///
    /// `0x66` has the locally-administered bit set and the multicast bit clear,
    /// so the result is always a valid unicast address.
    #[must_use]
    pub fn calico_vtep(node: &NodeName, family: Family) -> Self {
        use sha1::{Digest, Sha1};
        let digest = match family {
            Family::V4 => Sha1::digest(node.as_str().as_bytes()),
            Family::V6 => Sha1::digest(format!("{node}-v6").as_bytes()),
        };
        let mut mac = [0x66, 0, 0, 0, 0, 0];
        mac[1..].copy_from_slice(&digest[..5]);
        Self(mac)
    }

    /// True for a multicast/broadcast address (low bit of the first octet).
    #[must_use]
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
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
        Ok(Self(out))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    #[must_use]
    pub fn of(addr: std::net::IpAddr) -> Self {
        if addr.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// The family of a network.
    #[must_use]
    pub fn of_net(net: ipnet::IpNet) -> Self {
        Self::of(net.addr())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// A pool's `ipipMode` / `vxlanMode`, with Calico's spelling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
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
        self != Self::Never
    }
}

impl FromStr for EncapMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "Never" => Ok(Self::Never),
            "Always" => Ok(Self::Always),
            "CrossSubnet" => Ok(Self::CrossSubnet),
            _ => Err(Error::InvalidEncapMode { mode: s.to_owned() }),
        }
    }
}

impl fmt::Display for EncapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Never => "Never",
            Self::Always => "Always",
            Self::CrossSubnet => "CrossSubnet",
        })
    }
}
