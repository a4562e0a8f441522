//! The calinet reference node agent: composes calinet-ipam, calinet-route,
//! calinet-encap, calinet-wg and calinet-policy into a node agent with a
//! calicoctl-like command line, and a lab that runs it on the seed article's
//! cluster in network namespaces.
//!
//! Layout (types -> pure core -> I/O edges):
//!
//! - [`resources`]: Calico and Kubernetes documents, parsed with errors naming
//!   file, document and field.
//! - [`datastore`]: `apply` as one transaction, and the [`datastore::ClusterView`]
//!   read through a [`datastore::ClusterSource`] (polling the store today).
//! - [`plan`]: pure planning: cluster view + local facts -> desired dataplane.
//! - [`dataplane`]: applies a plan through calinet-route (and calinet-wg,
//!   calinet-policy), counting every write.
//! - [`policy`]: policies, endpoints and natOutgoing compiled by calinet-policy
//!   into one nftables table.
//! - [`wireguard`]: keys, the wireguard-go device, peers and routing.
//! - [`agent`]: the `run` loop: IPAM, plan, apply, resync, backoff, metrics.
//! - [`show`]: `ipam show`, `get ippool`, `get workloadendpoint`, `node status`.
//! - [`lab`]: the seed cluster in namespaces with one agent per node.

pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod datastore;
pub mod error;
pub mod lab;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod resources;
pub mod show;
pub mod wireguard;

pub use error::{Error, Result};
