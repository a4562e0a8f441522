//! Node state (input) and device configuration (desired or observed). Names
//! and families are calinet-types'.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

pub use calinet_types::{Family, IfName, NodeName};

use crate::key::{PresharedKey, PrivateKey, PublicKey};

/// Calico's default IPv4 WireGuard interface name.
pub const DEFAULT_IFNAME_V4: &str = "wireguard.cali";
/// Calico's default IPv6 WireGuard interface name.
pub const DEFAULT_IFNAME_V6: &str = "wg-v6.cali";
/// Calico's default IPv4 listen port.
pub const DEFAULT_PORT_V4: u16 = 51820;
/// Calico's default IPv6 listen port.
pub const DEFAULT_PORT_V6: u16 = 51821;
/// The fwmark older Calico releases use for WireGuard (`0x100000`).
pub const DEFAULT_FWMARK: u32 = 0x0010_0000;
/// Calico's routing table for WireGuard.
pub const DEFAULT_TABLE: u32 = 1;
/// Priority of the `not from all fwmark M/M lookup T` rule.
pub const RULE_PRIORITY: u32 = 99;

/// What the cluster knows about one node, as far as WireGuard cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Node name.
    pub name: NodeName,
    /// Published public key (`wireguardPublicKey`), if any.
    pub public_key: Option<PublicKey>,
    /// The node's underlay address (WireGuard endpoint host).
    pub endpoint: Option<IpAddr>,
    /// IPAM blocks affine to the node.
    pub blocks: Vec<IpNet>,
    /// Addresses the node borrowed from other nodes' blocks.
    pub borrowed: Vec<IpAddr>,
    /// The node's tunnel addresses (IPIP/VXLAN/WireGuard interface addresses).
    pub tunnel_addresses: Vec<IpAddr>,
}

impl NodeState {
    /// A node with a name and nothing else.
    pub fn new(name: NodeName) -> Self {
        Self {
            name,
            public_key: None,
            endpoint: None,
            blocks: Vec::new(),
            borrowed: Vec::new(),
            tunnel_addresses: Vec::new(),
        }
    }
}

/// WireGuard's encapsulation overhead on a device of `family`: 60 bytes over
/// IPv4, 80 over IPv6.
pub fn overhead(family: Family) -> u32 {
    match family {
        Family::V4 => 60,
        Family::V6 => 80,
    }
}

/// Settings of the local device, from configuration (FelixConfiguration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSettings {
    /// Interface name.
    pub ifname: IfName,
    /// Family of allowed IPs and endpoints.
    pub family: Family,
    /// UDP listen port; peers' endpoints use the same port.
    pub listen_port: u16,
    /// Mark put on encrypted packets (and matched by the routing rule).
    pub fwmark: u32,
    /// Routing table holding routes to peers' ranges.
    pub table: u32,
    /// Persistent keepalive for every peer, if wanted.
    pub persistent_keepalive: Option<u16>,
}

impl DeviceSettings {
    /// Calico's IPv4 defaults: `wireguard.cali`, port 51820, fwmark 0x100000, table 1.
    pub fn calico_v4() -> Self {
        Self {
            ifname: IfName::from_static(DEFAULT_IFNAME_V4),
            family: Family::V4,
            listen_port: DEFAULT_PORT_V4,
            fwmark: DEFAULT_FWMARK,
            table: DEFAULT_TABLE,
            persistent_keepalive: None,
        }
    }
    /// Calico's IPv6 defaults: `wg-v6.cali`, port 51821.
    pub fn calico_v6() -> Self {
        Self {
            ifname: IfName::from_static(DEFAULT_IFNAME_V6),
            family: Family::V6,
            listen_port: DEFAULT_PORT_V6,
            ..Self::calico_v4()
        }
    }
}

/// One peer of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key (its identity on the device).
    pub public_key: PublicKey,
    /// Optional pre-shared key.
    pub preshared_key: Option<PresharedKey>,
    /// `<node IP>:<port>`.
    pub endpoint: Option<SocketAddr>,
    /// Ranges routed to this peer, in the order computed (blocks, borrowed, tunnel).
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval in seconds.
    pub persistent_keepalive: Option<u16>,
}

/// A whole device: what `wg showconf` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The private key (None: not set / unknown).
    pub private_key: Option<PrivateKey>,
    /// Listen port (0: unset / random).
    pub listen_port: u16,
    /// fwmark (0: none).
    pub fwmark: u32,
    /// Peers, in a stable order.
    pub peers: Vec<PeerConfig>,
}

impl DeviceConfig {
    /// The peer with `key`, if present.
    pub fn peer(&self, key: &PublicKey) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| &p.public_key == key)
    }
}

/// What a backend reads back from a device. The private key is reduced to
/// its public key so observed state never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedDevice {
    /// Public key of the device's private key, if one is set.
    pub public_key: Option<PublicKey>,
    /// Listen port.
    pub listen_port: u16,
    /// fwmark.
    pub fwmark: u32,
    /// Peers as the device reports them.
    pub peers: Vec<PeerConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calico_defaults() {
        assert_eq!(
            DeviceSettings::calico_v4().ifname.as_str(),
            "wireguard.cali"
        );
        assert_eq!(DeviceSettings::calico_v6().ifname.as_str(), "wg-v6.cali");
        assert_eq!(overhead(Family::V4), 60);
        assert_eq!(overhead(Family::V6), 80);
    }
}
