//! The crate's error type: each variant names what it is about (the handle,
//! the interface, the namespace, the IPAM operation), and a failed ADD names
//! the step that failed.

use std::fmt;
use std::path::PathBuf;

use calinet_ipam::HandleId;

/// The steps of an ADD, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Making sure the pod's network namespace exists (before anything is
    /// allocated).
    CheckNetns,
    /// Reading the addresses the handle already holds, or assigning new ones.
    Allocate,
    /// Turning the request and its addresses into a workload spec.
    Spec,
    /// Creating the veth pair, addresses and routes.
    Plumb,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CheckNetns => "check-netns",
            Step::Allocate => "allocate",
            Step::Spec => "workload-spec",
            Step::Plumb => "plumb",
        })
    }
}

/// Errors of the attach core and its edges.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The pod's network namespace does not exist.
    #[error("network namespace {path} does not exist")]
    NetnsMissing {
        /// The namespace path.
        path: PathBuf,
        /// The error looking it up.
        #[source]
        source: std::io::Error,
    },
    /// The pod's network namespace path exists but is not a network
    /// namespace that can be entered (a regular file, a directory, no access).
    #[error("{path} is not a usable network namespace")]
    NetnsUnusable {
        /// The namespace path.
        path: PathBuf,
        /// The error looking it up.
        #[source]
        source: std::io::Error,
    },
    /// The request broke a rule.
    #[error("invalid attach request: {field} = {value:?}: {rule}")]
    InvalidRequest {
        /// The request field.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule it broke.
        rule: String,
    },
    /// A pool named in the request does not exist.
    #[error("no IPPool named {name:?} exists in the datastore")]
    UnknownPool {
        /// The pool name.
        name: String,
    },
    /// An IPAM operation failed.
    #[error("IPAM {operation} failed")]
    Ipam {
        /// What was attempted, naming the handle or pool.
        operation: String,
        /// The allocator's error.
        #[source]
        source: calinet_ipam::Error,
    },
    /// Kernel plumbing of a workload failed.
    #[error("workload plumbing of {what} failed")]
    Plumbing {
        /// What was attempted (interface names, namespace).
        what: String,
        /// The netlink error.
        #[source]
        source: calinet_route::Error,
    },
    /// The host-wide IPAM lock could not be opened or taken.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An ADD failed at `step`; what it had done was undone.
    #[error("attaching {handle} failed at step {step}")]
    AttachFailed {
        /// The request's handle.
        handle: HandleId,
        /// The step that failed.
        step: Step,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// An ADD failed at `step`, and undoing what it had done failed too.
    #[error(
        "attaching {handle} failed at step {step}, and the rollback failed too: {}",
        rollback_text(rollback)
    )]
    RollbackFailed {
        /// The request's handle.
        handle: HandleId,
        /// The step that failed.
        step: Step,
        /// Why the step failed.
        #[source]
        source: Box<Error>,
        /// What went wrong while undoing it (interfaces left, addresses
        /// still held).
        rollback: Vec<Error>,
    },
}

fn rollback_text(errors: &[Error]) -> String {
    errors
        .iter()
        .map(|e| chain(e))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error's message followed by its causes, joined with `": "`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Error {
    /// The step a failed ADD stopped at (`None` for errors that are not an
    /// ADD's).
    pub fn step(&self) -> Option<Step> {
        match self {
            Error::AttachFailed { step, .. } | Error::RollbackFailed { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// The error under an ADD's step wrapper (the error itself otherwise).
    pub fn cause(&self) -> &Error {
        match self {
            Error::AttachFailed { source, .. } | Error::RollbackFailed { source, .. } => {
                source.cause()
            }
            e => e,
        }
    }

    /// The error under an ADD's step wrapper, owned.
    pub fn into_cause(self) -> Error {
        match self {
            Error::AttachFailed { source, .. } | Error::RollbackFailed { source, .. } => {
                source.into_cause()
            }
            e => e,
        }
    }

    /// Whether the datastore itself failed or stayed contended (as opposed to
    /// a refusal such as an exhausted pool): a caller retries these later.
    pub fn is_datastore_failure(&self) -> bool {
        matches!(
            self.cause(),
            Error::Ipam {
                source: calinet_ipam::Error::Store(_) | calinet_ipam::Error::Conflict { .. },
                ..
            }
        )
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_names_the_step_and_keeps_its_cause_as_source() {
        let e = Error::AttachFailed {
            handle: "k8s-pod-network.c1".parse().unwrap(),
            step: Step::Plumb,
            source: Box::new(Error::NetnsMissing {
                path: "/run/netns/x".into(),
                source: std::io::ErrorKind::NotFound.into(),
            }),
        };
        assert_eq!(
            e.to_string(),
            "attaching k8s-pod-network.c1 failed at step plumb"
        );
        assert_eq!(e.step(), Some(Step::Plumb));
        assert!(matches!(e.cause(), Error::NetnsMissing { .. }));
        assert!(
            chain(&e).contains("/run/netns/x does not exist"),
            "{}",
            chain(&e)
        );
        assert!(!e.is_datastore_failure());
        assert!(matches!(e.into_cause(), Error::NetnsMissing { .. }));
    }
}
