//! Property: random valid plans render to configurations BIRD's own parser
//! accepts (`bird -p -c FILE` exits 0). Skips visibly when `bird` is missing.

use std::io::Write;

use calinet_bgp::{
    BgpConfiguration, BgpPeer, EncapMode, Input, NodeBgpSpec, NodeInfo, Password, Pool,
    SecretKeyRef, ServiceCidr, plan, render,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    nodes: usize,
    v6: Vec<bool>,
    rr: Vec<bool>,
    mesh: bool,
    asn: u32,
    port: u16,
    blocks: Vec<(u8, u8)>,
    borrowed: Vec<(u8, u8)>,
    encap: u8,
    no_export: bool,
    tors: Vec<(u8, Option<u16>, u32, bool, bool)>,
    services: bool,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..8,
        proptest::collection::vec(any::<bool>(), 8),
        proptest::collection::vec(any::<bool>(), 8),
        any::<bool>(),
        prop_oneof![Just(64512u32), 1u32..=u32::MAX],
        prop_oneof![Just(179u16), 1000u16..2000],
        proptest::collection::vec((0u8..4, 0u8..=255), 0..6),
        proptest::collection::vec((0u8..4, 0u8..=255), 0..4),
        0u8..3,
        any::<bool>(),
        proptest::collection::vec(
            (
                1u8..250,
                proptest::option::of(1u16..65535),
                1u32..=u32::MAX,
                any::<bool>(),
                any::<bool>(),
            ),
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(
            |(
                nodes,
                v6,
                rr,
                mesh,
                asn,
                port,
                blocks,
                borrowed,
                encap,
                no_export,
                tors,
                services,
            )| Case {
                nodes,
                v6,
                rr,
                mesh,
                asn,
                port,
                blocks,
                borrowed,
                encap,
                no_export,
                tors,
                services,
            },
        )
}

fn input(c: &Case) -> Input {
    let mut input = Input::new("n0");
    for i in 0..c.nodes {
        let mut bgp = NodeBgpSpec::ipv4(format!("198.51.100.{}/24", 10 + i).parse().unwrap());
        if c.v6[i] {
            bgp.ipv6_address = Some(format!("2001:db8::{:x}/64", 10 + i).parse().unwrap());
        }
        if c.rr[i] {
            bgp.route_reflector_cluster_id = Some("224.0.0.1".into());
        }
        let mut n = NodeInfo::new(format!("n{i}"), bgp);
        if c.rr[i] {
            n.labels.insert("route-reflector".into(), "".into());
        }
        input.nodes.push(n);
    }
    let mut config = BgpConfiguration::new("default");
    config.spec.node_to_node_mesh_enabled = Some(c.mesh);
    config.spec.as_number = Some(c.asn.to_string().parse().unwrap());
    config.spec.listen_port = Some(c.port);
    if c.services {
        config
            .spec
            .service_cluster_ips
            .push(ServiceCidr::new("10.96.0.0/12".parse().unwrap()));
        config
            .spec
            .service_load_balancer_ips
            .push(ServiceCidr::new("2001:db8:5::/112".parse().unwrap()));
    }
    input.config = Some(config);
    let mode = [EncapMode::Never, EncapMode::Always, EncapMode::CrossSubnet][c.encap as usize];
    input.pools.push(Pool::new("10.65.0.0/16".parse().unwrap()));
    input
        .pools
        .push(Pool::new("10.66.0.0/16".parse().unwrap()).vxlan(mode));
    input
        .pools
        .push(Pool::new("10.67.0.0/16".parse().unwrap()).disable_bgp_export(c.no_export));
    input.pools.push(Pool::new("fd00:65::/48".parse().unwrap()));
    for &(pool, n) in &c.blocks {
        input.blocks.push(
            match pool {
                3 => format!("fd00:65:0:{n:x}::/122"),
                p => format!("10.{}.{n}.0/26", 65 + p),
            }
            .parse()
            .unwrap(),
        );
    }
    for &(pool, n) in &c.borrowed {
        input.borrowed.push(
            match pool {
                3 => format!("fd00:65:0:{n:x}::9/128"),
                p => format!("10.{}.{n}.9/32", 65 + p),
            }
            .parse()
            .unwrap(),
        );
    }
    for (i, &(host, port, asn, keep, pw)) in c.tors.iter().enumerate() {
        let mut p = BgpPeer::new(format!("tor{i}"));
        let ip = format!("192.0.2.{host}");
        p.spec.peer_ip = Some(match port {
            Some(port) => format!("{ip}:{port}"),
            None => ip,
        });
        p.spec.as_number = Some(asn.to_string().parse().unwrap());
        p.spec.keep_original_next_hop = keep;
        if i % 2 == 1 {
            p.spec.node_selector = Some("all()".into());
        }
        if pw {
            let r = SecretKeyRef::new("bgp", format!("tor{i}"));
            input
                .secrets
                .insert(r.clone(), Password::new(format!("pw-{i}")).unwrap());
            p.spec.password = Some(
                serde_json::from_value(
                    serde_json::json!({"secretKeyRef": {"name": r.name, "key": r.key}}),
                )
                .unwrap(),
            );
        }
        input.peers.push(p);
    }
    let mut rr = BgpPeer::new("to-rr");
    rr.spec.peer_selector = Some("has(route-reflector)".into());
    input.peers.push(rr);
    input
}

fn bird_accepts(c: &Case) -> Result<(), TestCaseError> {
    let input = input(c);
    // Duplicate ToR addresses are an input error, not a render case.
    let Ok(plan) = plan(&input) else {
        let mut seen = std::collections::BTreeSet::new();
        prop_assert!(
            c.tors.iter().any(|t| !seen.insert((t.0, t.1))),
            "unexpected plan error: {:?}",
            plan(&input)
        );
        return Ok(());
    };
    let text = render(&plan);
    prop_assert_eq!(&text, &render(&plan));
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let out = std::process::Command::new("bird")
        .args(["-p", "-c"])
        .arg(file.path())
        .output()
        .unwrap();
    prop_assert!(
        out.status.success(),
        "bird -p rejected:\n{}\n---\n{}",
        String::from_utf8_lossy(&out.stderr),
        text
    );
    Ok(())
}

#[test]
fn bird_accepts_every_rendered_plan() {
    // Checked once, so a missing bird is one visible skip, not one per case.
    if !testlab::cmd::have("bird") {
        testlab::skip!("bird (Debian bird2) is not installed");
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&case(), |c| bird_accepts(&c)) {
        panic!("{e}");
    }
}
