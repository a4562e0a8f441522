//! Fuzz-style properties for every parser of outside input: peer addresses,
//! AS numbers, durations, selectors in BGPPeers, and whole YAML resources.
//! They return errors, never panic, and what parses prints back the same.

use calinet_bgp::{AsNumber, BgpConfiguration, BgpPeer, GoDuration, NodeBgpSpec, PeerAddress};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn peer_address_never_panics_and_round_trips(s in "\\\\PC{0,40}") {
        if let Ok(a) = s.parse::<PeerAddress>() {
            prop_assert_eq!(a.to_string().parse::<PeerAddress>().unwrap(), a);
        }
    }

    #[test]
    fn peer_address_of_socket_addresses(ip in any::<std::net::IpAddr>(), port in proptest::option::of(1u16..)) {
        let a = PeerAddress { ip, port };
        prop_assert_eq!(a.to_string().parse::<PeerAddress>().unwrap(), a);
    }

    #[test]
    fn as_number_text(s in "[0-9.]{0,12}|\\\\PC{0,12}") {
        if let Ok(a) = s.parse::<AsNumber>() {
            prop_assert!(s.contains('.') || a.get().to_string() == s.trim_start_matches('0') || a.get() == 0);
        }
    }

    #[test]
    fn go_duration_never_panics(s in "[0-9.hmsu]{0,12}|\\\\PC{0,16}") {
        if let Ok(d) = s.parse::<GoDuration>() {
            let again: GoDuration = d.to_string().parse().unwrap();
            prop_assert_eq!(again, d);
        }
    }

    #[test]
    fn go_duration_round_trips(secs in 0u64..100_000) {
        let d = GoDuration(std::time::Duration::from_secs(secs));
        prop_assert_eq!(d.to_string().parse::<GoDuration>().unwrap(), d);
    }

    #[test]
    fn peer_yaml_never_panics(peer_ip in "\\\\PC{0,30}", sel in "\\\\PC{0,30}", asn in any::<u64>()) {
        let yaml = format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: p}}\nspec: {{peerIP: {peer_ip:?}, nodeSelector: {sel:?}, asNumber: {asn}}}\n"
        );
        if let Ok(p) = serde_norway::from_str::<BgpPeer>(&yaml) {
            // Valid or a named error; never a panic.
            if let Err(e) = p.validate() {
                prop_assert!(e.to_string().starts_with("BGPPeer p: "), "{}", e);
            }
        }
    }

    #[test]
    fn other_yaml_never_panics(text in "\\\\PC{0,80}") {
        let _ = serde_norway::from_str::<BgpConfiguration>(&text).map(|c| c.validate());
        let _ = serde_norway::from_str::<NodeBgpSpec>(&text).map(|n| n.validate("n"));
    }
}

#[test]
fn durations_as_calico_writes_them() {
    for (text, secs) in [
        ("120s", 120.0),
        ("2m0s", 120.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("0", 0.0),
    ] {
        let d: GoDuration = text.parse().unwrap();
        assert_eq!(d.0.as_secs_f64(), secs, "{text}");
    }
    for bad in ["", "10", "1d", "s", "-1s"] {
        assert!(bad.parse::<GoDuration>().is_err(), "{bad}");
    }
}

#[test]
fn as_numbers_as_calico_writes_them() {
    assert_eq!("64512".parse::<AsNumber>().unwrap().get(), 64512);
    assert_eq!("1.10".parse::<AsNumber>().unwrap().get(), 65546);
    assert_eq!("4294967295".parse::<AsNumber>().unwrap().get(), u32::MAX);
    assert!("4294967296".parse::<AsNumber>().is_err());
    assert!("65536.1".parse::<AsNumber>().is_err());
    assert!(AsNumber::new(0).is_none());
}
