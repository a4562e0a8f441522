//! Helpers shared by the namespace tests: kernel routes BIRD owns, waits on
//! session state and routes.

#![allow(dead_code)] // each test binary uses a subset

use std::collections::BTreeSet;
use std::time::Duration;

use calinet_bgp::{BirdProcess, Controller};
use ipnet::IpNet;

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// Destinations of `proto bird` routes in `ns` (`"4"` or `"6"`).
pub fn bird_routes_of(ns: &testlab::Netns, family: &str) -> BTreeSet<IpNet> {
    ns.route_table(family, "main")
        .expect("ip route")
        .into_iter()
        .filter(|r| r.protocol.as_deref() == Some("bird"))
        .filter_map(|r| r.dst_net())
        .collect()
}

/// IPv4 destinations of `proto bird` routes in `ns`.
pub fn bird_routes(ns: &testlab::Netns) -> BTreeSet<IpNet> {
    bird_routes_of(ns, "4")
}

/// Waits until exactly `sessions` BGP protocols are Established.
pub fn wait_established(c: &mut Controller<BirdProcess>, sessions: usize, what: &str) {
    testlab::wait_for(what, Duration::from_secs(40), || {
        let protocols = c
            .protocols()
            .map_err(|e| testlab::Error::Invalid(e.to_string()))?;
        Ok(protocols
            .iter()
            .filter(|p| p.proto == "BGP" && p.is_established())
            .count()
            == sessions)
    })
    .unwrap_or_else(|e| panic!("{what}: {e}; protocols: {:#?}", c.protocols()));
}

/// Waits until the `proto bird` routes of `family` in `ns` are exactly `want`.
pub fn wait_routes_of(ns: &testlab::Netns, family: &str, want: &BTreeSet<IpNet>, what: &str) {
    testlab::wait_for(what, Duration::from_secs(40), || {
        Ok(bird_routes_of(ns, family) == *want)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{what}: {e}; have {:?}, want {want:?}",
            bird_routes_of(ns, family)
        )
    });
}

/// [`wait_routes_of`] for IPv4.
pub fn wait_routes(ns: &testlab::Netns, want: &BTreeSet<IpNet>, what: &str) {
    wait_routes_of(ns, "4", want, what)
}

/// True when the test can run; otherwise it has printed SKIPPED.
pub fn have_bird() -> bool {
    if testlab::cmd::have("bird") {
        return true;
    }
    testlab::skip::skip("bird (Debian bird2) is not installed");
    false
}
