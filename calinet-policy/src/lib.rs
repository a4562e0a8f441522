//! Calico's selector language and network-policy model, natOutgoing masquerade,
//! and a compiler to an nftables ruleset programmed atomically.
//!
//! Owns: selectors, policy resources, the compiled IR and its nftables backends.
//! Does not own: address allocation or routing.

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}
