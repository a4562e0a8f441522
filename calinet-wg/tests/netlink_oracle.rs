//! The kernel backend's generic netlink messages checked against an
//! independent implementation of the same UAPI (rust-netlink's
//! `netlink-packet-wireguard`): our bytes parse there to the intended
//! attributes, and a GET reply emitted there parses here. The kernel of the
//! build machines has no WireGuard module, so this is how the encoding is
//! verified without a live kernel device.

use std::net::IpAddr;

use calinet_wg::backend::kernel::{DEFAULT_BUDGET, encode_get, encode_set, parse_get};
use calinet_wg::{
    DeviceDelta, IfName, PeerConfig, PeerUpdate, PresharedKey, PrivateKey, PublicKey,
};
use ipnet::IpNet;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::{GenlHeader, GenlMessage};
use netlink_packet_wireguard::{
    WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd, WireguardMessage,
    WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

const FAMILY: u16 = 0x1b;

fn ifname() -> IfName {
    "wireguard.cali".parse().unwrap()
}

fn decode(bytes: &[u8]) -> (NetlinkHeader, WireguardMessage) {
    let msg = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(bytes)
        .expect("oracle parses our bytes");
    let (header, payload) = msg.into_parts();
    match payload {
        NetlinkPayload::InnerMessage(genl) => {
            assert_eq!(genl.resolved_family_id(), FAMILY);
            (header, genl.payload)
        }
        other => panic!("not an inner message: {other:?}"),
    }
}

fn peer_ips(peer: &WireguardPeer) -> Vec<IpNet> {
    peer.0
        .iter()
        .filter_map(|a| match a {
            WireguardPeerAttribute::AllowedIps(ips) => Some(ips),
            _ => None,
        })
        .flatten()
        .map(|ip| {
            let (mut addr, mut cidr) = (None, None);
            for a in &ip.0 {
                match a {
                    WireguardAllowedIpAttr::IpAddr(x) => addr = Some(*x),
                    WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
                    _ => {}
                }
            }
            IpNet::new(addr.unwrap(), cidr.unwrap()).unwrap()
        })
        .collect()
}

fn peer_flags(peer: &WireguardPeer) -> WireguardPeerFlags {
    peer.0
        .iter()
        .find_map(|a| match a {
            WireguardPeerAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap_or(WireguardPeerFlags::empty())
}

#[test]
fn set_device_parses_in_the_independent_implementation() {
    let private = PrivateKey::from_bytes([9; 32]);
    let create = PeerConfig {
        public_key: PublicKey::from_bytes([1; 32]),
        preshared_key: Some(PresharedKey::from_bytes([2; 32])),
        endpoint: Some("[2001:db8::5]:51821".parse().unwrap()),
        allowed_ips: vec![
            "fd00:1::/64".parse().unwrap(),
            "172.16.158.0/24".parse().unwrap(),
        ],
        persistent_keepalive: Some(25),
    };
    let mut update = PeerUpdate::touch(PublicKey::from_bytes([3; 32]));
    update.endpoint = Some("198.51.100.11:51820".parse().unwrap());
    update.replace_allowed_ips = true;
    update.allowed_ips = vec!["172.16.34.0/24".parse().unwrap()];
    let delta = DeviceDelta {
        private_key: Some(private.clone()),
        listen_port: Some(51820),
        fwmark: Some(0x100000),
        peers: vec![
            PeerUpdate::remove(PublicKey::from_bytes([4; 32])),
            PeerUpdate::create(&create),
            update,
        ],
    };
    let msgs = encode_set(&ifname(), FAMILY, 42, &delta, DEFAULT_BUDGET).unwrap();
    assert_eq!(msgs.len(), 1);
    let (header, wg) = decode(&msgs[0]);
    assert_eq!(header.sequence_number, 42);
    assert_eq!(wg.cmd, WireguardCmd::SetDevice);
    let attrs = &wg.attributes;
    assert!(attrs.contains(&WireguardAttribute::IfName("wireguard.cali".into())));
    assert!(attrs.contains(&WireguardAttribute::PrivateKey(*private.expose_bytes())));
    assert!(attrs.contains(&WireguardAttribute::ListenPort(51820)));
    assert!(attrs.contains(&WireguardAttribute::Fwmark(0x100000)));
    let peers = attrs
        .iter()
        .find_map(|a| match a {
            WireguardAttribute::Peers(p) => Some(p),
            _ => None,
        })
        .expect("peers");
    assert_eq!(peers.len(), 3);
    assert!(
        peers[0]
            .0
            .contains(&WireguardPeerAttribute::PublicKey([4; 32]))
    );
    assert_eq!(peer_flags(&peers[0]), WireguardPeerFlags::RemoveMe);
    assert_eq!(peer_flags(&peers[1]), WireguardPeerFlags::ReplaceAllowedIps);
    assert!(
        peers[1]
            .0
            .contains(&WireguardPeerAttribute::PresharedKey([2; 32]))
    );
    assert!(
        peers[1]
            .0
            .contains(&WireguardPeerAttribute::Endpoint(create.endpoint.unwrap()))
    );
    assert!(
        peers[1]
            .0
            .contains(&WireguardPeerAttribute::PersistentKeepalive(25))
    );
    assert_eq!(peer_ips(&peers[1]), create.allowed_ips);
    assert_eq!(
        peer_flags(&peers[2]),
        WireguardPeerFlags::UpdateOnly | WireguardPeerFlags::ReplaceAllowedIps
    );
    assert!(peers[2].0.contains(&WireguardPeerAttribute::Endpoint(
        "198.51.100.11:51820".parse().unwrap()
    )));
    assert_eq!(
        peer_ips(&peers[2]),
        vec!["172.16.34.0/24".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn split_messages_each_parse_and_carry_every_allowed_ip_once() {
    let ips: Vec<IpNet> = (0..3000u32)
        .map(|i| IpNet::from(IpAddr::from(std::net::Ipv4Addr::from(0xac10_0000 + i))))
        .collect();
    let peer = PeerConfig {
        public_key: PublicKey::from_bytes([7; 32]),
        preshared_key: None,
        endpoint: Some("198.51.100.12:51820".parse().unwrap()),
        allowed_ips: ips.clone(),
        persistent_keepalive: None,
    };
    let delta = DeviceDelta {
        peers: vec![PeerUpdate::create(&peer)],
        ..Default::default()
    };
    let msgs = encode_set(&ifname(), FAMILY, 1, &delta, DEFAULT_BUDGET).unwrap();
    assert!(msgs.len() > 1);
    let mut got = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        assert!(m.len() <= DEFAULT_BUDGET);
        let (_, wg) = decode(m);
        let peers = wg
            .attributes
            .iter()
            .find_map(|a| match a {
                WireguardAttribute::Peers(p) => Some(p),
                _ => None,
            })
            .expect("peers");
        assert_eq!(peers.len(), 1);
        let expected = if i == 0 {
            WireguardPeerFlags::ReplaceAllowedIps
        } else {
            WireguardPeerFlags::UpdateOnly
        };
        assert_eq!(peer_flags(&peers[0]), expected, "message {i}");
        got.extend(peer_ips(&peers[0]));
    }
    assert_eq!(got, ips);
}

#[test]
fn get_request_and_reply_interoperate() {
    let (_, wg) = decode(&encode_get(&ifname(), FAMILY, 3));
    assert_eq!(wg.cmd, WireguardCmd::GetDevice);
    assert_eq!(
        wg.attributes,
        vec![WireguardAttribute::IfName("wireguard.cali".into())]
    );

    // A two-part dump reply emitted by the independent implementation.
    let private = PrivateKey::from_bytes([5; 32]);
    let mut buf = Vec::new();
    for (i, net) in ["172.16.158.0/24", "172.16.158.7/32"].iter().enumerate() {
        let net: IpNet = net.parse().unwrap();
        let mut attributes = vec![WireguardAttribute::IfName("wireguard.cali".into())];
        if i == 0 {
            attributes.push(WireguardAttribute::PublicKey(
                *private.public_key().as_bytes(),
            ));
            attributes.push(WireguardAttribute::ListenPort(51820));
            attributes.push(WireguardAttribute::Fwmark(0x100000));
        }
        attributes.push(WireguardAttribute::Peers(vec![WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([8; 32]),
            WireguardPeerAttribute::Endpoint("198.51.100.11:51820".parse().unwrap()),
            WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
                WireguardAllowedIpAttr::Family(
                    netlink_packet_wireguard::WireguardAddressFamily::Ipv4,
                ),
                WireguardAllowedIpAttr::IpAddr(net.addr()),
                WireguardAllowedIpAttr::Cidr(net.prefix_len()),
            ])]),
        ])]));
        let genl = GenlMessage::new(
            GenlHeader { cmd: 0, version: 1 },
            WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes,
            },
            FAMILY,
        );
        let mut header = NetlinkHeader::default();
        header.flags = 0x2; // NLM_F_MULTI
        header.sequence_number = 3;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(genl));
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        buf.extend(bytes);
    }
    let (dev, done) = parse_get("wireguard.cali", FAMILY, &buf).unwrap();
    assert!(!done, "no NLMSG_DONE yet");
    assert_eq!(dev.public_key, Some(private.public_key()));
    assert_eq!((dev.listen_port, dev.fwmark), (51820, 0x100000));
    assert_eq!(dev.peers.len(), 1);
    assert_eq!(dev.peers[0].allowed_ips.len(), 2);
    assert_eq!(
        dev.peers[0].endpoint,
        Some("198.51.100.11:51820".parse().unwrap())
    );
}
