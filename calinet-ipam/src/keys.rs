//! Calico's etcd v3 key layout.

use crate::types::{BlockCidr, Family, HandleId, NodeName};

/// `/calico/ipam/v2/assignment/ipv4/block/` (list prefix of a family's blocks).
pub fn blocks_prefix(fam: Family) -> String {
    format!("/calico/ipam/v2/assignment/{}/block/", fam.key_part())
}

/// `/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`.
pub fn block(cidr: &BlockCidr) -> String {
    format!("{}{}", blocks_prefix(cidr.family()), cidr.key_form())
}

/// Parse a block key (`/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26`)
/// into its CIDR, without reading the value.
pub fn parse_block(key: &str) -> Option<BlockCidr> {
    let rest = key.strip_prefix("/calico/ipam/v2/assignment/")?;
    let (_fam, form) = rest.split_once("/block/")?;
    BlockCidr::from_key_form(form).ok()
}

/// `/calico/ipam/v2/host/` (prefix of all affinities).
pub const HOSTS_PREFIX: &str = "/calico/ipam/v2/host/";

/// `/calico/ipam/v2/host/<node>/ipv4/block/`.
pub fn affinities_prefix(node: &NodeName, fam: Family) -> String {
    format!("{HOSTS_PREFIX}{node}/{}/block/", fam.key_part())
}

/// `/calico/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26`.
pub fn affinity(node: &NodeName, cidr: &BlockCidr) -> String {
    format!(
        "{}{}",
        affinities_prefix(node, cidr.family()),
        cidr.key_form()
    )
}

/// Parse an affinity key into (node, family, block).
pub fn parse_affinity(key: &str) -> Option<(NodeName, BlockCidr)> {
    let rest = key.strip_prefix(HOSTS_PREFIX)?;
    let mut parts = rest.split('/');
    let node = parts.next()?.parse().ok()?;
    let _fam = parts.next()?;
    if parts.next()? != "block" {
        return None;
    }
    let cidr = BlockCidr::from_key_form(parts.next()?).ok()?;
    Some((node, cidr))
}

/// `/calico/ipam/v2/handle/`.
pub const HANDLES_PREFIX: &str = "/calico/ipam/v2/handle/";

/// `/calico/ipam/v2/handle/<id>`.
pub fn handle(id: &HandleId) -> String {
    format!("{HANDLES_PREFIX}{id}")
}

/// `/calico/ipam/v2/config` (Calico's IPAM configuration in etcd).
pub const IPAM_CONFIG: &str = "/calico/ipam/v2/config";

/// `/calico/resources/v3/projectcalico.org/ippools/`.
pub const POOLS_PREFIX: &str = "/calico/resources/v3/projectcalico.org/ippools/";

/// `/calico/resources/v3/projectcalico.org/ippools/<name>`.
pub fn pool(name: &str) -> String {
    format!("{POOLS_PREFIX}{name}")
}

/// `/calico/resources/v3/projectcalico.org/ipreservations/`.
pub const RESERVATIONS_PREFIX: &str = "/calico/resources/v3/projectcalico.org/ipreservations/";

/// `/calico/resources/v3/projectcalico.org/ipreservations/<name>`.
pub fn reservation(name: &str) -> String {
    format!("{RESERVATIONS_PREFIX}{name}")
}
