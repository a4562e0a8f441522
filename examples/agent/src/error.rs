//! The agent's error type: every variant names the input or object it is about.

use std::path::PathBuf;

/// Errors of the agent and its commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done ("read", "write state file", ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document did not parse or did not fit its resource type.
    #[error("{file}: document {document}: {field}: {message}")]
    Document {
        /// The input file (`-` for stdin).
        file: String,
        /// Index of the document in the file (0-based).
        document: usize,
        /// The field path inside the document (`.` when it is the document itself).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A document of a kind the agent does not read.
    #[error(
        "{file}: document {document}: unknown kind {kind:?} of apiVersion {api_version:?} \
         (known: projectcalico.org/v3 IPPool, IPAMConfiguration, IPReservation, Node, \
         FelixConfiguration, BGPConfiguration, BGPPeer, Tier, NetworkPolicy, GlobalNetworkPolicy, Profile; v1 Pod; \
         networking.k8s.io/v1 NetworkPolicy)"
    )]
    UnknownKind {
        /// The input file.
        file: String,
        /// Index of the document.
        document: usize,
        /// Its apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
    /// The datastore failed.
    #[error("datastore: {0}")]
    Store(#[from] calinet_ipam::StoreError),
    /// A name, MAC or mode broke one of the vocabulary's rules.
    #[error(transparent)]
    Vocabulary(#[from] calinet_types::Error),
    /// IP address management failed.
    #[error("IPAM: {0}")]
    Ipam(#[from] calinet_ipam::Error),
    /// Netlink programming failed.
    #[error("dataplane: {0}")]
    Route(#[from] calinet_route::Error),
    /// Encapsulation decisions could not be made.
    #[error("encapsulation: {0}")]
    Encap(#[from] calinet_encap::Error),
    /// WireGuard failed.
    #[error("WireGuard: {0}")]
    Wireguard(#[from] calinet_wg::Error),
    /// The BGP resources cannot be planned.
    #[error("BGP plan")]
    Bgp(#[source] calinet_bgp::Error),
    /// Running BIRD or talking to it failed.
    #[error("BIRD")]
    Bird(#[source] calinet_bgp::ControlError),
    /// Policy compilation or programming failed.
    #[error("policy: {0}")]
    Policy(#[from] calinet_policy::Error),
    /// A stored document could not be decoded.
    #[error("stored document {key}: {source}")]
    Decode {
        /// Its store key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A command was used wrongly, or the machine cannot do what was asked.
    #[error("{0}")]
    Usage(String),
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error's message with all its causes, for logs and CLI output.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}
