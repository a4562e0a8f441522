//! Proptest strategies and invariant checkers for downstream tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;

use crate::delta::DeviceDelta;
use crate::key::PublicKey;
use crate::model::{NodeName, NodeState, ObservedDevice};
use crate::peers::Computed;

/// Up to `max` nodes named `n0..`, each with a /26 block in 172.16.0.0/16, a
/// few borrowed addresses, an endpoint in 198.51.100.0/24 (sometimes missing)
/// and a key from a small pool (so duplicates and missing keys happen).
pub fn nodes(max: usize) -> impl Strategy<Value = Vec<NodeState>> {
    prop::collection::vec(
        (
            prop::option::weighted(0.85, 0u8..12),
            prop::option::weighted(0.9, 1u8..250),
            0u16..1024,
            prop::collection::vec(0u16..0xffff, 0..4),
        ),
        1..=max,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (key, ep, block, borrowed))| NodeState {
                name: format!("n{i}").parse().expect("valid node name"),
                public_key: key.map(|k| PublicKey::from_bytes([k; 32])),
                endpoint: ep.map(|e| IpAddr::from(Ipv4Addr::new(198, 51, 100, e))),
                blocks: vec![IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from(0xac10_0000 | (u32::from(block) << 6)), 26)
                        .expect("valid prefix"),
                )],
                borrowed: borrowed
                    .into_iter()
                    .map(|b| IpAddr::from(Ipv4Addr::from(0xac10_0000 | u32::from(b))))
                    .collect(),
                tunnel_addresses: Vec::new(),
            })
            .collect()
    })
}

/// Check what [`crate::compute_device`] must guarantee. Returns the broken
/// rule, if any.
pub fn check_computed(
    local: &NodeName,
    local_key: &PublicKey,
    nodes: &[NodeState],
    c: &Computed,
) -> Result<(), String> {
    let mut claims: BTreeMap<PublicKey, usize> = BTreeMap::new();
    *claims.entry(*local_key).or_default() += 1;
    let mut seen_names = BTreeSet::new();
    for n in nodes {
        if &n.name != local
            && seen_names.insert(n.name.clone())
            && let Some(k) = n.public_key
        {
            *claims.entry(k).or_default() += 1;
        }
    }
    let mut keys = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for (peer, (node, key)) in c.device.peers.iter().zip(&c.peer_nodes) {
        if &peer.public_key != key {
            return Err("peer_nodes out of step with peers".into());
        }
        if node == local || key == local_key {
            return Err(format!("local node {local} became a peer"));
        }
        if claims.get(key) != Some(&1) {
            return Err(format!(
                "peer {node} has a key claimed {:?} times",
                claims.get(key)
            ));
        }
        if !keys.insert(*key) {
            return Err(format!("key of {node} appears twice"));
        }
        if peer.endpoint.is_none() {
            return Err(format!("peer {node} has no endpoint"));
        }
        for net in &peer.allowed_ips {
            if !ips.insert(*net) {
                return Err(format!("range {net} on two peers"));
            }
        }
    }
    Ok(())
}

/// Apply `delta` to `observed` with WireGuard's semantics (what a device does).
pub fn apply_to(observed: &ObservedDevice, delta: &DeviceDelta) -> ObservedDevice {
    use crate::backend::Backend;
    let name: crate::model::IfName = "check".parse().expect("valid ifname");
    let mut b = crate::backend::recording::RecordingBackend::default();
    b.devices.insert(name.clone(), observed.clone());
    // The recording backend cannot fail on an existing device without a split budget.
    let _ = b.apply(&name, delta);
    b.devices.remove(&name).unwrap_or_default()
}
