//! The crate's one error type.

/// A value broke one of the vocabulary's rules. Every variant names the input
/// and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An interface name broke one of the kernel's rules.
    #[error("invalid interface name {name:?}: {rule}")]
    InvalidIfName {
        /// The rejected name.
        name: String,
        /// The rule it broke.
        rule: &'static str,
    },
    /// A node name broke Calico's naming rules.
    #[error("invalid node name {name:?}: {rule}")]
    InvalidNodeName {
        /// The rejected name.
        name: String,
        /// The rule it broke.
        rule: &'static str,
    },
    /// A MAC address could not be parsed.
    #[error("invalid MAC address {mac:?}: {rule}")]
    InvalidMac {
        /// The rejected input.
        mac: String,
        /// The rule it broke.
        rule: &'static str,
    },
    /// An encapsulation mode is not one of Calico's spellings.
    #[error("invalid encapsulation mode {mode:?}: must be Never, Always or CrossSubnet")]
    InvalidEncapMode {
        /// The rejected input.
        mode: String,
    },
    /// A route type name could not be parsed.
    #[error(
        "invalid route type {input:?}: must be unicast, blackhole, unreachable, prohibit or throw"
    )]
    InvalidRouteType {
        /// The rejected input.
        input: String,
    },
    /// A route spec is inconsistent.
    #[error("invalid route {route}: {rule}")]
    InvalidRoute {
        /// The route, printed like `ip route`.
        route: String,
        /// The rule it broke.
        rule: String,
    },
    /// A routing rule spec is inconsistent.
    #[error("invalid rule {entry}: {rule}")]
    InvalidRule {
        /// The rule, printed like `ip rule`.
        entry: String,
        /// The rule it broke.
        rule: String,
    },
    /// A link or workload spec is inconsistent.
    #[error("invalid link spec {name}: {rule}")]
    InvalidLink {
        /// The link name.
        name: String,
        /// The rule it broke.
        rule: String,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
