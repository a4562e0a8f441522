//! The runtime's parameters: the `CNI_*` environment variables, parsed and
//! validated once. Pure: variables are read through a lookup function.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use calinet_route::IfName;

use crate::error::{Error, Result};

/// The CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Garbage-collect attachments not in the valid list (CNI 1.1).
    Gc,
    /// Report readiness (CNI 1.1).
    Status,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => {
                return Err(Error::InvalidEnv {
                    var: "CNI_COMMAND",
                    value: s.to_owned(),
                    rule: "must be one of ADD, DEL, CHECK, VERSION, GC, STATUS".into(),
                });
            }
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        })
    }
}

/// `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`. The Kubernetes keys are
/// typed; others are kept (and ignored, as Calico does with `IgnoreUnknown`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub k8s_pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub k8s_pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub k8s_pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    pub k8s_pod_uid: Option<String>,
    /// Every other pair.
    pub other: BTreeMap<String, String>,
}

impl CniArgs {
    /// Parses `K1=V1;K2=V2`. Empty segments are skipped; a segment without
    /// `=` or with an empty key is an error (code 4).
    pub fn parse(s: &str) -> Result<CniArgs> {
        let mut out = CniArgs::default();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(Error::InvalidEnv {
                    var: "CNI_ARGS",
                    value: s.to_owned(),
                    rule: format!("segment {part:?} is not KEY=VALUE"),
                });
            };
            if k.is_empty() {
                return Err(Error::InvalidEnv {
                    var: "CNI_ARGS",
                    value: s.to_owned(),
                    rule: format!("segment {part:?} has an empty key"),
                });
            }
            let v = v.to_owned();
            match k {
                "K8S_POD_NAMESPACE" => out.k8s_pod_namespace = Some(v),
                "K8S_POD_NAME" => out.k8s_pod_name = Some(v),
                "K8S_POD_INFRA_CONTAINER_ID" => out.k8s_pod_infra_container_id = Some(v),
                "K8S_POD_UID" => out.k8s_pod_uid = Some(v),
                _ => {
                    out.other.insert(k.to_owned(), v);
                }
            }
        }
        Ok(out)
    }

    /// Namespace and pod name when both are given (a Kubernetes pod).
    pub fn pod(&self) -> Option<(&str, &str)> {
        match (&self.k8s_pod_namespace, &self.k8s_pod_name) {
            (Some(ns), Some(pod)) if !ns.is_empty() && !pod.is_empty() => Some((ns, pod)),
            _ => None,
        }
    }
}

/// A container id as the spec allows it: non-empty, alphanumerics, `-`, `_`, `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    /// Validates a container id.
    pub fn new(s: &str) -> Result<ContainerId> {
        let ok = !s.is_empty()
            && s.len() <= 256
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(ContainerId(s.to_owned()))
        } else {
            Err(Error::InvalidEnv {
                var: "CNI_CONTAINERID",
                value: s.to_owned(),
                rule: "must be 1 to 256 characters, start with a letter or digit, and contain \
                       only letters, digits, '-', '_' and '.'"
                    .into(),
            })
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parameters of one invocation. Fields are `None` when the variable is
/// unset or empty; [`Env::for_command`] enforces what each command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<ContainerId>,
    /// `CNI_NETNS`.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: Option<IfName>,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Reads and validates the variables through `var` (e.g.
    /// `|k| std::env::var(k).ok()`), checking that the command has what it needs.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Env> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let command = match get("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => {
                return Err(Error::MissingEnv {
                    var: "CNI_COMMAND",
                    command: "any command".into(),
                });
            }
        };
        let container_id = get("CNI_CONTAINERID")
            .map(|s| ContainerId::new(&s))
            .transpose()?;
        let ifname = get("CNI_IFNAME")
            .map(|s| {
                IfName::new(s.clone()).map_err(|e| Error::InvalidEnv {
                    var: "CNI_IFNAME",
                    value: s,
                    rule: e.to_string(),
                })
            })
            .transpose()?;
        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let env = Env {
            command,
            container_id,
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname,
            args,
            path,
        };
        env.for_command()?;
        Ok(env)
    }

    /// Checks that the variables the command needs are present (spec section
    /// "Parameters"): ADD and CHECK need all four and `CNI_PATH`; DEL may come
    /// without `CNI_NETNS`; GC needs `CNI_PATH`; VERSION and STATUS need none.
    pub fn for_command(&self) -> Result<()> {
        let missing = |var| {
            Err(Error::MissingEnv {
                var,
                command: self.command.to_string(),
            })
        };
        let needs_attachment = matches!(self.command, Command::Add | Command::Del | Command::Check);
        if needs_attachment && self.container_id.is_none() {
            return missing("CNI_CONTAINERID");
        }
        if needs_attachment && self.ifname.is_none() {
            return missing("CNI_IFNAME");
        }
        if matches!(self.command, Command::Add | Command::Check) && self.netns.is_none() {
            return missing("CNI_NETNS");
        }
        if matches!(
            self.command,
            Command::Add | Command::Del | Command::Check | Command::Gc
        ) && self.path.is_empty()
        {
            return missing("CNI_PATH");
        }
        Ok(())
    }

    /// The container id (present after validation for ADD/DEL/CHECK).
    pub fn container(&self) -> Result<&ContainerId> {
        self.container_id.as_ref().ok_or_else(|| Error::MissingEnv {
            var: "CNI_CONTAINERID",
            command: self.command.to_string(),
        })
    }

    /// The interface name (present after validation for ADD/DEL/CHECK).
    pub fn interface(&self) -> Result<&IfName> {
        self.ifname.as_ref().ok_or_else(|| Error::MissingEnv {
            var: "CNI_IFNAME",
            command: self.command.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
    ];

    #[test]
    fn add_with_everything_parses() {
        let mut v = ADD.to_vec();
        v.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx",
        ));
        let e = env(&v).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container().unwrap().as_str(), "abc123");
        assert_eq!(e.args.pod(), Some(("default", "nginx")));
        assert_eq!(
            e.args.other.get("IgnoreUnknown").map(String::as_str),
            Some("1")
        );
        assert_eq!(e.path.len(), 2);
    }

    #[test]
    fn each_missing_variable_is_named() {
        for (i, (var, _)) in ADD.iter().enumerate() {
            let mut v = ADD.to_vec();
            v.remove(i);
            let err = env(&v).unwrap_err();
            assert_eq!(err.code(), 4, "{var}: {err}");
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
    }

    #[test]
    fn del_without_netns_and_version_without_anything_are_fine() {
        let v: Vec<_> = ADD
            .iter()
            .map(|&(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .filter(|(k, _)| *k != "CNI_NETNS")
            .collect();
        assert!(env(&v).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
    }

    #[test]
    fn bad_values_are_rejected_with_the_rule() {
        let cases: [(&str, &str, &str); 4] = [
            ("CNI_COMMAND", "ATTACH", "must be one of"),
            ("CNI_CONTAINERID", "a/b", "only letters"),
            ("CNI_IFNAME", "this-name-is-too-long", "15 bytes"),
            ("CNI_ARGS", "K8S_POD_NAME", "not KEY=VALUE"),
        ];
        for (var, value, rule) in cases {
            let mut v = ADD.to_vec();
            v.retain(|(k, _)| *k != var);
            v.push((var, value));
            let err = env(&v).unwrap_err();
            assert_eq!(err.code(), 4, "{err}");
            assert!(err.to_string().contains(rule), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Outside input never panics; a rejection is always code 4 and names
        /// the variable.
        #[test]
        fn arbitrary_variables_never_panic(
            command in "(ADD|DEL|CHECK|VERSION|GC|STATUS|[A-Z]{0,6})",
            id in "\\PC{0,20}",
            ifname in "\\PC{0,20}",
            args in "\\PC{0,40}",
        ) {
            let m: HashMap<&str, String> = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", "/run/netns/x".to_string()),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
                ("CNI_PATH", "/opt/cni/bin".to_string()),
            ]
            .into_iter()
            .collect();
            if let Err(e) = Env::from_lookup(|k| m.get(k).cloned()) {
                proptest::prop_assert_eq!(e.code(), 4);
                proptest::prop_assert!(e.to_string().contains("CNI_"), "{}", e);
            }
        }

        /// Well-formed CNI_ARGS round-trip into their fields.
        #[test]
        fn well_formed_args_parse(ns in "[a-z0-9-]{1,20}", pod in "[a-z0-9.-]{1,30}") {
            let a = CniArgs::parse(&format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}")).unwrap();
            proptest::prop_assert_eq!(a.pod(), Some((ns.as_str(), pod.as_str())));
        }
    }
}
