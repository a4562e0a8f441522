//! Block-affinity IP address management for pod networks, compatible with
//! Project Calico's IPAM model.
//!
//! Owns: IP pools cut into blocks, block claims (affinities) by nodes, address
//! allocation from a per-block bitmap, handles, reservations, tunnel addresses,
//! and the datastores that hold this state.
//!
//! Does not own: evaluating node selectors (the caller supplies an evaluator),
//! routes or any other kernel state.

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}
