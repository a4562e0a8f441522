//! Calico v3 policy resources (Tier, NetworkPolicy, GlobalNetworkPolicy, Profile)
//! and Kubernetes `networking.k8s.io/v1` NetworkPolicy, as serde types with the
//! upstream field names, plus validation and the Kubernetes-to-Calico conversion.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::selector::Selector;

/// Calico's API group/version.
pub const CALICO_API: &str = "projectcalico.org/v3";
/// Kubernetes' NetworkPolicy API group/version.
pub const K8S_API: &str = "networking.k8s.io/v1";
/// The tier every policy without one belongs to.
pub const DEFAULT_TIER: &str = "default";
/// Order of the `default` tier when no Tier resource sets one (Calico's value).
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Prefix Calico gives namespace labels inherited by workloads (`pcns.<key>`).
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
/// Prefix Calico gives service-account labels inherited by workloads (`pcsa.<key>`).
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";
/// Label Calico sets on every workload to its orchestrator (`k8s` for pods).
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";
/// Label Calico sets on every pod's workload to its service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";
/// Label Kubernetes puts on every namespace: the namespace's name.
pub const K8S_NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Whether `key` is one of the labels that carry a workload's namespace or
/// service-account identity (`projectcalico.org/namespace`,
/// `projectcalico.org/orchestrator`, `projectcalico.org/serviceaccount`, and the
/// `pcns.` and `pcsa.` prefixes).
///
/// These are valid Kubernetes label keys, so a pod may carry them; they are set
/// from the namespace and service account only, and a pod's own labels with
/// these keys are ignored. Otherwise a pod could make itself a member of another
/// namespace.
pub fn is_reserved_label(key: &str) -> bool {
    key == crate::selector::NAMESPACE_LABEL
        || key == ORCHESTRATOR_LABEL
        || key == SERVICE_ACCOUNT_LABEL
        || key.starts_with(NAMESPACE_LABEL_PREFIX)
        || key.starts_with(SERVICE_ACCOUNT_LABEL_PREFIX)
}

/// Whether profile `profile` may give an endpoint in `namespace` the reserved
/// label `key`: `pcns.*` only from the namespace's own profile `kns.<namespace>`,
/// `pcsa.*` only from one of its service-account profiles `ksa.<namespace>.<sa>`;
/// the other reserved labels come from the endpoint's namespace, never a profile.
pub(crate) fn profile_may_set(profile: &str, namespace: Option<&str>, key: &str) -> bool {
    let Some(ns) = namespace else {
        return false;
    };
    if key.starts_with(NAMESPACE_LABEL_PREFIX) {
        profile.strip_prefix("kns.") == Some(ns)
    } else if key.starts_with(SERVICE_ACCOUNT_LABEL_PREFIX) {
        profile
            .strip_prefix("ksa.")
            .and_then(|rest| rest.strip_prefix(ns))
            .is_some_and(|rest| rest.starts_with('.'))
    } else {
        false
    }
}

/// Removes the reserved labels ([`is_reserved_label`]) from a pod's own labels.
pub fn without_reserved_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(k, _)| !is_reserved_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Object metadata: calinet-types' one `ObjectMeta` (name, namespace, labels,
/// and every other field kept as-is).
pub use calinet_types::ObjectMeta;

/// A rule action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// Accept for this direction; later tiers and profiles are skipped.
    Allow,
    /// Drop.
    Deny,
    /// Log and continue with the next rule.
    Log,
    /// Skip the rest of this tier; continue with the next tier (or profiles).
    Pass,
}

/// Policy direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    /// Traffic to the selected endpoints.
    Ingress,
    /// Traffic from the selected endpoints.
    Egress,
}

/// An IP protocol: a Calico name or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// TCP.
    pub const TCP: Protocol = Protocol(6);
    /// UDP.
    pub const UDP: Protocol = Protocol(17);
    /// ICMP.
    pub const ICMP: Protocol = Protocol(1);
    /// ICMPv6.
    pub const ICMPV6: Protocol = Protocol(58);
    /// SCTP.
    pub const SCTP: Protocol = Protocol(132);
    /// UDPLite.
    pub const UDPLITE: Protocol = Protocol(136);

    /// Whether rules may match ports for this protocol.
    pub fn has_ports(self) -> bool {
        matches!(
            self,
            Protocol::TCP | Protocol::UDP | Protocol::SCTP | Protocol::UDPLITE
        )
    }

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Protocol::TCP => "TCP",
            Protocol::UDP => "UDP",
            Protocol::ICMP => "ICMP",
            Protocol::ICMPV6 => "ICMPv6",
            Protocol::SCTP => "SCTP",
            Protocol::UDPLITE => "UDPLite",
            _ => return None,
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "TCP" | "tcp" => Protocol::TCP,
            "UDP" | "udp" => Protocol::UDP,
            "ICMP" | "icmp" => Protocol::ICMP,
            "ICMPv6" | "icmpv6" => Protocol::ICMPV6,
            "SCTP" | "sctp" => Protocol::SCTP,
            "UDPLite" | "udplite" => Protocol::UDPLITE,
            n => match n.parse::<u8>() {
                Ok(v) if v > 0 => Protocol(v),
                _ => {
                    return Err(format!(
                        "protocol {s:?} is not TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1..255"
                    ));
                }
            },
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(n) => s.serialize_str(n),
            None => s.serialize_u8(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => u8::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .map(Protocol)
                .ok_or_else(|| serde::de::Error::custom(format!("protocol {n} is not 1..255"))),
            NumOrStr::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A port in a rule: a number, a range `"lo:hi"`, or a named port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Port {
    /// One port.
    Number(u16),
    /// An inclusive range.
    Range(u16, u16),
    /// A named port, resolved against the endpoints' named ports.
    Named(String),
}

impl Port {
    /// Whether `port` is in this numeric port or range (named ports: false).
    pub fn contains(&self, port: u16) -> bool {
        match self {
            Port::Number(p) => *p == port,
            Port::Range(lo, hi) => (*lo..=*hi).contains(&port),
            Port::Named(_) => false,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Number(p) => write!(f, "{p}"),
            Port::Range(a, b) => write!(f, "{a}:{b}"),
            Port::Named(n) => f.write_str(n),
        }
    }
}

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((a, b)) = s.split_once(':') {
            let lo: u16 = a
                .parse()
                .map_err(|_| format!("port range {s:?}: {a:?} is not a port number"))?;
            let hi: u16 = b
                .parse()
                .map_err(|_| format!("port range {s:?}: {b:?} is not a port number"))?;
            if lo > hi {
                return Err(format!("port range {s:?}: start is above end"));
            }
            return Ok(Port::Range(lo, hi));
        }
        if let Ok(n) = s.parse::<u16>() {
            return Ok(Port::Number(n));
        }
        let valid = !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && s.chars().any(|c| c.is_ascii_lowercase());
        if valid {
            Ok(Port::Named(s.to_owned()))
        } else {
            Err(format!(
                "port {s:?} is not a number, a range \"lo:hi\" or a port name (IANA_SVC_NAME)"
            ))
        }
    }
}

impl Serialize for Port {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Number(p) => s.serialize_u16(*p),
            other => s.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumOrStr::deserialize(d)? {
            NumOrStr::Num(n) => u16::try_from(n)
                .map(Port::Number)
                .map_err(|_| serde::de::Error::custom(format!("port {n} is above 65535"))),
            NumOrStr::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// ICMP type and optional code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpFields {
    /// ICMP type (0..=254).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP code (needs a type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// The source or destination part of a rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct EntityRule {
    /// Match addresses in any of these networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<IpNet>,
    /// Match addresses in none of these networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<IpNet>,
    /// Match addresses of endpoints this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// Match addresses of no endpoint this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<Selector>,
    /// Restrict `selector` to endpoints in namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<Selector>,
    /// Match any of these ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Match none of these ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
}

/// One policy rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// What to do with matching packets.
    pub action: Action,
    /// Restrict to IPv4 (4) or IPv6 (6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    /// Match this protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Match any protocol but this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    /// Match this ICMP type/code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpFields>,
    /// Match anything but this ICMP type/code.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<IcmpFields>,
    /// Source match.
    #[serde(default, skip_serializing_if = "is_default_entity")]
    pub source: EntityRule,
    /// Destination match.
    #[serde(default, skip_serializing_if = "is_default_entity")]
    pub destination: EntityRule,
    /// Rule metadata (annotations); carried, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

/// A rule's `metadata`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMetadata {
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_default_entity(e: &EntityRule) -> bool {
    *e == EntityRule::default()
}

impl Rule {
    /// A rule with only an action (matches everything).
    pub fn new(action: Action) -> Self {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
            metadata: None,
        }
    }
}

/// Tier spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Tiers apply in ascending order; no order means last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// What happens to traffic no policy of the tier decides: `Deny` (default) or `Pass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<Action>,
}

/// Spec of NetworkPolicy and GlobalNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Tier name (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Policies apply in ascending order within a tier; no order means last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to (default `all()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// GlobalNetworkPolicy only: restrict to endpoints in namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<Selector>,
    /// Directions. Absent or empty: Calico's defaulting
    /// ([`PolicySpec::effective_types`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

impl PolicySpec {
    /// The effective policy types. Absent or empty `types` default as Calico's
    /// API does: Ingress when there are no egress rules (also when there are no
    /// rules at all), Egress when there are only egress rules, both when there
    /// are both.
    pub fn effective_types(&self) -> Vec<PolicyType> {
        match &self.types {
            Some(t) if !t.is_empty() => t.clone(),
            _ if self.egress.is_empty() => vec![PolicyType::Ingress],
            _ if self.ingress.is_empty() => vec![PolicyType::Egress],
            _ => vec![PolicyType::Ingress, PolicyType::Egress],
        }
    }
}

/// Profile spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Labels every endpoint using this profile inherits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_to_apply: BTreeMap<String, String>,
}

/// A Calico resource with apiVersion/kind/metadata/spec.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    /// `projectcalico.org/v3`.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: S,
}

/// Tier resource.
pub type Tier = Resource<TierSpec>;
/// Namespaced NetworkPolicy resource.
pub type NetworkPolicy = Resource<PolicySpec>;
/// GlobalNetworkPolicy resource.
pub type GlobalNetworkPolicy = Resource<PolicySpec>;
/// Profile resource.
pub type Profile = Resource<ProfileSpec>;

impl<S: Default> Resource<S> {
    /// A Calico v3 resource of `kind` named `name`.
    pub fn calico(kind: &str, name: &str, spec: S) -> Self {
        Resource {
            api_version: CALICO_API.to_owned(),
            kind: kind.to_owned(),
            metadata: ObjectMeta::named(name),
            spec,
        }
    }
}

impl Profile {
    /// The profile Calico creates for a Kubernetes namespace: allow-all both ways,
    /// the namespace's labels inherited as `pcns.<key>`, with the
    /// `kubernetes.io/metadata.name` label Kubernetes puts on every namespace
    /// (always the namespace's name, whatever `labels` says) and Calico's
    /// `projectcalico.org/name`.
    pub fn for_namespace(namespace: &str, labels: &BTreeMap<String, String>) -> Profile {
        let mut to_apply: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (format!("{NAMESPACE_LABEL_PREFIX}{k}"), v.clone()))
            .collect();
        to_apply.insert(
            format!("{NAMESPACE_LABEL_PREFIX}{K8S_NAMESPACE_NAME_LABEL}"),
            namespace.to_owned(),
        );
        to_apply.insert(
            format!("{NAMESPACE_LABEL_PREFIX}projectcalico.org/name"),
            namespace.to_owned(),
        );
        Resource::calico(
            "Profile",
            &format!("kns.{namespace}"),
            ProfileSpec {
                ingress: vec![Rule::new(Action::Allow)],
                egress: vec![Rule::new(Action::Allow)],
                labels_to_apply: to_apply,
            },
        )
    }
}

// ---------------------------------------------------------------------------
// Kubernetes networking.k8s.io/v1 NetworkPolicy

/// Kubernetes label selector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    /// Exact matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for In/NotIn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// `ipBlock` peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    pub cidr: IpNet,
    /// Excluded sub-blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

/// A `from`/`to` peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct K8sPeer {
    /// Pods (in the policy's namespace unless `namespaceSelector` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// A port entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct K8sPort {
    /// Protocol (default TCP). Read as Kubernetes spells it: a name in Calico's
    /// capitalisation (`TCP`, `UDP`, `SCTP`, ...), never a number or lowercase.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "k8s_protocol"
    )]
    pub protocol: Option<Protocol>,
    /// Number or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// End of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// Kubernetes' protocol field is a case-sensitive name; the names other than
/// TCP, UDP and SCTP are read so that validation can name the field.
fn k8s_protocol<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Protocol>, D::Error> {
    let refuse =
        |what: String| serde::de::Error::custom(format!("protocol {what} is not TCP, UDP or SCTP"));
    match Option::<NumOrStr>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrStr::Num(n)) => Err(refuse(n.to_string())),
        Some(NumOrStr::Str(s)) => match s.parse::<Protocol>() {
            Ok(p) if p.name() == Some(s.as_str()) => Ok(Some(p)),
            _ => Err(refuse(format!("{s:?}"))),
        },
    }
}

/// An ingress or egress rule (`from` for ingress, `to` for egress).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct K8sRule {
    /// Ingress peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<K8sPeer>,
    /// Egress peers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<K8sPeer>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<K8sPort>,
}

/// Kubernetes NetworkPolicy spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(deny_unknown_fields)]
pub struct K8sNetworkPolicySpec {
    /// Pods the policy applies to.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress` / `Egress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<PolicyType>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<K8sRule>>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<K8sRule>>,
}

/// Kubernetes NetworkPolicy resource.
pub type K8sNetworkPolicy = Resource<K8sNetworkPolicySpec>;

fn invalid(res: &str, field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        resource: res.to_owned(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (RFC 1123 label).
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters: the name
/// part of a label key, and a non-empty label value.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain.
fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.len() > 253 || !p.split('.').all(is_dns_label))
    {
        return Err(format!(
            "label key {k:?}: prefix {p:?} is not a DNS subdomain (lowercase letters, digits, '-', '.')"
        ));
    }
    if !is_qualified_name_part(name) {
        return Err(format!(
            "label key {k:?}: name {name:?} must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or a qualified-name part.
fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_qualified_name_part(v) {
        Ok(())
    } else {
        Err(format!(
            "label value {v:?} must be empty or 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        ))
    }
}

/// A Kubernetes label selector as a Calico selector, validated as the API
/// server validates it (keys, values, operators and their values).
fn k8s_selector_to_calico(
    resource: &str,
    field: &str,
    sel: &LabelSelector,
) -> Result<Selector, Error> {
    use crate::selector::Expr;
    let mut terms = Vec::new();
    for (k, v) in &sel.match_labels {
        let f = format!("{field}.matchLabels");
        check_label_key(k).map_err(|r| invalid(resource, &f, r))?;
        check_label_value(v).map_err(|r| invalid(resource, &f, r))?;
        terms.push(Expr::Eq(k.clone(), v.clone()));
    }
    for (i, req) in sel.match_expressions.iter().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        check_label_key(&req.key).map_err(|r| invalid(resource, format!("{f}.key"), r))?;
        let key = req.key.clone();
        if !matches!(
            req.operator.as_str(),
            "In" | "NotIn" | "Exists" | "DoesNotExist"
        ) {
            return Err(invalid(
                resource,
                format!("{f}.operator"),
                format!(
                    "{:?} is not In, NotIn, Exists or DoesNotExist",
                    req.operator
                ),
            ));
        }
        let with_values = matches!(req.operator.as_str(), "In" | "NotIn");
        if with_values && req.values.is_empty() {
            return Err(invalid(
                resource,
                format!("{f}.values"),
                format!("operator {} needs at least one value", req.operator),
            ));
        }
        if !with_values && !req.values.is_empty() {
            return Err(invalid(
                resource,
                format!("{f}.values"),
                format!("operator {:?} takes no values", req.operator),
            ));
        }
        for (j, v) in req.values.iter().enumerate() {
            check_label_value(v).map_err(|r| invalid(resource, format!("{f}.values[{j}]"), r))?;
        }
        let values = req.values.iter().cloned().collect();
        terms.push(match req.operator.as_str() {
            "In" => Expr::In(key, values),
            "NotIn" => Expr::NotIn(key, values),
            "Exists" => Expr::Has(key),
            _ => Expr::Not(Box::new(Expr::Has(key))),
        });
    }
    Ok(Selector::from_expr(match terms.len() {
        0 => Expr::All,
        1 => terms.remove(0),
        _ => Expr::And(terms),
    }))
}

impl K8sNetworkPolicy {
    /// The policy types after the API server's defaulting: an absent or empty
    /// `policyTypes` means Ingress, plus Egress when the `egress` list is
    /// non-empty (an empty `egress: []` does not make an egress policy).
    /// Listed types are returned once each, Ingress first.
    pub fn effective_policy_types(&self) -> Vec<PolicyType> {
        let listed = |t: PolicyType| {
            self.spec
                .policy_types
                .as_ref()
                .is_some_and(|ts| ts.contains(&t))
        };
        match &self.spec.policy_types {
            Some(ts) if !ts.is_empty() => [PolicyType::Ingress, PolicyType::Egress]
                .into_iter()
                .filter(|t| listed(*t))
                .collect(),
            _ if self.spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => {
                vec![PolicyType::Ingress, PolicyType::Egress]
            }
            _ => vec![PolicyType::Ingress],
        }
    }

    /// Converts to the Calico NetworkPolicy Calico's Kubernetes datastore driver
    /// produces: name `knp.default.<name>`, tier `default`, order 1000, types as
    /// [`K8sNetworkPolicy::effective_policy_types`] (rules of a direction the
    /// policy does not apply in are dropped), Allow rules, one rule per (peer,
    /// port), protocol TCP when a port gives none, `endPort` as a range,
    /// `ipBlock` as nets + notNets.
    ///
    /// Fails, naming the field, on anything the Kubernetes API server rejects:
    /// more than two policy types, invalid label keys or values, `In`/`NotIn`
    /// without values or `Exists`/`DoesNotExist` with values, a peer with no
    /// selector and no ipBlock, an ipBlock combined with a selector, an `except`
    /// not strictly inside its `cidr`, a protocol other than TCP, UDP or SCTP,
    /// port 0, and `endPort` without a numeric `port` at or below it.
    pub fn to_calico(&self) -> Result<NetworkPolicy, Error> {
        let res = format!("NetworkPolicy {}", self.metadata.name);
        if self.api_version != K8S_API {
            return Err(invalid(
                &res,
                "apiVersion",
                format!("expected {K8S_API}, found {}", self.api_version),
            ));
        }
        let selector = k8s_selector_to_calico(&res, "spec.podSelector", &self.spec.pod_selector)?;
        if let Some(ts) = &self.spec.policy_types
            && ts.len() > 2
        {
            return Err(invalid(
                &res,
                "spec.policyTypes",
                format!("lists {} types; at most Ingress and Egress", ts.len()),
            ));
        }
        let types = self.effective_policy_types();
        let mut ingress = Vec::new();
        for (i, r) in self.spec.ingress.iter().flatten().enumerate() {
            let f = format!("spec.ingress[{i}]");
            convert_k8s_rule(&res, &f, r, &r.from, true, &mut ingress)?;
        }
        let mut egress = Vec::new();
        for (i, r) in self.spec.egress.iter().flatten().enumerate() {
            let f = format!("spec.egress[{i}]");
            convert_k8s_rule(&res, &f, r, &r.to, false, &mut egress)?;
        }
        // Rules of a direction the policy does not apply in are valid but inert.
        if !types.contains(&PolicyType::Ingress) {
            ingress.clear();
        }
        if !types.contains(&PolicyType::Egress) {
            egress.clear();
        }
        let mut out = Resource::calico(
            "NetworkPolicy",
            &format!("knp.default.{}", self.metadata.name),
            PolicySpec {
                tier: Some(DEFAULT_TIER.to_owned()),
                order: Some(1000.0),
                selector: Some(selector),
                namespace_selector: None,
                types: Some(types),
                ingress,
                egress,
            },
        );
        out.metadata.namespace = self.metadata.namespace.clone();
        Ok(out)
    }
}

fn convert_k8s_peer(res: &str, pf: &str, p: &K8sPeer) -> Result<EntityRule, Error> {
    let mut e = EntityRule::default();
    let selectors =
        usize::from(p.pod_selector.is_some()) + usize::from(p.namespace_selector.is_some());
    if let Some(b) = &p.ip_block {
        if selectors > 0 {
            return Err(invalid(
                res,
                pf,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        for (j, x) in b.except.iter().enumerate() {
            // Strictly inside: same family, longer prefix, and within the cidr.
            let inside = x.prefix_len() > b.cidr.prefix_len() && b.cidr.contains(&x.network());
            if !inside {
                return Err(invalid(
                    res,
                    format!("{pf}.ipBlock.except[{j}]"),
                    format!("{x} must be strictly inside cidr {}", b.cidr),
                ));
            }
        }
        e.nets = vec![b.cidr.trunc()];
        e.not_nets = b.except.iter().map(IpNet::trunc).collect();
        return Ok(e);
    }
    if selectors == 0 {
        return Err(invalid(
            res,
            pf,
            "a peer needs a podSelector, a namespaceSelector or an ipBlock",
        ));
    }
    e.selector = Some(match &p.pod_selector {
        Some(s) => k8s_selector_to_calico(res, &format!("{pf}.podSelector"), s)?,
        None => Selector::all(),
    });
    if let Some(ns) = &p.namespace_selector {
        e.namespace_selector = Some(k8s_selector_to_calico(
            res,
            &format!("{pf}.namespaceSelector"),
            ns,
        )?);
    }
    Ok(e)
}

fn convert_k8s_port(res: &str, pf: &str, p: &K8sPort) -> Result<(Protocol, Vec<Port>), Error> {
    let proto = p.protocol.unwrap_or(Protocol::TCP);
    if !matches!(proto, Protocol::TCP | Protocol::UDP | Protocol::SCTP) {
        return Err(invalid(
            res,
            format!("{pf}.protocol"),
            format!("{proto} is not TCP, UDP or SCTP"),
        ));
    }
    match &p.port {
        Some(Port::Number(0)) => {
            return Err(invalid(
                res,
                format!("{pf}.port"),
                "0 is not a port number (1-65535)",
            ));
        }
        Some(r @ Port::Range(..)) => {
            return Err(invalid(
                res,
                format!("{pf}.port"),
                format!("{r} is not a port number or name (a range is port and endPort)"),
            ));
        }
        _ => {}
    }
    let end = format!("{pf}.endPort");
    let ports = match (&p.port, p.end_port) {
        (None, None) => Vec::new(),
        (Some(port), None) => vec![port.clone()],
        (None, Some(_)) => return Err(invalid(res, end, "needs port to be set")),
        (Some(Port::Named(n)), Some(_)) => {
            return Err(invalid(
                res,
                end,
                format!("cannot follow the named port {n:?} (a range needs a numeric port)"),
            ));
        }
        (Some(Port::Number(lo)), Some(hi)) if hi < *lo => {
            return Err(invalid(res, end, format!("{hi} is below port {lo}")));
        }
        (Some(Port::Number(lo)), Some(hi)) => vec![Port::Range(*lo, hi)],
        (Some(Port::Range(..)), Some(_)) => unreachable!("rejected above"),
    };
    Ok((proto, ports))
}

fn convert_k8s_rule(
    res: &str,
    field: &str,
    rule: &K8sRule,
    peers: &[K8sPeer],
    ingress: bool,
    out: &mut Vec<Rule>,
) -> Result<(), Error> {
    let mut peer_entities = Vec::new();
    if peers.is_empty() {
        peer_entities.push(EntityRule::default());
    }
    let side = if ingress { "from" } else { "to" };
    for (i, p) in peers.iter().enumerate() {
        peer_entities.push(convert_k8s_peer(res, &format!("{field}.{side}[{i}]"), p)?);
    }
    let mut port_specs: Vec<(Option<Protocol>, Vec<Port>)> = Vec::new();
    if rule.ports.is_empty() {
        port_specs.push((None, Vec::new()));
    }
    for (i, p) in rule.ports.iter().enumerate() {
        let (proto, ports) = convert_k8s_port(res, &format!("{field}.ports[{i}]"), p)?;
        port_specs.push((Some(proto), ports));
    }
    for e in &peer_entities {
        for (proto, ports) in &port_specs {
            let mut r = Rule::new(Action::Allow);
            r.protocol = *proto;
            let mut dest = EntityRule {
                ports: ports.clone(),
                ..EntityRule::default()
            };
            if ingress {
                r.source = e.clone();
            } else {
                dest.nets = e.nets.clone();
                dest.not_nets = e.not_nets.clone();
                dest.selector = e.selector.clone();
                dest.namespace_selector = e.namespace_selector.clone();
            }
            r.destination = dest;
            out.push(r);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Documents

/// Any resource calinet reads.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AnyResource {
    /// Tier.
    Tier(Tier),
    /// NetworkPolicy (Calico).
    NetworkPolicy(NetworkPolicy),
    /// GlobalNetworkPolicy.
    GlobalNetworkPolicy(GlobalNetworkPolicy),
    /// Profile.
    Profile(Profile),
    /// Kubernetes NetworkPolicy.
    K8sNetworkPolicy(K8sNetworkPolicy),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    api_version: String,
    kind: String,
}

fn yaml_err(doc: usize, e: serde_norway::Error) -> Error {
    Error::Yaml {
        document: doc,
        source: Box::new(e),
    }
}

/// Reads one or more YAML documents (`---` separated) of Calico v3 and Kubernetes
/// NetworkPolicy resources; every resource is validated.
pub fn parse_yaml(text: &str) -> Result<Vec<AnyResource>, Error> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = serde_norway::Value::deserialize(doc).map_err(|e| yaml_err(i, e))?;
        if value.is_null() {
            continue;
        }
        let head: Head = serde_norway::from_value(value.clone()).map_err(|e| yaml_err(i, e))?;
        let r = match (head.api_version.as_str(), head.kind.as_str()) {
            (CALICO_API, "Tier") => {
                AnyResource::Tier(serde_norway::from_value(value).map_err(|e| yaml_err(i, e))?)
            }
            (CALICO_API, "NetworkPolicy") => AnyResource::NetworkPolicy(
                serde_norway::from_value(value).map_err(|e| yaml_err(i, e))?,
            ),
            (CALICO_API, "GlobalNetworkPolicy") => AnyResource::GlobalNetworkPolicy(
                serde_norway::from_value(value).map_err(|e| yaml_err(i, e))?,
            ),
            (CALICO_API, "Profile") => {
                AnyResource::Profile(serde_norway::from_value(value).map_err(|e| yaml_err(i, e))?)
            }
            (K8S_API, "NetworkPolicy") => AnyResource::K8sNetworkPolicy(
                serde_norway::from_value(value).map_err(|e| yaml_err(i, e))?,
            ),
            (api, kind) => {
                return Err(Error::UnknownKind {
                    document: i,
                    api_version: api.to_owned(),
                    kind: kind.to_owned(),
                });
            }
        };
        validate_resource(&r)?;
        out.push(r);
    }
    Ok(out)
}

/// Validates a resource against Calico's rules.
pub fn validate_resource(r: &AnyResource) -> Result<(), Error> {
    match r {
        AnyResource::Tier(t) => {
            let res = format!("Tier {}", t.metadata.name);
            check_name(&res, &t.metadata.name)?;
            if let Some(o) = t.spec.order {
                check_order(&res, o)?;
            }
            match t.spec.default_action {
                None | Some(Action::Deny) | Some(Action::Pass) => Ok(()),
                Some(a) => Err(Error::Invalid {
                    resource: res,
                    field: "spec.defaultAction".into(),
                    reason: format!("{a:?} is not Deny or Pass"),
                }),
            }
        }
        AnyResource::NetworkPolicy(p) => {
            let res = format!("NetworkPolicy {}", p.metadata.name);
            if p.spec.namespace_selector.is_some() {
                return Err(Error::Invalid {
                    resource: res,
                    field: "spec.namespaceSelector".into(),
                    reason: "only GlobalNetworkPolicy has a namespaceSelector".into(),
                });
            }
            validate_policy(&res, &p.metadata, &p.spec)
        }
        AnyResource::GlobalNetworkPolicy(p) => {
            let res = format!("GlobalNetworkPolicy {}", p.metadata.name);
            validate_policy(&res, &p.metadata, &p.spec)
        }
        AnyResource::Profile(p) => {
            let res = format!("Profile {}", p.metadata.name);
            check_name(&res, &p.metadata.name)?;
            validate_rules(&res, "spec.ingress", &p.spec.ingress)?;
            validate_rules(&res, "spec.egress", &p.spec.egress)
        }
        AnyResource::K8sNetworkPolicy(p) => p.to_calico().map(|_| ()),
    }
}

fn check_name(res: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            resource: res.to_owned(),
            field: "metadata.name".into(),
            reason: format!("{name:?} is not a DNS subdomain name (lowercase, digits, '-', '.')"),
        })
    }
}

fn check_order(res: &str, o: f64) -> Result<(), Error> {
    if o.is_finite() {
        Ok(())
    } else {
        Err(Error::Invalid {
            resource: res.to_owned(),
            field: "spec.order".into(),
            reason: format!("{o} is not a finite number"),
        })
    }
}

fn validate_policy(res: &str, meta: &ObjectMeta, spec: &PolicySpec) -> Result<(), Error> {
    check_name(res, &meta.name)?;
    if let Some(o) = spec.order {
        check_order(res, o)?;
    }
    if let Some(t) = &spec.tier {
        check_name(res, t).map_err(|_| Error::Invalid {
            resource: res.to_owned(),
            field: "spec.tier".into(),
            reason: format!("{t:?} is not a tier name"),
        })?;
    }
    if let Some(types) = spec.types.as_ref().filter(|t| !t.is_empty()) {
        let mut seen = std::collections::BTreeSet::new();
        for t in types {
            if !seen.insert(t) {
                return Err(Error::Invalid {
                    resource: res.to_owned(),
                    field: "spec.types".into(),
                    reason: format!("{t:?} is listed twice"),
                });
            }
        }
        if !types.contains(&PolicyType::Egress) && !spec.egress.is_empty() {
            return Err(Error::Invalid {
                resource: res.to_owned(),
                field: "spec.egress".into(),
                reason: "egress rules present but types does not include Egress".into(),
            });
        }
        if !types.contains(&PolicyType::Ingress) && !spec.ingress.is_empty() {
            return Err(Error::Invalid {
                resource: res.to_owned(),
                field: "spec.ingress".into(),
                reason: "ingress rules present but types does not include Ingress".into(),
            });
        }
    }
    validate_rules(res, "spec.ingress", &spec.ingress)?;
    validate_rules(res, "spec.egress", &spec.egress)
}

fn validate_rules(res: &str, field: &str, rules: &[Rule]) -> Result<(), Error> {
    for (i, r) in rules.iter().enumerate() {
        validate_rule(res, &format!("{field}[{i}]"), r)?;
    }
    Ok(())
}

fn validate_rule(res: &str, field: &str, r: &Rule) -> Result<(), Error> {
    let bad = |f: &str, reason: String| Error::Invalid {
        resource: res.to_owned(),
        field: format!("{field}{f}"),
        reason,
    };
    if let Some(v) = r.ip_version
        && v != 4
        && v != 6
    {
        return Err(bad(".ipVersion", format!("{v} is not 4 or 6")));
    }
    for (name, icmp) in [("icmp", &r.icmp), ("notICMP", &r.not_icmp)] {
        let Some(icmp) = icmp else { continue };
        let proto = r.protocol;
        if proto != Some(Protocol::ICMP) && proto != Some(Protocol::ICMPV6) {
            return Err(bad(
                &format!(".{name}"),
                "needs protocol ICMP or ICMPv6".to_owned(),
            ));
        }
        if icmp.code.is_some() && icmp.icmp_type.is_none() {
            return Err(bad(&format!(".{name}.code"), "a code needs a type".into()));
        }
        if icmp.icmp_type == Some(255) {
            return Err(bad(
                &format!(".{name}.type"),
                "255 is not a valid type".into(),
            ));
        }
        if icmp.icmp_type.is_none() {
            return Err(bad(&format!(".{name}"), "needs a type".into()));
        }
    }
    if let (Some(p), Some(np)) = (r.protocol, r.not_protocol)
        && p == np
    {
        return Err(bad(
            ".notProtocol",
            format!("equals protocol {p}: the rule can never match"),
        ));
    }
    for (side, e) in [(".source", &r.source), (".destination", &r.destination)] {
        if (!e.ports.is_empty() || !e.not_ports.is_empty())
            && !r.protocol.is_some_and(Protocol::has_ports)
        {
            return Err(bad(
                &format!("{side}.ports"),
                "ports need protocol TCP, UDP, SCTP or UDPLite".into(),
            ));
        }
        for (name, ports) in [("ports", &e.ports), ("notPorts", &e.not_ports)] {
            for (i, p) in ports.iter().enumerate() {
                if matches!(p, Port::Number(0) | Port::Range(0, _)) {
                    return Err(bad(
                        &format!("{side}.{name}[{i}]"),
                        format!("{p} includes port 0 (ports are 1-65535)"),
                    ));
                }
            }
        }
        for n in e.nets.iter().chain(&e.not_nets) {
            let v = if matches!(n, IpNet::V4(_)) { 4 } else { 6 };
            if let Some(want) = r.ip_version
                && want != v
            {
                return Err(bad(
                    &format!("{side}.nets"),
                    format!("{n} is IPv{v} but ipVersion is {want}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALICO_YAML: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata:
  name: security
spec:
  order: 100
  defaultAction: Pass
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-tcp-6379
  namespace: production
spec:
  tier: security
  selector: role == 'database'
  types:
    - Ingress
    - Egress
  ingress:
    - action: Log
      protocol: TCP
      source:
        selector: role == 'frontend'
    - action: Allow
      protocol: TCP
      source:
        selector: role == 'frontend'
      destination:
        ports:
          - 6379
          - "7000:7010"
          - redis
    - action: Deny
      protocol: ICMP
      icmp:
        type: 8
  egress:
    - action: Allow
      notProtocol: 17
      destination:
        notNets: [10.0.0.0/8]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-blue
spec:
  order: 10.5
  selector: color == 'blue'
  namespaceSelector: has(team)
  ingress:
    - action: Deny
      source:
        nets: [192.0.2.0/24, 2001:db8::/32]
        notSelector: "!has(x)"
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: kns.production
spec:
  ingress:
    - action: Allow
  egress:
    - action: Allow
  labelsToApply:
    pcns.team: a
"#;

    #[test]
    fn reads_calico_yaml() {
        let rs = parse_yaml(CALICO_YAML).unwrap();
        assert_eq!(rs.len(), 4);
        let AnyResource::Tier(t) = &rs[0] else {
            panic!("{:?}", rs[0])
        };
        assert_eq!(t.spec.default_action, Some(Action::Pass));
        let AnyResource::NetworkPolicy(p) = &rs[1] else {
            panic!()
        };
        assert_eq!(p.metadata.namespace.as_deref(), Some("production"));
        assert_eq!(
            p.spec.ingress[1].destination.ports,
            vec![
                Port::Number(6379),
                Port::Range(7000, 7010),
                Port::Named("redis".into())
            ]
        );
        assert_eq!(p.spec.ingress[2].icmp.unwrap().icmp_type, Some(8));
        assert_eq!(p.spec.egress[0].not_protocol, Some(Protocol::UDP));
        let AnyResource::GlobalNetworkPolicy(g) = &rs[2] else {
            panic!()
        };
        assert_eq!(g.spec.order, Some(10.5));
        assert_eq!(g.spec.effective_types(), vec![PolicyType::Ingress]);
        assert_eq!(g.spec.ingress[0].source.nets.len(), 2);
        let AnyResource::Profile(pr) = &rs[3] else {
            panic!()
        };
        assert_eq!(pr.spec.labels_to_apply["pcns.team"], "a");
        // Serialising and reading back gives the same resources.
        let yaml = serde_norway::to_string(p).unwrap();
        let back: NetworkPolicy = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(&back, p);
    }

    #[test]
    fn default_types_follow_calico() {
        // Calico's API defaulting: no rules or only ingress rules -> Ingress;
        // only egress rules -> Egress; both -> both. An empty list is absent.
        let mut s = PolicySpec::default();
        assert_eq!(s.effective_types(), vec![PolicyType::Ingress]);
        s.types = Some(vec![]);
        assert_eq!(s.effective_types(), vec![PolicyType::Ingress]);
        s.egress.push(Rule::new(Action::Allow));
        assert_eq!(s.effective_types(), vec![PolicyType::Egress]);
        s.ingress.push(Rule::new(Action::Allow));
        assert_eq!(
            s.effective_types(),
            vec![PolicyType::Ingress, PolicyType::Egress]
        );
        s.egress.clear();
        assert_eq!(s.effective_types(), vec![PolicyType::Ingress]);
        s.types = Some(vec![PolicyType::Egress]);
        assert_eq!(s.effective_types(), vec![PolicyType::Egress]);
    }

    /// The error and its causes, as a caller printing the chain shows it.
    fn err(yaml: &str) -> String {
        let e = parse_yaml(yaml).unwrap_err();
        let mut text = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            text.push_str(&format!(": {c}"));
            cur = c.source();
        }
        text
    }

    #[test]
    fn validation_names_resource_field_and_rule() {
        let head = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\nspec:\n";
        let e = err(&format!(
            "{head}  ingress:\n  - action: Allow\n    destination:\n      ports: [80]\n"
        ));
        assert_eq!(
            e,
            "GlobalNetworkPolicy p: spec.ingress[0].destination.ports: ports need protocol TCP, UDP, SCTP or UDPLite"
        );
        let e = err(&format!(
            "{head}  ingress:\n  - action: Allow\n    protocol: TCP\n    icmp: {{type: 8}}\n"
        ));
        assert!(
            e.contains("spec.ingress[0].icmp: needs protocol ICMP"),
            "{e}"
        );
        let e = err(&format!(
            "{head}  ingress:\n  - action: Allow\n    protocol: ICMP\n    icmp: {{code: 1}}\n"
        ));
        assert!(e.contains("icmp.code: a code needs a type"), "{e}");
        let e = err(&format!("{head}  selector: app = 'x'\n"));
        assert!(
            e.contains("expected an operator") && e.contains("at byte 4"),
            "{e}"
        );
        let e = err(&format!(
            "{head}  ingress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: ['90:80']\n"
        ));
        assert!(e.contains("start is above end"), "{e}");
        let e = err(&format!(
            "{head}  ingress:\n  - action: Allow\n    protocol: bogus\n"
        ));
        assert!(e.contains("protocol \"bogus\""), "{e}");
        let e = err(&format!(
            "{head}  types: [Ingress]\n  egress:\n  - action: Allow\n"
        ));
        assert!(e.contains("spec.egress: egress rules present"), "{e}");
        let e = err(&format!(
            "{head}  ingress:\n  - action: Allow\n    ipVersion: 4\n    source:\n      nets: ['2001:db8::/32']\n"
        ));
        assert!(e.contains("is IPv6 but ipVersion is 4"), "{e}");
        let e = err(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: t\nspec:\n  defaultAction: Allow\n",
        );
        assert_eq!(e, "Tier t: spec.defaultAction: Allow is not Deny or Pass");
        let e = err("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: Bad_Name\n");
        assert!(e.contains("metadata.name"), "{e}");
        // Fields calinet does not implement are refused, not ignored: an ignored
        // match field would make a rule match more than it says.
        let e = err(&format!(
            "{head}  ingress:\n  - action: Allow\n    source:\n      serviceAccounts: {{selector: all()}}\n"
        ));
        assert!(e.contains("unknown field `serviceAccounts`"), "{e}");
        let e = err(&format!("{head}  doNotTrack: true\n"));
        assert!(e.contains("unknown field `doNotTrack`"), "{e}");
        // Rule metadata is accepted.
        parse_yaml(&format!(
            "{head}  ingress:\n  - action: Allow\n    metadata: {{annotations: {{a: b}}}}\n"
        ))
        .unwrap();
        let e = err("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n");
        assert!(e.contains("document 0") && e.contains("v1 Pod"), "{e}");
        let e = err(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: x\n  namespace: n\nspec:\n  namespaceSelector: all()\n",
        );
        assert!(e.contains("only GlobalNetworkPolicy"), "{e}");
    }

    const K8S_YAML: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Ingress
    - Egress
  ingress:
    - from:
        - ipBlock:
            cidr: 172.17.0.0/16
            except:
              - 172.17.1.0/24
        - namespaceSelector:
            matchLabels:
              project: myproject
        - podSelector:
            matchExpressions:
              - {key: role, operator: In, values: [frontend]}
              - {key: debug, operator: DoesNotExist}
      ports:
        - protocol: TCP
          port: 6379
        - port: 32000
          endPort: 32768
        - protocol: UDP
          port: dns
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 5978
"#;

    #[test]
    fn converts_kubernetes_network_policy() {
        let rs = parse_yaml(K8S_YAML).unwrap();
        let AnyResource::K8sNetworkPolicy(k) = &rs[0] else {
            panic!()
        };
        let c = k.to_calico().unwrap();
        assert_eq!(c.metadata.name, "knp.default.test-network-policy");
        assert_eq!(c.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(c.spec.tier.as_deref(), Some("default"));
        assert_eq!(c.spec.order, Some(1000.0));
        assert_eq!(
            c.spec.selector.as_ref().unwrap().to_string(),
            "role == \"db\""
        );
        assert_eq!(
            c.spec.types,
            Some(vec![PolicyType::Ingress, PolicyType::Egress])
        );
        // 3 peers x 3 ports.
        assert_eq!(c.spec.ingress.len(), 9);
        assert!(c.spec.ingress.iter().all(|r| r.action == Action::Allow));
        let r0 = &c.spec.ingress[0];
        assert_eq!(r0.protocol, Some(Protocol::TCP));
        assert_eq!(
            r0.source.nets,
            vec!["172.17.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            r0.source.not_nets,
            vec!["172.17.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(r0.destination.ports, vec![Port::Number(6379)]);
        let r1 = &c.spec.ingress[1];
        assert_eq!(r1.protocol, Some(Protocol::TCP), "protocol defaults to TCP");
        assert_eq!(r1.destination.ports, vec![Port::Range(32000, 32768)]);
        let r2 = &c.spec.ingress[2];
        assert_eq!(r2.protocol, Some(Protocol::UDP));
        assert_eq!(r2.destination.ports, vec![Port::Named("dns".into())]);
        let r3 = &c.spec.ingress[3];
        assert_eq!(r3.source.selector, Some(Selector::all()));
        assert_eq!(
            r3.source.namespace_selector.as_ref().unwrap().to_string(),
            "project == \"myproject\""
        );
        let r6 = &c.spec.ingress[6];
        assert_eq!(
            r6.source.selector.as_ref().unwrap().to_string(),
            "role in {\"frontend\"} && !has(debug)"
        );
        assert_eq!(c.spec.egress.len(), 1);
        assert_eq!(c.spec.egress[0].destination.nets.len(), 1);
        // The converted policy passes Calico validation.
        validate_resource(&AnyResource::NetworkPolicy(c)).unwrap();
    }

    #[test]
    fn kubernetes_defaults_and_errors() {
        let mut k: K8sNetworkPolicy = serde_norway::from_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: a}\nspec:\n  podSelector: {}\n",
        )
        .unwrap();
        let c = k.to_calico().unwrap();
        assert_eq!(c.spec.selector, Some(Selector::all()));
        assert_eq!(c.spec.types, Some(vec![PolicyType::Ingress]));
        assert!(c.spec.ingress.is_empty(), "no rules: deny all ingress");
        k.spec.ingress = Some(vec![K8sRule::default()]);
        let c = k.to_calico().unwrap();
        assert_eq!(
            c.spec.ingress,
            vec![Rule::new(Action::Allow)],
            "{{}} allows all"
        );
        k.spec
            .pod_selector
            .match_expressions
            .push(LabelSelectorRequirement {
                key: "x".into(),
                operator: "Matches".into(),
                values: vec![],
            });
        let e = k.to_calico().unwrap_err().to_string();
        assert!(
            e.contains("spec.podSelector.matchExpressions") && e.contains("\"Matches\""),
            "{e}"
        );
    }
}
