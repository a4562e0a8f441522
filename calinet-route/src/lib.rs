//! Netlink programming for pod networks.
//!
//! Owns: workload veth pairs into a pod's network namespace, addresses, sysctls,
//! a route-table reconciler that only touches routes it owns, neighbour and FDB
//! entries, and tunnel links.
//!
//! Does not own: deciding which routes or tunnels a node needs (see
//! `calinet-encap`), address allocation (see `calinet-ipam`).

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {}
