//! The crate's one error type.

use std::net::IpAddr;

use ipnet::IpNet;

use calinet_types::{Family, NodeName};

/// Everything that can be wrong with an input. Each variant names the input
/// (pool, block, node, device) and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name, MAC or mode broke one of the vocabulary's rules.
    #[error(transparent)]
    Vocabulary(#[from] calinet_types::Error),
    /// A VTEP MAC stated for a node is multicast, which a VXLAN FDB cannot use.
    #[error("node {node}: VTEP MAC {mac} is a multicast address; a VTEP needs a unicast MAC")]
    MulticastVtepMac {
        /// The node that states it.
        node: NodeName,
        /// The stated MAC.
        mac: String,
    },
    /// A pool enables IPIP and VXLAN at the same time (Calico rejects this too).
    #[error("pool {pool} ({cidr}): ipipMode and vxlanMode are both enabled; at most one may be")]
    BothEncapsEnabled {
        /// Pool name.
        pool: String,
        /// Pool CIDR.
        cidr: IpNet,
    },
    /// An IPv6 pool with IPIP enabled (IPIP carries only IPv4).
    #[error(
        "pool {pool} ({cidr}): ipipMode must be Never on an IPv6 pool (IPIP carries IPv4 only)"
    )]
    IpipOnIpv6 {
        /// Pool name.
        pool: String,
        /// Pool CIDR.
        cidr: IpNet,
    },
    /// Two pools share addresses.
    #[error("pools {a} ({a_cidr}) and {b} ({b_cidr}) overlap; pools must be disjoint")]
    OverlappingPools {
        /// First pool's name.
        a: String,
        /// First pool's CIDR.
        a_cidr: IpNet,
        /// Second pool's name.
        b: String,
        /// Second pool's CIDR.
        b_cidr: IpNet,
    },
    /// Two blocks share addresses.
    #[error("blocks {a} and {b} overlap; blocks must be disjoint")]
    OverlappingBlocks {
        /// First block.
        a: IpNet,
        /// Second block.
        b: IpNet,
    },
    /// A block is partly inside and partly outside a pool.
    #[error("block {block} is not contained in pool {pool} ({cidr}) although it overlaps it")]
    BlockStraddlesPool {
        /// The block.
        block: IpNet,
        /// The pool's name.
        pool: String,
        /// The pool's CIDR.
        cidr: IpNet,
    },
    /// Two nodes (local or remote) share a name.
    #[error("node {node} is listed more than once")]
    DuplicateNode {
        /// The repeated name.
        node: NodeName,
    },
    /// Two nodes claim the same address (node or tunnel address).
    #[error(
        "address {addr} is both {first_what} of node {first} and {second_what} of node {second}"
    )]
    DuplicateAddress {
        /// The address.
        addr: IpAddr,
        /// The first node claiming it.
        first: NodeName,
        /// What it is on the first node ("IPv4 node address", ...).
        first_what: &'static str,
        /// The second node claiming it.
        second: NodeName,
        /// What it is on the second node.
        second_what: &'static str,
    },
    /// Two nodes have the same VTEP MAC for one family (stated or derived):
    /// their FDB entries would collide.
    #[error("nodes {first} and {second} share the {family} VTEP MAC {mac}")]
    DuplicateVtepMac {
        /// The MAC, as text.
        mac: String,
        /// The family of the VXLAN device.
        family: Family,
        /// One node.
        first: NodeName,
        /// The other.
        second: NodeName,
    },
    /// A block or borrowed address refers to a node that is not in the input.
    #[error("{what} refers to node {node}, which is neither the local node nor a remote node")]
    UnknownNode {
        /// The block or address that names the node.
        what: String,
        /// The unknown node.
        node: NodeName,
    },
    /// A borrowed address lies in no block.
    #[error("borrowed address {addr} (borrowed by {node}) lies in no block")]
    BorrowedOutsideBlocks {
        /// The address.
        addr: IpAddr,
        /// The node said to borrow it.
        node: NodeName,
    },
    /// A "borrowed" address is in a block the borrower owns itself.
    #[error("address {addr} is listed as borrowed by {node}, but {node} owns its block {block}")]
    BorrowedFromSelf {
        /// The address.
        addr: IpAddr,
        /// The node.
        node: NodeName,
        /// The block holding it.
        block: IpNet,
    },
    /// The same address is listed as borrowed twice.
    #[error("borrowed address {addr} is listed more than once")]
    DuplicateBorrowed {
        /// The address.
        addr: IpAddr,
    },
    /// A node lacks the address a path or device needs.
    #[error("node {node} has no {family} {what}, which the {purpose} needs")]
    NoUsableAddress {
        /// The node.
        node: NodeName,
        /// The family needed.
        family: Family,
        /// Which address is missing ("node address", "VXLAN tunnel address", ...).
        what: &'static str,
        /// What needed it (e.g. "VXLAN path to block 172.16.158.0/24").
        purpose: String,
    },
    /// The host MTU leaves too little room once the encapsulation overhead is taken off.
    #[error(
        "host MTU {host_mtu} minus the largest overhead in use ({overhead}, {cause}) is below the minimum pod MTU {min}"
    )]
    MtuTooSmall {
        /// The host MTU given.
        host_mtu: u32,
        /// The largest overhead in use.
        overhead: u32,
        /// Which encapsulation causes it.
        cause: &'static str,
        /// The minimum pod MTU (68 for IPv4 only, 1280 once IPv6 pools exist).
        min: u32,
    },
}
