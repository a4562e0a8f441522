//! Proptest strategies for selectors, labels, policies and packets, for this crate's
//! tests and for downstream projects (feature `proptest`).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::selector::{Expr, Selector};

/// Label keys drawn from a small alphabet so that random selectors and random label
/// sets actually meet; includes words that are also selector keywords.
pub fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["app", "tier", "env", "role", "k8s.io/name"]).prop_map(String::from),
        1 => prop::sample::select(vec!["has", "all", "in", "not", "global", "contains"]).prop_map(String::from),
        1 => "[a-zA-Z0-9_./-]{1,10}",
    ]
}

/// Label values: a small alphabet again, plus strings with one kind of quote.
pub fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["web", "db", "api", "prod", "dev", ""]).prop_map(String::from),
        1 => "[a-z0-9 ._:/'-]{0,8}",
        1 => "[a-z0-9 \"]{0,8}",
    ]
}

/// A label map.
pub fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(key(), value(), 0..4)
}

fn leaf() -> impl Strategy<Value = Expr> {
    let set = || prop::collection::btree_set(value(), 0..3);
    prop_oneof![
        Just(Expr::All),
        Just(Expr::Global),
        key().prop_map(Expr::Has),
        (key(), value()).prop_map(|(k, v)| Expr::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::Ne(k, v)),
        (key(), set()).prop_map(|(k, v): (String, BTreeSet<String>)| Expr::In(k, v)),
        (key(), set()).prop_map(|(k, v): (String, BTreeSet<String>)| Expr::NotIn(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Expr::EndsWith(k, v)),
    ]
}

/// Arbitrary selector expression trees (every operator, nested).
pub fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

/// Arbitrary selectors.
pub fn selector() -> impl Strategy<Value = Selector> {
    expr().prop_map(Selector::from_expr)
}

/// Text that looks like a selector: fragments of the grammar glued together, so
/// the parser sees near-misses, not only noise.
pub fn selector_like_text() -> impl Strategy<Value = String> {
    let frag = prop_oneof![
        Just("has(".to_owned()),
        Just(")".to_owned()),
        Just("(".to_owned()),
        Just("!".to_owned()),
        Just("&&".to_owned()),
        Just("||".to_owned()),
        Just("==".to_owned()),
        Just("!=".to_owned()),
        Just(" in ".to_owned()),
        Just(" not ".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just(",".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("all()".to_owned()),
        Just("global()".to_owned()),
        Just(" starts with ".to_owned()),
        Just(" ends ".to_owned()),
        Just(" contains ".to_owned()),
        key(),
        value().prop_map(|v| format!("'{v}'")),
        any::<String>(),
    ];
    prop::collection::vec(frag, 0..12).prop_map(|v| v.concat())
}
