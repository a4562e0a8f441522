//! The device configuration in `wg showconf` format, and back.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::model::{DeviceConfig, PeerConfig};

/// Render `device` the way `wg showconf` prints it (section and key order as
/// wireguard-tools). The output contains the private key and pre-shared keys:
/// write it only where `wg setconf` reads it, never to logs.
pub fn render_showconf(device: &DeviceConfig) -> String {
    let mut out = String::from("[Interface]\n");
    if device.listen_port != 0 {
        let _ = writeln!(out, "ListenPort = {}", device.listen_port);
    }
    if device.fwmark != 0 {
        let _ = writeln!(out, "FwMark = {:#x}", device.fwmark);
    }
    if let Some(key) = &device.private_key {
        let _ = writeln!(out, "PrivateKey = {}", key.expose_base64());
    }
    for peer in &device.peers {
        let _ = write!(out, "\n[Peer]\nPublicKey = {}\n", peer.public_key);
        if let Some(psk) = peer.preshared_key.as_ref().filter(|k| !k.is_zero()) {
            let _ = writeln!(out, "PresharedKey = {}", psk.expose_base64());
        }
        if !peer.allowed_ips.is_empty() {
            let ips: Vec<String> = peer.allowed_ips.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "AllowedIPs = {}", ips.join(", "));
        }
        if let Some(ep) = peer.endpoint {
            let _ = writeln!(out, "Endpoint = {ep}");
        }
        if let Some(ka) = peer.persistent_keepalive.filter(|k| *k != 0) {
            let _ = writeln!(out, "PersistentKeepalive = {ka}");
        }
    }
    out
}

fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None if text == "off" => Some(0),
        None => text.parse().ok(),
    }
}

/// Parse `wg showconf` / `wg setconf` text. Unknown keys are errors naming the
/// line; key values are never echoed in errors.
pub fn parse_showconf(text: &str) -> Result<DeviceConfig> {
    let mut device = DeviceConfig {
        private_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
    };
    #[derive(PartialEq)]
    enum Section {
        None,
        Interface,
        Peer,
    }
    let mut section = Section::None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |reason: String| Error::Showconf { line_no, reason };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.eq_ignore_ascii_case("[Interface]") {
            section = Section::Interface;
            continue;
        }
        if line.eq_ignore_ascii_case("[Peer]") {
            section = Section::Peer;
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
            .ok_or_else(|| err("expected `Key = Value`".into()))?;
        let map_key = |e: Error| err(e.to_string());
        match (&section, key.as_str()) {
            (Section::Interface, "listenport") => {
                device.listen_port = value
                    .parse()
                    .map_err(|_| err(format!("bad ListenPort {value:?}")))?;
            }
            (Section::Interface, "fwmark") => {
                device.fwmark =
                    parse_u32(value).ok_or_else(|| err(format!("bad FwMark {value:?}")))?;
            }
            (Section::Interface, "privatekey") => {
                device.private_key = Some(PrivateKey::from_base64(value).map_err(map_key)?);
            }
            (Section::Peer, "publickey") => device.peers.push(PeerConfig {
                public_key: PublicKey::from_base64(value).map_err(map_key)?,
                preshared_key: None,
                endpoint: None,
                allowed_ips: Vec::new(),
                persistent_keepalive: None,
            }),
            (Section::Peer, other) => {
                let peer = device
                    .peers
                    .last_mut()
                    .ok_or_else(|| err(format!("{other} before PublicKey")))?;
                match other {
                    "presharedkey" => {
                        peer.preshared_key =
                            Some(PresharedKey::from_base64(value).map_err(map_key)?);
                    }
                    "allowedips" => {
                        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                            let net: IpNet = part
                                .parse()
                                .or_else(|_| part.parse::<std::net::IpAddr>().map(IpNet::from))
                                .map_err(|_| err(format!("bad AllowedIPs entry {part:?}")))?;
                            peer.allowed_ips.push(net);
                        }
                    }
                    "endpoint" => {
                        peer.endpoint =
                            Some(value.parse().map_err(|_| {
                                err(format!("bad Endpoint {value:?} (need ip:port)"))
                            })?);
                    }
                    "persistentkeepalive" => {
                        let ka = if value == "off" {
                            0
                        } else {
                            value
                                .parse()
                                .map_err(|_| err(format!("bad PersistentKeepalive {value:?}")))?
                        };
                        peer.persistent_keepalive = (ka != 0).then_some(ka);
                    }
                    _ => return Err(err(format!("unknown [Peer] key {other:?}"))),
                }
            }
            (Section::Interface, other) => {
                return Err(err(format!("unknown [Interface] key {other:?}")));
            }
            (Section::None, _) => return Err(err("key outside any section".into())),
        }
    }
    Ok(device)
}

/// `device` with peers sorted by public key and allowed IPs sorted, zero
/// pre-shared keys dropped: two configs that a device treats the same compare
/// equal after this (WireGuard keeps no order).
pub fn normalized(device: &DeviceConfig) -> DeviceConfig {
    let mut d = device.clone();
    d.peers.sort_by_key(|p| p.public_key);
    for p in &mut d.peers {
        p.allowed_ips.sort();
        p.allowed_ips.dedup();
        if p.preshared_key.as_ref().is_some_and(PresharedKey::is_zero) {
            p.preshared_key = None;
        }
        if p.persistent_keepalive == Some(0) {
            p.persistent_keepalive = None;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceSettings;
    use crate::peers::compute_device;
    use crate::seed;

    /// The article's `wg showconf wireguard.cali` output (markdown escapes
    /// removed), with AllowedIPs of k8s-w0 in the order the article shows.
    const SEED_SHOWCONF: &str = "[Interface]
ListenPort = 51820
FwMark = 0x100000
PrivateKey = yF8F44A8v5Spr9jX5YwRSCKktNkPvkoYbLd1nuG8i0M=

[Peer]
PublicKey = rWepcpPRToZHtb563t5AKAhIHT69rMgTOIuCE8o3AgE=
AllowedIPs = 172.16.158.0/24, 172.16.158.7/32, 172.16.158.9/32
Endpoint = 192.168.10.101:51820

[Peer]
PublicKey = DwdcNTZ9CzJdaW5SxmvfrHNqDcHZgFTUqhf+srC/1yk=
AllowedIPs = 172.16.34.2/32, 172.16.34.0/24, 172.16.34.4/32
Endpoint = 192.168.20.100:51820

[Peer]
PublicKey = XK6OS/pP/4/ntGg3WdPYTQP9SQLWNM884DlC/8OgK1s=
AllowedIPs = 172.16.184.0/24, 172.16.184.1/32, 172.16.184.3/32
Endpoint = 192.168.10.102:51820
";

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

    #[test]
    fn computed_seed_device_equals_the_articles_showconf() {
        let article = parse_showconf(SEED_SHOWCONF).unwrap();
        assert_eq!(normalized(&seed_device()), normalized(&article));
    }

    #[test]
    fn render_then_parse_round_trips() {
        let mut d = seed_device();
        d.peers[0].preshared_key = Some(PresharedKey::from_bytes([2; 32]));
        d.peers[1].persistent_keepalive = Some(25);
        let text = render_showconf(&d);
        assert!(
            text.starts_with("[Interface]\nListenPort = 51820\nFwMark = 0x100000\nPrivateKey = ")
        );
        assert_eq!(parse_showconf(&text).unwrap(), d);
    }

    #[test]
    fn parse_errors_name_the_line_and_never_echo_keys() {
        let err = parse_showconf("[Interface]\nPrivateKey = c2VjcmV0\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "{msg}");
        assert!(parse_showconf("[Peer]\nAllowedIPs = 1.2.3.4/32\n").is_err());
        assert!(parse_showconf("[Interface]\nBogus = 1\n").is_err());
        assert!(parse_showconf("ListenPort = 1\n").is_err());
    }
}
