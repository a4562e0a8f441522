//! calinet's CNI plugin, built from the crates: `calinet` (like Calico's
//! `calico` plugin: IPAM through calinet-ipam, the workload's veth, addresses
//! and routes through calinet-route) and `calinet-ipam` (like `calico-ipam`:
//! addresses only, for use under other plugins such as the reference `ptp`).
//!
//! Owns: the CNI protocol (CNI 1.0 ADD, DEL, CHECK, VERSION; 1.1 GC and
//! STATUS; results and errors as the specification's JSON), the network
//! configuration and its validation, the mapping of errors to CNI codes,
//! and the workload identity (handle, interface names) derived from them.
//!
//! Does not own: the attach steps (allocate, plumb, roll back, release:
//! calinet-attach, shared with the node agent), address allocation
//! (calinet-ipam), netlink (calinet-route), routes to other nodes or policy
//! (the node agent).
//!
//! Shape: [`config`], [`env`](mod@env) and [`result`] are types; [`plugin`] is the core,
//! written against two edge traits ([`plugin::AddressManager`],
//! [`plugin::Plumber`]) and running calinet-attach for ADD and DEL; [`edge`]
//! has the real edges; [`run`] is the process edge the binaries call.
//!
//! # Example: the IPAM-only ADD and DEL on an in-memory store
//!
//! ```
//! use calinet_cni::{config::Config, edge::StoreIpam, env::Env, plugin::{self, Attach}};
//! use calinet_ipam::MemStore;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cfg = Config::parse(br#"{
//!     "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ptp",
//!     "ipam": {"type": "calinet-ipam", "ipv4_pools": ["172.16.0.0/24"], "gateway": "169.254.1.1"}
//! }"#)?;
//! let vars = |cmd: &'static str| move |k: &str| match k {
//!     "CNI_COMMAND" => Some(cmd.to_string()),
//!     "CNI_CONTAINERID" => Some("c0ffee".to_string()),
//!     "CNI_NETNS" => Some("/run/netns/pod1".to_string()),
//!     "CNI_IFNAME" => Some("eth0".to_string()),
//!     "CNI_PATH" => Some("/usr/lib/cni".to_string()),
//!     _ => None,
//! };
//! let mut ipam = StoreIpam::new(MemStore::new(), None);
//! let node = "node-1".parse()?;
//! let result = plugin::add(&cfg, &Env::from_lookup(vars("ADD"))?, &node, &mut ipam, Attach::IpamOnly)?;
//! println!("{}", serde_json::to_string(&result)?);
//! let addr = result.ips[0].address;
//! assert_eq!(addr.prefix_len(), 26); // the block's prefix (blockSize 26)
//! assert!("172.16.0.0/24".parse::<ipnet::IpNet>()?.contains(&addr.addr()));
//!
//! plugin::del(&cfg, &Env::from_lookup(vars("DEL"))?, &mut ipam, Attach::IpamOnly)?;
//! # Ok(()) }
//! ```

pub mod config;
pub mod edge;
pub mod env;
pub mod error;
pub mod plugin;
pub mod result;
pub mod run;
mod sqlite_memory;
pub mod version;

pub use error::{Error, Result};
