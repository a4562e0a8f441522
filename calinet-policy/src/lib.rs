//! Calico's selector language and network-policy model, natOutgoing masquerade,
//! and a compiler to an nftables ruleset programmed atomically.
//!
//! Owns: selectors, policy resources, the compiled IR and its nftables backends.
//! Does not own: address allocation or routing.

pub mod index;
pub mod selector;

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
}

#[cfg(feature = "proptest")]
pub mod proptest_support;
