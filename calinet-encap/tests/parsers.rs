//! Fuzz-style tests of everything that parses outside input: the newtypes'
//! `FromStr` and the serde form of [`Input`]. Nothing may panic; what parses
//! must print back to itself.

use calinet_encap::{EncapMode, IfName, Input, MacAddr, NodeName, decide};
use proptest::prelude::*;

const VALID_INPUT: &str = r#"{
    "local": {"name": "k8s-w1", "bgp": {"ipv4Address": "198.51.100.101/24"},
              "ipv4VXLANTunnelAddr": "172.16.158.0"},
    "uplink": {"name": "eth0", "mtu": 1500, "gatewayV4": "198.51.100.1"},
    "remotes": [{"name": "k8s-w0", "bgp": {"ipv4Address": "203.0.113.100/24"},
                 "ipv4VXLANTunnelAddr": "172.16.34.0"}],
    "pools": [{"name": "p", "cidr": "172.16.0.0/16", "vxlanMode": "CrossSubnet"}],
    "blocks": [{"cidr": "172.16.34.0/24", "node": "k8s-w0"},
               {"cidr": "172.16.158.0/24", "node": "k8s-w1"}],
    "borrowed": [{"addr": "172.16.34.9", "node": "k8s-w1"}]
}"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn node_names_parse_or_explain(s in "\\PC{0,20}|[a-z0-9.\\-]{0,20}") {
        match s.parse::<NodeName>() {
            Ok(n) => prop_assert_eq!(n.to_string(), s),
            Err(e) => {
                let quoted = format!("{s:?}");
                prop_assert!(e.to_string().contains(&quoted), "{}", e);
            }
        }
    }

    #[test]
    fn if_names_parse_or_explain(s in "\\PC{0,20}|[a-z0-9./:\\-]{0,18}") {
        match s.parse::<IfName>() {
            Ok(n) => {
                prop_assert_eq!(n.to_string(), s.clone());
                prop_assert!(s.len() <= 15);
            }
            Err(e) => {
                let quoted = format!("{s:?}");
                prop_assert!(e.to_string().contains(&quoted), "{}", e);
            }
        }
    }

    #[test]
    fn macs_round_trip(octets in any::<[u8; 6]>(), junk in "\\PC{0,20}|[0-9a-fA-F:]{0,20}") {
        let mac = MacAddr(octets);
        prop_assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        prop_assert_eq!(mac.to_string().to_uppercase().parse::<MacAddr>().unwrap(), mac);
        if let Ok(m) = junk.parse::<MacAddr>() {
            prop_assert_eq!(m.to_string(), junk.to_lowercase());
        }
    }

    #[test]
    fn modes_parse_only_calico_spellings(s in "\\PC{0,12}") {
        let ok = matches!(s.as_str(), "Never" | "Always" | "CrossSubnet");
        prop_assert_eq!(s.parse::<EncapMode>().is_ok(), ok);
    }

    /// A valid input with bytes replaced at random: deserialising either fails
    /// or yields an input that `decide` accepts or rejects, never a panic.
    #[test]
    fn mangled_inputs_never_panic(edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<char>()), 1..4)) {
        let mut chars: Vec<char> = VALID_INPUT.chars().collect();
        for (i, c) in edits {
            let at = i.index(chars.len());
            chars[at] = c;
        }
        let text: String = chars.into_iter().collect();
        if let Ok(input) = serde_json::from_str::<Input>(&text) {
            match decide(&input) {
                Ok(d) => prop_assert_eq!(d.node, input.local.name),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}

#[test]
fn the_unmangled_input_is_valid() {
    let input: Input = serde_json::from_str(VALID_INPUT).unwrap();
    let d = decide(&input).unwrap();
    // k8s-w1 borrowed 172.16.34.9: its own workload route covers it, so only the block path.
    assert_eq!(d.paths.len(), 1);
}
