//! Property tests: computed devices keep their invariants, and a planned
//! delta applied to any observed device yields the desired device.

use calinet_wg::proptest_support::{apply_to, check_computed, nodes};
use calinet_wg::{
    DeviceSettings, NodeName, ObservedDevice, PrivateKey, compute_device, normalized, plan_delta,
};
use proptest::prelude::*;

fn as_config(o: &ObservedDevice, key: &PrivateKey) -> calinet_wg::DeviceConfig {
    calinet_wg::DeviceConfig {
        private_key: Some(key.clone()),
        listen_port: o.listen_port,
        fwmark: o.fwmark,
        peers: o.peers.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn computed_device_invariants(ns in nodes(12), local in 0usize..12) {
        let local: NodeName = format!("n{local}").parse().unwrap();
        let key = PrivateKey::from_bytes([200; 32]);
        let c = compute_device(&local, &key, &DeviceSettings::calico_v4(), &ns, &Default::default());
        prop_assert_eq!(check_computed(&local, &key.public_key(), &ns, &c), Ok(()));
    }

    #[test]
    fn delta_converges_from_any_previous_state(before in nodes(10), after in nodes(10)) {
        let local: NodeName = "n0".parse().unwrap();
        let key = PrivateKey::from_bytes([200; 32]);
        let s = DeviceSettings::calico_v4();
        let old = compute_device(&local, &key, &s, &before, &Default::default()).device;
        let new = compute_device(&local, &key, &s, &after, &Default::default()).device;
        let observed = apply_to(&ObservedDevice::default(), &calinet_wg::DeviceDelta::full(&old));
        let delta = plan_delta(&new, &observed);
        let result = apply_to(&observed, &delta);
        prop_assert_eq!(normalized(&as_config(&result, &key)), normalized(&new));
        // Idempotent: nothing left to do.
        prop_assert!(plan_delta(&new, &result).is_empty());
        // Only peers that differ were sent.
        let changed = new.peers.iter().filter(|p| old.peer(&p.public_key).map(|o| {
            let mut a = o.allowed_ips.clone(); a.sort();
            let mut b = p.allowed_ips.clone(); b.sort();
            a != b || o.endpoint != p.endpoint
        }).unwrap_or(true)).count()
            + old.peers.iter().filter(|p| new.peer(&p.public_key).is_none()).count();
        prop_assert_eq!(delta.peers.len(), changed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any delta, any budget that fits one peer: every netlink message stays
    /// under the budget, and decoding the messages in order gives back every
    /// peer's allowed IPs exactly once, in order.
    #[test]
    fn netlink_split_respects_budget_and_reassembles(
        counts in prop::collection::vec(0usize..700, 1..6),
        budget in 600usize..9000,
    ) {
        use calinet_wg::backend::kernel::{decode_set, encode_set, messages};
        use calinet_wg::{DeviceDelta, PeerConfig, PeerUpdate, PublicKey};
        let ifname: calinet_wg::IfName = "wireguard.cali".parse().unwrap();
        let mut next = 0u32;
        let peers: Vec<PeerConfig> = counts.iter().enumerate().map(|(i, n)| {
            let ips = (0..*n).map(|_| { next += 1; ipnet::IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(0xac10_0000 + next))) }).collect();
            PeerConfig {
                public_key: PublicKey::from_bytes([i as u8 + 1; 32]),
                preshared_key: None,
                endpoint: Some("198.51.100.1:51820".parse().unwrap()),
                allowed_ips: ips,
                persistent_keepalive: None,
            }
        }).collect();
        let delta = DeviceDelta {
            fwmark: Some(0x100000),
            listen_port: Some(51820),
            peers: peers.iter().map(PeerUpdate::create).collect(),
            ..Default::default()
        };
        let msgs = encode_set(&ifname, 0x1b, 1, &delta, budget).unwrap();
        let mut got: Vec<(PublicKey, Vec<ipnet::IpNet>)> = Vec::new();
        for m in &msgs {
            prop_assert!(m.len() <= budget, "{} > {}", m.len(), budget);
            let raw = messages("wg", m).unwrap();
            for p in decode_set("wg", &raw[0]).unwrap().peers {
                match got.last_mut() {
                    Some((k, ips)) if *k == p.public_key => ips.extend(p.allowed_ips),
                    _ => got.push((p.public_key, p.allowed_ips)),
                }
            }
        }
        let want: Vec<(PublicKey, Vec<ipnet::IpNet>)> = peers.iter().map(|p| (p.public_key, p.allowed_ips.clone())).collect();
        prop_assert_eq!(got, want);
    }
}
