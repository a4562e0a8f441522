//! Encoder tests: the hand-written batch against libnftnl's for the same IR,
//! and the attribute layout of known messages decoded back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::nftnl_oracle;
use crate::ir::{
    BaseChain, Chain, Family, Hook, IfDir, Match, Rule, Ruleset, SetElems, Side, Stmt,
};

/// A ruleset using every match, statement and set type the backend encodes.
pub(super) fn sample() -> Ruleset {
    let mut sets = BTreeMap::new();
    sets.insert(
        "a4".to_string(),
        SetElems::Addr4(["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()].into()),
    );
    sets.insert(
        "a6".to_string(),
        SetElems::Addr6(["fd00::1".parse().unwrap()].into()),
    );
    sets.insert(
        "n4".to_string(),
        SetElems::Net4(
            [
                "10.0.0.0/25".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
            ]
            .into(),
        ),
    );
    sets.insert(
        "n4zero".to_string(),
        SetElems::Net4(["0.0.0.0/1".parse().unwrap()].into()),
    );
    sets.insert(
        "n6".to_string(),
        SetElems::Net6(["fd00::/64".parse().unwrap(), "::/0".parse().unwrap()].into()),
    );
    sets.insert(
        "ports".to_string(),
        SetElems::Ports([(80, 80), (8000, 8100), (65000, 65535)].into()),
    );
    sets.insert(
        "app4".to_string(),
        SetElems::AddrProtoPort4([("10.0.0.1".parse().unwrap(), 6, 8080)].into()),
    );
    sets.insert(
        "app6".to_string(),
        SetElems::AddrProtoPort6([("fd00::1".parse().unwrap(), 17, 53)].into()),
    );
    sets.insert("empty".to_string(), SetElems::Addr4(BTreeSet::new()));
    sets.insert(
        "dispatch".to_string(),
        SetElems::IfGoto(
            [
                ("caliweb".to_string(), "to-web".to_string()),
                ("calidb".to_string(), "to-db".to_string()),
            ]
            .into(),
        ),
    );
    let addr = |side, family, set: &str, negate| Match::Addr {
        side,
        family,
        set: set.into(),
        negate,
    };
    let rules = vec![
        Rule::new(vec![Match::CtState(6)], Stmt::Accept),
        Rule::new(vec![Match::MarkAny(0x1_0000)], Stmt::Return).comment("marked"),
        Rule::new(
            vec![
                Match::Family(Family::V4),
                Match::L4Proto {
                    proto: 6,
                    negate: false,
                },
                addr(Side::Src, Family::V4, "a4", false),
                addr(Side::Dst, Family::V4, "n4", true),
                Match::Port {
                    side: Side::Dst,
                    set: "ports".into(),
                    negate: false,
                },
            ],
            Stmt::Jump("to-db".into()),
        )
        .comment("policy default/db rule 0"),
        Rule::new(
            vec![
                Match::Family(Family::V6),
                Match::L4Proto {
                    proto: 17,
                    negate: true,
                },
                addr(Side::Src, Family::V6, "a6", true),
                addr(Side::Dst, Family::V6, "n6", false),
                Match::Port {
                    side: Side::Src,
                    set: "ports".into(),
                    negate: true,
                },
            ],
            Stmt::SetMarkReturn(0x1_0000),
        ),
        Rule::new(
            vec![
                Match::AddrProtoPort {
                    side: Side::Dst,
                    family: Family::V4,
                    set: "app4".into(),
                    negate: false,
                },
                Match::AddrProtoPort {
                    side: Side::Src,
                    family: Family::V6,
                    set: "app6".into(),
                    negate: true,
                },
            ],
            Stmt::ClearMark(0x3_0000),
        ),
        Rule::new(
            vec![Match::Icmp {
                icmp_type: 8,
                code: None,
                negate: false,
            }],
            Stmt::Log("calico-packet: ".into()),
        ),
        // Single networks inline: byte-aligned (load the prefix's bytes) and not
        // (load the address, mask it), both families, both senses.
        Rule::new(
            vec![
                Match::Family(Family::V4),
                Match::Prefix {
                    side: Side::Src,
                    net: "198.51.100.0/24".parse().unwrap(),
                    negate: true,
                },
                Match::Prefix {
                    side: Side::Dst,
                    net: "10.0.0.128/25".parse().unwrap(),
                    negate: false,
                },
            ],
            Stmt::Accept,
        ),
        Rule::new(
            vec![
                Match::Family(Family::V6),
                Match::Prefix {
                    side: Side::Src,
                    net: "2001:db8::/33".parse().unwrap(),
                    negate: false,
                },
                Match::Prefix {
                    side: Side::Dst,
                    net: "2001:db8::7/128".parse().unwrap(),
                    negate: true,
                },
            ],
            Stmt::Drop,
        ),
        Rule::new(
            vec![Match::Icmp {
                icmp_type: 3,
                code: Some(1),
                negate: true,
            }],
            Stmt::Drop,
        ),
        Rule::new(
            vec![Match::IfPrefix {
                dir: IfDir::In,
                prefix: "cali".into(),
            }],
            Stmt::Dispatch {
                dir: IfDir::Out,
                map: "dispatch".into(),
            },
        ),
        Rule::new(
            vec![Match::IfPrefix {
                dir: IfDir::Out,
                prefix: "cali".into(),
            }],
            Stmt::Dispatch {
                dir: IfDir::In,
                map: "dispatch".into(),
            },
        ),
    ];
    let mut chains = BTreeMap::new();
    chains.insert(
        "forward".to_string(),
        Chain {
            base: Some(BaseChain {
                hook: Hook::Forward,
                priority: 0,
            }),
            rules,
        },
    );
    chains.insert(
        "nat".to_string(),
        Chain {
            base: Some(BaseChain {
                hook: Hook::Postrouting,
                priority: 100,
            }),
            rules: vec![Rule::new(vec![], Stmt::MasqueradeFullyRandom).comment("natOutgoing")],
        },
    );
    chains.insert(
        "to-web".to_string(),
        Chain {
            base: None,
            rules: vec![Rule::new(vec![], Stmt::Accept)],
        },
    );
    chains.insert(
        "to-db".to_string(),
        Chain {
            base: None,
            rules: vec![],
        },
    );
    Ruleset {
        table: "calinet".into(),
        sets,
        chains,
    }
}

/// A readable listing of a batch: one line per message, attributes indented,
/// nested attributes (NLA_F_NESTED) opened, payloads in hex.
pub(super) fn dump(bytes: &[u8]) -> String {
    fn attrs(out: &mut String, b: &[u8], depth: usize) {
        let mut off = 0;
        while off + 4 <= b.len() {
            let len = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
            let ty = u16::from_ne_bytes([b[off + 2], b[off + 3]]);
            if len < 4 || off + len > b.len() {
                let _ = writeln!(out, "{:w$}!! bad attribute at {off}", "", w = depth * 2);
                return;
            }
            let payload = &b[off + 4..off + len];
            if ty & 0x8000 != 0 {
                let _ = writeln!(out, "{:w$}{} {{", "", ty & 0x7fff, w = depth * 2);
                attrs(out, payload, depth + 1);
                let _ = writeln!(out, "{:w$}}}", "", w = depth * 2);
            } else {
                let hex: String = payload.iter().map(|x| format!("{x:02x}")).collect();
                let _ = writeln!(out, "{:w$}{ty} = {hex}", "", w = depth * 2);
            }
            off += (len + 3) & !3;
        }
    }
    let mut out = String::new();
    let mut off = 0;
    while off + 16 <= bytes.len() {
        let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([bytes[off + 4], bytes[off + 5]]);
        let flags = u16::from_ne_bytes([bytes[off + 6], bytes[off + 7]]);
        let seq = u32::from_ne_bytes(bytes[off + 8..off + 12].try_into().unwrap());
        let pid = u32::from_ne_bytes(bytes[off + 12..off + 16].try_into().unwrap());
        let nfg: String = bytes[off + 16..off + 20]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        let _ = writeln!(
            out,
            "msg len {len} type {ty:#06x} flags {flags:#06x} seq {seq} pid {pid} nfgen {nfg}"
        );
        attrs(&mut out, &bytes[off + 20..off + len], 1);
        off += (len + 3) & !3;
    }
    out
}

/// `bytes` with the alignment padding after each attribute zeroed: libmnl
/// 1.0.4 leaves whatever the buffer held there (the kernel never reads it),
/// the encoder writes zeros.
fn zero_padding(bytes: &[u8]) -> Vec<u8> {
    fn attrs(b: &mut [u8]) {
        let mut off = 0;
        while off + 4 <= b.len() {
            let len = u16::from_ne_bytes([b[off], b[off + 1]]) as usize;
            let ty = u16::from_ne_bytes([b[off + 2], b[off + 3]]);
            if len < 4 || off + len > b.len() {
                return;
            }
            if ty & 0x8000 != 0 {
                attrs(&mut b[off + 4..off + len]);
            }
            let end = ((off + len + 3) & !3).min(b.len());
            b[off + len..end].fill(0);
            off = end;
        }
    }
    let mut out = bytes.to_vec();
    let mut off = 0;
    while off + 20 <= out.len() {
        let len = u32::from_ne_bytes(out[off..off + 4].try_into().unwrap()) as usize;
        if len < 20 || off + len > out.len() {
            break;
        }
        attrs(&mut out[off + 20..off + len]);
        off += (len + 3) & !3;
    }
    out
}

/// Fails with the first differing line of the two listings; padding aside, the
/// bytes must be the same.
fn assert_same_bytes(ours: &[u8], oracle: &[u8], what: &str) {
    assert_eq!(
        ours,
        zero_padding(ours),
        "{what}: the encoder leaves padding zeroed"
    );
    let oracle = &zero_padding(oracle)[..];
    if ours != oracle {
        let at = ours.iter().zip(oracle).position(|(x, y)| x != y);
        eprintln!(
            "first differing byte: {at:?} of {} / {}: {:02x?} vs {:02x?}",
            ours.len(),
            oracle.len(),
            at.map(|i| &ours[i.saturating_sub(8)..(i + 8).min(ours.len())]),
            at.map(|i| &oracle[i.saturating_sub(8)..(i + 8).min(oracle.len())])
        );
        let (a, b) = (dump(ours), dump(oracle));
        let first = a
            .lines()
            .zip(b.lines())
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .map(|(i, (x, y))| format!("line {i}: encoder `{x}`, libnftnl `{y}`"))
            .unwrap_or_else(|| "one listing is a prefix of the other".into());
        panic!("{what}: batches differ, {first}\n--- encoder ---\n{a}\n--- libnftnl ---\n{b}");
    }
}

#[test]
fn full_batch_matches_libnftnl_byte_for_byte() {
    let rs = sample();
    let ours = super::full_transaction(&rs).unwrap();
    let (oracle, n) = nftnl_oracle::full_transaction(&rs).unwrap();
    assert_same_bytes(ours.bytes(), &oracle, "full");
    assert_eq!(ours.messages, n);
}

#[test]
fn diff_batch_matches_libnftnl_byte_for_byte() {
    let old = sample();
    let mut new = sample();
    // New, changed, removed sets of each kind; chains added, changed, removed.
    new.sets.remove("a6");
    new.sets.insert(
        "fresh".into(),
        SetElems::Net6(["fd00:1::/48".parse().unwrap()].into()),
    );
    if let Some(SetElems::Addr4(s)) = new.sets.get_mut("a4") {
        s.remove(&"10.0.0.1".parse().unwrap());
        s.insert("10.0.0.9".parse().unwrap());
    }
    if let Some(SetElems::Ports(s)) = new.sets.get_mut("ports") {
        s.insert((443, 443));
    }
    if let Some(SetElems::IfGoto(m)) = new.sets.get_mut("dispatch") {
        m.insert("calinew".into(), "to-web".into());
        m.insert("calidb".into(), "to-web".into());
    }
    new.chains.remove("to-db");
    new.chains.insert(
        "extra".into(),
        Chain {
            base: None,
            rules: vec![Rule::new(vec![], Stmt::Drop).comment("x")],
        },
    );
    new.chains
        .get_mut("to-web")
        .unwrap()
        .rules
        .push(Rule::new(vec![], Stmt::Return));
    let d = old.diff(&new);
    assert!(d.touches_rules() && !d.del_sets.is_empty() && !d.reload_sets.is_empty());
    assert!(!d.add_elems.is_empty() && !d.del_elems.is_empty());
    let ours = super::diff_transaction("calinet", &d).unwrap();
    let (oracle, n) = nftnl_oracle::diff_transaction("calinet", &d).unwrap();
    assert_same_bytes(ours.bytes(), &oracle, "diff");
    assert_eq!(ours.messages, n);
}

#[test]
fn large_sets_split_into_messages_like_libnftnl() {
    let mut rs = sample();
    // ~100 bytes per map element and ~36 per address: both overflow one
    // element-list attribute (64 KiB) several times.
    let map: BTreeMap<String, String> = (0..3000)
        .map(|i| (format!("cali{i:011x}"), "to-web".to_string()))
        .collect();
    rs.sets.insert("dispatch".into(), SetElems::IfGoto(map));
    let addrs: BTreeSet<std::net::Ipv4Addr> =
        (0..5000u32).map(|i| (0x0a00_0000 + i).into()).collect();
    rs.sets.insert("a4".into(), SetElems::Addr4(addrs));
    let ours = super::full_transaction(&rs).unwrap();
    let (oracle, n) = nftnl_oracle::full_transaction(&rs).unwrap();
    assert_same_bytes(ours.bytes(), &oracle, "large sets");
    assert_eq!(ours.messages, n);
    assert!(
        ours.message_kinds()["NEWSETELEM"] > rs.sets.len(),
        "{:?}",
        ours.message_kinds()
    );
}

#[test]
fn a_name_holding_a_nul_byte_is_refused_and_named() {
    let mut rs = sample();
    rs.chains
        .get_mut("to-web")
        .unwrap()
        .rules
        .push(Rule::new(vec![], Stmt::Jump("to\0-db".into())));
    let err = super::full_transaction(&rs).unwrap_err().to_string();
    assert!(err.contains(r#"name "to\0-db" holds a NUL byte"#), "{err}");
    assert!(err.contains("calinet"), "{err}");
    let mut d = crate::ir::Diff::default();
    d.del_sets.insert("a\0".into());
    let err = super::diff_transaction("calinet", &d)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NUL"), "{err}");
}

#[test]
fn nul_bytes_in_comments_are_dropped_like_libnftnl() {
    let mut rs = sample();
    rs.chains
        .get_mut("to-web")
        .unwrap()
        .rules
        .push(Rule::new(vec![], Stmt::Accept).comment("a\0b"));
    let ours = super::full_transaction(&rs).unwrap();
    let (oracle, _) = nftnl_oracle::full_transaction(&rs).unwrap();
    assert_same_bytes(ours.bytes(), &oracle, "NUL in a comment");
}

#[test]
fn comment_length_limit_is_libnftnl_s() {
    for len in [0, 1, 100, 124, 125, 126, 127, 200] {
        let mut rs = sample();
        rs.chains
            .get_mut("to-web")
            .unwrap()
            .rules
            .push(Rule::new(vec![], Stmt::Accept).comment("c".repeat(len)));
        let ours = super::full_transaction(&rs);
        let oracle = nftnl_oracle::full_transaction(&rs);
        assert_eq!(ours.is_ok(), oracle.is_ok(), "comment of {len} bytes");
        if let (Ok(a), Ok((b, _))) = (&ours, &oracle) {
            assert_same_bytes(a.bytes(), b, "comment");
        }
        if let Err(e) = ours {
            let text = e.to_string();
            assert!(
                text.contains("to-web") && text.contains("Comment too big"),
                "{text}"
            );
        }
    }
}

#[test]
fn a_known_rule_decodes_to_the_expected_attributes() {
    let mut d = crate::ir::Diff::default();
    d.add_chains.insert(
        "web".into(),
        Chain {
            base: None,
            rules: vec![
                Rule::new(
                    vec![
                        Match::L4Proto {
                            proto: 6,
                            negate: false,
                        },
                        Match::Port {
                            side: Side::Dst,
                            set: "p".into(),
                            negate: true,
                        },
                    ],
                    Stmt::Jump("x".into()),
                )
                .comment("hi"),
            ],
        },
    );
    let tx = super::diff_transaction("t", &d).unwrap();
    // type 0x0a06 = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE; flags
    // REQUEST|EXCL|CREATE|APPEND; nfgenmsg family inet; nested attributes
    // marked NLA_F_NESTED; u32 values big endian; registers and verdicts as nft
    // sets them (meta l4proto into reg 1, th dport != @p, jump x); only the
    // batch end asks for an acknowledgement.
    let expected = "\
msg len 20 type 0x0010 flags 0x0001 seq 1 pid 0 nfgen 0000000a
msg len 36 type 0x0a03 flags 0x0401 seq 2 pid 0 nfgen 01000000
  1 = 7400
  3 = 77656200
msg len 284 type 0x0a06 flags 0x0e01 seq 3 pid 0 nfgen 01000000
  1 = 7400
  2 = 77656200
  7 = 0003686900
  4 {
    1 {
      1 = 6d65746100
      2 {
        2 = 00000010
        1 = 00000001
      }
    }
    1 {
      1 = 636d7000
      2 {
        1 = 00000001
        2 = 00000000
        3 {
          1 = 06
        }
      }
    }
    1 {
      1 = 7061796c6f616400
      2 {
        1 = 00000001
        2 = 00000002
        3 = 00000002
        4 = 00000002
      }
    }
    1 {
      1 = 6c6f6f6b757000
      2 {
        2 = 00000001
        1 = 7000
        5 = 00000001
      }
    }
    1 {
      1 = 696d6d65646961746500
      2 {
        1 = 00000000
        2 {
          2 {
            1 = fffffffd
            2 = 7800
          }
        }
      }
    }
  }
msg len 20 type 0x0011 flags 0x0005 seq 4 pid 0 nfgen 0000000a
";
    assert_eq!(dump(tx.bytes()), expected);
    assert_eq!(tx.messages, 2);
    assert_eq!(
        tx.message_kinds(),
        [("NEWCHAIN", 1), ("NEWRULE", 1)].into_iter().collect()
    );
}

#[test]
fn nul_bytes_are_found_anywhere_in_a_name() {
    for len in 0..40 {
        let clean = "x".repeat(len);
        assert!(!super::encode::has_nul(clean.as_bytes()), "{len}");
        for at in 0..len {
            let mut b = clean.clone().into_bytes();
            b[at] = 0;
            assert!(super::encode::has_nul(&b), "{len} {at}");
        }
    }
    // High bytes (UTF-8) next to zeros are not confused for them.
    assert!(!super::encode::has_nul("ééééé".as_bytes()));
}

#[test]
fn a_reused_buffer_gives_the_same_batch() {
    let rs = sample();
    let fresh = super::full_transaction(&rs).unwrap();
    // A dirty, larger buffer from an earlier, bigger transaction.
    let mut big = sample();
    big.sets.insert(
        "many".into(),
        SetElems::Addr4((0..2000u32).map(std::net::Ipv4Addr::from).collect()),
    );
    let old = super::full_transaction(&big).unwrap().into_buffer();
    let reused = super::full_transaction_in(&rs, old).unwrap();
    assert_eq!(reused.bytes(), fresh.bytes());
    let d = rs.diff(&big);
    let a = super::diff_transaction("calinet", &d).unwrap();
    let b = super::diff_transaction_in("calinet", &d, reused.into_buffer()).unwrap();
    assert_eq!(a.bytes(), b.bytes());
    assert_eq!(a.messages, b.messages);
}

#[test]
fn a_message_is_described_by_kind_and_object() {
    let tx = super::full_transaction(&sample()).unwrap();
    // seq 1 is the batch begin; then NEWTABLE, DELTABLE, NEWTABLE, the chains
    // in name order (forward first), ...
    assert_eq!(tx.describe(1), None);
    assert_eq!(tx.describe(2).as_deref(), Some(": NEWTABLE, table calinet"));
    assert_eq!(tx.describe(5).as_deref(), Some(": NEWCHAIN, chain forward"));
    assert_eq!(tx.describe(9).as_deref(), Some(": NEWSET, set dispatch"));
    assert_eq!(
        tx.describe(10).as_deref(),
        Some(": NEWSETELEM, set dispatch")
    );
    let last_rule = 1 + tx.messages as u32;
    assert_eq!(
        tx.describe(last_rule).as_deref(),
        Some(": NEWRULE, chain to-web")
    );
    assert_eq!(tx.describe(10_000), None);
}

#[test]
fn the_acknowledged_sequence_number_is_the_batch_end_s() {
    let tx = super::full_transaction(&sample()).unwrap();
    let dumped = dump(tx.bytes());
    let last = dumped.lines().rfind(|l| l.starts_with("msg")).unwrap();
    assert!(last.contains("type 0x0011 flags 0x0005"), "{last}");
    assert!(
        last.contains(&format!(" seq {} ", tx.end_seq)),
        "{last} vs {}",
        tx.end_seq
    );
    assert_eq!(tx.end_seq, tx.messages as u32 + 2);
}

#[test]
fn an_attribute_too_long_for_netlink_is_refused_not_wrapped() {
    let mut rs = sample();
    rs.chains
        .get_mut("to-web")
        .unwrap()
        .rules
        .push(Rule::new(vec![], Stmt::Jump("x".repeat(70_000))));
    let err = super::full_transaction(&rs).unwrap_err().to_string();
    assert!(
        err.contains("does not fit netlink's 16-bit length"),
        "{err}"
    );
    // A rule whose expression list outgrows 64 KiB.
    let mut rs = sample();
    let matches = (0..3000)
        .map(|_| Match::L4Proto {
            proto: 6,
            negate: false,
        })
        .collect();
    rs.chains
        .get_mut("to-web")
        .unwrap()
        .rules
        .push(Rule::new(matches, Stmt::Accept));
    let err = super::full_transaction(&rs).unwrap_err().to_string();
    assert!(err.contains("nested attribute"), "{err}");
}

#[cfg(feature = "proptest")]
mod props {
    use proptest::prelude::*;

    use super::{assert_same_bytes, nftnl_oracle};
    use crate::compile::{Options, Pool, compile};
    use crate::proptest_support as s;
    use crate::semantics::{Endpoints, PolicyModel};

    fn ruleset(
        res: &[crate::model::AnyResource],
        eps: Vec<crate::semantics::Endpoint>,
    ) -> crate::ir::Ruleset {
        let model = PolicyModel::build(res).expect("generated resources are valid");
        let eps = Endpoints::new(&model, eps);
        let pools = [Pool {
            cidr: "10.0.0.0/16".parse().unwrap(),
            nat_outgoing: true,
        }];
        compile(&model, &eps, &pools, &Options::default()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// For compiled rulesets of random policies and endpoints, and the diff
        /// between two of them, the encoder writes libnftnl's bytes.
        #[test]
        fn compiled_rulesets_encode_like_libnftnl(
            res_a in s::resources(),
            eps_a in s::endpoints(),
            res_b in s::resources(),
            eps_b in s::endpoints(),
        ) {
            let a = ruleset(&res_a, eps_a);
            let b = ruleset(&res_b, eps_b);
            for rs in [&a, &b] {
                let ours = crate::netlink::full_transaction(rs).unwrap();
                let (oracle, n) = nftnl_oracle::full_transaction(rs).unwrap();
                assert_same_bytes(ours.bytes(), &oracle, "full");
                prop_assert_eq!(ours.messages, n);
            }
            let d = a.diff(&b);
            let ours = crate::netlink::diff_transaction(&a.table, &d).unwrap();
            let (oracle, n) = nftnl_oracle::diff_transaction(&a.table, &d).unwrap();
            assert_same_bytes(ours.bytes(), &oracle, "diff");
            prop_assert_eq!(ours.messages, n);
        }
    }
}
