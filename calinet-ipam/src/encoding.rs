//! The values calinet-ipam stores under `/calico/`, in the shapes Calico's
//! etcd v3 backend (libcalico-go `lib/backend/model`) writes and reads.
//!
//! | Key | Calico model type | Value fields |
//! |---|---|---|
//! | `/calico/ipam/v2/assignment/ipv<n>/block/<cidr>` | `AllocationBlock` | written by [`Block`](crate::block::Block)'s `Serialize` |
//! | `/calico/ipam/v2/host/<node>/ipv<n>/block/<cidr>` | `BlockAffinity` | `state`, `deleted` (bool) |
//! | `/calico/ipam/v2/handle/<id>` | `IPAMHandle` | `block`, `deleted` (the id is only in the key) |
//! | `/calico/ipam/v2/config` | `IPAMConfig` (v1 model) | `strict_affinity`, `auto_allocate_blocks`, `maxBlocksPerHost`, each omitted when zero |
//! | `/calico/resources/v3/projectcalico.org/{ippools,ipreservations}/<name>` | v3 `IPPool`, `IPReservation` | `apiVersion`, `kind`, `metadata`, `spec` |
//!
//! Reading is liberal: values calinet wrote before it followed these shapes
//! (affinities with `node`/`type`/`cidr` and `"deleted":"false"` as a string,
//! handles carrying `handleID`, the configuration in v3 camelCase) still
//! decode. Unknown fields of a handle are kept when it is rewritten.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::{
    AffinityState, BlockAffinity, BlockCidr, Extra, IpPool, IpReservation, IpamConfigSpec,
    IpamHandle, NodeName, StringBool,
};

/// Decode a JSON document, naming the key and the Calico type on error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    v: &[u8],
) -> Result<T> {
    serde_json::from_slice(v).map_err(|source| Error::Decode {
        what,
        key: key.to_owned(),
        source,
    })
}

/// A boolean as Go writes it, also accepting the string forms (`"false"`,
/// `""`) and null that older writers used.
fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" || s.is_empty() => Ok(false),
        Value::Null => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "expected a boolean, got {other}"
        ))),
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

// ----- block affinities ------------------------------------------------------

/// Calico's `model.BlockAffinity`.
#[derive(Serialize)]
struct AffinityValue {
    state: AffinityState,
    deleted: bool,
}

#[derive(Deserialize)]
struct AffinityRead {
    state: AffinityState,
    #[serde(default, deserialize_with = "lenient_bool")]
    deleted: bool,
}

/// The value of a block affinity key: `{"state":"confirmed","deleted":false}`.
pub(crate) fn affinity_value(state: AffinityState) -> Vec<u8> {
    serde_json::to_vec(&AffinityValue {
        state,
        deleted: false,
    })
    .expect("affinity serialises")
}

/// Decode an affinity value; node and block come from its key.
pub(crate) fn decode_affinity(
    key: &str,
    node: &NodeName,
    cidr: BlockCidr,
    v: &[u8],
) -> Result<BlockAffinity> {
    let a: AffinityRead = decode("BlockAffinity", key, v)?;
    Ok(BlockAffinity {
        state: a.state,
        node: node.to_string(),
        affinity_type: "host".into(),
        cidr: Some(cidr.net()),
        deleted: StringBool(a.deleted),
        extra: Extra::new(),
    })
}

// ----- handles ---------------------------------------------------------------

/// Calico's `model.IPAMHandle` (`HandleID` is `json:"-"`: only in the key).
#[derive(Serialize)]
struct HandleValue<'a> {
    block: &'a BTreeMap<String, u32>,
    deleted: bool,
    #[serde(flatten)]
    extra: &'a Extra,
}

#[derive(Deserialize)]
struct HandleRead {
    /// Written by older calinet versions; the key is authoritative.
    #[serde(rename = "handleID", default)]
    _handle_id: Option<String>,
    #[serde(default)]
    block: BTreeMap<String, u32>,
    #[serde(default, deserialize_with = "lenient_bool")]
    deleted: bool,
    #[serde(flatten)]
    extra: Extra,
}

/// The value of a handle key.
pub(crate) fn handle_value(h: &IpamHandle) -> Vec<u8> {
    serde_json::to_vec(&HandleValue {
        block: &h.block,
        deleted: h.deleted,
        extra: &h.extra,
    })
    .expect("handle serialises")
}

/// Decode a handle value; the id is the key's last part.
pub(crate) fn decode_handle(key: &str, v: &[u8]) -> Result<IpamHandle> {
    let h: HandleRead = decode("IPAMHandle", key, v)?;
    let id = key.strip_prefix(crate::keys::HANDLES_PREFIX).unwrap_or(key);
    Ok(IpamHandle {
        handle_id: id.to_owned(),
        block: h.block,
        deleted: h.deleted,
        extra: h.extra,
    })
}

// ----- IPAM configuration ------------------------------------------------------

/// Calico's v1 `model.IPAMConfig`: Go `omitempty` on every field, so zero
/// values are left out.
#[derive(Serialize)]
struct ConfigValue {
    #[serde(rename = "strict_affinity", skip_serializing_if = "is_false")]
    strict_affinity: bool,
    #[serde(rename = "auto_allocate_blocks", skip_serializing_if = "is_false")]
    auto_allocate_blocks: bool,
    #[serde(rename = "maxBlocksPerHost", skip_serializing_if = "is_zero")]
    max_blocks_per_host: u32,
}

/// A missing field is Go's zero value (false / 0), as Calico decodes it.
/// The camelCase aliases are the v3 spelling older calinet versions wrote.
#[derive(Deserialize)]
struct ConfigRead {
    #[serde(
        rename = "strict_affinity",
        alias = "strictAffinity",
        default,
        deserialize_with = "lenient_bool"
    )]
    strict_affinity: bool,
    #[serde(
        rename = "auto_allocate_blocks",
        alias = "autoAllocateBlocks",
        default,
        deserialize_with = "lenient_bool"
    )]
    auto_allocate_blocks: bool,
    #[serde(rename = "maxBlocksPerHost", default)]
    max_blocks_per_host: u32,
}

/// The value of `/calico/ipam/v2/config`. Unknown v3 spec fields
/// (`cfg.extra`) have no place in Calico's v1 model and are not stored.
pub(crate) fn config_value(cfg: &IpamConfigSpec) -> Vec<u8> {
    serde_json::to_vec(&ConfigValue {
        strict_affinity: cfg.strict_affinity,
        auto_allocate_blocks: cfg.auto_allocate_blocks,
        max_blocks_per_host: cfg.max_blocks_per_host,
    })
    .expect("config serialises")
}

/// Decode `/calico/ipam/v2/config`.
pub(crate) fn decode_config(key: &str, v: &[u8]) -> Result<IpamConfigSpec> {
    let c: ConfigRead = decode("IPAMConfig", key, v)?;
    Ok(IpamConfigSpec {
        strict_affinity: c.strict_affinity,
        auto_allocate_blocks: c.auto_allocate_blocks,
        max_blocks_per_host: c.max_blocks_per_host,
        extra: Extra::new(),
    })
}

// ----- v3 resources ----------------------------------------------------------

/// A whole v3 `IPPool` object, with `kind` and `apiVersion` filled in when
/// the input left them out.
pub(crate) fn pool_value(p: &IpPool) -> Vec<u8> {
    let mut p = p.clone();
    fill_type_meta(&mut p.kind, &mut p.api_version, "IPPool");
    serde_json::to_vec(&p).expect("pool serialises")
}

/// A whole v3 `IPReservation` object (see [`pool_value`]).
pub(crate) fn reservation_value(r: &IpReservation) -> Vec<u8> {
    let mut r = r.clone();
    fill_type_meta(&mut r.kind, &mut r.api_version, "IPReservation");
    serde_json::to_vec(&r).expect("reservation serialises")
}

fn fill_type_meta(kind: &mut String, api_version: &mut String, k: &str) {
    if kind.is_empty() {
        *kind = k.into();
    }
    if api_version.is_empty() {
        *api_version = "projectcalico.org/v3".into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: &[u8]) -> Value {
        serde_json::from_slice(v).expect("valid JSON")
    }

    #[test]
    fn affinity_is_state_and_boolean_deleted_only() {
        assert_eq!(
            json(&affinity_value(AffinityState::Confirmed)),
            serde_json::json!({"state": "confirmed", "deleted": false})
        );
        let node: NodeName = "node-a".parse().expect("node");
        let cidr: BlockCidr = "10.0.0.0/26".parse().expect("cidr");
        // The form older calinet versions wrote still decodes.
        let old = br#"{"state":"pending","node":"node-a","type":"host","cidr":"10.0.0.0/26","deleted":"false"}"#;
        let a = decode_affinity("k", &node, cidr, old).expect("old form");
        assert_eq!(a.state, AffinityState::Pending);
        assert!(!a.deleted.0);
        let err = decode_affinity("k", &node, cidr, br#"{"state":"confirmed","deleted":7}"#)
            .expect_err("a number is no boolean");
        assert!(err.to_string().contains("BlockAffinity"), "{err}");
    }

    #[test]
    fn handle_id_is_taken_from_the_key_and_unknown_fields_are_kept() {
        let key = "/calico/ipam/v2/handle/k8s-pod-network.a";
        let h = decode_handle(
            key,
            br#"{"handleID":"stale","block":{"10.0.0.0/26":2},"deleted":false,"future":[1]}"#,
        )
        .expect("decodes");
        assert_eq!(h.handle_id, "k8s-pod-network.a");
        assert_eq!(
            json(&handle_value(&h)),
            serde_json::json!({"block": {"10.0.0.0/26": 2}, "deleted": false, "future": [1]})
        );
    }

    #[test]
    fn config_uses_the_v1_names_and_go_zero_values() {
        let cfg = IpamConfigSpec::default();
        assert_eq!(
            json(&config_value(&cfg)),
            serde_json::json!({"auto_allocate_blocks": true})
        );
        // Present but without a field: Go's zero value, not calinet's default.
        let c = decode_config("k", b"{}").expect("empty");
        assert!(!c.auto_allocate_blocks && !c.strict_affinity);
        let old = br#"{"strictAffinity":true,"autoAllocateBlocks":true,"maxBlocksPerHost":4}"#;
        let c = decode_config("k", old).expect("old camelCase form");
        assert!(c.strict_affinity && c.auto_allocate_blocks);
        assert_eq!(c.max_blocks_per_host, 4);
    }
}
