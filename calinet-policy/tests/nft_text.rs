//! The nft script backend against the real kernel (root, in a lab namespace):
//! full scripts validate with `nft -c` and apply; diffs apply on top and give the
//! same table as a full apply of the new state.

mod common;

use calinet_policy::nft::{NftCli, render_diff, render_full};

fn lab_nft(lab: &testlab::Lab) -> NftCli {
    let ns = lab.netns("fw").unwrap();
    NftCli {
        netns: Some(ns.name().to_owned()),
    }
}

#[test]
fn full_script_validates_and_applies() {
    testlab::require!(testlab::Feature::Nftables);
    let lab = testlab::Lab::new("nft_full").unwrap();
    let nft = lab_nft(&lab);
    let m = common::model();
    let rs = common::ruleset(&m, common::base_endpoints());
    let script = render_full(&rs);
    nft.check(&script)
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
    nft.apply(&script).unwrap();
    let listed = nft.list_table("calinet").unwrap();
    assert!(listed.contains("masquerade fully-random"), "{listed}");
    assert!(listed.contains("iifname vmap @fw-dispatch"), "{listed}");
    assert!(listed.contains("\"caliweb\" : goto fw-"), "{listed}");
    // Applying the full script again replaces the table atomically.
    nft.apply(&script).unwrap();
    assert_eq!(nft.list_table("calinet").unwrap(), listed);
}

#[test]
fn diffs_apply_and_converge_to_the_full_state() {
    testlab::require!(testlab::Feature::Nftables);
    let lab = testlab::Lab::new("nft_diff").unwrap();
    let nft = lab_nft(&lab);
    let m = common::model();
    let before = common::ruleset(&m, common::base_endpoints());
    nft.apply(&render_full(&before)).unwrap();

    // An endpoint like an existing one: elements only.
    let mut eps = common::base_endpoints();
    eps.push(common::endpoint(
        "a/web2",
        "a",
        "caliweb2",
        "10.0.0.3",
        "fd00::3",
        &[("app", "web")],
    ));
    let after = common::ruleset(&m, eps.clone());
    let d = before.diff(&after);
    assert!(!d.touches_rules(), "{d:#?}");
    let script = render_diff("calinet", &d);
    assert!(
        !script.contains(" rule ") && !script.contains(" chain "),
        "{script}"
    );
    nft.apply(&script)
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
    let incremental = common::normalized_listing(&nft);
    nft.apply(&render_full(&after)).unwrap();
    assert_eq!(incremental, common::normalized_listing(&nft));

    // A policy change and a removed endpoint: chains change, still one script.
    let mut m2 = common::model();
    m2.tiers.retain(|t| t.name != "security");
    eps.retain(|e| e.name != "a/db");
    let next = common::ruleset(&m2, eps);
    let d = after.diff(&next);
    assert!(d.touches_rules());
    let script = render_diff("calinet", &d);
    nft.apply(&script)
        .unwrap_or_else(|e| panic!("{e}\n{script}"));
    let incremental = common::normalized_listing(&nft);
    nft.apply(&render_full(&next)).unwrap();
    assert_eq!(incremental, common::normalized_listing(&nft));
}

#[test]
fn invalid_script_is_rejected_with_nft_message() {
    testlab::require!(testlab::Feature::Nftables);
    let lab = testlab::Lab::new("nft_bad").unwrap();
    let nft = lab_nft(&lab);
    let e = nft
        .check("table inet x { chain c { bogus } }")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nft -c -f -") && e.contains("syntax error"),
        "{e}"
    );
}
