//! Calico's v3 `WorkloadEndpoint`: what the party that plumbs a pod records
//! about it in the datastore (the CNI plugin for the containers it ADDs, the
//! agent for the pods it attaches), and what agents program routes and policy
//! for. Values and key names only; the store writes are the callers'.
//!
//! Ownership: an endpoint with a `containerID` was written by a CNI ADD and
//! is removed by the DEL of that container id (or its GC); one without was
//! written by an agent, which removes only those.

use serde::{Deserialize, Serialize};

pub use calinet_types::ObjectMeta;

/// Store key prefix of WorkloadEndpoints (`<prefix><namespace>/<name>`).
pub const WEPS_PREFIX: &str = "/calico/resources/v3/projectcalico.org/workloadendpoints/";

/// Calico `WorkloadEndpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpoint {
    /// `projectcalico.org/v3`.
    pub api_version: String,
    /// `WorkloadEndpoint`.
    pub kind: String,
    /// Metadata (name `<node>-k8s-<pod>-eth0`, Calico's escaping).
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: WorkloadEndpointSpec,
}

/// `WorkloadEndpoint` spec, Calico's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// Orchestrator (`k8s`).
    pub orchestrator: String,
    /// Node.
    pub node: String,
    /// Pod name.
    pub pod: String,
    /// The container (sandbox) id, for endpoints a CNI ADD wrote.
    #[serde(
        rename = "containerID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// Endpoint (`eth0`).
    pub endpoint: String,
    /// Host-side interface.
    pub interface_name: String,
    /// Addresses with prefix (`/32`).
    #[serde(rename = "ipNetworks")]
    pub ip_networks: Vec<ipnet::IpNet>,
    /// The pod side's MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Profiles (`kns.<namespace>`, and `ksa.<namespace>.<serviceaccount>`).
    #[serde(default)]
    pub profiles: Vec<String>,
    /// The pod's service account, when the runtime passed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Named ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<WepPort>,
}

/// A named port of a workload endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WepPort {
    /// Name.
    pub name: String,
    /// Protocol.
    pub protocol: String,
    /// Port.
    pub port: u16,
}

/// Calico's WorkloadEndpoint name: `<node>-k8s-<pod>-<endpoint>` with `-`
/// doubled inside each part.
pub fn wep_name(node: &str, pod: &str, endpoint: &str) -> String {
    let esc = |s: &str| s.replace('-', "--");
    format!("{}-k8s-{}-{}", esc(node), esc(pod), esc(endpoint))
}

/// The store key of the endpoint `name` in `namespace`.
pub fn wep_key(namespace: &str, name: &str) -> String {
    format!("{WEPS_PREFIX}{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cni_endpoint_carries_calicos_field_names() {
        let w = WorkloadEndpoint {
            api_version: "projectcalico.org/v3".into(),
            kind: "WorkloadEndpoint".into(),
            metadata: ObjectMeta::named(wep_name("node-1", "web-0", "eth0")).namespace("default"),
            spec: WorkloadEndpointSpec {
                orchestrator: "k8s".into(),
                node: "node-1".into(),
                pod: "web-0".into(),
                container_id: Some("c0ffee".into()),
                endpoint: "eth0".into(),
                interface_name: "cali0123456789a".into(),
                ip_networks: vec!["172.16.0.1/32".parse().unwrap()],
                mac: Some("02:00:00:00:00:01".into()),
                profiles: vec!["kns.default".into(), "ksa.default.api".into()],
                service_account_name: Some("api".into()),
                ports: vec![],
            },
        };
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["metadata"]["name"], "node--1-k8s-web--0-eth0");
        assert_eq!(v["spec"]["containerID"], "c0ffee");
        assert_eq!(v["spec"]["interfaceName"], "cali0123456789a");
        assert_eq!(v["spec"]["ipNetworks"][0], "172.16.0.1/32");
        assert_eq!(v["spec"]["serviceAccountName"], "api");
        assert!(v["spec"].get("ports").is_none());
        let back: WorkloadEndpoint = serde_json::from_value(v).unwrap();
        assert_eq!(back, w);
        assert_eq!(
            wep_key("default", "n-k8s-p-eth0"),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/default/n-k8s-p-eth0"
        );
    }
}
