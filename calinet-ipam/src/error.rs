//! The crate's error type.

use std::net::IpAddr;

use crate::store::StoreError;

/// Errors of this crate. Every variant names the input or object it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node name, family or mode broke one of the vocabulary's rules.
    #[error(transparent)]
    Vocabulary(#[from] calinet_types::Error),
    /// A name (node, handle, pool, ...) broke a syntax rule.
    #[error("invalid {kind} {value:?}: {rule}")]
    InvalidName {
        /// What kind of name (e.g. "node name").
        kind: &'static str,
        /// The rejected input.
        value: String,
        /// The rule it broke.
        rule: &'static str,
    },
    /// A CIDR or address broke a syntax or range rule.
    #[error("invalid CIDR {value:?} in {context}: {rule}")]
    InvalidCidr {
        /// Where the CIDR came from (e.g. "IPPool default-ipv4/cidr").
        context: String,
        /// The rejected input.
        value: String,
        /// The rule it broke.
        rule: String,
    },
    /// An IPPool broke a validation rule.
    #[error("invalid IPPool {pool:?}: {rule}")]
    InvalidPool {
        /// The pool's name.
        pool: String,
        /// The rule it broke.
        rule: String,
    },
    /// Two pools overlap.
    #[error("IPPool {a:?} ({a_cidr}) overlaps IPPool {b:?} ({b_cidr})")]
    OverlappingPools {
        /// First pool name.
        a: String,
        /// First pool CIDR.
        a_cidr: ipnet::IpNet,
        /// Second pool name.
        b: String,
        /// Second pool CIDR.
        b_cidr: ipnet::IpNet,
    },
    /// The IPAMConfiguration broke a cross-field rule.
    #[error("invalid IPAMConfiguration: {rule}")]
    InvalidConfig {
        /// The rule it broke.
        rule: String,
    },
    /// An IPReservation broke a rule.
    #[error("invalid IPReservation {name:?}: {rule}")]
    InvalidReservation {
        /// The reservation's name.
        name: String,
        /// The rule it broke.
        rule: String,
    },
    /// A stored or supplied JSON document could not be decoded.
    #[error("cannot decode {what} at {key:?}")]
    Decode {
        /// What was being decoded (e.g. "IPAMBlock").
        what: &'static str,
        /// The store key (or "<input>").
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored block is internally inconsistent.
    #[error("corrupt IPAMBlock {block}: {reason}")]
    CorruptBlock {
        /// The block CIDR.
        block: ipnet::IpNet,
        /// What is inconsistent.
        reason: String,
    },
    /// The datastore failed.
    #[error("datastore error")]
    Store(#[from] StoreError),
    /// Compare-and-swap writes kept conflicting with other writers.
    #[error(
        "{operation} gave up after {attempts} conflicting attempts (last conflict on {keys:?})"
    )]
    Conflict {
        /// The operation (e.g. "auto_assign for node n1").
        operation: String,
        /// How many attempts were made.
        attempts: u32,
        /// The keys of the last conflicting transaction.
        keys: Vec<String>,
    },
    /// No enabled pool fits the request.
    #[error("no IPPool usable for {family} {ip_use:?} addresses on node {node}")]
    NoPool {
        /// The requesting node.
        node: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The intended use.
        ip_use: crate::types::AllowedUse,
    },
    /// Fewer addresses than requested were available; nothing was kept.
    #[error(
        "only {available} of {requested} {family} addresses available for handle {handle} on node {node}"
    )]
    Exhausted {
        /// The requesting node.
        node: String,
        /// The handle.
        handle: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// Requested count.
        requested: usize,
        /// How many could be found (and were released again).
        available: usize,
    },
    /// A node selector could not be evaluated.
    #[error("node selector {selector:?} of IPPool {pool:?} cannot be evaluated: {reason}")]
    Selector {
        /// The pool.
        pool: String,
        /// The selector text.
        selector: String,
        /// The evaluator's message.
        reason: String,
    },
    /// The address is not inside any configured pool.
    #[error("address {addr} is not in any IPPool")]
    NotInPool {
        /// The address.
        addr: IpAddr,
    },
    /// The address is already allocated to another handle.
    #[error("address {addr} is already allocated to handle {handle:?}")]
    AddressInUse {
        /// The address.
        addr: IpAddr,
        /// Its current handle.
        handle: Option<String>,
    },
    /// The address is reserved (IPReservation or Windows reserved).
    #[error("address {addr} is reserved")]
    AddressReserved {
        /// The address.
        addr: IpAddr,
    },
    /// A release named a handle that does not own the address.
    #[error("address {addr} belongs to handle {actual:?}, not {expected:?}")]
    HandleMismatch {
        /// The address.
        addr: IpAddr,
        /// The handle given by the caller.
        expected: String,
        /// The handle in the block.
        actual: Option<String>,
    },
    /// A release named a sequence number that does not match the allocation.
    #[error("address {addr} has allocation sequence number {actual:?}, not {expected}")]
    SequenceMismatch {
        /// The address.
        addr: IpAddr,
        /// The number given by the caller.
        expected: u64,
        /// The number in the block.
        actual: Option<u64>,
    },
    /// No block can be claimed for a specific-address assignment.
    #[error("block {block} for address {addr} is affine to {owner:?} and strictAffinity is on")]
    StrictAffinity {
        /// The address.
        addr: IpAddr,
        /// The block.
        block: ipnet::IpNet,
        /// The block's affinity.
        owner: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
