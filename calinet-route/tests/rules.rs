//! Kernel test (root): routing rules reconciled in a testlab namespace, checked
//! with `ip rule` (the independent oracle).

use calinet_route::Family;
use calinet_route::rule::{RuleSpec, reconcile_rules};
use calinet_route::{Netns, RouteProtocol};

type Res = Result<(), Box<dyn std::error::Error>>;

fn rules(ns: &testlab::Netns, family: &str) -> Vec<String> {
    ns.ip(&[family, "rule", "show"])
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn rules_are_added_kept_changed_and_deleted_without_touching_others() -> Res {
    let lab = testlab::Lab::new("route_rules")?;
    let ns = lab.netns("a")?;
    let netns = Netns::named(ns.name())?;
    // Someone else's rules: one of the same shape at the same priority, one v6.
    ns.ip(&[
        "rule",
        "add",
        "not",
        "fwmark",
        "0x100000/0x100000",
        "lookup",
        "1",
        "pref",
        "99",
    ])?;
    ns.ip(&[
        "-6", "rule", "add", "fwmark", "0x1", "lookup", "5", "pref", "150",
    ])?;
    let before4 = rules(&ns, "-4");
    let before6 = rules(&ns, "-6");

    let wg = RuleSpec::lookup(Family::V4, 99, 1)
        .fwmark(0x10_0000, 0x10_0000)
        .invert();
    let v6 = RuleSpec::lookup(Family::V6, 98, 2);
    let report = reconcile_rules(&netns, &[wg.clone(), v6.clone()], RouteProtocol::CALICO)?;
    assert_eq!(report.writes, 2);
    let now4 = rules(&ns, "-4");
    assert!(
        now4.contains(&"99: not from all fwmark 0x100000/0x100000 lookup 1 proto 80".to_string()),
        "{now4:#?}"
    );
    assert_eq!(now4.len(), before4.len() + 1, "{now4:#?}");
    assert!(rules(&ns, "-6").contains(&"98: from all lookup 2 proto 80".to_string()));

    // Idempotent: a second apply writes nothing.
    let again = reconcile_rules(&netns, &[wg.clone(), v6.clone()], RouteProtocol::CALICO)?;
    assert_eq!(again.writes, 0, "{:?}", again.plan);

    // Change: the table moves from 1 to 7; the old owned rule goes, the new one comes.
    let moved = RuleSpec::lookup(Family::V4, 99, 7)
        .fwmark(0x10_0000, 0x10_0000)
        .invert();
    let changed = reconcile_rules(&netns, &[moved, v6], RouteProtocol::CALICO)?;
    assert_eq!(changed.writes, 2);
    assert_eq!(changed.plan.deletions, vec![wg]);
    let now4 = rules(&ns, "-4");
    assert!(
        now4.iter().any(|r| r.ends_with("lookup 7 proto 80")),
        "{now4:#?}"
    );
    assert!(
        !now4.iter().any(|r| r.ends_with("lookup 1 proto 80")),
        "{now4:#?}"
    );

    // Nothing desired: every owned rule goes, the foreign ones stay exactly.
    let cleared = reconcile_rules(&netns, &[], RouteProtocol::CALICO)?;
    assert_eq!(cleared.writes, 2);
    assert_eq!(rules(&ns, "-4"), before4);
    assert_eq!(rules(&ns, "-6"), before6);
    assert!(
        before4
            .iter()
            .any(|r| r.starts_with("99: not from all fwmark 0x100000/0x100000 lookup 1")),
        "{before4:#?}"
    );

    // Bad input: refused before anything is written, naming the rule.
    let bad = RuleSpec::lookup(Family::V4, 90, 0);
    let good = RuleSpec::lookup(Family::V4, 91, 3);
    let err = reconcile_rules(&netns, &[good, bad], RouteProtocol::CALICO).unwrap_err();
    assert!(err.to_string().contains("90: from all lookup 0"), "{err}");
    assert_eq!(rules(&ns, "-4"), before4, "nothing half-applied");
    Ok(())
}
