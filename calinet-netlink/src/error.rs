//! The crate's one error type.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// Errors of the kernel plumbing. Every variant names the request, namespace or
/// input it is about; an underlying I/O error is its [`source`](std::error::Error::source)
/// and is not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel rejected a netlink request.
    #[error("netlink request {request} failed: {message} (errno {errno})")]
    Kernel {
        /// The request, described for a person (e.g. like the `ip` command).
        request: String,
        /// The positive errno the kernel returned.
        errno: i32,
        /// `strerror` of the errno, plus the kernel's extended-ack message if any.
        message: String,
    },
    /// A socket operation failed (socket, bind, setsockopt, send, receive).
    #[error("netlink socket: {operation} failed")]
    Socket {
        /// What was being done, e.g. `send nf_tables batch in netns /run/netns/n1`.
        operation: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A received buffer is not well-formed netlink.
    #[error("malformed netlink data in {context}: {reason}")]
    Malformed {
        /// What was being parsed.
        context: String,
        /// What was wrong.
        reason: String,
    },
    /// A message could not be encoded (an attribute too long for netlink's
    /// 16-bit length, a name holding a NUL byte...).
    #[error("cannot encode netlink message: {reason}")]
    Encode {
        /// The rule the input broke.
        reason: String,
    },
    /// A network namespace could not be opened or entered.
    #[error("network namespace {path}: cannot open or enter it")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl could not be written or read.
    #[error("sysctl {path} in netns {netns}: cannot access it")]
    Sysctl {
        /// The `/proc/sys` path.
        path: String,
        /// The namespace it was accessed in.
        netns: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The errno of a kernel rejection, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// A socket error for `operation` with the current `errno`.
    pub(crate) fn last_os(operation: impl Into<String>) -> Self {
        Error::Socket {
            operation: operation.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
