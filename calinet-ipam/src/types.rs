//! Validated newtypes and Calico's IPAM resources as serde types. Node names,
//! families, encapsulation modes and object metadata are calinet-types',
//! re-exported here.
//!
//! Resources read and write Calico's JSON field names. Unknown fields are kept
//! (`extra`) so a document written by a newer Calico survives a round trip.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub use calinet_types::{EncapMode, Extra, Family, NodeName, ObjectMeta};

use crate::error::{Error, Result};

/// IPv4 block prefix lengths Calico allows.
pub const V4_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 20..=32;
/// IPv6 block prefix lengths Calico allows.
pub const V6_BLOCK_SIZES: std::ops::RangeInclusive<u8> = 116..=128;
/// Default IPv4 block prefix length.
pub const V4_DEFAULT_BLOCK_SIZE: u8 = 26;
/// Default IPv6 block prefix length.
pub const V6_DEFAULT_BLOCK_SIZE: u8 = 122;
/// The handle Calico gives to Windows-reserved addresses.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// Allowed block prefix lengths of a family.
pub fn block_sizes(family: Family) -> std::ops::RangeInclusive<u8> {
    match family {
        Family::V4 => V4_BLOCK_SIZES,
        Family::V6 => V6_BLOCK_SIZES,
    }
}

/// Default block prefix length of a family.
pub fn default_block_size(family: Family) -> u8 {
    match family {
        Family::V4 => V4_DEFAULT_BLOCK_SIZE,
        Family::V6 => V6_DEFAULT_BLOCK_SIZE,
    }
}

macro_rules! string_newtype_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl $t {
            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<&str> for $t {
            type Error = Error;
            fn try_from(s: &str) -> Result<Self> {
                s.parse()
            }
        }
    };
}

/// An allocation handle id (e.g. `k8s-pod-network.<containerID>`,
/// `vxlan-tunnel-addr-<node>`): 1..=512 printable ASCII characters without
/// whitespace or `/` (it is part of a store key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandleId(String);

impl FromStr for HandleId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |rule| {
            Err(Error::InvalidName {
                kind: "handle id",
                value: s.to_owned(),
                rule,
            })
        };
        if s.is_empty() || s.len() > 512 {
            return bad("must be 1 to 512 characters long");
        }
        if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
            return bad("must be printable ASCII without whitespace or '/'");
        }
        Ok(HandleId(s.to_owned()))
    }
}
string_newtype_serde!(HandleId);

impl HandleId {
    /// Calico's tunnel handle for a node (`vxlan-tunnel-addr-<node>` etc.).
    pub fn tunnel(kind: TunnelKind, node: &NodeName) -> HandleId {
        let prefix = match kind {
            TunnelKind::Ipip => "ipip-tunnel-addr",
            TunnelKind::Vxlan => "vxlan-tunnel-addr",
            TunnelKind::VxlanV6 => "vxlan-v6-tunnel-addr",
            TunnelKind::Wireguard => "wireguard-tunnel-addr",
            TunnelKind::WireguardV6 => "wireguard-v6-tunnel-addr",
        };
        HandleId(format!("{prefix}-{node}"))
    }
    /// Calico's pod handle `k8s-pod-network.<containerID>`.
    pub fn pod(container_id: &str) -> Result<HandleId> {
        format!("k8s-pod-network.{container_id}").parse()
    }
}

/// Kinds of tunnel address a node can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelKind {
    /// IPIP tunnel (IPv4).
    Ipip,
    /// VXLAN (IPv4).
    Vxlan,
    /// VXLAN (IPv6).
    VxlanV6,
    /// WireGuard (IPv4).
    Wireguard,
    /// WireGuard (IPv6).
    WireguardV6,
}

/// A block CIDR: network address with host bits zero and a prefix length in
/// the family's allowed block range (v4 20..=32, v6 116..=128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockCidr(IpNet);

impl BlockCidr {
    /// Validate a network as a block CIDR.
    pub fn new(net: IpNet) -> Result<BlockCidr> {
        let fam = Family::of(net.addr());
        if !block_sizes(fam).contains(&net.prefix_len()) {
            return Err(Error::InvalidCidr {
                context: "block".into(),
                value: net.to_string(),
                rule: format!(
                    "{} block prefix must be in {:?}",
                    fam.label(),
                    block_sizes(fam)
                ),
            });
        }
        if net.trunc() != net {
            return Err(Error::InvalidCidr {
                context: "block".into(),
                value: net.to_string(),
                rule: "host bits must be zero".into(),
            });
        }
        Ok(BlockCidr(net))
    }
    /// The network.
    pub fn net(&self) -> IpNet {
        self.0
    }
    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(self.0.addr())
    }
    /// Number of addresses in the block.
    pub fn size(&self) -> u32 {
        let bits = match self.0 {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        };
        1u32 << (bits - self.0.prefix_len())
    }
    /// Ordinal of an address inside the block, if it is inside.
    pub fn ordinal(&self, addr: IpAddr) -> Option<u32> {
        if !self.0.contains(&addr) {
            return None;
        }
        Some(match (self.0.network(), addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) - u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(a) - u128::from(n)) as u32,
            _ => return None,
        })
    }
    /// The address at an ordinal (must be `< size()`).
    pub fn addr(&self, ordinal: u32) -> IpAddr {
        match self.0.network() {
            IpAddr::V4(n) => IpAddr::V4((u32::from(n) + ordinal).into()),
            IpAddr::V6(n) => IpAddr::V6((u128::from(n) + u128::from(ordinal)).into()),
        }
    }
    /// The key form used in Calico's etcd keys: `10.0.0.0-26`.
    pub fn key_form(&self) -> String {
        format!("{}-{}", self.0.network(), self.0.prefix_len())
    }
    /// Parse the key form `10.0.0.0-26`.
    pub fn from_key_form(s: &str) -> Result<BlockCidr> {
        let (a, p) = s.rsplit_once('-').ok_or_else(|| Error::InvalidCidr {
            context: "block key".into(),
            value: s.into(),
            rule: "expected <address>-<prefix>".into(),
        })?;
        format!("{a}/{p}").parse()
    }
    /// Calico's resource name for a block: `10-0-0-0-26`.
    pub fn resource_name(&self) -> String {
        self.key_form().replace(['.', ':'], "-")
    }
}

impl FromStr for BlockCidr {
    type Err = Error;
    fn from_str(s: &str) -> Result<BlockCidr> {
        let net: IpNet = s
            .parse()
            .map_err(|e: ipnet::AddrParseError| Error::InvalidCidr {
                context: "block".into(),
                value: s.into(),
                rule: e.to_string(),
            })?;
        BlockCidr::new(net)
    }
}

impl fmt::Display for BlockCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for BlockCidr {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for BlockCidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn default_api_version() -> String {
    "projectcalico.org/v3".into()
}

/// What a pool's addresses may be used for (`allowedUses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AllowedUse {
    /// Pod addresses.
    Workload,
    /// Node tunnel addresses.
    Tunnel,
    /// Service load balancer addresses.
    LoadBalancer,
}

/// Whether a pool is used by automatic assignment (`assignmentMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum AssignmentMode {
    /// Used by AutoAssign.
    #[default]
    Automatic,
    /// Only used for explicit assignments.
    Manual,
}

/// `IPPool` spec with Calico's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The pool CIDR.
    pub cidr: IpNet,
    /// Block prefix length (default 26 / 122).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// IPIP mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<EncapMode>,
    /// VXLAN mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<EncapMode>,
    /// Masquerade traffic leaving the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<bool>,
    /// Disabled pools are not used for new allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Do not export the pool's routes over BGP.
    #[serde(
        default,
        rename = "disableBGPExport",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_bgp_export: Option<bool>,
    /// Which nodes may use the pool (default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Which namespaces may use the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Allowed uses (default Workload + Tunnel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_uses: Option<Vec<AllowedUse>>,
    /// Automatic or Manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<AssignmentMode>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

macro_rules! resource {
    ($(#[$m:meta])* $name:ident, $spec:ty, $kind:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The resource kind (empty when the input omitted it).
            #[serde(default)]
            pub kind: String,
            /// `projectcalico.org/v3`.
            #[serde(default = "default_api_version")]
            pub api_version: String,
            /// Metadata.
            pub metadata: ObjectMeta,
            /// Spec.
            pub spec: $spec,
            /// Unknown top-level fields, kept.
            #[serde(flatten)]
            pub extra: Extra,
        }
        impl $name {
            /// A resource with this name and spec.
            pub fn new(name: &str, spec: $spec) -> Self {
                $name {
                    kind: $kind.into(),
                    api_version: default_api_version(),
                    metadata: ObjectMeta::named(name),
                    spec,
                    extra: Extra::new(),
                }
            }
            /// Decode from JSON (YAML callers convert first), naming the input on error.
            pub fn from_json(json: &str) -> Result<Self> {
                serde_json::from_str(json).map_err(|source| Error::Decode {
                    what: $kind,
                    key: "<input>".into(),
                    source,
                })
            }
            /// The resource name.
            pub fn name(&self) -> &str {
                &self.metadata.name
            }
        }
    };
}

resource!(
    /// Calico `IPPool`.
    IpPool, IpPoolSpec, "IPPool"
);

impl IpPoolSpec {
    /// A spec with only a CIDR (all else default).
    pub fn with_cidr(cidr: IpNet) -> IpPoolSpec {
        IpPoolSpec {
            cidr,
            block_size: None,
            ipip_mode: None,
            vxlan_mode: None,
            nat_outgoing: None,
            disabled: None,
            disable_bgp_export: None,
            node_selector: None,
            namespace_selector: None,
            allowed_uses: None,
            assignment_mode: None,
            extra: Extra::new(),
        }
    }
}

impl IpPool {
    /// Address family of the pool.
    pub fn family(&self) -> Family {
        Family::of(self.spec.cidr.addr())
    }
    /// Effective block prefix length.
    pub fn block_size(&self) -> u8 {
        self.spec
            .block_size
            .unwrap_or_else(|| default_block_size(self.family()))
    }
    /// Effective node selector.
    pub fn node_selector(&self) -> &str {
        self.spec.node_selector.as_deref().unwrap_or("all()")
    }
    /// Effective allowed uses.
    pub fn allows(&self, u: AllowedUse) -> bool {
        match &self.spec.allowed_uses {
            None => matches!(u, AllowedUse::Workload | AllowedUse::Tunnel),
            Some(v) => v.contains(&u),
        }
    }
    /// Whether the pool is enabled.
    pub fn enabled(&self) -> bool {
        !self.spec.disabled.unwrap_or(false)
    }
    /// Whether AutoAssign may use the pool.
    pub fn automatic(&self) -> bool {
        self.spec.assignment_mode.unwrap_or_default() == AssignmentMode::Automatic
    }
    /// Number of blocks in the pool.
    pub fn block_count(&self) -> u128 {
        1u128 << (self.block_size() - self.spec.cidr.prefix_len())
    }
    /// The i-th block of the pool.
    pub fn block(&self, i: u128) -> BlockCidr {
        let bs = self.block_size();
        let net = match self.spec.cidr.network() {
            IpAddr::V4(n) => {
                let a = u32::from(n) + ((i as u32) << (32 - bs));
                IpNet::new(IpAddr::V4(a.into()), bs)
            }
            IpAddr::V6(n) => {
                let a = u128::from(n) + (i << (128 - bs));
                IpNet::new(IpAddr::V6(a.into()), bs)
            }
        };
        BlockCidr(net.expect("prefix within range"))
    }
    /// The block of this pool containing an address.
    pub fn block_of(&self, addr: IpAddr) -> Option<BlockCidr> {
        if !self.spec.cidr.contains(&addr) {
            return None;
        }
        let net = IpNet::new(addr, self.block_size()).ok()?.trunc();
        Some(BlockCidr(net))
    }

    /// Check every single-pool rule, naming the pool and rule on failure.
    pub fn validate(&self) -> Result<()> {
        let bad = |rule: String| {
            Err(Error::InvalidPool {
                pool: self.metadata.name.clone(),
                rule,
            })
        };
        if !self.kind.is_empty() && self.kind != "IPPool" {
            return bad(format!("kind must be IPPool, not {:?}", self.kind));
        }
        if self.metadata.name.is_empty() {
            return bad("metadata.name must not be empty".into());
        }
        let fam = self.family();
        let cidr = self.spec.cidr;
        if cidr.trunc() != cidr {
            return Err(Error::InvalidCidr {
                context: format!("IPPool {}/spec.cidr", self.metadata.name),
                value: cidr.to_string(),
                rule: "host bits must be zero".into(),
            });
        }
        if let Some(rule) = reserved_range_rule(cidr) {
            return bad(rule);
        }
        let bs = self.block_size();
        if !block_sizes(fam).contains(&bs) {
            return bad(format!(
                "blockSize {bs} out of range {:?} for {}",
                block_sizes(fam),
                fam.label()
            ));
        }
        if cidr.prefix_len() > bs {
            return bad(format!(
                "pool prefix /{} is longer than blockSize /{bs}",
                cidr.prefix_len()
            ));
        }
        let ipip = self.spec.ipip_mode.unwrap_or_default();
        let vxlan = self.spec.vxlan_mode.unwrap_or_default();
        if ipip != EncapMode::Never && vxlan != EncapMode::Never {
            return bad("ipipMode and vxlanMode cannot both be enabled".into());
        }
        if fam == Family::V6 && ipip != EncapMode::Never {
            return bad("ipipMode is not supported on IPv6 pools".into());
        }
        if let Some(uses) = &self.spec.allowed_uses {
            if uses.is_empty() {
                return bad("allowedUses must not be empty".into());
            }
            if uses.contains(&AllowedUse::LoadBalancer) && uses.len() > 1 {
                return bad("allowedUses LoadBalancer cannot be combined with other uses".into());
            }
        }
        if self.node_selector().trim().is_empty() {
            return bad("nodeSelector must not be empty (use all())".into());
        }
        Ok(())
    }
}

/// The pods' default gateway: every workload routes via this link-local
/// address (answered by proxy ARP on the host side of its veth).
pub const POD_GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);

/// Ranges a pool must not touch, with the reason a node breaks if it does.
const RESERVED_RANGES: [(&str, &str); 6] = [
    ("169.254.0.0/16", "IPv4 link-local"),
    ("fe80::/10", "IPv6 link-local"),
    ("127.0.0.0/8", "IPv4 loopback"),
    ("::1/128", "IPv6 loopback"),
    ("224.0.0.0/4", "IPv4 multicast"),
    ("ff00::/8", "IPv6 multicast"),
];

/// The rule a pool CIDR breaks by covering an address a node needs for
/// something else, if any.
fn reserved_range_rule(cidr: IpNet) -> Option<String> {
    if cidr.prefix_len() == 0 {
        return Some(format!(
            "cidr {cidr} is the default route; a pool must be a proper subnet"
        ));
    }
    if cidr.contains(&IpAddr::V4(POD_GATEWAY)) {
        return Some(format!(
            "cidr {cidr} contains {POD_GATEWAY}, the pods' default gateway"
        ));
    }
    RESERVED_RANGES.iter().find_map(|(range, what)| {
        let range: IpNet = range.parse().expect("reserved ranges parse");
        let overlaps = range.contains(&cidr.network()) || cidr.contains(&range.network());
        overlaps.then(|| format!("cidr {cidr} overlaps the {what} range {range}"))
    })
}

/// Validate a set of pools: each pool, unique names, no two overlapping.
///
/// Near-linear: names go through a hash set, and overlaps are found by
/// sorting the pools by network address and comparing neighbours (CIDRs
/// either nest or are disjoint, so if any two overlap, two neighbours do).
pub fn validate_pools(pools: &[IpPool]) -> Result<()> {
    let mut names = std::collections::HashSet::with_capacity(pools.len());
    for p in pools {
        p.validate()?;
        if !names.insert(p.metadata.name.as_str()) {
            return Err(Error::InvalidPool {
                pool: p.metadata.name.clone(),
                rule: "duplicate pool name".into(),
            });
        }
    }
    let mut order: Vec<&IpPool> = pools.iter().collect();
    // IPv4 addresses order before IPv6 ones: the families never interleave.
    order.sort_by_key(|p| (p.spec.cidr.network(), p.spec.cidr.prefix_len()));
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.spec.cidr.contains(&b.spec.cidr.network()) {
            return Err(Error::OverlappingPools {
                a: a.metadata.name.clone(),
                a_cidr: a.spec.cidr,
                b: b.metadata.name.clone(),
                b_cidr: b.spec.cidr,
            });
        }
    }
    Ok(())
}

/// One allocation attribute of an IPAMBlock (Calico `AllocationAttribute`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AllocationAttribute {
    /// The owning handle.
    #[serde(rename = "handle_id", default)]
    pub handle_id: Option<String>,
    /// Owner attributes (pod, namespace, node, type, ...).
    #[serde(default)]
    pub secondary: Option<BTreeMap<String, String>>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Calico's IPAMBlock (the value at `/calico/ipam/v2/assignment/ipv4/block/<cidr>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamBlock {
    /// Block CIDR.
    pub cidr: IpNet,
    /// `host:<node>` or `virtual:<name>`; null when unaffine.
    #[serde(default)]
    pub affinity: Option<String>,
    /// Read from older writers; not in Calico's etcd model, never written.
    #[serde(default, skip_serializing)]
    pub strict_affinity: bool,
    /// One entry per ordinal: null = free, else index into `attributes`.
    pub allocations: Vec<Option<usize>>,
    /// Free ordinals, oldest first (a FIFO).
    pub unallocated: Vec<u32>,
    /// Attributes referenced by `allocations`.
    #[serde(default)]
    pub attributes: Vec<AllocationAttribute>,
    /// Soft delete.
    #[serde(default)]
    pub deleted: bool,
    /// Bumped on every write.
    #[serde(default)]
    pub sequence_number: u64,
    /// Ordinal (as string) -> sequence number of its allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number_for_allocation: Option<BTreeMap<String, u64>>,
    /// calinet extension: ordinal (as string) -> release time (unix seconds)
    /// for free ordinals still in their reuse cooldown. Absent when empty.
    #[serde(
        default,
        rename = "calinetReleasedAt",
        skip_serializing_if = "Option::is_none"
    )]
    pub released_at: Option<BTreeMap<String, u64>>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// State of a block affinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum AffinityState {
    /// Phase one of a claim; counts as absent.
    Pending,
    /// The block belongs to the node.
    Confirmed,
    /// Being released.
    PendingDeletion,
}

/// A boolean that Calico's v3 BlockAffinity writes as a string (`"false"`);
/// accepts both forms and writes the string form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StringBool(pub bool);

impl Serialize for StringBool {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(if self.0 { "true" } else { "false" })
    }
}
impl<'de> Deserialize<'de> for StringBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(StringBool(b)),
            Value::String(s) if s == "true" => Ok(StringBool(true)),
            Value::String(s) if s == "false" || s.is_empty() => Ok(StringBool(false)),
            Value::Null => Ok(StringBool(false)),
            other => Err(serde::de::Error::custom(format!(
                "expected boolean, got {other}"
            ))),
        }
    }
}

/// Calico's BlockAffinity (value at `/calico/ipam/v2/host/<node>/ipv4/block/<cidr>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockAffinity {
    /// pending / confirmed / pendingDeletion.
    pub state: AffinityState,
    /// The node (or virtual owner) name.
    #[serde(default)]
    pub node: String,
    /// `host` or `virtual`.
    #[serde(rename = "type", default = "default_affinity_type")]
    pub affinity_type: String,
    /// The block CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<IpNet>,
    /// Soft delete (a string in Calico's v3 resource).
    #[serde(default)]
    pub deleted: StringBool,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

fn default_affinity_type() -> String {
    "host".into()
}

/// Calico's IPAMHandle (value at `/calico/ipam/v2/handle/<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpamHandle {
    /// The handle id.
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR -> number of addresses of this handle in it.
    #[serde(default)]
    pub block: BTreeMap<String, u32>,
    /// Soft delete.
    #[serde(default)]
    pub deleted: bool,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

/// IPAMConfiguration spec (also the value at `/calico/ipam/v2/config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConfigSpec {
    /// Never borrow addresses from other nodes' blocks.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Claim new blocks automatically.
    #[serde(default = "default_true")]
    pub auto_allocate_blocks: bool,
    /// Cap on blocks per host; 0 means the default of 20.
    #[serde(default)]
    pub max_blocks_per_host: u32,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

fn default_true() -> bool {
    true
}

/// The effective block cap when `maxBlocksPerHost` is 0.
pub const DEFAULT_MAX_BLOCKS_PER_HOST: u32 = 20;

impl Default for IpamConfigSpec {
    fn default() -> Self {
        IpamConfigSpec {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: 0,
            extra: Extra::new(),
        }
    }
}

impl IpamConfigSpec {
    /// Cross-field rules.
    pub fn validate(&self) -> Result<()> {
        if self.max_blocks_per_host > 0 && !self.strict_affinity {
            return Err(Error::InvalidConfig {
                rule: format!(
                    "maxBlocksPerHost {} requires strictAffinity: true",
                    self.max_blocks_per_host
                ),
            });
        }
        if !self.strict_affinity && !self.auto_allocate_blocks {
            return Err(Error::InvalidConfig {
                rule: "strictAffinity: false with autoAllocateBlocks: false is not allowed".into(),
            });
        }
        Ok(())
    }
    /// The effective block cap.
    pub fn effective_max_blocks(&self) -> u32 {
        if self.max_blocks_per_host == 0 {
            DEFAULT_MAX_BLOCKS_PER_HOST
        } else {
            self.max_blocks_per_host
        }
    }
}

resource!(
    /// Calico `IPAMConfiguration` (name `default`).
    IpamConfiguration, IpamConfigSpec, "IPAMConfiguration"
);

/// IPReservation spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpReservationSpec {
    /// Addresses never handed out by AutoAssign.
    #[serde(rename = "reservedCIDRs", default)]
    pub reserved_cidrs: Vec<IpNet>,
    /// Unknown fields, kept.
    #[serde(flatten)]
    pub extra: Extra,
}

resource!(
    /// Calico `IPReservation`.
    IpReservation, IpReservationSpec, "IPReservation"
);

impl IpReservation {
    /// Check the reservation: a name and at least one CIDR.
    pub fn validate(&self) -> Result<()> {
        if self.metadata.name.is_empty() {
            return Err(Error::InvalidReservation {
                name: String::new(),
                rule: "metadata.name must not be empty".into(),
            });
        }
        if self.spec.reserved_cidrs.is_empty() {
            return Err(Error::InvalidReservation {
                name: self.metadata.name.clone(),
                rule: "reservedCIDRs must not be empty".into(),
            });
        }
        Ok(())
    }
}

/// Owner attributes of an allocation (Calico's `secondary`).
pub type Attributes = BTreeMap<String, String>;
