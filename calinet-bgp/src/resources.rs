//! Calico's BGP resources (`projectcalico.org/v3` `BGPConfiguration` and
//! `BGPPeer`) with Calico's field names and defaults, and their validation.
//!
//! Fields whose text Calico checks (peer addresses, selectors) are kept as the
//! strings the user wrote, so a bad value is reported by [`BgpPeer::validate`]
//! naming the resource and field instead of failing deserialisation somewhere.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Calico's API group and version.
pub const API_VERSION: &str = "projectcalico.org/v3";

/// Calico's default AS number (`BGPConfiguration.spec.asNumber`).
pub const DEFAULT_AS: AsNumber = AsNumber(64512);

/// BGP's port, Calico's default `listenPort`.
pub const DEFAULT_PORT: u16 = 179;

/// A BGP autonomous system number. Calico writes it as a number (`64512`) or in
/// asdot notation (`"1.10"` = 65546); 0 is reserved and rejected by
/// validation, anything above 4294967295 by deserialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AsNumber(u32);

impl AsNumber {
    /// An AS number; `None` for the reserved 0.
    pub fn new(value: u32) -> Option<Self> {
        (value != 0).then_some(AsNumber(value))
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    fn is_valid(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for AsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for AsNumber {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let range = || format!("AS number {s:?}: must be 1..=4294967295 or asdot (1.10)");
        let value = match s.split_once('.') {
            Some((hi, lo)) => {
                let hi: u16 = hi.parse().map_err(|_| range())?;
                let lo: u16 = lo.parse().map_err(|_| range())?;
                (u32::from(hi) << 16) | u32::from(lo)
            }
            None => s.parse().map_err(|_| range())?,
        };
        Ok(AsNumber(value))
    }
}

impl Serialize for AsNumber {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for AsNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => u32::try_from(n).map(AsNumber).map_err(|_| {
                serde::de::Error::custom(format!("AS number {n}: must be 1..=4294967295"))
            }),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A Go duration as Calico writes it (`120s`, `2m0s`, `1h30m`, `500ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

impl FromStr for GoDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("duration {s:?}: expected Go syntax such as 120s, 2m0s or 500ms");
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if s.is_empty() {
            return Err(bad());
        }
        // Exact integer arithmetic in nanoseconds (no float rounding).
        let mut rest = s;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let n = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            let (int, frac) = rest[..n].split_once('.').unwrap_or((&rest[..n], ""));
            if (int.is_empty() && frac.is_empty()) || frac.contains('.') || frac.len() > 18 {
                return Err(bad());
            }
            rest = &rest[n..];
            let u = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit: u128 = match &rest[..u] {
                "h" => 3_600_000_000_000,
                "m" => 60_000_000_000,
                "s" => 1_000_000_000,
                "ms" => 1_000_000,
                "us" | "µs" => 1_000,
                "ns" => 1,
                _ => return Err(bad()),
            };
            rest = &rest[u..];
            let int: u128 = if int.is_empty() {
                0
            } else {
                int.parse().map_err(|_| bad())?
            };
            let frac_ns = if frac.is_empty() {
                0
            } else {
                let digits: u128 = frac.parse().map_err(|_| bad())?;
                digits * unit / 10u128.pow(frac.len() as u32)
            };
            total = int
                .checked_mul(unit)
                .and_then(|v| v.checked_add(frac_ns))
                .and_then(|v| v.checked_add(total))
                .ok_or_else(bad)?;
        }
        let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad())?;
        Ok(GoDuration(Duration::new(
            secs,
            (total % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        let nanos = d.subsec_nanos();
        if nanos == 0 {
            write!(f, "{}s", d.as_secs())
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", d.as_micros())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The part of Kubernetes' ObjectMeta these resources use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ObjectMeta {
    /// The resource's name.
    pub name: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Resource version, as the datastore gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

impl ObjectMeta {
    /// Metadata with just a name.
    pub fn named(name: impl Into<String>) -> Self {
        ObjectMeta {
            name: name.into(),
            ..Default::default()
        }
    }
}

/// A service CIDR entry (`serviceClusterIPs: [{cidr: 10.96.0.0/12}]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServiceCidr {
    /// The CIDR to advertise.
    pub cidr: IpNet,
}

impl ServiceCidr {
    /// An entry for `cidr`.
    pub fn new(cidr: IpNet) -> Self {
        ServiceCidr { cidr }
    }
}

/// `BGPConfiguration`: cluster-wide BGP settings (Calico reads the one named
/// `default`, and `node.<name>` for per-node overrides).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BgpConfiguration {
    /// `projectcalico.org/v3`.
    pub api_version: String,
    /// `BGPConfiguration`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: BgpConfigurationSpec,
}

impl BgpConfiguration {
    /// A configuration named `name` with every field at Calico's default.
    pub fn new(name: impl Into<String>) -> Self {
        BgpConfiguration {
            api_version: API_VERSION.into(),
            kind: "BGPConfiguration".into(),
            metadata: ObjectMeta::named(name),
            spec: BgpConfigurationSpec::default(),
        }
    }

    /// Checks every field; the error names this resource and the field.
    pub fn validate(&self) -> Result<(), Error> {
        let resource = format!("BGPConfiguration {}", self.metadata.name);
        if let Some(asn) = self.spec.as_number
            && !asn.is_valid()
        {
            return Err(Error::Invalid {
                resource,
                field: "spec.asNumber",
                value: asn.to_string(),
                rule: "AS number 0 is reserved; use 1..=4294967295",
            });
        }
        if self.spec.listen_port == Some(0) {
            return Err(Error::Invalid {
                resource,
                field: "spec.listenPort",
                value: "0".into(),
                rule: "the port must be 1..=65535",
            });
        }
        if let Some(sev) = &self.spec.log_severity_screen
            && !["Debug", "Info", "Warning", "Error", "Fatal"].contains(&sev.as_str())
        {
            return Err(Error::Invalid {
                resource,
                field: "spec.logSeverityScreen",
                value: sev.clone(),
                rule: "must be one of Debug, Info, Warning, Error, Fatal",
            });
        }
        for (field, list) in [
            ("spec.serviceClusterIPs", &self.spec.service_cluster_ips),
            ("spec.serviceExternalIPs", &self.spec.service_external_ips),
            (
                "spec.serviceLoadBalancerIPs",
                &self.spec.service_load_balancer_ips,
            ),
        ] {
            for entry in list {
                if entry.cidr.prefix_len() == 0 {
                    return Err(Error::Invalid {
                        resource,
                        field,
                        value: entry.cidr.to_string(),
                        rule: "a default route is never advertised",
                    });
                }
            }
        }
        Ok(())
    }
}

/// `BGPConfiguration.spec`. Unset fields take Calico's defaults through the
/// accessor methods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BgpConfigurationSpec {
    /// BIRD's log level (`Info` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<String>,
    /// Whether every node peers with every other node (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    /// The cluster's default AS (64512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// The port BIRD listens on and mesh peers connect to (179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// Service cluster IP ranges every node advertises.
    #[serde(
        default,
        rename = "serviceClusterIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_cluster_ips: Vec<ServiceCidr>,
    /// Service external IP ranges every node advertises.
    #[serde(
        default,
        rename = "serviceExternalIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_external_ips: Vec<ServiceCidr>,
    /// Service LoadBalancer IP ranges every node advertises.
    #[serde(
        default,
        rename = "serviceLoadBalancerIPs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_load_balancer_ips: Vec<ServiceCidr>,
}

impl BgpConfigurationSpec {
    /// `nodeToNodeMeshEnabled`, default true.
    pub fn mesh_enabled(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// `asNumber`, default 64512.
    pub fn as_number(&self) -> AsNumber {
        self.as_number.unwrap_or(DEFAULT_AS)
    }

    /// `listenPort`, default 179.
    pub fn listen_port(&self) -> u16 {
        self.listen_port.unwrap_or(DEFAULT_PORT)
    }

    /// `logSeverityScreen`, default `Info`.
    pub fn log_severity(&self) -> &str {
        self.log_severity_screen.as_deref().unwrap_or("Info")
    }

    /// Every service CIDR, in field order.
    pub fn service_cidrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.service_cluster_ips
            .iter()
            .chain(&self.service_external_ips)
            .chain(&self.service_load_balancer_ips)
            .map(|s| s.cidr)
    }
}

/// `sourceAddress` of a BGPPeer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SourceAddress {
    /// The session's source is the node's own address (default).
    #[default]
    UseNodeIP,
    /// No source address is configured; the kernel picks one.
    None,
}

/// A key in a Kubernetes secret (`password.secretKeyRef`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct SecretKeyRef {
    /// The secret's name.
    pub name: String,
    /// The key in the secret.
    pub key: String,
}

impl SecretKeyRef {
    /// A reference to `key` in secret `name`.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }
}

/// `BGPPeer.spec.password`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BgpPassword {
    /// Where the password is.
    pub secret_key_ref: SecretKeyRef,
}

/// A BGP password (TCP-MD5). Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password; BIRD's config syntax rules out `"`, `\` and control
    /// characters, which are rejected.
    pub fn new(secret: impl Into<String>) -> Result<Self, String> {
        let secret = secret.into();
        if secret.is_empty()
            || secret.len() > 80
            || secret
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(
                "a BGP password is 1..=80 characters without quotes, backslashes or control characters"
                    .into(),
            );
        }
        Ok(Password(secret))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A peer address as Calico writes `peerIP`: `192.0.2.1`, `192.0.2.1:1790`,
/// `2001:db8::1` or `[2001:db8::1]:1790`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddress {
    /// The peer's IP.
    pub ip: IpAddr,
    /// The port, when not the default.
    pub port: Option<u16>,
}

impl FromStr for PeerAddress {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const RULE: &str = "must be an IP, IP:port or [IPv6]:port";
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerAddress { ip, port: None });
        }
        let sock: std::net::SocketAddr = s.parse().map_err(|_| RULE)?;
        if sock.port() == 0 {
            return Err("the port must be 1..=65535");
        }
        Ok(PeerAddress {
            ip: sock.ip(),
            port: Some(sock.port()),
        })
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(ip), Some(p)) => write!(f, "{ip}:{p}"),
            (IpAddr::V6(ip), Some(p)) => write!(f, "[{ip}]:{p}"),
        }
    }
}

/// `BGPPeer`: a BGP session for the nodes it selects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BgpPeer {
    /// `projectcalico.org/v3`.
    pub api_version: String,
    /// `BGPPeer`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: BgpPeerSpec,
}

/// `BGPPeer.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BgpPeerSpec {
    /// The one node this peer applies to (a node-specific peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The nodes this peer applies to (a node-specific peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// The remote address, with an optional port.
    #[serde(default, rename = "peerIP", skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<String>,
    /// Selects Calico nodes to peer with instead of `peerIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<String>,
    /// The remote AS (required with `peerIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<AsNumber>,
    /// Which local address the session uses (default `UseNodeIP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<SourceAddress>,
    /// Keep the original next hop instead of this node's address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_original_next_hop: bool,
    /// How long the peer keeps our routes while we restart (graceful restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restart_time: Option<GoDuration>,
    /// TCP-MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<BgpPassword>,
}

/// A BGPPeer with its text fields checked and parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CheckedPeer {
    pub name: String,
    pub node: Option<String>,
    pub node_selector: Option<calinet_policy::Selector>,
    pub peer: Target,
    pub as_number: Option<AsNumber>,
    pub source: SourceAddress,
    pub keep_original_next_hop: bool,
    pub max_restart_time: Option<Duration>,
    pub password: Option<SecretKeyRef>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Address(PeerAddress),
    Nodes(calinet_policy::Selector),
}

impl BgpPeer {
    /// A peer named `name` with an empty spec (fill in `spec`).
    pub fn new(name: impl Into<String>) -> Self {
        BgpPeer {
            api_version: API_VERSION.into(),
            kind: "BGPPeer".into(),
            metadata: ObjectMeta::named(name),
            spec: BgpPeerSpec::default(),
        }
    }

    /// Checks every field; the error names this resource and the field.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map(|_| ())
    }

    pub(crate) fn check(&self) -> Result<CheckedPeer, Error> {
        let resource = format!("BGPPeer {}", self.metadata.name);
        let invalid = |field, value: &str, rule| Error::Invalid {
            resource: resource.clone(),
            field,
            value: value.to_owned(),
            rule,
        };
        let selector = |field, text: &str| {
            calinet_policy::Selector::parse(text).map_err(|source| Error::Selector {
                resource: resource.clone(),
                field,
                source,
            })
        };
        let s = &self.spec;
        if s.node.is_some() && s.node_selector.is_some() {
            return Err(invalid(
                "spec.nodeSelector",
                s.node_selector.as_deref().unwrap_or_default(),
                "node and nodeSelector are mutually exclusive",
            ));
        }
        if let Some(node) = &s.node
            && node.is_empty()
        {
            return Err(invalid("spec.node", node, "must not be empty"));
        }
        let node_selector = s
            .node_selector
            .as_deref()
            .map(|t| selector("spec.nodeSelector", t))
            .transpose()?;
        let peer = match (&s.peer_ip, &s.peer_selector) {
            (Some(ip), None) => {
                let addr: PeerAddress = ip
                    .parse()
                    .map_err(|rule| invalid("spec.peerIP", ip, rule))?;
                if addr.ip.is_unspecified() || addr.ip.is_multicast() || addr.ip.is_loopback() {
                    return Err(invalid(
                        "spec.peerIP",
                        ip,
                        "must be a unicast address, not unspecified, loopback or multicast",
                    ));
                }
                if s.as_number.is_none() {
                    return Err(invalid("spec.asNumber", "", "required when peerIP is set"));
                }
                Target::Address(addr)
            }
            (None, Some(sel)) => Target::Nodes(selector("spec.peerSelector", sel)?),
            (Some(ip), Some(_)) => {
                return Err(invalid(
                    "spec.peerIP",
                    ip,
                    "peerIP and peerSelector are mutually exclusive",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "spec.peerIP",
                    "",
                    "one of peerIP and peerSelector is required",
                ));
            }
        };
        if let Some(asn) = s.as_number
            && !asn.is_valid()
        {
            return Err(invalid(
                "spec.asNumber",
                &asn.to_string(),
                "AS number 0 is reserved; use 1..=4294967295",
            ));
        }
        if let Some(t) = s.max_restart_time
            && t.0.as_secs() > 4095
        {
            // BGP's graceful restart time is a 12-bit field.
            return Err(invalid(
                "spec.maxRestartTime",
                &t.to_string(),
                "must be at most 4095s (BGP's restart time field)",
            ));
        }
        Ok(CheckedPeer {
            name: self.metadata.name.clone(),
            node: s.node.clone(),
            node_selector,
            peer,
            as_number: s.as_number,
            source: s.source_address.unwrap_or_default(),
            keep_original_next_hop: s.keep_original_next_hop,
            max_restart_time: s.max_restart_time.map(|d| d.0),
            password: s.password.as_ref().map(|p| p.secret_key_ref.clone()),
        })
    }
}
