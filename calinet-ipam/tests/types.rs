//! Resource types: Calico's JSON round-trips, and every validation rule.

use calinet_ipam::{
    BlockAffinity, BlockCidr, EncapMode, Error, HandleId, IpPool, IpPoolSpec, IpReservation,
    IpamBlock, IpamConfigSpec, IpamConfiguration, IpamHandle, NodeName, validate_pools,
};
use serde_json::Value;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    json: &str,
) -> T {
    let v: T = serde_json::from_str(json).expect("decode");
    let out = serde_json::to_string(&v).expect("encode");
    let back: T = serde_json::from_str(&out).expect("decode again");
    assert_eq!(back, v, "typed round trip");
    let a: Value = serde_json::from_str(json).expect("json");
    let b: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        strip_nulls(a),
        strip_nulls(b),
        "JSON round trip lost or changed fields"
    );
    v
}

/// Go writes absent optionals as null; compare with nulls removed.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        o => o,
    }
}

// Shapes as `calicoctl get -o json` and etcdctl show them for Calico v3.x.
const POOL: &str = r#"{"kind":"IPPool","apiVersion":"projectcalico.org/v3",
 "metadata":{"name":"default-ipv4-ippool","uid":"5f1c","creationTimestamp":"2026-01-01T00:00:00Z"},
 "spec":{"cidr":"172.16.0.0/16","blockSize":24,"ipipMode":"Never","vxlanMode":"CrossSubnet","natOutgoing":true,
  "disabled":false,"disableBGPExport":false,"nodeSelector":"all()","allowedUses":["Workload","Tunnel"],
  "assignmentMode":"Automatic","futureField":{"x":1}}}"#;
const BLOCK: &str = r#"{"cidr":"10.0.0.0/30","affinity":"host:node-a",
 "allocations":[0,null,1,null],"unallocated":[3,1],
 "attributes":[{"handle_id":"k8s-pod-network.abc","secondary":{"namespace":"default","node":"node-a","pod":"web","timestamp":"t"}},
               {"handle_id":"vxlan-tunnel-addr-node-a","secondary":{"node":"node-a","type":"vxlanTunnelAddress"}}],
 "deleted":false,"sequenceNumber":7,"sequenceNumberForAllocation":{"0":5,"2":6}}"#;
const AFFINITY: &str =
    r#"{"state":"confirmed","node":"node-a","type":"host","cidr":"10.0.0.0/30","deleted":"false"}"#;
const HANDLE: &str =
    r#"{"handleID":"k8s-pod-network.abc","block":{"10.0.0.0/30":1},"deleted":false}"#;
const CONFIG: &str = r#"{"kind":"IPAMConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},
 "spec":{"strictAffinity":true,"autoAllocateBlocks":true,"maxBlocksPerHost":4}}"#;
const RESERVATION: &str = r#"{"kind":"IPReservation","apiVersion":"projectcalico.org/v3","metadata":{"name":"r"},
 "spec":{"reservedCIDRs":["10.0.0.0/30","fd00::/126"]}}"#;

#[test]
fn calico_documents_round_trip() {
    let p: IpPool = round_trip(POOL);
    assert_eq!(p.block_size(), 24);
    assert_eq!(p.spec.vxlan_mode, Some(EncapMode::CrossSubnet));
    assert!(
        p.spec.extra.contains_key("futureField"),
        "unknown field dropped"
    );
    p.validate().expect("valid pool");
    let b: IpamBlock = round_trip(BLOCK);
    let blk = calinet_ipam::block::Block::from_model(b).expect("consistent block");
    assert_eq!(blk.allocated_count(), 2);
    assert_eq!(
        blk.free_order().collect::<Vec<_>>(),
        vec![3, 1],
        "FIFO order kept"
    );
    let a: BlockAffinity = round_trip(AFFINITY);
    assert!(!a.deleted.0);
    let _: BlockAffinity =
        serde_json::from_str(&AFFINITY.replace("\"false\"", "false")).expect("bool form accepted");
    let _: IpamHandle = round_trip(HANDLE);
    let c: IpamConfiguration = round_trip(CONFIG);
    c.spec.validate().expect("valid config");
    let r: IpReservation = round_trip(RESERVATION);
    r.validate().expect("valid reservation");
}

fn pool(cidr: &str) -> IpPool {
    IpPool::new("p", IpPoolSpec::with_cidr(cidr.parse().expect("cidr")))
}

fn pool_rule(p: &IpPool) -> String {
    match p.validate() {
        Err(Error::InvalidPool { pool, rule }) => {
            assert_eq!(pool, "p");
            rule
        }
        Err(Error::InvalidCidr { rule, context, .. }) => format!("{context}: {rule}"),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn pool_defaults() {
    let p = pool("10.0.0.0/16");
    assert_eq!(p.block_size(), 26);
    assert_eq!(p.node_selector(), "all()");
    assert!(
        p.allows(calinet_ipam::AllowedUse::Workload) && p.allows(calinet_ipam::AllowedUse::Tunnel)
    );
    assert!(!p.allows(calinet_ipam::AllowedUse::LoadBalancer));
    assert_eq!(pool("fd00::/64").block_size(), 122);
    p.validate().expect("valid");
}

#[test]
fn pool_block_size_ranges() {
    for (cidr, bs, ok) in [
        ("10.0.0.0/16", 19, false),
        ("10.0.0.0/16", 20, true),
        ("10.0.0.0/16", 32, true),
        ("10.0.0.0/16", 33, false),
        ("fd00::/64", 115, false),
        ("fd00::/64", 116, true),
        ("fd00::/64", 128, true),
    ] {
        let mut p = pool(cidr);
        p.spec.block_size = Some(bs);
        if ok {
            p.validate().unwrap_or_else(|e| panic!("{cidr} /{bs}: {e}"));
        } else {
            assert!(pool_rule(&p).contains("out of range"), "{cidr} /{bs}");
        }
    }
}

#[test]
fn pool_prefix_must_not_be_longer_than_block() {
    let mut p = pool("10.0.0.0/28");
    p.spec.block_size = Some(26);
    assert!(pool_rule(&p).contains("longer than blockSize"));
}

#[test]
fn pool_encapsulation_rules() {
    let mut p = pool("10.0.0.0/16");
    p.spec.ipip_mode = Some(EncapMode::Always);
    p.spec.vxlan_mode = Some(EncapMode::CrossSubnet);
    assert!(pool_rule(&p).contains("both"));
    p.spec.vxlan_mode = Some(EncapMode::Never);
    p.validate().expect("ipip alone is fine");
    let mut v6 = pool("fd00::/64");
    v6.spec.ipip_mode = Some(EncapMode::CrossSubnet);
    assert!(pool_rule(&v6).contains("IPv6"));
    v6.spec.ipip_mode = None;
    v6.spec.vxlan_mode = Some(EncapMode::Always);
    v6.validate().expect("vxlan on v6 is fine");
}

#[test]
fn pool_cidr_host_bits_and_uses() {
    let p = pool("10.0.0.1/16");
    assert!(pool_rule(&p).contains("host bits"));
    let mut p = pool("10.0.0.0/16");
    p.spec.allowed_uses = Some(vec![]);
    assert!(pool_rule(&p).contains("allowedUses"));
    let bad = IpPool::from_json(r#"{"metadata":{"name":"x"},"spec":{"cidr":"10.0.0.0/33"}}"#);
    assert!(
        matches!(bad, Err(Error::Decode { what: "IPPool", .. })),
        "{bad:?}"
    );
    let bad = IpPool::from_json(
        r#"{"metadata":{"name":"x"},"spec":{"cidr":"10.0.0.0/16","ipipMode":"Sometimes"}}"#,
    );
    assert!(matches!(bad, Err(Error::Decode { .. })));
}

#[test]
fn overlapping_pools_are_rejected() {
    let mut a = pool("10.0.0.0/16");
    a.metadata.name = "a".into();
    let mut b = pool("10.0.128.0/17");
    b.metadata.name = "b".into();
    match validate_pools(&[a.clone(), b]) {
        Err(Error::OverlappingPools { a: x, b: y, .. }) => {
            assert_eq!((x.as_str(), y.as_str()), ("a", "b"))
        }
        other => panic!("expected overlap, got {other:?}"),
    }
    let mut c = pool("10.1.0.0/16");
    c.metadata.name = "c".into();
    validate_pools(&[a.clone(), c]).expect("disjoint");
    assert!(matches!(
        validate_pools(&[a.clone(), a]),
        Err(Error::InvalidPool { .. })
    ));
}

#[test]
fn ipam_configuration_cross_field_rules() {
    let ok = IpamConfigSpec::default();
    ok.validate().expect("default");
    assert_eq!(ok.effective_max_blocks(), 20);
    let bad = IpamConfigSpec {
        max_blocks_per_host: 3,
        ..Default::default()
    };
    assert!(
        matches!(bad.validate(), Err(Error::InvalidConfig { rule }) if rule.contains("requires strictAffinity"))
    );
    let bad = IpamConfigSpec {
        auto_allocate_blocks: false,
        ..Default::default()
    };
    assert!(
        matches!(bad.validate(), Err(Error::InvalidConfig { rule }) if rule.contains("autoAllocateBlocks"))
    );
    IpamConfigSpec {
        strict_affinity: true,
        auto_allocate_blocks: false,
        max_blocks_per_host: 3,
        ..Default::default()
    }
    .validate()
    .expect("strict + no auto + cap");
}

#[test]
fn newtypes_validate_once() {
    assert!("node-a.example".parse::<NodeName>().is_ok());
    for bad in ["", "-a", "a-", "a/b", "a b", &"x".repeat(254)] {
        assert!(
            matches!(
                bad.parse::<NodeName>(),
                Err(calinet_types::Error::InvalidNodeName { .. })
            ),
            "{bad:?}"
        );
    }
    assert!("k8s-pod-network.0123abc".parse::<HandleId>().is_ok());
    for bad in ["", "a/b", "a b"] {
        assert!(
            matches!(
                bad.parse::<HandleId>(),
                Err(Error::InvalidName {
                    kind: "handle id",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    let n: NodeName = "n1".parse().expect("node");
    assert_eq!(
        HandleId::tunnel(calinet_ipam::TunnelKind::VxlanV6, &n).as_str(),
        "vxlan-v6-tunnel-addr-n1"
    );
    let b: BlockCidr = "10.0.0.64/26".parse().expect("block");
    assert_eq!(b.key_form(), "10.0.0.64-26");
    assert_eq!(b.resource_name(), "10-0-0-64-26");
    assert_eq!(
        BlockCidr::from_key_form("10.0.0.64-26").expect("key form"),
        b
    );
    assert_eq!(b.ordinal("10.0.0.70".parse().expect("ip")), Some(6));
    assert_eq!(
        b.addr(6),
        "10.0.0.70".parse::<std::net::IpAddr>().expect("ip")
    );
    for bad in ["10.0.0.1/26", "10.0.0.0/19", "fd00::/115", "nonsense"] {
        assert!(
            matches!(bad.parse::<BlockCidr>(), Err(Error::InvalidCidr { .. })),
            "{bad}"
        );
    }
    let v6: BlockCidr = "fd00::40/122".parse().expect("v6 block");
    assert_eq!(
        calinet_ipam::keys::block(&v6),
        "/calico/ipam/v2/assignment/ipv6/block/fd00::40-122"
    );
    assert_eq!(
        calinet_ipam::keys::affinity(&n, &b),
        "/calico/ipam/v2/host/n1/ipv4/block/10.0.0.64-26"
    );
    assert_eq!(
        calinet_ipam::keys::parse_affinity(&calinet_ipam::keys::affinity(&n, &v6)),
        Some((n, v6))
    );
}

#[test]
fn reservation_rules() {
    let r = IpReservation::from_json(r#"{"metadata":{"name":"r"},"spec":{"reservedCIDRs":[]}}"#)
        .expect("decode");
    assert!(matches!(
        r.validate(),
        Err(Error::InvalidReservation { .. })
    ));
}

#[test]
fn show_table_matches_calicoctl_columns() {
    use calinet_ipam::report::{Grouping, ShowReport, UsageRow};
    let r = ShowReport {
        pools: vec![UsageRow {
            grouping: Grouping::IpPool,
            cidr: "172.16.0.0/16".parse().expect("net"),
            total: 65536,
            in_use: 5,
            reserved: 0,
            free: 65531,
        }],
        blocks: vec![UsageRow {
            grouping: Grouping::Block,
            cidr: "172.16.1.0/24".parse().expect("net"),
            total: 256,
            in_use: 3,
            reserved: 0,
            free: 253,
        }],
        borrowed: vec![],
        configuration: vec![("StrictAffinity".into(), "false".into())],
    };
    let t = r.render(true);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 6, "{t}");
    assert!(
        lines[1].contains("| GROUPING |")
            && lines[1].contains("IPS TOTAL")
            && lines[1].contains("IPS RESERVED")
    );
    assert!(
        lines[3].starts_with("| IP Pool  | 172.16.0.0/16 | 65536"),
        "{t}"
    );
    assert!(
        lines[4].contains("| Block    | 172.16.1.0/24 |") && lines[4].contains("3 (1%)"),
        "{t}"
    );
    assert!(!r.render(false).contains("Block "));
    assert!(
        r.render_configuration()
            .contains("| StrictAffinity | false |")
    );
}

#[test]
fn pools_that_break_the_node_are_rejected_with_the_rule_named() {
    for (cidr, rule) in [
        ("169.254.0.0/16", "169.254.1.1, the pods' default gateway"),
        ("169.254.1.0/24", "169.254.1.1, the pods' default gateway"),
        ("128.0.0.0/1", "169.254.1.1, the pods' default gateway"),
        (
            "169.254.128.0/20",
            "overlaps the IPv4 link-local range 169.254.0.0/16",
        ),
        ("fe80::/64", "overlaps the IPv6 link-local range fe80::/10"),
        ("fe00::/7", "overlaps the IPv6 link-local range fe80::/10"),
        (
            "127.0.0.0/16",
            "overlaps the IPv4 loopback range 127.0.0.0/8",
        ),
        ("::/64", "overlaps the IPv6 loopback range ::1/128"),
        (
            "224.0.0.0/16",
            "overlaps the IPv4 multicast range 224.0.0.0/4",
        ),
        ("ff02::/64", "overlaps the IPv6 multicast range ff00::/8"),
        ("0.0.0.0/0", "0.0.0.0/0 is the default route"),
        ("::/0", "::/0 is the default route"),
    ] {
        let p = pool(cidr);
        let got = pool_rule(&p);
        assert!(got.contains(rule), "{cidr}: {got}");
        // validate_pools runs the same rule, so the plugin and apply share it.
        match validate_pools(&[p]) {
            Err(Error::InvalidPool { pool, rule: r }) => assert_eq!((pool.as_str(), r), ("p", got)),
            other => panic!("{cidr}: {other:?}"),
        }
    }
    for ok in [
        "10.0.0.0/16",
        "169.255.0.0/16",
        "fd00::/64",
        "2001:db8::/48",
        "192.0.0.0/4",
    ] {
        pool(ok).validate().unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

#[test]
fn overlap_check_finds_nested_and_distant_pools_in_any_order() {
    let named = |name: &str, cidr: &str| {
        let mut p = pool(cidr);
        p.metadata.name = name.into();
        p
    };
    // The overlapping pair is not adjacent in the input: a sweep must still see it.
    let mut pools: Vec<IpPool> = (0..200u32)
        .map(|i| {
            named(
                &format!("p{i}"),
                &format!("10.{}.{}.0/24", i / 256, i % 256),
            )
        })
        .collect();
    pools.push(named("v6", "fd00::/64"));
    validate_pools(&pools).expect("disjoint");
    pools.insert(0, named("wide", "10.0.64.0/18"));
    match validate_pools(&pools) {
        Err(Error::OverlappingPools { a, b, .. }) => {
            assert_eq!(a, "wide");
            assert!(b.starts_with('p'), "{b}");
        }
        other => panic!("expected overlap, got {other:?}"),
    }
    // Same network, one prefix longer: nested pools overlap.
    match validate_pools(&[named("x", "10.9.0.0/25"), named("y", "10.9.0.0/24")]) {
        Err(Error::OverlappingPools { a, b, .. }) => {
            assert_eq!((a.as_str(), b.as_str()), ("y", "x"))
        }
        other => panic!("expected overlap, got {other:?}"),
    }
    // An IPv4 pool and an IPv6 pool never overlap, whatever their bits.
    validate_pools(&[named("v4", "10.0.0.0/8"), named("v6", "a00::/8")]).expect("families differ");
}

/// `Ipam::put_pool` is how the CNI plugin creates a pool from its config: it
/// refuses the same pools, and writes nothing.
#[test]
fn put_pool_refuses_a_pool_that_breaks_the_node_and_writes_nothing() {
    use calinet_ipam::{Ipam, MemStore, Store};
    let store = std::sync::Arc::new(MemStore::new());
    let ipam = Ipam::new(store.clone());
    match ipam.put_pool(&pool("169.254.0.0/16")) {
        Err(Error::InvalidPool { pool, rule }) => {
            assert_eq!(pool, "p");
            assert!(rule.contains("169.254.1.1"), "{rule}");
        }
        other => panic!("expected InvalidPool, got {other:?}"),
    }
    assert!(
        store
            .list(calinet_ipam::keys::POOLS_PREFIX)
            .unwrap()
            .is_empty()
    );
    ipam.put_pool(&pool("10.0.0.0/16")).expect("a good pool");
}
