//! Cluster resources as the agent reads them: Calico `projectcalico.org/v3`
//! documents, Kubernetes Pods and NetworkPolicies, parsed from multi-document
//! YAML with errors that name the file, the document and the field.
//!
//! IPAM types (IPPool, IPAMConfiguration, IPReservation) are calinet-ipam's,
//! policy types calinet-policy's, and the Calico Node and object metadata
//! calinet-types'; FelixConfiguration, Pod and WorkloadEndpoint are defined here
//! (only the fields the agent uses are typed, everything else is kept as-is).

use calinet_ipam::{IpPool, IpReservation, IpamConfiguration, NodeName};
use calinet_policy::model::AnyResource;
use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Calico's API group/version.
pub const CALICO_API: &str = "projectcalico.org/v3";
/// The Calico `Node` resource (calinet-types' one definition), named for what
/// it is beside testlab's lab nodes.
pub use calinet_types::Node as CalicoNode;
pub use calinet_types::{Extra, ObjectMeta};

/// What the agent reads from and owns in a Calico Node.
pub trait NodeExt {
    /// The node's IPv4 address with subnet, if stated.
    fn ipv4(&self) -> Option<Ipv4Net>;

    /// Carries the fields the agent owns (tunnel addresses, VTEP MAC, WireGuard
    /// address and key) over from the stored copy when a user re-applies the node
    /// without them.
    fn keep_agent_fields(&mut self, stored: &Self);
}

impl NodeExt for CalicoNode {
    fn ipv4(&self) -> Option<Ipv4Net> {
        self.spec.bgp.as_ref().and_then(|b| b.ipv4_address)
    }

    fn keep_agent_fields(&mut self, stored: &CalicoNode) {
        let s = &mut self.spec;
        s.ipv4_vxlan_tunnel_addr = s
            .ipv4_vxlan_tunnel_addr
            .or(stored.spec.ipv4_vxlan_tunnel_addr);
        s.vxlan_tunnel_mac_addr = s
            .vxlan_tunnel_mac_addr
            .or(stored.spec.vxlan_tunnel_mac_addr);
        if let Some(tunnel) = stored.spec.ipip_tunnel_addr()
            && self.spec.ipip_tunnel_addr().is_none()
        {
            self.spec.bgp_mut().ipv4_ipip_tunnel_addr = Some(tunnel);
        }
        if self.spec.wireguard.is_none() {
            self.spec.wireguard = stored.spec.wireguard.clone();
        }
        if self.status.wireguard_public_key.is_none() {
            self.status.wireguard_public_key = stored.status.wireguard_public_key.clone();
        }
    }
}

/// Calico `FelixConfiguration` (`wireguardEnabled` and
/// `defaultEndpointToHostAction` are read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FelixConfiguration {
    /// `projectcalico.org/v3`.
    pub api_version: String,
    /// `FelixConfiguration`.
    pub kind: String,
    /// Metadata (Calico reads `default` and `node.<name>`).
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: FelixSpec,
}

/// `FelixConfiguration` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FelixSpec {
    /// Encrypt pod traffic between nodes with WireGuard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_enabled: Option<bool>,
    /// What happens to a pod's traffic to its own node once the pod's egress
    /// policy allowed it: `Drop` (the default), `Return` or `Accept`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_endpoint_to_host_action: Option<String>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Kubernetes `v1` Pod (only the fields that matter to networking).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// Metadata; the namespace defaults to `default`.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: PodSpec,
}

/// Pod spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The node the pod is scheduled to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Containers (for named ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A container (only its ports).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// Everything else.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A container port.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name (a named port when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number.
    pub container_port: u16,
    /// TCP (default), UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Annotation naming the pod's network namespace file (what a container runtime
/// hands a CNI plugin as `CNI_NETNS`).
pub const NETNS_ANNOTATION: &str = "calinet.io/netns";

impl Pod {
    /// The pod's namespace (`default` when unset).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), self.metadata.name)
    }

    /// The network namespace file of the pod's sandbox, if known.
    pub fn netns(&self) -> Option<&str> {
        self.metadata
            .annotations
            .get(NETNS_ANNOTATION)
            .map(String::as_str)
    }

    /// The IPAM handle of the pod: Calico's `k8s-pod-network.<containerID>`; the
    /// agent has no container ID, so it uses the UID or `<namespace>.<name>`.
    pub fn handle(&self) -> calinet_ipam::HandleId {
        let id = self
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.namespace(), self.metadata.name));
        calinet_ipam::HandleId::pod(&id).expect("validated pod names make valid handles")
    }
}

/// Calico `WorkloadEndpoint`: the CNI plugin writes one per container it
/// ADDs, the agent one per pod it attaches (calinet-attach's type, shared).
pub use calinet_attach::wep::{WepPort, WorkloadEndpoint, WorkloadEndpointSpec, wep_name};

/// One parsed, validated input document.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Resource {
    /// Calico IPPool.
    IpPool(IpPool),
    /// Calico IPAMConfiguration.
    IpamConfig(IpamConfiguration),
    /// Calico IPReservation.
    IpReservation(IpReservation),
    /// Calico Node.
    Node(CalicoNode),
    /// Calico FelixConfiguration.
    Felix(FelixConfiguration),
    /// A policy resource (Tier, NetworkPolicy, GlobalNetworkPolicy, Profile,
    /// Kubernetes NetworkPolicy).
    Policy(AnyResource),
    /// Kubernetes Pod.
    Pod(Pod),
    /// Calico BGPConfiguration.
    BgpConfiguration(calinet_bgp::BgpConfiguration),
    /// Calico BGPPeer.
    BgpPeer(calinet_bgp::BgpPeer),
}

/// Store key prefixes of the resources the agent keeps beside IPAM's.
pub mod keys {
    /// Calico resources.
    pub const RESOURCES: &str = "/calico/resources/v3/projectcalico.org/";
    /// Nodes.
    pub const NODES: &str = "/calico/resources/v3/projectcalico.org/nodes/";
    /// FelixConfigurations.
    pub const FELIX: &str = "/calico/resources/v3/projectcalico.org/felixconfigurations/";
    /// Tiers.
    pub const TIERS: &str = "/calico/resources/v3/projectcalico.org/tiers/";
    /// Namespaced Calico NetworkPolicies.
    pub const NETWORK_POLICIES: &str = "/calico/resources/v3/projectcalico.org/networkpolicies/";
    /// GlobalNetworkPolicies.
    pub const GLOBAL_POLICIES: &str =
        "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/";
    /// Profiles.
    pub const PROFILES: &str = "/calico/resources/v3/projectcalico.org/profiles/";
    /// WorkloadEndpoints (written by agents).
    pub const WEPS: &str = calinet_attach::wep::WEPS_PREFIX;
    /// Kubernetes Pods (calinet keeps them in the same store; Calico reads them
    /// from the Kubernetes API).
    pub const PODS: &str = "/calinet/k8s/v1/pods/";
    /// Kubernetes NetworkPolicies.
    pub const K8S_POLICIES: &str = "/calinet/k8s/networking.k8s.io/v1/networkpolicies/";
    /// BGPConfigurations.
    pub const BGP_CONFIGS: &str = "/calico/resources/v3/projectcalico.org/bgpconfigurations/";
    /// BGPPeers.
    pub const BGP_PEERS: &str = "/calico/resources/v3/projectcalico.org/bgppeers/";
    /// Agent status per node (what `node status` shows).
    pub const STATUS: &str = "/calinet/status/nodes/";
}

impl Resource {
    /// `Kind name` for messages.
    pub fn describe(&self) -> String {
        match self {
            Resource::IpPool(p) => format!("IPPool {}", p.name()),
            Resource::IpamConfig(c) => format!("IPAMConfiguration {}", c.name()),
            Resource::IpReservation(r) => format!("IPReservation {}", r.name()),
            Resource::Node(n) => format!("Node {}", n.metadata.name),
            Resource::Felix(f) => format!("FelixConfiguration {}", f.metadata.name),
            Resource::Pod(p) => format!("Pod {}", p.key()),
            Resource::BgpConfiguration(c) => format!("BGPConfiguration {}", c.metadata.name),
            Resource::BgpPeer(p) => format!("BGPPeer {}", p.metadata.name),
            Resource::Policy(r) => match r {
                AnyResource::Tier(t) => format!("Tier {}", t.metadata.name),
                AnyResource::NetworkPolicy(p) => format!(
                    "NetworkPolicy {}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name
                ),
                AnyResource::GlobalNetworkPolicy(p) => {
                    format!("GlobalNetworkPolicy {}", p.metadata.name)
                }
                AnyResource::Profile(p) => format!("Profile {}", p.metadata.name),
                AnyResource::K8sNetworkPolicy(p) => format!(
                    "NetworkPolicy (k8s) {}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name
                ),
                _ => "policy resource".to_owned(),
            },
        }
    }

    /// The store key and JSON value.
    pub fn key_value(&self) -> (String, Vec<u8>) {
        let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| "default".into());
        let json = |v: &dyn erased::Json| v.to_json();
        match self {
            Resource::IpPool(p) => (calinet_ipam::keys::pool(p.name()), json(p)),
            // calinet-ipam keeps the configuration's spec at Calico's etcd key.
            Resource::IpamConfig(c) => (calinet_ipam::keys::IPAM_CONFIG.into(), json(&c.spec)),
            Resource::IpReservation(r) => (calinet_ipam::keys::reservation(r.name()), json(r)),
            Resource::Node(n) => (format!("{}{}", keys::NODES, n.metadata.name), json(n)),
            Resource::Felix(f) => (format!("{}{}", keys::FELIX, f.metadata.name), json(f)),
            Resource::Pod(p) => (format!("{}{}", keys::PODS, p.key()), json(p)),
            Resource::BgpConfiguration(c) => {
                (format!("{}{}", keys::BGP_CONFIGS, c.metadata.name), json(c))
            }
            Resource::BgpPeer(p) => (format!("{}{}", keys::BGP_PEERS, p.metadata.name), json(p)),
            Resource::Policy(r) => match r {
                AnyResource::Tier(t) => (format!("{}{}", keys::TIERS, t.metadata.name), json(t)),
                AnyResource::NetworkPolicy(p) => (
                    format!(
                        "{}{}/{}",
                        keys::NETWORK_POLICIES,
                        ns(&p.metadata.namespace),
                        p.metadata.name
                    ),
                    json(p),
                ),
                AnyResource::GlobalNetworkPolicy(p) => (
                    format!("{}{}", keys::GLOBAL_POLICIES, p.metadata.name),
                    json(p),
                ),
                AnyResource::Profile(p) => {
                    (format!("{}{}", keys::PROFILES, p.metadata.name), json(p))
                }
                AnyResource::K8sNetworkPolicy(p) => (
                    format!(
                        "{}{}/{}",
                        keys::K8S_POLICIES,
                        ns(&p.metadata.namespace),
                        p.metadata.name
                    ),
                    json(p),
                ),
                _ => ("/calinet/unsupported".into(), Vec::new()),
            },
        }
    }
}

mod erased {
    /// Object-safe JSON serialisation.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("resources serialise to JSON")
        }
    }
}

/// Where a document came from, for errors.
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    file: &'a str,
    document: usize,
}

impl Origin<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        let field = field.into();
        Error::Document {
            file: self.file.to_owned(),
            document: self.document,
            field: if field.is_empty() { ".".into() } else { field },
            message: message.into(),
        }
    }

    /// Deserialises with the failing field's path in the error.
    fn decode<T: DeserializeOwned>(&self, value: serde_norway::Value) -> Result<T> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            self.err(path, e.into_inner().to_string())
        })
    }
}

/// A parsed document and where it came from.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The input file.
    pub file: String,
    /// Index of the document in the file.
    pub document: usize,
    /// The resource.
    pub resource: Resource,
}

impl Parsed {
    /// An error about this document.
    pub fn err(&self, field: &str, message: impl Into<String>) -> Error {
        Origin {
            file: &self.file,
            document: self.document,
        }
        .err(field, message)
    }
}

/// Parses every document of `text` (from `file`) into validated resources.
/// The first problem fails the whole input.
pub fn parse_documents(file: &str, text: &str) -> Result<Vec<Parsed>> {
    let mut out = Vec::new();
    for (document, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let origin = Origin { file, document };
        let value = serde_norway::Value::deserialize(de)
            .map_err(|e| origin.err(".", format!("invalid YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        out.push(Parsed {
            file: file.to_owned(),
            document,
            resource: parse_one(origin, value)?,
        });
    }
    Ok(out)
}

fn string_field(origin: Origin<'_>, value: &serde_norway::Value, field: &str) -> Result<String> {
    match value.get(field) {
        Some(serde_norway::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(origin.err(field, "must be a string")),
        None => Err(origin.err(field, "is missing")),
    }
}

fn parse_one(origin: Origin<'_>, value: serde_norway::Value) -> Result<Resource> {
    if !value.is_mapping() {
        return Err(origin.err(".", "a resource document must be a mapping"));
    }
    let api_version = string_field(origin, &value, "apiVersion")?;
    let kind = string_field(origin, &value, "kind")?;
    let r = match (api_version.as_str(), kind.as_str()) {
        (CALICO_API, "IPPool") => {
            let pool: IpPool = origin.decode(value)?;
            pool.validate()
                .map_err(|e| origin.err(ipam_field(&e), crate::error::chain(&e)))?;
            Resource::IpPool(pool)
        }
        (CALICO_API, "IPAMConfiguration") => {
            let c: IpamConfiguration = origin.decode(value)?;
            if c.name() != "default" {
                return Err(origin.err(
                    "metadata.name",
                    format!(
                        "IPAMConfiguration must be named \"default\", not {:?}",
                        c.name()
                    ),
                ));
            }
            c.spec
                .validate()
                .map_err(|e| origin.err("spec", crate::error::chain(&e)))?;
            Resource::IpamConfig(c)
        }
        (CALICO_API, "IPReservation") => {
            let r: IpReservation = origin.decode(value)?;
            r.validate()
                .map_err(|e| origin.err("spec.reservedCIDRs", crate::error::chain(&e)))?;
            Resource::IpReservation(r)
        }
        (CALICO_API, "Node") => {
            let n: CalicoNode = origin.decode(value)?;
            n.metadata
                .name
                .parse::<NodeName>()
                .map_err(|e| origin.err("metadata.name", e.to_string()))?;
            if let Some(b) = &n.spec.bgp {
                // asNumber and routeReflectorClusterID, as the BGP plan reads them.
                let value = serde_json::to_value(b).expect("NodeBgp serialises");
                let spec: calinet_bgp::NodeBgpSpec = serde_path_to_error::deserialize(value)
                    .map_err(|e| {
                        let path = e.path().to_string();
                        origin.err(format!("spec.bgp.{path}"), e.into_inner().to_string())
                    })?;
                spec.validate(&n.metadata.name)
                    .map_err(|e| bgp_err(origin, &e))?;
            }
            if n.ipv4().is_none() {
                return Err(origin.err(
                    "spec.bgp.ipv4Address",
                    "is missing: the agent needs the node's address with its subnet (e.g. 198.51.100.10/24)",
                ));
            }
            Resource::Node(n)
        }
        (CALICO_API, "FelixConfiguration") => {
            let f: FelixConfiguration = origin.decode(value)?;
            if f.metadata.name != "default" && !f.metadata.name.starts_with("node.") {
                return Err(origin.err(
                    "metadata.name",
                    format!(
                        "FelixConfiguration is \"default\" or \"node.<name>\", not {:?}",
                        f.metadata.name
                    ),
                ));
            }
            if let Some(a) = &f.spec.default_endpoint_to_host_action {
                a.parse::<calinet_policy::compile::EndpointToHostAction>()
                    .map_err(|_| {
                        origin.err(
                            "spec.defaultEndpointToHostAction",
                            format!("{a:?} is not one of Drop, Return, Accept"),
                        )
                    })?;
            }
            Resource::Felix(f)
        }
        (CALICO_API, "BGPConfiguration") => {
            let c: calinet_bgp::BgpConfiguration = origin.decode(value)?;
            if c.metadata.name != "default" && !c.metadata.name.starts_with("node.") {
                return Err(origin.err(
                    "metadata.name",
                    format!(
                        "BGPConfiguration is \"default\" or \"node.<name>\", not {:?}",
                        c.metadata.name
                    ),
                ));
            }
            c.validate().map_err(|e| bgp_err(origin, &e))?;
            Resource::BgpConfiguration(c)
        }
        (CALICO_API, "BGPPeer") => {
            let p: calinet_bgp::BgpPeer = origin.decode(value)?;
            p.validate().map_err(|e| bgp_err(origin, &e))?;
            Resource::BgpPeer(p)
        }
        ("v1", "Pod") => {
            let p: Pod = origin.decode(value)?;
            validate_pod(origin, &p)?;
            Resource::Pod(p)
        }
        (CALICO_API, "Tier" | "NetworkPolicy" | "GlobalNetworkPolicy" | "Profile")
        | ("networking.k8s.io/v1", "NetworkPolicy") => {
            use calinet_policy::model as pm;
            let r = match (api_version.as_str(), kind.as_str()) {
                (CALICO_API, "Tier") => AnyResource::Tier(origin.decode::<pm::Tier>(value)?),
                (CALICO_API, "NetworkPolicy") => {
                    AnyResource::NetworkPolicy(origin.decode::<pm::NetworkPolicy>(value)?)
                }
                (CALICO_API, "GlobalNetworkPolicy") => AnyResource::GlobalNetworkPolicy(
                    origin.decode::<pm::GlobalNetworkPolicy>(value)?,
                ),
                (CALICO_API, "Profile") => {
                    AnyResource::Profile(origin.decode::<pm::Profile>(value)?)
                }
                _ => AnyResource::K8sNetworkPolicy(origin.decode::<pm::K8sNetworkPolicy>(value)?),
            };
            // The policy crate's rules (selectors, orders, types, rule fields).
            pm::validate_resource(&r).map_err(|e| match e {
                calinet_policy::Error::Invalid {
                    resource,
                    field,
                    reason,
                } => origin.err(field, format!("{resource}: {reason}")),
                calinet_policy::Error::Selector {
                    resource,
                    field,
                    source,
                } => origin.err(field, format!("{resource}: selector: {source}")),
                other => origin.err(".", crate::error::chain(&other)),
            })?;
            Resource::Policy(r)
        }
        _ => {
            return Err(Error::UnknownKind {
                file: origin.file.to_owned(),
                document: origin.document,
                api_version,
                kind,
            });
        }
    };
    Ok(r)
}

/// A calinet-bgp validation error as a document error on its field (the
/// message keeps the resource's name and the rule).
fn bgp_err(origin: Origin<'_>, e: &calinet_bgp::Error) -> Error {
    match e {
        calinet_bgp::Error::Invalid { field, .. } | calinet_bgp::Error::Selector { field, .. } => {
            origin.err(*field, crate::error::chain(e))
        }
        other => origin.err(".", crate::error::chain(other)),
    }
}

/// The field an IPAM validation error is about, for the error message.
fn ipam_field(e: &calinet_ipam::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("blockSize") || text.contains("pool prefix") {
        "spec.blockSize"
    } else if text.contains("ipipMode") || text.contains("vxlanMode") {
        "spec.vxlanMode"
    } else if text.contains("allowedUses") {
        "spec.allowedUses"
    } else if text.contains("nodeSelector") {
        "spec.nodeSelector"
    } else if text.contains("metadata.name") {
        "metadata.name"
    } else if text.contains("kind") {
        "kind"
    } else {
        "spec.cidr"
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn validate_pod(origin: Origin<'_>, p: &Pod) -> Result<()> {
    if !dns_label(&p.metadata.name) && !p.metadata.name.contains('.') {
        return Err(origin.err(
            "metadata.name",
            format!(
                "{:?} is not a DNS label (lowercase letters, digits, '-')",
                p.metadata.name
            ),
        ));
    }
    if !dns_label(p.namespace()) {
        return Err(origin.err(
            "metadata.namespace",
            format!("{:?} is not a DNS label", p.namespace()),
        ));
    }
    if let Some(node) = &p.spec.node_name {
        node.parse::<NodeName>()
            .map_err(|e| origin.err("spec.nodeName", e.to_string()))?;
    }
    if let Some(uid) = &p.metadata.uid {
        calinet_ipam::HandleId::pod(uid).map_err(|e| origin.err("metadata.uid", e.to_string()))?;
    }
    for (ci, c) in p.spec.containers.iter().enumerate() {
        for (pi, port) in c.ports.iter().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            if port.container_port == 0 {
                return Err(origin.err(format!("{field}.containerPort"), "must be 1..=65535"));
            }
            if let Some(proto) = &port.protocol
                && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
            {
                return Err(origin.err(
                    format!("{field}.protocol"),
                    format!("{proto:?} is not TCP, UDP or SCTP"),
                ));
            }
            if let Some(name) = &port.name
                && (name.is_empty() || name.len() > 15)
            {
                return Err(origin.err(
                    format!("{field}.name"),
                    format!("{name:?} is not a port name (1 to 15 characters)"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 172.16.0.0/16, blockSize: 24, vxlanMode: Always, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: k8s-m}
spec: {bgp: {ipv4Address: 198.51.100.10/24}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  nodeName: k8s-m
  containers: [{name: c, ports: [{name: http, containerPort: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-web, namespace: demo}
spec: {podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: 80}]}]}
"#;

    #[test]
    fn parses_every_kind_with_keys() {
        let rs = parse_documents("good.yaml", GOOD).unwrap();
        let keys: Vec<String> = rs.iter().map(|r| r.resource.key_value().0).collect();
        assert_eq!(
            keys,
            [
                "/calico/resources/v3/projectcalico.org/ippools/default-ipv4-ippool",
                "/calico/resources/v3/projectcalico.org/nodes/k8s-m",
                "/calinet/k8s/v1/pods/demo/web",
                "/calinet/k8s/networking.k8s.io/v1/networkpolicies/demo/allow-web",
            ]
        );
    }

    fn err(text: &str) -> String {
        crate::error::chain(&parse_documents("in.yaml", text).unwrap_err())
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let bad_cidr = GOOD.replace("172.16.0.0/16", "172.16.0.0/33");
        let e = err(&bad_cidr);
        assert!(e.starts_with("in.yaml: document 0: spec.cidr:"), "{e}");
        let bad_port = GOOD.replace("containerPort: 80", "containerPort: 0");
        let e = err(&bad_port);
        assert!(
            e.starts_with("in.yaml: document 2: spec.containers[0].ports[0].containerPort:"),
            "{e}"
        );
        let e = err(&GOOD.replace("kind: Node", "kind: Nod"));
        assert!(e.contains("document 1: unknown kind \"Nod\""), "{e}");
        let e = err("a: [1, 2\n");
        assert!(e.starts_with("in.yaml: document 0: .: invalid YAML"), "{e}");
        let e = err(&GOOD.replace("blockSize: 24", "blockSize: 12"));
        assert!(e.contains("document 0: spec.blockSize"), "{e}");
        let e = err(&GOOD.replace("ipv4Address: 198.51.100.10/24", "ipv4Address: nonsense"));
        assert!(
            e.starts_with("in.yaml: document 1: spec.bgp.ipv4Address:"),
            "{e}"
        );
    }

    #[test]
    fn wep_names_follow_calico() {
        assert_eq!(
            wep_name("k8s-w1", "web-1", "eth0"),
            "k8s--w1-k8s-web--1-eth0"
        );
    }
}
