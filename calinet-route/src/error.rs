//! The crate's one error type.

use std::path::PathBuf;

/// Errors of this crate. Every variant names the input or the request that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spec broke one of the vocabulary's rules.
    #[error(transparent)]
    Spec(#[from] calinet_types::Error),
    /// A desired route is inconsistent or not owned by the reconciler.
    #[error("invalid route {route}: {rule}")]
    InvalidRoute {
        /// The route, printed like `ip route`.
        route: String,
        /// The rule it broke.
        rule: String,
    },
    /// A desired neighbour or FDB entry is inconsistent.
    #[error("invalid {what} {entry}: {rule}")]
    InvalidEntry {
        /// "neighbour" or "fdb entry".
        what: &'static str,
        /// The entry, printed like `ip neigh` / `bridge fdb`.
        entry: String,
        /// The rule it broke.
        rule: String,
    },
    /// A link specification is inconsistent.
    #[error("invalid link spec {name}: {rule}")]
    InvalidLink {
        /// The link name.
        name: String,
        /// The rule it broke.
        rule: String,
    },
    /// The kernel rejected a netlink request.
    #[error("netlink request {request} failed: {message} (errno {errno})")]
    Netlink {
        /// The request, described like the matching `ip` command.
        request: String,
        /// The positive errno the kernel returned.
        errno: i32,
        /// `strerror` of the errno.
        message: String,
    },
    /// A netlink socket-level failure (send, receive, decode).
    #[error("netlink transport failure during {context}")]
    Transport {
        /// What was being done.
        context: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A netlink message could not be decoded.
    #[error("netlink decode failure during {context}: {message}")]
    Decode {
        /// What was being done.
        context: String,
        /// The decoder's message.
        message: String,
    },
    /// A dump kept being interrupted or overrun.
    #[error("dump of {what} did not complete consistently after {attempts} attempts")]
    DumpInconsistent {
        /// What was being dumped.
        what: &'static str,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A network namespace could not be opened or entered.
    #[error("network namespace {path}")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl could not be written or read.
    #[error("sysctl {path} in netns {netns}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The namespace it was written in.
        netns: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An interface needed by an operation does not exist.
    #[error("interface {name} not found in netns {netns}")]
    LinkNotFound {
        /// The interface name.
        name: String,
        /// The namespace searched.
        netns: String,
    },
    /// The pod's namespace already holds an interface with the requested name that
    /// this crate did not create; it is left alone and nothing is changed.
    #[error(
        "netns {netns} already has an interface {name} of kind {kind} that calinet did not create ({reason}); refusing to delete it"
    )]
    ForeignInterface {
        /// The namespace.
        netns: String,
        /// The interface name.
        name: String,
        /// Its `IFLA_INFO_KIND` (`none` for a plain device).
        kind: String,
        /// Why it is not ours.
        reason: &'static str,
    },
    /// The pod's namespace already has the interface, plumbed for another
    /// owner (another container).
    #[error("netns {netns} already has an interface {name}, plumbed for {owner:?}")]
    InterfaceInUse {
        /// The namespace.
        netns: String,
        /// The interface name.
        name: String,
        /// The owner recorded on its host-side peer.
        owner: String,
    },
    /// A postcondition did not hold after retries (e.g. the MAC did not stick).
    #[error("{what} on {name}: {detail}")]
    NotConverged {
        /// What was being set.
        what: &'static str,
        /// The interface.
        name: String,
        /// What was observed.
        detail: String,
    },
}

impl Error {
    /// The errno of a kernel rejection, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl From<calinet_netlink::Error> for Error {
    /// Kernel-plumbing errors as this crate's variants of the same meaning, so
    /// callers match one set of variants whichever layer failed.
    fn from(e: calinet_netlink::Error) -> Self {
        use calinet_netlink::Error as P;
        match e {
            P::Kernel {
                request,
                errno,
                message,
            } => Error::Netlink {
                request,
                errno,
                message,
            },
            P::Socket { operation, source } => Error::Transport {
                context: operation,
                source,
            },
            P::Netns { path, source } => Error::Netns { path, source },
            P::Sysctl {
                path,
                netns,
                source,
            } => Error::Sysctl {
                path,
                netns,
                source,
            },
            other => Error::Decode {
                context: "netlink framing".into(),
                message: other.to_string(),
            },
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
