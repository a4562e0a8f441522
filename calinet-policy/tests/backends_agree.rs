//! The two backends agree: the same IR applied through `nft -f` and through the
//! netlink batch leaves the same kernel state (`nft -j list ruleset`, object
//! handles aside), for a full apply and for an incremental update.

mod common;

use calinet_policy::netlink::{NetlinkBackend, NetlinkSocket};
use calinet_policy::nft::{NftCli, render_diff, render_full};
use serde_json::Value;

fn listing(nft: &NftCli) -> Value {
    common::normalized_listing(nft)
}

fn assert_same(a: &NftCli, b: &NftCli, what: &str) {
    let (la, lb) = (listing(a), listing(b));
    if la != lb {
        let ta = a.list_table("calinet").unwrap();
        let tb = b.list_table("calinet").unwrap();
        let diff: Vec<String> = ta
            .lines()
            .zip(tb.lines())
            .filter(|(x, y)| x != y)
            .take(20)
            .map(|(x, y)| format!("nft:     {x}\nnetlink: {y}"))
            .collect();
        panic!(
            "{what}: listings differ\n{}\n--- nft ---\n{ta}\n--- netlink ---\n{tb}",
            diff.join("\n")
        );
    }
}

#[test]
fn nft_text_and_netlink_leave_the_same_ruleset() {
    testlab::require!(testlab::Feature::Nftables);
    let lab = testlab::Lab::new("backends_agree").unwrap();
    let ns_text = lab.netns("text").unwrap();
    let ns_nl = lab.netns("nl").unwrap();
    let text = NftCli {
        netns: Some(ns_text.name().to_owned()),
    };
    let nl_view = NftCli {
        netns: Some(ns_nl.name().to_owned()),
    };
    let mut nl = NetlinkBackend::new(NetlinkSocket::open_in(&ns_nl.path()).unwrap());

    let m = common::model();
    let rs = common::ruleset(&m, common::base_endpoints());
    text.apply(&render_full(&rs)).unwrap();
    let stats = nl.apply(&rs).unwrap();
    assert!(stats.touched_rules && stats.messages > rs.rule_count());
    assert_same(&text, &nl_view, "full apply");

    // An endpoint like an existing one: element-only transaction on both sides.
    let mut eps = common::base_endpoints();
    eps.push(common::endpoint(
        "a/web2",
        "a",
        "caliweb2",
        "10.0.0.3",
        "fd00::3",
        &[("app", "web")],
    ));
    let rs2 = common::ruleset(&m, eps.clone());
    text.apply(&render_diff("calinet", &rs.diff(&rs2))).unwrap();
    let tx = calinet_policy::netlink::diff_transaction("calinet", &rs.diff(&rs2)).unwrap();
    let kinds = tx.message_kinds();
    assert_eq!(
        kinds.keys().copied().collect::<Vec<_>>(),
        vec!["NEWSETELEM"],
        "{kinds:?}"
    );
    let stats = nl.apply(&rs2).unwrap();
    assert!(!stats.touched_rules, "{stats:?}");
    assert_eq!(stats.messages, kinds["NEWSETELEM"]);
    assert_same(&text, &nl_view, "endpoint added");

    // A policy change and an endpoint removed.
    let mut m2 = common::model();
    m2.tiers.retain(|t| t.name != "security");
    eps.retain(|e| e.name != "a/db");
    let rs3 = common::ruleset(&m2, eps);
    text.apply(&render_diff("calinet", &rs2.diff(&rs3)))
        .unwrap();
    let stats = nl.apply(&rs3).unwrap();
    assert!(stats.touched_rules);
    assert_same(&text, &nl_view, "policy changed");

    // Removing an endpoint whose signature others share: element deletions only.
    let mut eps4 = common::base_endpoints();
    eps4.push(common::endpoint(
        "a/web2",
        "a",
        "caliweb2",
        "10.0.0.3",
        "fd00::3",
        &[("app", "web")],
    ));
    let rs4 = common::ruleset(&m2, eps4.clone());
    eps4.retain(|e| e.name != "a/web2");
    let rs5 = common::ruleset(&m2, eps4);
    let tx = calinet_policy::netlink::diff_transaction("calinet", &rs4.diff(&rs5)).unwrap();
    let kinds = tx.message_kinds();
    assert_eq!(
        kinds.keys().copied().collect::<Vec<_>>(),
        vec!["DELSETELEM"],
        "{kinds:?}"
    );

    // IPv6 rules switched off: IPv6 sets and rules go, IPv6 is dropped.
    let v4_only = calinet_policy::compile::compile(
        &m2,
        &calinet_policy::semantics::Endpoints::new(&m2, common::base_endpoints()),
        &common::pools(),
        &calinet_policy::compile::Options {
            ipv6: false,
            ..Default::default()
        },
    )
    .unwrap();
    text.apply(&render_diff("calinet", &rs3.diff(&v4_only)))
        .unwrap();
    nl.apply(&v4_only).unwrap();
    assert_same(&text, &nl_view, "IPv6 rules off");
    let listed = text.list_table("calinet").unwrap();
    assert!(listed.contains("meta nfproto ipv6 drop"), "{listed}");
    assert!(!listed.contains("ip6 saddr"), "{listed}");
}

#[test]
fn a_failing_transaction_changes_nothing_and_names_the_errno() {
    testlab::require!(testlab::Feature::Nftables);
    let lab = testlab::Lab::new("netlink_atomic").unwrap();
    let ns = lab.netns("fw").unwrap();
    let view = NftCli {
        netns: Some(ns.name().to_owned()),
    };
    let mut nl = NetlinkBackend::new(NetlinkSocket::open_in(&ns.path()).unwrap());
    let m = common::model();
    let rs = common::ruleset(&m, common::base_endpoints());
    nl.apply(&rs).unwrap();
    let before = listing(&view);
    // A rule jumping to a chain that does not exist makes the kernel refuse the
    // whole batch.
    let mut broken = rs.clone();
    broken
        .chains
        .get_mut("forward")
        .unwrap()
        .rules
        .push(calinet_policy::ir::Rule::new(
            vec![],
            calinet_policy::ir::Stmt::Jump("no-such-chain".into()),
        ));
    if let Some(calinet_policy::ir::SetElems::IfGoto(m)) = broken.sets.get_mut("fw-dispatch") {
        m.insert("calinew".into(), "fw-missing".into());
    }
    let err = nl.apply(&broken).unwrap_err().to_string();
    assert!(err.contains("errno 2") || err.contains("errno 22"), "{err}");
    // The error names the request the kernel refused: the first bad message of
    // the batch is the rule jumping nowhere.
    assert!(err.contains("NEWRULE, chain forward"), "{err}");
    assert_eq!(
        listing(&view),
        before,
        "nothing of the failed transaction is visible"
    );
}
