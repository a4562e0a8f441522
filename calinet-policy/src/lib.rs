//! Calico's selector language and network-policy model, natOutgoing masquerade,
//! and a compiler to an nftables ruleset programmed atomically.
//!
//! Owns: the selector language ([`selector`]) and an incremental label index
//! ([`index`]); Calico v3 and Kubernetes NetworkPolicy resources with validation
//! and conversion ([`model`]); the policy semantics ([`semantics`]); the compiler
//! ([`compile`]) to an nftables IR ([`ir`]) with a reference packet evaluator; and
//! two backends for the IR, an `nft` script ([`nft`]) and a netlink transaction
//! ([`netlink`], encoded directly; tested against libnftnl's encoding). Behind the `ipam` feature, calinet-ipam's
//! node-selector evaluator; behind `proptest`, strategies for downstream tests.
//!
//! Kubernetes NetworkPolicy is read as the API server defines it (its defaulting
//! of `policyTypes`, its validation, with errors naming the field), and an
//! endpoint's namespace identity (`projectcalico.org/namespace`, `pcns.*`, ...)
//! comes from its namespace only: a pod's own labels cannot forge it
//! ([`model::is_reserved_label`]).
//!
//! A workload's traffic to its own host meets the workload's egress policy and
//! then the endpoint-to-host action ([`compile::EndpointToHostAction`], Felix's
//! `DefaultEndpointToHostAction`, Drop by default), as Felix applies them.
//!
//! Does not own: address allocation, routing, or the workload interfaces
//! themselves (it only refers to them by name).
//!
//! ```
//! use calinet_policy::compile::{compile, Options, Pool};
//! use calinet_policy::ir::Hook;
//! use calinet_policy::model::{parse_yaml, AnyResource, Profile};
//! use calinet_policy::semantics::{Direction, Endpoint, Endpoints, Packet, PolicyModel, Verdict};
//!
//! // A Kubernetes NetworkPolicy: only app=web may reach the database, on 5432.
//! let mut resources = parse_yaml(r#"
//! apiVersion: networking.k8s.io/v1
//! kind: NetworkPolicy
//! metadata: {name: db, namespace: shop}
//! spec:
//!   podSelector: {matchLabels: {app: db}}
//!   ingress:
//!   - from: [{podSelector: {matchLabels: {app: web}}}]
//!     ports: [{port: 5432}]
//! "#)?;
//! resources.push(AnyResource::Profile(Profile::for_namespace("shop", &Default::default())));
//! let model = PolicyModel::build(&resources)?;
//!
//! let pod = |name: &str, ifname: &str, addr: &str, app: &str| Endpoint {
//!     name: format!("shop/{name}"),
//!     namespace: Some("shop".into()),
//!     local: true,
//!     interface: ifname.into(),
//!     addrs: vec![addr.parse().unwrap()],
//!     labels: [("app".to_string(), app.to_string())].into_iter().collect(),
//!     profiles: vec!["kns.shop".into()],
//!     named_ports: vec![],
//! };
//! let eps = Endpoints::new(&model, [
//!     pod("web", "caliweb", "10.0.0.1", "web"),
//!     pod("db", "calidb", "10.0.0.2", "db"),
//! ]);
//! let pools = [Pool { cidr: "10.0.0.0/16".parse()?, nat_outgoing: true }];
//! let ruleset = compile(&model, &eps, &pools, &Options::default())?;
//!
//! // The reference evaluator runs packets through the compiled tables.
//! let to_db = |port| Packet::tcp("10.0.0.1".parse().unwrap(), 40000, "10.0.0.2".parse().unwrap(), port);
//! assert_eq!(ruleset.evaluate(&to_db(5432), "calidb", Direction::Ingress)?, Verdict::Allow);
//! assert_eq!(ruleset.evaluate(&to_db(22), "calidb", Direction::Ingress)?, Verdict::Deny);
//! // ... and agrees with the model's own semantics.
//! assert_eq!(model.evaluate(&eps, "shop/db", Direction::Ingress, &to_db(22))?, Verdict::Deny);
//!
//! // Traffic from the pool to the outside is masqueraded.
//! let out = Packet::tcp("10.0.0.1".parse()?, 40000, "203.0.113.7".parse()?, 443);
//! assert_eq!(ruleset.run_hook(Hook::Postrouting, &out, "caliweb", "eth0")?,
//!            calinet_policy::ir::HookResult::Masquerade);
//!
//! // The same IR as an nft script (or as a netlink batch, which needs root:
//! // `netlink::NetlinkBackend::new(netlink::NetlinkSocket::open()?).apply(&ruleset)`).
//! let script = calinet_policy::nft::render_full(&ruleset);
//! assert!(script.contains("masquerade fully-random"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The only unsafe code is the libnftnl test oracle (test builds only).
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]
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
    #[error("{resource}: {field}: invalid selector")]
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
    #[error("YAML document {document} did not decode")]
    Yaml {
        /// Index of the document in the stream (0-based).
        document: usize,
        /// The decoder's error (with line and column), boxed so that the YAML
        /// library's type is not part of this API.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
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

#[cfg(feature = "ipam")]
pub mod ipam_selector;
