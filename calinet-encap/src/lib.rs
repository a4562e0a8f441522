//! Encapsulation decisions for pod networks: for each remote node, IPIP, VXLAN,
//! CrossSubnet or a direct route; the tunnel devices a node needs; and MTUs.
//!
//! Owns: pure decisions as values. Does not own: any I/O (applying the decisions
//! is `calinet-route`'s job).

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}
