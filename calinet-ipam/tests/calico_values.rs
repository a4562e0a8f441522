//! The values calinet-ipam stores under `/calico/` against Calico's own
//! shapes (`tests/fixtures/calico/`, see its README for the Go types each
//! follows), in both directions: calinet decodes and uses Calico-shaped
//! values, and what calinet writes has exactly Calico's field names and JSON
//! types. Also: values in the shapes older calinet versions wrote still decode.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use calinet_ipam::{
    AffinityState, AllOnlySelector, AllowedUse, AssignmentMode, AutoAssignRequest, EncapMode,
    HandleId, IpPool, IpPoolSpec, IpReservation, IpReservationSpec, Ipam, IpamConfigSpec,
    IpamOptions, MemStore, Store, report,
};
use serde_json::{Value, json};

const POOL_KEY: &str = "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool";
const RESERVATION_KEY: &str = "/calico/resources/v3/projectcalico.org/ipreservations/keep-out";
const CONFIG_KEY: &str = "/calico/ipam/v2/config";
const BLOCK_KEY: &str = "/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-30";
const AFFINITY_KEY: &str = "/calico/ipam/v2/host/node-a/ipv4/block/10.0.0.0-30";
const POD_HANDLE_KEY: &str = "/calico/ipam/v2/handle/k8s-pod-network.calico-pod";
const TUNNEL_HANDLE_KEY: &str = "/calico/ipam/v2/handle/vxlan-tunnel-addr-node-a";

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/calico/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

fn put(store: &MemStore, key: &str, value: &Value) {
    store
        .create(key, &serde_json::to_vec(value).expect("JSON"))
        .unwrap_or_else(|e| panic!("create {key}: {e}"));
}

fn stored(store: &impl Store, key: &str) -> Value {
    let kv = store
        .get(key)
        .expect("get")
        .unwrap_or_else(|| panic!("{key} was not written"));
    serde_json::from_slice(&kv.value).unwrap_or_else(|e| panic!("{key} is not JSON: {e}"))
}

/// Objects whose keys are data (CIDRs, ordinals, attribute names), not field
/// names: their keys are compared as `*`.
const DATA_KEYED: &[&str] = &["block", "sequenceNumberForAllocation", "secondary"];

/// The field names and JSON types of a document, without its values: every
/// scalar becomes its type name, an array the set of its elements' shapes.
fn shape(v: &Value) -> Value {
    shape_in(v, "")
}

fn shape_in(v: &Value, parent: &str) -> Value {
    match v {
        Value::Null => json!("null"),
        Value::Bool(_) => json!("bool"),
        Value::Number(_) => json!("number"),
        Value::String(_) => json!("string"),
        Value::Array(a) => {
            let set: BTreeSet<String> = a.iter().map(|e| shape_in(e, "").to_string()).collect();
            Value::Array(
                set.iter()
                    .map(|s| serde_json::from_str(s).expect("shape"))
                    .collect(),
            )
        }
        Value::Object(m) if DATA_KEYED.contains(&parent) => {
            let set: BTreeSet<String> = m.values().map(|e| shape_in(e, "").to_string()).collect();
            let inner: Vec<Value> = set
                .iter()
                .map(|s| serde_json::from_str(s).expect("shape"))
                .collect();
            json!({ "*": inner })
        }
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, e)| (k.clone(), shape_in(e, k))).collect())
        }
    }
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("an object").keys().cloned().collect()
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn handle(s: &str) -> HandleId {
    s.parse().expect("handle id")
}

/// A store holding exactly the fixture values, under Calico's keys.
fn calico_store() -> MemStore {
    let store = MemStore::new();
    put(&store, POOL_KEY, &fixture("ippool.json"));
    put(&store, RESERVATION_KEY, &fixture("ipreservation.json"));
    put(&store, CONFIG_KEY, &fixture("ipam_config.json"));
    put(&store, BLOCK_KEY, &fixture("block.json"));
    put(&store, AFFINITY_KEY, &fixture("affinity.json"));
    // Both allocations of the block hold one address of it, so one handle
    // value serves both handle keys.
    put(&store, POD_HANDLE_KEY, &fixture("handle.json"));
    put(&store, TUNNEL_HANDLE_KEY, &fixture("handle.json"));
    store
}

#[test]
fn calinet_reads_and_uses_calico_shaped_values() {
    let store = calico_store();
    let d = report::dump(&store).expect("dump");
    assert!(d.invalid.is_empty(), "undecodable: {:?}", d.invalid);
    assert!(d.config.strict_affinity && d.config.auto_allocate_blocks);
    assert_eq!(d.config.max_blocks_per_host, 4);
    assert_eq!(d.pools.len(), 1);
    assert_eq!(d.pools[0].block_size(), 30);
    assert_eq!(d.reservations, vec!["10.0.0.200/29".parse().expect("net")]);
    assert_eq!(d.affinities.len(), 1);
    let (node, cidr, a) = &d.affinities[0];
    assert_eq!(
        (node.as_str(), cidr.to_string().as_str()),
        ("node-a", "10.0.0.0/30")
    );
    assert_eq!(a.state, AffinityState::Confirmed);
    assert!(!a.deleted.0);
    let handles: BTreeSet<(String, Option<u32>)> = d
        .handles
        .iter()
        .map(|h| (h.handle_id.clone(), h.block.get("10.0.0.0/30").copied()))
        .collect();
    assert_eq!(
        handles,
        BTreeSet::from([
            ("k8s-pod-network.calico-pod".to_owned(), Some(1)),
            ("vxlan-tunnel-addr-node-a".to_owned(), Some(1)),
        ])
    );
    let check = report::check(&store, None).expect("check");
    assert!(check.is_consistent(), "{check:?}");

    // The allocator uses them: node-a's affine block hands out its free
    // ordinals in the stored FIFO order (3, then 1) instead of claiming a new
    // block, and the stored handle releases its address.
    let ipam = Ipam::new(store);
    let got = ipam
        .auto_assign(
            &AutoAssignRequest::v4(
                handle("k8s-pod-network.new"),
                "node-a".parse().expect("node"),
                2,
            ),
            t0(),
        )
        .expect("auto_assign from the Calico block");
    let addrs: Vec<String> = got.v4.iter().map(|a| a.addr.to_string()).collect();
    assert_eq!(addrs, ["10.0.0.3", "10.0.0.1"]);
    let released = ipam
        .release_handle(&handle("k8s-pod-network.calico-pod"), t0())
        .expect("release the Calico handle");
    assert_eq!(
        released,
        vec!["10.0.0.0".parse::<std::net::IpAddr>().expect("ip")]
    );
    assert!(ipam.store().get(POD_HANDLE_KEY).expect("get").is_none());
}

/// A pool with every field the fixture shows, built field by field (not
/// parsed from it); one block only, so the keys below are known.
fn calinet_pool() -> IpPool {
    let mut spec = IpPoolSpec::with_cidr("10.0.0.0/30".parse().expect("cidr"));
    spec.vxlan_mode = Some(EncapMode::CrossSubnet);
    spec.ipip_mode = Some(EncapMode::Never);
    spec.nat_outgoing = Some(true);
    spec.disable_bgp_export = Some(true);
    spec.block_size = Some(30);
    spec.node_selector = Some("all()".into());
    spec.allowed_uses = Some(vec![AllowedUse::Workload, AllowedUse::Tunnel]);
    spec.assignment_mode = Some(AssignmentMode::Automatic);
    spec.namespace_selector = Some("all()".into());
    IpPool::new("default-ipv4-ippool", spec)
}

/// An allocator on a fresh store with the fixture's pool, configuration and
/// reservation written through calinet, and two addresses of node-a's block
/// assigned (so the block has free and allocated ordinals).
fn calinet_writes(opts: IpamOptions) -> Ipam<MemStore> {
    let ipam = Ipam::with_options(MemStore::new(), Box::new(AllOnlySelector), opts);
    ipam.put_pool(&calinet_pool()).expect("pool");
    ipam.put_config(&IpamConfigSpec {
        strict_affinity: true,
        auto_allocate_blocks: true,
        max_blocks_per_host: 4,
        ..IpamConfigSpec::default()
    })
    .expect("config");
    ipam.put_reservation(&IpReservation::new(
        "keep-out",
        IpReservationSpec {
            reserved_cidrs: vec!["10.0.0.200/29".parse().expect("cidr")],
            extra: Default::default(),
        },
    ))
    .expect("reservation");
    let node = "node-a".parse().expect("node");
    let mut req = AutoAssignRequest::v4(handle("k8s-pod-network.calico-pod"), node, 1);
    req.attributes = [
        ("namespace".to_owned(), "default".to_owned()),
        ("pod".to_owned(), "web".to_owned()),
    ]
    .into();
    let got = ipam.auto_assign(&req, t0()).expect("pod address");
    assert_eq!(
        got.v4[0].block.to_string(),
        "10.0.0.0/30",
        "block the keys below name"
    );
    ipam.assign_tunnel_addr(
        calinet_ipam::TunnelKind::Vxlan,
        &"node-a".parse().expect("node"),
        &Default::default(),
        t0(),
    )
    .expect("tunnel address");
    ipam
}

#[test]
fn calinet_writes_calicos_fields_and_json_types() {
    let ipam = calinet_writes(IpamOptions::default());
    let store = ipam.store();
    let keys: Vec<String> = store
        .list("/calico/")
        .expect("list")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    for key in [
        POOL_KEY,
        RESERVATION_KEY,
        CONFIG_KEY,
        BLOCK_KEY,
        AFFINITY_KEY,
        POD_HANDLE_KEY,
        TUNNEL_HANDLE_KEY,
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} not in {keys:?}");
    }

    // Calico's etcd model values: the same fields with the same JSON types.
    for (key, file) in [
        (BLOCK_KEY, "block.json"),
        (AFFINITY_KEY, "affinity.json"),
        (POD_HANDLE_KEY, "handle.json"),
        (TUNNEL_HANDLE_KEY, "handle.json"),
        (CONFIG_KEY, "ipam_config.json"),
    ] {
        assert_eq!(
            shape(&stored(store, key)),
            shape(&fixture(file)),
            "{key} differs from Calico's {file}"
        );
    }
    // The tunnel allocation carries Calico's attribute type.
    let block = stored(store, BLOCK_KEY);
    let tunnel = block["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .find(|a| a["handle_id"] == "vxlan-tunnel-addr-node-a")
        .expect("tunnel allocation");
    assert_eq!(tunnel["secondary"]["type"], "vxlanTunnelAddress");
    // Values that carry no data of their own are equal outright.
    assert_eq!(stored(store, AFFINITY_KEY), fixture("affinity.json"));
    assert_eq!(stored(store, POD_HANDLE_KEY), fixture("handle.json"));
    assert_eq!(stored(store, CONFIG_KEY), fixture("ipam_config.json"));
    // Go's omitempty: zero values of the configuration are left out.
    ipam.put_config(&IpamConfigSpec::default())
        .expect("default config");
    assert_eq!(
        stored(store, CONFIG_KEY),
        json!({"auto_allocate_blocks": true})
    );

    // v3 resources: the whole object; the spec has exactly Calico's fields
    // and types; metadata only fields Calico's ObjectMeta has.
    for (key, file) in [
        (POOL_KEY, "ippool.json"),
        (RESERVATION_KEY, "ipreservation.json"),
    ] {
        let ours = stored(store, key);
        let calico = fixture(file);
        assert_eq!(keys_of(&ours), keys_of(&calico), "{key}: top-level fields");
        assert_eq!(ours["kind"], calico["kind"], "{key}");
        assert_eq!(ours["apiVersion"], calico["apiVersion"], "{key}");
        assert_eq!(shape(&ours["spec"]), shape(&calico["spec"]), "{key}: spec");
        assert!(
            keys_of(&ours["metadata"]).is_subset(&keys_of(&calico["metadata"])),
            "{key}: metadata {} has fields Calico's has not",
            ours["metadata"]
        );
        assert_eq!(
            ours["metadata"]["name"], calico["metadata"]["name"],
            "{key}"
        );
    }
}

#[test]
fn reuse_cooldown_adds_only_calinet_released_at_to_the_block() {
    let ipam = calinet_writes(IpamOptions {
        reuse_cooldown: Duration::from_secs(60),
        ..IpamOptions::default()
    });
    ipam.release_handle(&handle("k8s-pod-network.calico-pod"), t0())
        .expect("release");
    let block = stored(ipam.store(), BLOCK_KEY);
    let extra: Vec<String> = keys_of(&block)
        .difference(&keys_of(&fixture("block.json")))
        .cloned()
        .collect();
    assert_eq!(extra, ["calinetReleasedAt"], "block fields beyond Calico's");
    let missing: Vec<String> = keys_of(&fixture("block.json"))
        .difference(&keys_of(&block))
        .cloned()
        .collect();
    assert!(missing.is_empty(), "Calico fields missing: {missing:?}");
}

#[test]
fn values_in_older_calinet_shapes_still_decode() {
    let store = calico_store();
    // As calinet wrote them before following Calico's etcd model.
    let mut block = fixture("block.json");
    block["strictAffinity"] = json!(false);
    for (key, old) in [
        (
            AFFINITY_KEY,
            json!({"state": "confirmed", "node": "node-a", "type": "host", "cidr": "10.0.0.0/30", "deleted": "false"}),
        ),
        (
            POD_HANDLE_KEY,
            json!({"handleID": "k8s-pod-network.calico-pod", "block": {"10.0.0.0/30": 1}, "deleted": false}),
        ),
        (
            CONFIG_KEY,
            json!({"strictAffinity": true, "autoAllocateBlocks": true, "maxBlocksPerHost": 4}),
        ),
        (BLOCK_KEY, block),
    ] {
        let rev = store.get(key).expect("get").expect("fixture").mod_revision;
        store
            .update(key, &serde_json::to_vec(&old).expect("JSON"), rev)
            .expect("overwrite");
    }
    let d = report::dump(&store).expect("dump");
    assert!(d.invalid.is_empty(), "undecodable: {:?}", d.invalid);
    assert_eq!(d.affinities[0].2.state, AffinityState::Confirmed);
    assert!(d.config.strict_affinity && d.config.auto_allocate_blocks);
    assert_eq!(d.config.max_blocks_per_host, 4);

    let ipam = Ipam::new(store);
    let got = ipam
        .auto_assign(
            &AutoAssignRequest::v4(
                handle("k8s-pod-network.new"),
                "node-a".parse().expect("node"),
                1,
            ),
            t0(),
        )
        .expect("auto_assign from the old-shaped block");
    assert_eq!(got.v4[0].addr.to_string(), "10.0.0.3");
    assert_eq!(
        ipam.release_handle(&handle("k8s-pod-network.calico-pod"), t0())
            .expect("release the old-shaped handle")
            .len(),
        1
    );
    // Rewritten values are in Calico's shapes again.
    assert_eq!(
        shape(&stored(ipam.store(), BLOCK_KEY)),
        shape(&fixture("block.json"))
    );
}
