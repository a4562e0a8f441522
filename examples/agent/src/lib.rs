//! The calinet reference node agent: composes calinet-ipam, calinet-route,
//! calinet-encap, calinet-wg, calinet-policy and calinet-bgp into a node agent with a
//! calicoctl-like command line. The lab that runs it on the seed article's
//! cluster in network namespaces is its own program, `calinet-lab`
//! (`examples/lab`), which uses [`datastore`] and [`show`] from here.
//!
//! Owns: the agent loop and the calicoctl-like commands. Does not own
//! any networking logic of its own: IPAM, paths, netlink, WireGuard and policy
//! are the calinet crates'.
//!
//! ```
//! use calinet_agent::{datastore, resources, show};
//!
//! let store = calinet_ipam::MemStore::new();
//! let yaml = "apiVersion: projectcalico.org/v3\nkind: IPPool\n\
//!             metadata: {name: default-ipv4-ippool}\n\
//!             spec: {cidr: 172.16.0.0/16, blockSize: 24, vxlanMode: Always, natOutgoing: true}\n";
//! let docs = resources::parse_documents("pool.yaml", yaml)?;
//! datastore::apply(&store, &docs)?; // one transaction: all documents or none
//! let view = datastore::read_view(&store)?;
//! let table = show::get_ippool(&view, show::Output::Wide)?;
//! print!("{table}");
//! let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
//! assert_eq!(row, ["default-ipv4-ippool", "172.16.0.0/16", "true", "Never", "Always", "false", "false", "all()"]);
//! # Ok::<(), calinet_agent::Error>(())
//! ```
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
//! - [`bgp`]: BGP on or off, calinet-bgp's plan from the cluster view, the
//!   BIRD the agent runs, and which routes are BIRD's.
//! - [`agent`]: the `run` loop: IPAM, plan, apply, resync, backoff, metrics.
//! - [`metrics`], [`http`]: Felix-compatible Prometheus metrics, and the
//!   hyper servers for `/metrics`, `/liveness` and `/readiness`.
//! - [`prometheus`]: a Prometheus server scraping agents (config and launch).
//! - [`show`]: `ipam show`, `get ippool`, `get workloadendpoint`, `node status`.

#![forbid(unsafe_code)]
pub mod agent;
pub mod bgp;
pub mod cli;
pub mod dataplane;
pub mod datastore;
pub mod error;
pub mod http;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod prometheus;
pub mod resources;
pub mod show;
pub mod wireguard;

pub use error::{Error, Result};
