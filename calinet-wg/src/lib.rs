//! WireGuard between nodes of a pod network: keys, peers computed from node
//! state, and delta updates to a kernel or userspace device.
//!
//! Owns: the node's key pair, the desired device and its peers, applying deltas.
//! Does not own: node discovery or block allocation (inputs from the caller).

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}
