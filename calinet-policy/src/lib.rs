//! Calico's selector language and network-policy model, natOutgoing masquerade,
//! and a compiler to an nftables ruleset programmed atomically.
//!
//! Owns: selectors, policy resources, the compiled IR and its nftables backends.
//! Does not own: address allocation or routing.

pub mod compile;
pub mod index;
pub mod ir;
pub mod model;
pub mod netlink;
pub mod nft;
pub mod selector;
pub mod semantics;

pub use selector::{Labels, ParseError, Selector};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A selector in a resource did not parse.
    #[error("{resource}: {field}: {source}")]
    Selector {
        /// The resource (kind/name) holding the selector.
        resource: String,
        /// The field path of the selector inside the resource.
        field: String,
        /// The parse error, with position and expectation.
        #[source]
        source: ParseError,
    },
    /// A resource broke a validation rule.
    #[error("{resource}: {field}: {reason}")]
    Invalid {
        /// The resource (kind and name).
        resource: String,
        /// The offending field path.
        field: String,
        /// The rule it broke.
        reason: String,
    },
    /// An endpoint cannot be compiled.
    #[error("endpoint {endpoint}: {reason}")]
    Endpoint {
        /// The endpoint's name.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// An `nft` command failed.
    #[error("{command}: {stderr}")]
    Nft {
        /// The command line.
        command: String,
        /// What nft printed (or the spawn error).
        stderr: String,
    },
    /// A netlink operation failed.
    #[error("{operation}: errno {errno}: {detail}")]
    Netlink {
        /// What was being done (and which message of a transaction failed).
        operation: String,
        /// The errno (0 when not from the kernel).
        errno: i32,
        /// The error text.
        detail: String,
    },
    /// A YAML document did not decode.
    #[error("YAML document {document}: {source}")]
    Yaml {
        /// Index of the document in the stream (0-based).
        document: usize,
        /// The decoder's error (with line and column).
        #[source]
        source: serde_yaml::Error,
    },
    /// A YAML document is of a kind calinet does not read.
    #[error("YAML document {document}: unsupported resource {api_version} {kind}")]
    UnknownKind {
        /// Index of the document.
        document: usize,
        /// Its apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
}

#[cfg(feature = "proptest")]
pub mod proptest_support;
