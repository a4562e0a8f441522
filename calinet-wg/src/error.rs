//! The crate's one error type.

use std::path::PathBuf;

/// Errors of this crate. Variants carry the input or resource they concern;
/// none of them ever carries private or pre-shared key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key in text form could not be used.
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        /// Which key (e.g. "public key", "private key in /etc/calinet/wg.key").
        what: String,
        /// The rule it broke.
        reason: &'static str,
    },
    /// A private key file is readable or writable by group or others.
    #[error(
        "refusing private key file {path}: mode {mode:04o} lets group/others access it; \
         it must be 0600 (chmod 600 {path})"
    )]
    KeyFileReadableByOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A private key file is not a regular file.
    #[error("refusing private key file {path}: not a regular file")]
    KeyFileNotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Reading or writing a key file failed.
    #[error("key file {path}: {op} failed")]
    KeyFileIo {
        /// The file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The system's randomness source could not be read.
    #[error("cannot read random bytes from {source_path} for a new key")]
    Entropy {
        /// Where randomness was read from.
        source_path: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A name broke one of the vocabulary's rules.
    #[error(transparent)]
    Vocabulary(#[from] calinet_types::Error),
    /// Talking to a userspace device's control socket failed.
    #[error("WireGuard control socket {socket} of {ifname}: {op} failed")]
    UapiIo {
        /// Interface.
        ifname: String,
        /// Socket path.
        socket: PathBuf,
        /// "connect", "write set", "read get reply", ...
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The userspace implementation answered with a non-zero errno.
    #[error("WireGuard device {ifname}: {op} rejected with errno={errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    UapiErrno {
        /// Interface.
        ifname: String,
        /// "get" or "set".
        op: &'static str,
        /// The errno it sent back.
        errno: i32,
    },
    /// The control socket answered something this crate cannot read.
    #[error("WireGuard device {ifname}: unreadable control reply line {line:?}: {reason}")]
    UapiProtocol {
        /// Interface.
        ifname: String,
        /// The offending line (key material is never echoed here).
        line: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A netlink socket operation failed.
    #[error("netlink {op} for WireGuard device {ifname} failed")]
    NetlinkIo {
        /// Interface.
        ifname: String,
        /// What was attempted.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel answered a netlink request with an error.
    #[error("netlink {op} for WireGuard device {ifname}: kernel returned errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    NetlinkErrno {
        /// Interface.
        ifname: String,
        /// Which request.
        op: &'static str,
        /// The errno (positive).
        errno: i32,
    },
    /// The kernel has no `wireguard` generic netlink family (module absent).
    #[error(
        "the kernel has no WireGuard generic netlink family (no wireguard module); use the userspace backend"
    )]
    KernelWireguardUnavailable,
    /// A netlink reply could not be parsed.
    #[error("malformed netlink reply for {ifname}: {reason}")]
    NetlinkMalformed {
        /// Interface.
        ifname: String,
        /// What was wrong.
        reason: String,
    },
    /// A single peer's fixed attributes do not fit into one message of the given budget.
    #[error("message budget of {budget} bytes cannot hold peer {peer} ({needed} bytes needed)")]
    MessageBudgetTooSmall {
        /// The budget.
        budget: usize,
        /// Bytes needed for the peer's header and one allowed IP.
        needed: usize,
        /// Public key of the peer.
        peer: String,
    },
    /// `wg showconf` text could not be parsed.
    #[error("showconf line {line_no}: {reason}")]
    Showconf {
        /// 1-based line number.
        line_no: usize,
        /// What was wrong.
        reason: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
