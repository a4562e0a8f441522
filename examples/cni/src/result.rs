//! What the plugin prints: the specification's result, version and error
//! objects (serde types with the spec's field names).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::version::CniVersion;

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (CNI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The namespace path for container interfaces; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`, only before CNI 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Address with prefix length.
    pub address: IpNet,
    /// Default gateway for this subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings of a result (calinet sets none; kept for prevResult parsing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// The result of ADD (and the shape of `prevResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version the result is written in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// An empty result in `version`.
    pub fn new(version: CniVersion) -> CniResult {
        CniResult {
            cni_version: version.as_str().to_owned(),
            interfaces: Vec::new(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: Dns::default(),
        }
    }

    /// Adds an address, with `ips[].version` when `version` needs it.
    pub fn push_ip(
        &mut self,
        version: CniVersion,
        address: IpNet,
        gateway: Option<IpAddr>,
        interface: Option<usize>,
    ) {
        self.ips.push(IpConfig {
            version: version
                .ip_version_field()
                .then(|| if address.addr().is_ipv4() { "4" } else { "6" }.to_owned()),
            address,
            gateway,
            interface,
        });
    }

    /// Parses a `prevResult` value.
    pub fn from_value(v: &serde_json::Value) -> Result<CniResult, Error> {
        serde_json::from_value(v.clone()).map_err(|source| Error::Decode { source })
    }
}

/// The VERSION reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    /// The version of this reply.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version the plugin supports.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

impl VersionResult {
    /// This plugin's versions.
    pub fn ours() -> VersionResult {
        VersionResult {
            cni_version: CniVersion::LATEST.as_str().to_owned(),
            supported_versions: CniVersion::supported_strings()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// The error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResult {
    /// The version of this reply.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// The error code (see [`crate::error`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// The causes, when there are any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl ErrorResult {
    /// The reply for `e` in `version`.
    pub fn from_error(e: &Error, version: CniVersion) -> ErrorResult {
        ErrorResult {
            cni_version: version.as_str().to_owned(),
            code: e.code(),
            msg: e.to_string(),
            details: e.details(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_versions_carry_ip_version_and_new_ones_do_not() {
        for (v, want) in [(CniVersion::V0_4_0, Some("4")), (CniVersion::V1_0_0, None)] {
            let mut r = CniResult::new(v);
            r.push_ip(v, "10.0.0.1/32".parse().unwrap(), None, Some(0));
            let j = serde_json::to_value(&r).unwrap();
            assert_eq!(j["ips"][0]["version"].as_str(), want);
            assert_eq!(j["ips"][0]["address"], "10.0.0.1/32");
            assert!(j.get("dns").is_none() && j.get("routes").is_none());
        }
    }

    #[test]
    fn a_reference_plugin_result_round_trips() {
        // Shape of the reference `ptp` plugin's 1.0.0 result.
        let text = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"veth1","mac":"aa:bb:cc:dd:ee:ff"},
            {"name":"eth0","mac":"11:22:33:44:55:66","sandbox":"/run/netns/x"}],
            "ips":[{"address":"10.1.1.2/24","gateway":"10.1.1.1","interface":1}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let r = CniResult::from_value(&v).unwrap();
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/x"));
        assert_eq!(r.ips[0].interface, Some(1));
        let again: CniResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
    }
}
