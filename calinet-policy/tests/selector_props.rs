//! Property tests of the selector language: canonical printing round-trips, the
//! parser never panics on arbitrary text, and evaluation agrees with the printed form.

use calinet_policy::proptest_support as s;
use calinet_policy::selector::Selector;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parse_of_print_is_identity(sel in s::selector()) {
        let printed = sel.to_string();
        let back = Selector::parse(&printed);
        prop_assert_eq!(back.as_ref(), Ok(&sel), "printed: {}", printed);
    }

    #[test]
    fn printed_form_evaluates_the_same(sel in s::selector(), labels in s::labels()) {
        let back = Selector::parse(&sel.to_string()).unwrap();
        prop_assert_eq!(back.matches(&labels), sel.matches(&labels));
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn near_miss_text_never_panics_and_errors_point_inside(text in s::selector_like_text()) {
        match Selector::parse(&text) {
            Ok(sel) => {
                // Whatever parses must print to something that parses to the same tree.
                prop_assert_eq!(Selector::parse(&sel.to_string()), Ok(sel));
            }
            Err(e) => {
                prop_assert!(e.position <= text.len());
                prop_assert!(text.is_char_boundary(e.position));
                prop_assert!(!e.expected.is_empty());
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Endpoint(u8, std::collections::BTreeMap<String, String>, Vec<String>),
    RemoveEndpoint(u8),
    Selector(u8, Selector),
    RemoveSelector(u8),
    Profile(String, std::collections::BTreeMap<String, String>),
    RemoveProfile(String),
}

fn op() -> impl Strategy<Value = Op> {
    let profile = prop::sample::select(vec!["p1".to_owned(), "p2".to_owned()]);
    prop_oneof![
        4 => (0..8u8, s::labels(), prop::collection::vec(profile.clone(), 0..2))
            .prop_map(|(e, l, p)| Op::Endpoint(e, l, p)),
        1 => (0..8u8).prop_map(Op::RemoveEndpoint),
        3 => (0..6u8, s::selector()).prop_map(|(i, sel)| Op::Selector(i, sel)),
        1 => (0..6u8).prop_map(Op::RemoveSelector),
        2 => (profile.clone(), s::labels()).prop_map(|(p, l)| Op::Profile(p, l)),
        1 => profile.prop_map(Op::RemoveProfile),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// After any sequence of updates the incremental index equals a from-scratch
    /// evaluation, and the reported changes replay to the same membership.
    #[test]
    fn label_index_matches_brute_force(ops in prop::collection::vec(op(), 1..40)) {
        use calinet_policy::index::{Change, LabelIndex};
        use std::collections::{BTreeMap, BTreeSet};
        let mut ix: LabelIndex<u8, u8> = LabelIndex::new();
        let mut eps: BTreeMap<u8, (BTreeMap<String, String>, Vec<String>)> = BTreeMap::new();
        let mut sels: BTreeMap<u8, Selector> = BTreeMap::new();
        let mut profiles: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut replay: BTreeSet<(u8, u8)> = BTreeSet::new();
        for op in ops {
            let changes = match op {
                Op::Endpoint(e, l, p) => { eps.insert(e, (l.clone(), p.clone())); ix.upsert_endpoint(e, l, p) }
                Op::RemoveEndpoint(e) => { eps.remove(&e); ix.remove_endpoint(&e) }
                Op::Selector(i, sel) => { sels.insert(i, sel.clone()); ix.upsert_selector(i, sel) }
                Op::RemoveSelector(i) => { sels.remove(&i); ix.remove_selector(&i) }
                Op::Profile(p, l) => { profiles.insert(p.clone(), l.clone()); ix.upsert_profile(&p, l) }
                Op::RemoveProfile(p) => { profiles.remove(&p); ix.remove_profile(&p) }
            };
            for c in changes {
                match c {
                    Change::Added(s, e) => prop_assert!(replay.insert((s, e)), "added twice"),
                    Change::Removed(s, e) => prop_assert!(replay.remove(&(s, e)), "removed absent"),
                }
            }
        }
        let mut expected = BTreeSet::new();
        for (e, (own, ps)) in &eps {
            let mut eff: BTreeMap<String, String> = BTreeMap::new();
            for p in ps.iter().rev() {
                if let Some(pl) = profiles.get(p) { eff.extend(pl.clone()); }
            }
            eff.extend(own.clone());
            for (i, sel) in &sels {
                if sel.matches(&eff) { expected.insert((*i, *e)); }
            }
        }
        let actual: BTreeSet<(u8, u8)> = sels.keys()
            .flat_map(|i| ix.matching(i).map(move |e| (*i, *e)))
            .collect();
        prop_assert_eq!(&actual, &expected);
        prop_assert_eq!(&replay, &expected);
    }
}
