//! The crate's error type and its mapping onto the CNI specification's error
//! codes (`code`, `msg`, `details` on stdout).
//!
//! | code | meaning (spec)                                 | raised for                                   |
//! |------|------------------------------------------------|----------------------------------------------|
//! | 1    | incompatible CNI version                       | unknown `cniVersion`, CHECK before 0.4.0, GC/STATUS before 1.1.0 |
//! | 2    | unsupported field in network configuration     | `ipam.type` not `calinet-ipam`, `datastore_type` not built in |
//! | 3    | container unknown or does not exist            | ADD/CHECK with a `CNI_NETNS` that does not exist |
//! | 4    | invalid necessary environment variables        | missing/invalid `CNI_*` variables, bad `CNI_ARGS` |
//! | 5    | I/O failure                                    | reading stdin, the host lock file            |
//! | 6    | failed to decode content                       | network configuration is not valid JSON / wrong types |
//! | 7    | invalid network config                         | a field breaks a rule (MTU range, CIDR, pool overlap, ...) |
//! | 11   | try again later                                | datastore busy, CAS conflicts exhausted      |
//! | 50   | plugin not available (STATUS)                  | datastore cannot be opened or has no usable pool |
//! | 100  | calinet: no address available                  | pool exhausted, no usable pool               |
//! | 101  | calinet: datastore failure                     | any other datastore error                    |
//! | 102  | calinet: workload plumbing failed              | a netlink request failed                     |
//! | 103  | calinet: CHECK found a difference              | kernel or stored state differs               |
//! | 104  | calinet: other IPAM error                      | e.g. a corrupt block                         |
//! | 105  | calinet: interface belongs to another container | ADD when `CNI_IFNAME` in `CNI_NETNS` was plumbed for another container id |

use std::fmt::Write as _;
use std::path::PathBuf;

/// Errors of the plugin. Each carries what a person needs to act on it, and
/// maps to one CNI error code ([`Error::code`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `cniVersion` is not one this plugin speaks, or too old for the command.
    #[error("incompatible CNI version {version:?}: {rule}")]
    IncompatibleVersion {
        /// The requested version.
        version: String,
        /// Why it is not accepted.
        rule: String,
    },
    /// A configuration field names something this build does not support.
    #[error("unsupported field in network configuration: {field} = {value:?} ({why})")]
    UnsupportedField {
        /// The field (dotted path).
        field: String,
        /// Its value.
        value: String,
        /// Why it is unsupported.
        why: String,
    },
    /// The container's network namespace does not exist.
    #[error("network namespace {path} (CNI_NETNS) does not exist")]
    NetnsMissing {
        /// The path given in `CNI_NETNS`.
        path: PathBuf,
        /// The error opening it.
        #[source]
        source: std::io::Error,
    },
    /// A required environment variable is missing or empty.
    #[error("environment variable {var} is required for {command}")]
    MissingEnv {
        /// The variable.
        var: &'static str,
        /// The command needing it.
        command: String,
    },
    /// An environment variable broke a rule.
    #[error("environment variable {var}={value:?} is invalid: {rule}")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// The rule it broke.
        rule: String,
    },
    /// Reading the network configuration from stdin failed.
    #[error("cannot read the network configuration from stdin")]
    ReadStdin(#[source] std::io::Error),
    /// The network configuration is not valid JSON or has wrong types.
    #[error("cannot decode the network configuration: {source}")]
    Decode {
        /// The JSON error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A network configuration field broke a rule.
    #[error("invalid network configuration: {field} = {value:?}: {rule}")]
    InvalidConfig {
        /// The field (dotted path).
        field: String,
        /// Its value.
        value: String,
        /// The rule it broke.
        rule: String,
    },
    /// The host-wide IPAM lock file could not be opened or locked.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The datastore directory or file could not be prepared.
    #[error("cannot prepare datastore directory {path}")]
    DatastoreDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An IPAM operation failed.
    #[error("IPAM {operation} failed: {source}")]
    Ipam {
        /// What was attempted, naming the handle.
        operation: String,
        /// The allocator's error.
        #[source]
        source: calinet_ipam::Error,
    },
    /// Kernel plumbing of the workload failed.
    #[error("workload plumbing of {what} failed: {source}")]
    Plumbing {
        /// What was attempted (interface names, namespace).
        what: String,
        /// The netlink error.
        #[source]
        source: calinet_route::Error,
    },
    /// ADD found `CNI_IFNAME` in `CNI_NETNS` plumbed for another container:
    /// the specification requires an error, and nothing was changed.
    #[error(
        "interface {name} in netns {netns} already exists and belongs to container {owner:?}; \
         a container's interface name must be unused"
    )]
    InterfaceInUse {
        /// The namespace.
        netns: String,
        /// The interface name (`CNI_IFNAME`).
        name: String,
        /// The container id recorded on it.
        owner: String,
    },
    /// A failed ADD was rolled back, and the rollback itself failed too.
    #[error("{original} (rollback also failed: {rollback})")]
    RollbackFailed {
        /// The error that made the ADD fail.
        #[source]
        original: Box<Error>,
        /// What went wrong while undoing it.
        rollback: String,
    },
    /// CHECK found the container's networking differs from what was set up.
    #[error("CHECK of container {container} failed: {}", differences.join("; "))]
    CheckFailed {
        /// The container id.
        container: String,
        /// Each difference found.
        differences: Vec<String>,
    },
    /// STATUS: the plugin cannot serve ADDs now.
    #[error("plugin not available: {reason}")]
    NotAvailable {
        /// Why.
        reason: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The CNI error code (see the module table).
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => 1,
            Error::UnsupportedField { .. } => 2,
            Error::NetnsMissing { .. } => 3,
            Error::MissingEnv { .. } | Error::InvalidEnv { .. } => 4,
            Error::ReadStdin(_) | Error::Lock { .. } | Error::DatastoreDir { .. } => 5,
            Error::Decode { .. } => 6,
            Error::InvalidConfig { .. } => 7,
            Error::Ipam { source, .. } => ipam_code(source),
            Error::Plumbing { .. } => 102,
            Error::InterfaceInUse { .. } => 105,
            Error::RollbackFailed { original, .. } => original.code(),
            Error::CheckFailed { .. } => 103,
            Error::NotAvailable { .. } => 50,
        }
    }

    /// The error's causes, outermost first after the message, joined with
    /// `": "`: the spec's `details`. Empty when there is no cause.
    pub fn details(&self) -> String {
        let mut out = String::new();
        let mut cur = std::error::Error::source(self);
        while let Some(c) = cur {
            if !out.is_empty() {
                out.push_str(": ");
            }
            let _ = write!(out, "{c}");
            cur = c.source();
        }
        out
    }
}

fn ipam_code(e: &calinet_ipam::Error) -> u32 {
    use calinet_ipam::{Error as E, StoreError as S};
    match e {
        E::Exhausted { .. } | E::NoPool { .. } => 100,
        E::Conflict { .. } => 11,
        E::Store(S::Unavailable { .. }) => 11,
        E::Store(_) => 101,
        E::InvalidPool { .. }
        | E::OverlappingPools { .. }
        | E::InvalidCidr { .. }
        | E::InvalidName { .. }
        | E::InvalidConfig { .. } => 7,
        _ => 104,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_table() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(
            Error::NetnsMissing {
                path: "/run/netns/x".into(),
                source: io()
            }
            .code(),
            3
        );
        assert_eq!(
            Error::MissingEnv {
                var: "CNI_NETNS",
                command: "ADD".into()
            }
            .code(),
            4
        );
        let exhausted = calinet_ipam::Error::Exhausted {
            node: "n".into(),
            handle: "h".into(),
            family: "IPv4",
            requested: 1,
            available: 0,
        };
        let e = Error::Ipam {
            operation: "assign".into(),
            source: exhausted,
        };
        assert_eq!(e.code(), 100);
        assert!(e.details().contains("only 0 of 1 IPv4"), "{}", e.details());
        let rb = Error::RollbackFailed {
            original: Box::new(e),
            rollback: "x".into(),
        };
        assert_eq!(rb.code(), 100);
    }

    #[test]
    fn details_lists_the_cause_chain() {
        let e = Error::Lock {
            path: "/x.lock".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        assert!(e.details().contains("Permission denied"), "{}", e.details());
        assert_eq!(
            Error::NotAvailable { reason: "r".into() }.details(),
            String::new()
        );
    }
}
