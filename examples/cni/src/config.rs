//! The network configuration read from stdin: raw serde types with the field
//! names documented in the README (Calico's `calico` plugin names where one
//! exists), validated once into [`Config`].

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::version::CniVersion;

/// The `type` of the full plugin.
pub const PLUGIN_TYPE: &str = "calinet";
/// The `type` of the IPAM plugin (and of `ipam.type` for in-process IPAM).
pub const IPAM_TYPE: &str = "calinet-ipam";
/// Default embedded datastore file.
pub const DEFAULT_DATASTORE_PATH: &str = "/var/lib/calinet/ipam.db";
/// Default node-name file (Calico: `/var/lib/calico/nodename`).
pub const DEFAULT_NODENAME_FILE: &str = "/var/lib/calinet/nodename";
/// Default host lock for datastores without a file (etcd).
pub const DEFAULT_LOCK_FILE: &str = "/var/run/calinet/ipam.lock";
/// Default MTU of workload interfaces.
pub const DEFAULT_MTU: u32 = 1500;
/// Host-side interface name prefix (Felix's default).
pub const DEFAULT_INTERFACE_PREFIX: &str = "cali";

/// A string or a bool (Calico writes `"assign_ipv4": "true"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Str(String),
}

fn flag(field: &str, f: Option<&Flag>, default: bool) -> Result<bool> {
    match f {
        None => Ok(default),
        Some(Flag::Bool(b)) => Ok(*b),
        Some(Flag::Str(s)) => match s.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(Error::InvalidConfig {
                field: field.to_owned(),
                value: s.clone(),
                rule: "must be true or false".into(),
            }),
        },
    }
}

/// Datastore fields; allowed at the top level (as Calico) and inside `ipam`
/// (which wins), so the IPAM plugin can be configured under another plugin.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawDatastore {
    datastore_type: Option<String>,
    datastore_path: Option<PathBuf>,
    ipam_lock_file: Option<PathBuf>,
    etcd_endpoints: Option<String>,
    etcd_key_file: Option<PathBuf>,
    etcd_cert_file: Option<PathBuf>,
    etcd_ca_cert_file: Option<PathBuf>,
}

impl RawDatastore {
    fn overlay(self, over: RawDatastore) -> RawDatastore {
        RawDatastore {
            datastore_type: over.datastore_type.or(self.datastore_type),
            datastore_path: over.datastore_path.or(self.datastore_path),
            ipam_lock_file: over.ipam_lock_file.or(self.ipam_lock_file),
            etcd_endpoints: over.etcd_endpoints.or(self.etcd_endpoints),
            etcd_key_file: over.etcd_key_file.or(self.etcd_key_file),
            etcd_cert_file: over.etcd_cert_file.or(self.etcd_cert_file),
            etcd_ca_cert_file: over.etcd_ca_cert_file.or(self.etcd_ca_cert_file),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: String,
    assign_ipv4: Option<Flag>,
    assign_ipv6: Option<Flag>,
    #[serde(default)]
    ipv4_pools: Vec<String>,
    #[serde(default)]
    ipv6_pools: Vec<String>,
    ipv4_block_size: Option<u8>,
    ipv6_block_size: Option<u8>,
    gateway: Option<String>,
    ipv6_gateway: Option<String>,
    #[serde(flatten)]
    datastore: RawDatastore,
}

/// One entry of `valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

#[derive(Debug, Clone, Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    plugin_type: String,
    mtu: Option<u32>,
    nodename: Option<String>,
    nodename_file: Option<PathBuf>,
    interface_prefix: Option<String>,
    ipam: Option<RawIpam>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(flatten)]
    datastore: RawDatastore,
}

/// Which datastore holds IPAM state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Datastore {
    /// The embedded SQLite file (default).
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// etcd v3 (shared by a cluster); needs calinet-ipam's etcd store.
    Etcd {
        /// Client endpoints.
        endpoints: Vec<String>,
        /// Client key file.
        key_file: Option<PathBuf>,
        /// Client certificate file.
        cert_file: Option<PathBuf>,
        /// CA certificate file.
        ca_cert_file: Option<PathBuf>,
    },
}

/// A pool named in `ipv4_pools` / `ipv6_pools` (the attach core's type).
pub use calinet_attach::PoolRef;

/// The validated IPAM settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// Assign an IPv4 address (default true).
    pub assign_ipv4: bool,
    /// Assign an IPv6 address (default false).
    pub assign_ipv6: bool,
    /// IPv4 pools to allocate from (empty: any enabled IPv4 pool).
    pub ipv4_pools: Vec<PoolRef>,
    /// IPv6 pools.
    pub ipv6_pools: Vec<PoolRef>,
    /// Block size of IPv4 pools the plugin creates (default 26).
    pub ipv4_block_size: Option<u8>,
    /// Block size of IPv6 pools the plugin creates (default 122).
    pub ipv6_block_size: Option<u8>,
    /// IPv4 gateway reported in IPAM-only results (for plugins such as `ptp`).
    pub gateway_v4: Option<IpAddr>,
    /// IPv6 gateway reported in IPAM-only results.
    pub gateway_v6: Option<IpAddr>,
    /// The datastore.
    pub datastore: Datastore,
    /// Host-wide lock serialising this host's IPAM writers.
    pub lock_file: PathBuf,
}

/// The validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `cniVersion`.
    pub version: CniVersion,
    /// `name`: the network name (also the handle prefix).
    pub name: String,
    /// `type`.
    pub plugin_type: String,
    /// MTU of the workload veth (68..=65535; absent or 0: 1500).
    pub mtu: u32,
    /// Node name, when configured.
    pub nodename: Option<String>,
    /// Where to read the node name when `nodename` is absent.
    pub nodename_file: PathBuf,
    /// Host interface prefix (1 to 4 characters, default `cali`).
    pub interface_prefix: String,
    /// IPAM settings.
    pub ipam: IpamConfig,
    /// `prevResult` (CHECK, DEL, chained plugins), unparsed.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn invalid(field: &str, value: impl ToString, rule: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field: field.to_owned(),
        value: value.to_string(),
        rule: rule.into(),
    }
}

/// The spec's network name rule.
fn valid_network_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn pools(field: &str, raw: &[String], v6: bool) -> Result<Vec<PoolRef>> {
    raw.iter()
        .map(|s| {
            if s.contains('/') {
                let net: IpNet = s
                    .parse()
                    .map_err(|e| invalid(field, s, format!("not a CIDR: {e}")))?;
                if net.trunc() != net {
                    return Err(invalid(
                        field,
                        s,
                        format!("host bits set; did you mean {}?", net.trunc()),
                    ));
                }
                if matches!(net, IpNet::V6(_)) != v6 {
                    return Err(invalid(
                        field,
                        s,
                        if v6 {
                            "not an IPv6 CIDR"
                        } else {
                            "not an IPv4 CIDR"
                        },
                    ));
                }
                Ok(PoolRef::Cidr(net))
            } else if s.is_empty() {
                Err(invalid(field, s, "pool name must not be empty"))
            } else {
                Ok(PoolRef::Name(s.clone()))
            }
        })
        .collect()
}

fn gateway(field: &str, s: Option<&String>, v6: bool) -> Result<Option<IpAddr>> {
    let Some(s) = s else { return Ok(None) };
    let a: IpAddr = s
        .parse()
        .map_err(|e| invalid(field, s, format!("not an IP address: {e}")))?;
    if a.is_ipv6() != v6 {
        return Err(invalid(
            field,
            s,
            if v6 { "must be IPv6" } else { "must be IPv4" },
        ));
    }
    Ok(Some(a))
}

impl Config {
    /// Parses and validates the configuration bytes. The `cniVersion` is
    /// checked first, so an unknown version is code 1 even when other fields
    /// are wrong; undecodable JSON is code 6; rule violations code 7; fields
    /// naming unsupported features code 2.
    pub fn parse(bytes: &[u8]) -> Result<Config> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|source| Error::Decode { source })?;
        if let Some(v) = value.get("cniVersion").and_then(Value::as_str) {
            v.parse::<CniVersion>()?;
        }
        let raw: RawConf =
            serde_json::from_value(value).map_err(|source| Error::Decode { source })?;
        Config::validate(raw)
    }

    fn validate(raw: RawConf) -> Result<Config> {
        let version: CniVersion = raw.cni_version.parse()?;
        if !valid_network_name(&raw.name) {
            return Err(invalid(
                "name",
                &raw.name,
                "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
            ));
        }
        // 0 means "default" (as for the reference plugins, whose `mtu` this
        // field is when calinet-ipam runs under one of them).
        let mtu = raw.mtu.filter(|m| *m != 0).unwrap_or(DEFAULT_MTU);
        if !(68..=65535).contains(&mtu) {
            return Err(invalid("mtu", mtu, "must be between 68 and 65535"));
        }
        let interface_prefix = raw
            .interface_prefix
            .unwrap_or_else(|| DEFAULT_INTERFACE_PREFIX.to_owned());
        if interface_prefix.is_empty()
            || interface_prefix.len() > 4
            || !interface_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(invalid(
                "interface_prefix",
                &interface_prefix,
                "must be 1 to 4 letters or digits (the 11-character hash follows it, 15 bytes in all)",
            ));
        }
        if let Some(n) = &raw.nodename
            && let Err(e) = n.parse::<calinet_ipam::NodeName>()
        {
            return Err(invalid("nodename", n, e.to_string()));
        }
        let Some(ri) = raw.ipam else {
            return Err(invalid(
                "ipam",
                "<absent>",
                format!("an ipam section with \"type\": \"{IPAM_TYPE}\" is required"),
            ));
        };
        if ri.ipam_type != IPAM_TYPE {
            return Err(Error::UnsupportedField {
                field: "ipam.type".into(),
                value: ri.ipam_type,
                why: format!(
                    "only \"{IPAM_TYPE}\" is supported (no delegation to other IPAM plugins)"
                ),
            });
        }
        let assign_ipv4 = flag("ipam.assign_ipv4", ri.assign_ipv4.as_ref(), true)?;
        let assign_ipv6 = flag("ipam.assign_ipv6", ri.assign_ipv6.as_ref(), false)?;
        if !assign_ipv4 && !assign_ipv6 {
            return Err(invalid(
                "ipam.assign_ipv4",
                "false",
                "at least one of assign_ipv4 and assign_ipv6 must be true",
            ));
        }
        for (field, size, range) in [
            ("ipam.ipv4_block_size", ri.ipv4_block_size, 20..=32u8),
            ("ipam.ipv6_block_size", ri.ipv6_block_size, 116..=128u8),
        ] {
            if let Some(s) = size
                && !range.contains(&s)
            {
                return Err(invalid(
                    field,
                    s,
                    format!("must be in {}..={}", range.start(), range.end()),
                ));
            }
        }
        let ipv4_pools = pools("ipam.ipv4_pools", &ri.ipv4_pools, false)?;
        let ipv6_pools = pools("ipam.ipv6_pools", &ri.ipv6_pools, true)?;
        let gateway_v4 = gateway("ipam.gateway", ri.gateway.as_ref(), false)?;
        let gateway_v6 = gateway("ipam.ipv6_gateway", ri.ipv6_gateway.as_ref(), true)?;
        let ds = raw.datastore.overlay(ri.datastore);
        let (datastore, default_lock) = match ds.datastore_type.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                let path = ds
                    .datastore_path
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATASTORE_PATH));
                if !path.is_absolute() {
                    return Err(invalid(
                        "datastore_path",
                        path.display(),
                        "must be an absolute path",
                    ));
                }
                let mut lock = path.clone().into_os_string();
                lock.push(".lock");
                (Datastore::Sqlite { path }, PathBuf::from(lock))
            }
            "etcdv3" => {
                let endpoints: Vec<String> = ds
                    .etcd_endpoints
                    .as_deref()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if endpoints.is_empty() {
                    return Err(invalid(
                        "etcd_endpoints",
                        ds.etcd_endpoints.unwrap_or_default(),
                        "datastore_type etcdv3 needs at least one endpoint (comma-separated URLs)",
                    ));
                }
                for e in &endpoints {
                    if !(e.starts_with("http://") || e.starts_with("https://")) {
                        return Err(invalid(
                            "etcd_endpoints",
                            e,
                            "each endpoint must be an http:// or https:// URL",
                        ));
                    }
                }
                match (&ds.etcd_ca_cert_file, &ds.etcd_cert_file, &ds.etcd_key_file) {
                    (_, Some(_), None) | (_, None, Some(_)) => {
                        return Err(invalid(
                            "etcd_cert_file",
                            "<one of etcd_cert_file, etcd_key_file>",
                            "a client certificate needs both etcd_cert_file and etcd_key_file",
                        ));
                    }
                    (None, Some(c), Some(_)) => {
                        return Err(invalid(
                            "etcd_ca_cert_file",
                            c.display(),
                            "a client certificate needs etcd_ca_cert_file (the CA of the etcd servers)",
                        ));
                    }
                    _ => {}
                }
                (
                    Datastore::Etcd {
                        endpoints,
                        key_file: ds.etcd_key_file,
                        cert_file: ds.etcd_cert_file,
                        ca_cert_file: ds.etcd_ca_cert_file,
                    },
                    PathBuf::from(DEFAULT_LOCK_FILE),
                )
            }
            other => {
                return Err(Error::UnsupportedField {
                    field: "datastore_type".into(),
                    value: other.to_owned(),
                    why: "must be \"sqlite\" or \"etcdv3\"".into(),
                });
            }
        };
        let lock_file = ds.ipam_lock_file.unwrap_or(default_lock);
        Ok(Config {
            version,
            name: raw.name,
            plugin_type: raw.plugin_type,
            mtu,
            nodename: raw.nodename,
            nodename_file: raw
                .nodename_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_NODENAME_FILE)),
            interface_prefix,
            ipam: IpamConfig {
                assign_ipv4,
                assign_ipv6,
                ipv4_pools,
                ipv6_pools,
                ipv4_block_size: ri.ipv4_block_size,
                ipv6_block_size: ri.ipv6_block_size,
                gateway_v4,
                gateway_v6,
                datastore,
                lock_file,
            },
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// The version of a configuration that may not parse, for error replies:
    /// its `cniVersion` when that is supported, else the newest.
    pub fn version_hint(bytes: &[u8]) -> CniVersion {
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str()?.parse().ok())
            .unwrap_or(CniVersion::LATEST)
    }
}

/// Resolves the node name: `nodename` from the config, else the first line of
/// the node-name file, else the host name. Pure: the caller reads the file and
/// the host name.
pub fn resolve_nodename(
    configured: Option<&str>,
    file: Option<&str>,
    hostname: &str,
) -> Result<calinet_ipam::NodeName> {
    let (source, name) = match (
        configured,
        file.map(|f| f.lines().next().unwrap_or("").trim()),
    ) {
        (Some(n), _) => ("nodename", n),
        (None, Some(f)) if !f.is_empty() => ("nodename_file", f),
        _ => ("host name", hostname.trim()),
    };
    name.parse::<calinet_ipam::NodeName>()
        .map_err(|e| invalid(source, name, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "calinet",
        "mtu": 1450,
        "nodename": "node-1",
        "datastore_path": "/tmp/x/ipam.db",
        "ipam": {
            "type": "calinet-ipam",
            "assign_ipv4": "true",
            "assign_ipv6": true,
            "ipv4_pools": ["172.16.0.0/16", "blue-pool"],
            "ipv6_pools": ["fd00:10::/64"],
            "ipv4_block_size": 24
        },
        "capabilities": {"portMappings": true}
    }"#;

    #[test]
    fn a_full_config_parses_with_every_field() {
        let c = Config::parse(FULL.as_bytes()).unwrap();
        assert_eq!(c.version, CniVersion::V1_0_0);
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.nodename.as_deref(), Some("node-1"));
        assert!(c.ipam.assign_ipv4 && c.ipam.assign_ipv6);
        assert_eq!(
            c.ipam.ipv4_pools,
            vec![
                PoolRef::Cidr("172.16.0.0/16".parse().unwrap()),
                PoolRef::Name("blue-pool".into())
            ]
        );
        assert_eq!(c.ipam.ipv4_block_size, Some(24));
        assert_eq!(
            c.ipam.datastore,
            Datastore::Sqlite {
                path: "/tmp/x/ipam.db".into()
            }
        );
        assert_eq!(c.ipam.lock_file, PathBuf::from("/tmp/x/ipam.db.lock"));
        assert_eq!(c.interface_prefix, "cali");
    }

    #[test]
    fn defaults_apply_and_the_ipam_section_overrides_the_datastore() {
        let c = Config::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"ptp","datastore_path":"/a.db",
                 "ipam":{"type":"calinet-ipam","datastore_path":"/b.db"}}"#,
        )
        .unwrap();
        assert_eq!(c.mtu, DEFAULT_MTU);
        assert!(c.ipam.assign_ipv4 && !c.ipam.assign_ipv6);
        let zero = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"ptp","mtu":0,"ipam":{"type":"calinet-ipam"}}"#,
        )
        .unwrap();
        assert_eq!(zero.mtu, DEFAULT_MTU);
        assert_eq!(
            c.ipam.datastore,
            Datastore::Sqlite {
                path: "/b.db".into()
            }
        );
    }

    fn err(json: &str) -> Error {
        Config::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn each_rule_gives_its_code_and_names_the_field() {
        let base = |extra: &str, ipam: &str| {
            format!(
                r#"{{"cniVersion":"1.0.0","name":"net","type":"calinet"{extra},
                    "ipam":{{"type":"calinet-ipam"{ipam}}}}}"#
            )
        };
        let cases: Vec<(String, u32, &str)> = vec![
            ("{".into(), 6, "decode"),
            (r#"{"cniVersion":"1.0.0"}"#.into(), 6, "name"),
            (r#"{"cniVersion":"9.9.9","name":"n","type":"calinet"}"#.into(), 1, "9.9.9"),
            (base(r#","mtu":40"#, ""), 7, "mtu"),
            (base(r#","mtu":"big""#, ""), 6, "decode"),
            (base(r#","interface_prefix":"toolong""#, ""), 7, "interface_prefix"),
            (base(r#","nodename":"a/b""#, ""), 7, "nodename"),
            (base(r#","datastore_type":"consul""#, ""), 2, "datastore_type"),
            (base(r#","datastore_type":"etcdv3""#, ""), 7, "etcd_endpoints"),
            (
                base(r#","datastore_type":"etcdv3","etcd_endpoints":"127.0.0.1:2379""#, ""),
                7,
                "http://",
            ),
            (
                base(
                    r#","datastore_type":"etcdv3","etcd_endpoints":"https://e:2379","etcd_cert_file":"/c.pem""#,
                    "",
                ),
                7,
                "both",
            ),
            (
                base(
                    r#","datastore_type":"etcdv3","etcd_endpoints":"https://e:2379","etcd_cert_file":"/c.pem","etcd_key_file":"/k.pem""#,
                    "",
                ),
                7,
                "etcd_ca_cert_file",
            ),
            (base(r#","datastore_path":"rel.db""#, ""), 7, "absolute"),
            (base("", r#","ipv4_pools":["172.16.0.1/16"]"#), 7, "host bits"),
            (base("", r#","ipv4_pools":["fd00::/64"]"#), 7, "IPv4"),
            (base("", r#","ipv4_pools":["300.0.0.0/8"]"#), 7, "not a CIDR"),
            (base("", r#","assign_ipv4":"yes""#), 7, "true or false"),
            (base("", r#","assign_ipv4":false"#), 7, "at least one"),
            (base("", r#","ipv4_block_size":19"#), 7, "20..=32"),
            (base("", r#","gateway":"fe80::1""#), 7, "IPv4"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"calinet","ipam":{"type":"host-local"}}"#
                    .into(),
                2,
                "host-local",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"calinet"}"#.into(),
                7,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"-bad","type":"calinet","ipam":{"type":"calinet-ipam"}}"#
                    .into(),
                7,
                "name",
            ),
        ];
        for (json, code, needle) in cases {
            let e = err(&json);
            assert_eq!(e.code(), code, "{json}: {e}");
            assert!(
                e.to_string()
                    .to_lowercase()
                    .contains(&needle.to_lowercase()),
                "{json}: {e}"
            );
        }
    }

    #[test]
    fn an_etcd_datastore_parses_with_tls_files() {
        let c = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"calinet","datastore_type":"etcdv3",
                 "etcd_endpoints":"https://a:2379, https://b:2379","etcd_ca_cert_file":"/ca.pem",
                 "etcd_cert_file":"/c.pem","etcd_key_file":"/k.pem","ipam":{"type":"calinet-ipam"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.ipam.datastore,
            Datastore::Etcd {
                endpoints: vec!["https://a:2379".into(), "https://b:2379".into()],
                key_file: Some("/k.pem".into()),
                cert_file: Some("/c.pem".into()),
                ca_cert_file: Some("/ca.pem".into()),
            }
        );
        assert_eq!(c.ipam.lock_file, PathBuf::from(DEFAULT_LOCK_FILE));
    }

    #[test]
    fn node_name_comes_from_config_then_file_then_host_name() {
        assert_eq!(
            resolve_nodename(Some("a"), Some("b"), "c")
                .unwrap()
                .as_str(),
            "a"
        );
        assert_eq!(
            resolve_nodename(None, Some("b\n"), "c").unwrap().as_str(),
            "b"
        );
        assert_eq!(
            resolve_nodename(None, Some(""), "c\n").unwrap().as_str(),
            "c"
        );
        assert_eq!(
            resolve_nodename(None, None, "bad name").unwrap_err().code(),
            7
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Outside input never panics the parser; failures carry a config code.
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            if let Err(e) = Config::parse(&bytes) {
                proptest::prop_assert!([1, 2, 6, 7].contains(&e.code()));
            }
        }

        /// Structurally valid configs with random field values either parse or
        /// fail with a config code naming a field.
        #[test]
        fn random_field_values_fail_cleanly(
            mtu in proptest::prelude::any::<i64>(),
            name in "[a-z0-9._ -]{0,12}",
            pool in "[0-9a-f:./]{0,20}",
            prefix in "[a-z]{0,6}",
        ) {
            let json = serde_json::json!({
                "cniVersion": "1.0.0", "name": name, "type": "calinet", "mtu": mtu,
                "interface_prefix": prefix,
                "ipam": {"type": "calinet-ipam", "ipv4_pools": [pool]}
            });
            match Config::parse(json.to_string().as_bytes()) {
                Ok(c) => {
                    proptest::prop_assert!((68..=65535).contains(&c.mtu));
                    proptest::prop_assert!(valid_network_name(&c.name));
                }
                Err(e) => proptest::prop_assert!([6, 7].contains(&e.code()), "{}", e),
            }
        }
    }
}
