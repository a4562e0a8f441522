//! Delta planning: desired device vs what the device has, as the minimal set
//! of changes; and splitting a delta into messages of bounded size.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::model::{DeviceConfig, ObservedDevice, PeerConfig};

/// Changes to one peer. Mirrors the flags both the kernel and the userspace
/// protocol have, so encoders translate it one to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    /// Which peer.
    pub public_key: PublicKey,
    /// Remove the peer (all other fields are ignored).
    pub remove: bool,
    /// Only change the peer if it exists; never create it.
    pub update_only: bool,
    /// New pre-shared key; an all-zero key clears it.
    pub preshared_key: Option<PresharedKey>,
    /// New endpoint.
    pub endpoint: Option<SocketAddr>,
    /// New persistent keepalive (0 disables).
    pub persistent_keepalive: Option<u16>,
    /// Replace the peer's allowed IPs with `allowed_ips` (otherwise they are added).
    pub replace_allowed_ips: bool,
    /// Allowed IPs to set or add.
    pub allowed_ips: Vec<IpNet>,
}

impl PeerUpdate {
    /// Remove the peer with `public_key`.
    pub fn remove(public_key: PublicKey) -> Self {
        Self {
            remove: true,
            update_only: false,
            ..Self::touch(public_key)
        }
    }
    /// An update-only entry that changes nothing yet.
    pub fn touch(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: true,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
    /// Create (or fully reset) a peer from its configuration.
    pub fn create(peer: &PeerConfig) -> Self {
        Self {
            public_key: peer.public_key,
            remove: false,
            update_only: false,
            preshared_key: peer.preshared_key.clone(),
            endpoint: peer.endpoint,
            persistent_keepalive: peer.persistent_keepalive,
            replace_allowed_ips: true,
            allowed_ips: peer.allowed_ips.clone(),
        }
    }
}

/// The minimal change from an observed device to a desired one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceDelta {
    /// New private key.
    pub private_key: Option<PrivateKey>,
    /// New listen port.
    pub listen_port: Option<u16>,
    /// New fwmark.
    pub fwmark: Option<u32>,
    /// Peer changes: removals first, then creations and updates.
    pub peers: Vec<PeerUpdate>,
}

impl DeviceDelta {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.private_key.is_none()
            && self.listen_port.is_none()
            && self.fwmark.is_none()
            && self.peers.is_empty()
    }
    /// Whether any device-level field is set.
    pub fn has_device_fields(&self) -> bool {
        self.private_key.is_some() || self.listen_port.is_some() || self.fwmark.is_some()
    }
    /// Total allowed IPs carried.
    pub fn allowed_ip_count(&self) -> usize {
        self.peers.iter().map(|p| p.allowed_ips.len()).sum()
    }
    /// The delta that turns an empty device into `device` (what `wg setconf` does).
    pub fn full(device: &DeviceConfig) -> Self {
        Self {
            private_key: device.private_key.clone(),
            listen_port: Some(device.listen_port),
            fwmark: Some(device.fwmark),
            peers: device.peers.iter().map(PeerUpdate::create).collect(),
        }
    }
}

fn psk_or_zero(psk: &Option<PresharedKey>) -> [u8; 32] {
    psk.as_ref().map(|k| *k.expose_bytes()).unwrap_or([0; 32])
}

/// Plan the changes that make `observed` equal to `desired`:
///
/// - device fields only where they differ (the private key is compared by its
///   public key, as observed state never holds the secret);
/// - peers on the device but not desired are removed;
/// - new peers are created with everything;
/// - existing peers that differ get an update-only entry with just the changed
///   fields; allowed IPs are replaced (as a whole) only when the set differs;
/// - unchanged peers are not sent at all.
pub fn plan_delta(desired: &DeviceConfig, observed: &ObservedDevice) -> DeviceDelta {
    let mut delta = DeviceDelta::default();
    if let Some(key) = &desired.private_key
        && observed.public_key != Some(key.public_key())
    {
        delta.private_key = Some(key.clone());
    }
    if desired.listen_port != observed.listen_port && desired.listen_port != 0 {
        delta.listen_port = Some(desired.listen_port);
    }
    if desired.fwmark != observed.fwmark {
        delta.fwmark = Some(desired.fwmark);
    }

    let have: BTreeMap<PublicKey, &PeerConfig> =
        observed.peers.iter().map(|p| (p.public_key, p)).collect();
    let want: BTreeSet<PublicKey> = desired.peers.iter().map(|p| p.public_key).collect();
    for peer in &observed.peers {
        if !want.contains(&peer.public_key) {
            delta.peers.push(PeerUpdate::remove(peer.public_key));
        }
    }
    for peer in &desired.peers {
        let Some(old) = have.get(&peer.public_key) else {
            delta.peers.push(PeerUpdate::create(peer));
            continue;
        };
        let mut update = PeerUpdate::touch(peer.public_key);
        let mut changed = false;
        if peer.endpoint.is_some() && peer.endpoint != old.endpoint {
            update.endpoint = peer.endpoint;
            changed = true;
        }
        if psk_or_zero(&peer.preshared_key) != psk_or_zero(&old.preshared_key) {
            update.preshared_key = Some(
                peer.preshared_key
                    .clone()
                    .unwrap_or(PresharedKey::from_bytes([0; 32])),
            );
            changed = true;
        }
        if peer.persistent_keepalive.unwrap_or(0) != old.persistent_keepalive.unwrap_or(0) {
            update.persistent_keepalive = Some(peer.persistent_keepalive.unwrap_or(0));
            changed = true;
        }
        let want_ips: BTreeSet<IpNet> = peer.allowed_ips.iter().copied().collect();
        let have_ips: BTreeSet<IpNet> = old.allowed_ips.iter().copied().collect();
        if want_ips != have_ips {
            update.replace_allowed_ips = true;
            update.allowed_ips = peer.allowed_ips.clone();
            changed = true;
        }
        if changed {
            delta.peers.push(update);
        }
    }
    delta
}

/// Byte costs of one backend's message format, for [`split`].
pub trait MessageSizer {
    /// Bytes of a message carrying `delta`'s device fields and no peers.
    fn device(&self, delta: &DeviceDelta) -> usize;
    /// Bytes of one peer entry without allowed IPs.
    fn peer(&self, peer: &PeerUpdate) -> usize;
    /// Bytes of one allowed IP.
    fn allowed_ip(&self, net: &IpNet) -> usize;
}

/// Split `delta` into messages of at most `budget` bytes as measured by
/// `sizer`. Device fields go in the first message only. A peer whose allowed
/// IPs do not fit is continued in the next message as an update-only entry
/// that appends the remaining IPs (never replacing, which would drop the ones
/// already sent). Errors if even one peer header plus one IP does not fit.
pub fn split(
    delta: &DeviceDelta,
    budget: usize,
    sizer: &dyn MessageSizer,
) -> Result<Vec<DeviceDelta>> {
    let device_only = |d: &DeviceDelta| DeviceDelta {
        private_key: d.private_key.clone(),
        listen_port: d.listen_port,
        fwmark: d.fwmark,
        peers: Vec::new(),
    };
    let mut out = Vec::new();
    let mut current = device_only(delta);
    let mut used = sizer.device(&current);
    for peer in &delta.peers {
        let mut head = PeerUpdate {
            allowed_ips: Vec::new(),
            ..peer.clone()
        };
        let mut rest: &[IpNet] = &peer.allowed_ips;
        loop {
            let first_ip = rest.first().map_or(0, |n| sizer.allowed_ip(n));
            let need = sizer.peer(&head) + first_ip;
            if used + need > budget {
                if current.peers.is_empty() {
                    return Err(Error::MessageBudgetTooSmall {
                        budget,
                        needed: sizer.device(&current) + need,
                        peer: peer.public_key.to_base64(),
                    });
                }
                out.push(std::mem::take(&mut current));
                used = sizer.device(&current);
                continue;
            }
            used += sizer.peer(&head);
            let mut take = 0;
            for net in rest {
                let cost = sizer.allowed_ip(net);
                if used + cost > budget {
                    break;
                }
                used += cost;
                take += 1;
            }
            let mut entry = head.clone();
            entry.allowed_ips = rest[..take].to_vec();
            current.peers.push(entry);
            rest = &rest[take..];
            if rest.is_empty() {
                break;
            }
            // Continue this peer in a fresh message, appending.
            out.push(std::mem::take(&mut current));
            used = sizer.device(&current);
            head = PeerUpdate::touch(peer.public_key);
        }
    }
    if !current.is_empty() || out.is_empty() {
        out.push(current);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceSettings;
    use crate::peers::compute_device;
    use crate::seed;

    fn seed_device() -> DeviceConfig {
        let (nodes, key) = seed::nodes();
        compute_device(
            &seed::local(),
            &key,
            &DeviceSettings::calico_v4(),
            &nodes,
            &Default::default(),
        )
        .device
    }

    fn observed_from(device: &DeviceConfig) -> ObservedDevice {
        ObservedDevice {
            public_key: device.private_key.as_ref().map(PrivateKey::public_key),
            listen_port: device.listen_port,
            fwmark: device.fwmark,
            peers: device.peers.clone(),
        }
    }

    #[test]
    fn debug_of_configs_and_deltas_never_shows_secrets() {
        let mut d = seed_device();
        d.peers[0].preshared_key = Some(PresharedKey::from_bytes([0x5a; 32]));
        let key = d.private_key.clone().unwrap();
        let psk = d.peers[0].preshared_key.clone().unwrap();
        for text in [format!("{d:?}"), format!("{:?}", DeviceDelta::full(&d))] {
            for secret in [
                key.expose_base64(),
                key.expose_hex(),
                psk.expose_base64(),
                psk.expose_hex(),
            ] {
                assert!(!text.contains(&secret), "secret in Debug output");
            }
            assert!(text.contains("PrivateKey(<redacted>)"));
        }
    }

    #[test]
    fn empty_device_gets_everything() {
        let d = seed_device();
        let delta = plan_delta(&d, &ObservedDevice::default());
        assert_eq!(delta, DeviceDelta::full(&d));
        assert!(
            delta
                .peers
                .iter()
                .all(|p| !p.update_only && p.replace_allowed_ips)
        );
    }

    #[test]
    fn in_sync_device_gets_nothing_even_if_order_differs() {
        let d = seed_device();
        let mut obs = observed_from(&d);
        obs.peers.reverse();
        for p in &mut obs.peers {
            p.allowed_ips.reverse();
        }
        assert!(plan_delta(&d, &obs).is_empty());
    }

    #[test]
    fn only_the_changed_peer_is_sent_with_only_changed_fields() {
        let d = seed_device();
        let obs = observed_from(&d);
        let mut want = d.clone();
        want.peers[1]
            .allowed_ips
            .push("172.16.158.44/32".parse().unwrap());
        let delta = plan_delta(&want, &obs);
        assert!(!delta.has_device_fields());
        assert_eq!(delta.peers.len(), 1);
        let p = &delta.peers[0];
        assert_eq!(p.public_key, d.peers[1].public_key);
        assert!(p.update_only && p.replace_allowed_ips && !p.remove);
        assert_eq!(p.allowed_ips, want.peers[1].allowed_ips);
        assert_eq!(p.endpoint, None);
        assert_eq!(p.preshared_key, None);

        let mut want = d.clone();
        want.peers[2].endpoint = Some("192.0.2.9:51820".parse().unwrap());
        let delta = plan_delta(&want, &obs);
        assert_eq!(delta.peers.len(), 1);
        assert!(!delta.peers[0].replace_allowed_ips && delta.peers[0].allowed_ips.is_empty());
        assert_eq!(delta.peers[0].endpoint, want.peers[2].endpoint);
    }

    #[test]
    fn unknown_peers_are_removed_first() {
        let d = seed_device();
        let mut obs = observed_from(&d);
        let stranger = PublicKey::from_bytes([9; 32]);
        obs.peers.push(PeerConfig {
            public_key: stranger,
            preshared_key: None,
            endpoint: None,
            allowed_ips: vec!["10.9.0.0/16".parse().unwrap()],
            persistent_keepalive: None,
        });
        let mut want = d.clone();
        want.peers.remove(0);
        let delta = plan_delta(&want, &obs);
        let removed: Vec<PublicKey> = delta
            .peers
            .iter()
            .filter(|p| p.remove)
            .map(|p| p.public_key)
            .collect();
        assert_eq!(removed, vec![d.peers[0].public_key, stranger]);
        assert_eq!(delta.peers.len(), 2);
    }

    #[test]
    fn key_port_fwmark_and_psk_changes() {
        let d = seed_device();
        let obs = observed_from(&d);
        let mut want = d.clone();
        let new_key = PrivateKey::from_bytes([5; 32]);
        want.private_key = Some(new_key.clone());
        want.fwmark = 0x200000;
        want.peers[0].preshared_key = Some(PresharedKey::from_bytes([1; 32]));
        let delta = plan_delta(&want, &obs);
        assert_eq!(delta.private_key, Some(new_key));
        assert_eq!(delta.fwmark, Some(0x200000));
        assert_eq!(delta.listen_port, None);
        assert_eq!(delta.peers.len(), 1);
        assert!(delta.peers[0].preshared_key.is_some());
        // Clearing a PSK sends the zero key.
        let obs2 = observed_from(&want);
        let delta = plan_delta(&d, &obs2);
        let psk = delta.peers[0].preshared_key.as_ref().unwrap();
        assert!(psk.is_zero());
    }

    /// Sizes like a fixed-width format: 100 bytes per message, 50 per peer, 10 per IP.
    struct Fixed;
    impl MessageSizer for Fixed {
        fn device(&self, d: &DeviceDelta) -> usize {
            if d.has_device_fields() { 100 } else { 20 }
        }
        fn peer(&self, _: &PeerUpdate) -> usize {
            50
        }
        fn allowed_ip(&self, _: &IpNet) -> usize {
            10
        }
    }

    fn many_ips(n: u32) -> Vec<IpNet> {
        (0..n)
            .map(|i| {
                IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                    0x0a00_0000 + i,
                )))
            })
            .collect()
    }

    #[test]
    fn big_peer_is_split_and_reassembles() {
        let peer = PeerConfig {
            public_key: PublicKey::from_bytes([3; 32]),
            preshared_key: None,
            endpoint: Some("192.0.2.1:51820".parse().unwrap()),
            allowed_ips: many_ips(5000),
            persistent_keepalive: None,
        };
        let delta = DeviceDelta {
            fwmark: Some(1),
            peers: vec![
                PeerUpdate::create(&peer),
                PeerUpdate::remove(PublicKey::from_bytes([4; 32])),
            ],
            ..Default::default()
        };
        let parts = split(&delta, 1000, &Fixed).unwrap();
        assert!(parts.len() > 50, "{}", parts.len());
        for (i, part) in parts.iter().enumerate() {
            let size = Fixed.device(part)
                + part
                    .peers
                    .iter()
                    .map(|p| 50 + 10 * p.allowed_ips.len())
                    .sum::<usize>();
            assert!(size <= 1000, "part {i} is {size} bytes");
            assert_eq!(part.has_device_fields(), i == 0);
        }
        // First entry creates and replaces; continuations only append to an existing peer.
        assert!(parts[0].peers[0].replace_allowed_ips && !parts[0].peers[0].update_only);
        for part in &parts[1..] {
            for p in part.peers.iter().filter(|p| !p.remove) {
                assert!(p.update_only && !p.replace_allowed_ips && p.endpoint.is_none());
            }
        }
        let all: Vec<IpNet> = parts
            .iter()
            .flat_map(|p| p.peers.iter())
            .filter(|p| p.public_key == peer.public_key)
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect();
        assert_eq!(all, peer.allowed_ips);
        assert!(parts.last().unwrap().peers.last().unwrap().remove);
    }

    #[test]
    fn small_delta_is_one_message_and_tiny_budget_is_an_error() {
        let d = seed_device();
        let delta = DeviceDelta::full(&d);
        let parts = split(&delta, 10_000, &Fixed).unwrap();
        assert_eq!(parts, vec![delta.clone()]);
        let err = split(&delta, 120, &Fixed).unwrap_err();
        assert!(
            matches!(err, Error::MessageBudgetTooSmall { budget: 120, .. }),
            "{err}"
        );
    }
}
