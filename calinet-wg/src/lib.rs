//! WireGuard between nodes of a pod network: the node's keys, the desired
//! device computed from node state, delta updates to a kernel or userspace
//! device, and the routing the device needs.
//!
//! Owns: the node's key pair (persisted 0600), pre-shared keys, the desired
//! device and its peers, delta planning and message splitting, the UAPI and
//! generic netlink encodings, `wg showconf` rendering, the device MTU.
//! Does not own: node discovery, block allocation or publishing the public key
//! (inputs from and outputs to the caller), creating the interface, or
//! programming routes (calinet-route does that from the calinet-types
//! `RouteSpec`s produced here).
//!
//! # Example: the seed article's four nodes
//!
//! ```
//! use std::collections::BTreeMap;
//! use calinet_wg::{compute_device, render_showconf, seed, DeviceSettings};
//!
//! let (nodes, private_key) = seed::nodes(); // k8s-m, k8s-w0, k8s-w1, k8s-w2
//! let computed = compute_device(
//!     &"k8s-m".parse()?,
//!     &private_key,
//!     &DeviceSettings::calico_v4(), // wireguard.cali, port 51820, fwmark 0x100000
//!     &nodes,
//!     &BTreeMap::new(), // no pre-shared keys
//! );
//! assert!(computed.warnings.is_empty());
//! let text = render_showconf(&computed.device);
//! assert!(text.starts_with("[Interface]\nListenPort = 51820\nFwMark = 0x100000\n"));
//! assert!(text.contains(
//!     "[Peer]\nPublicKey = rWepcpPRToZHtb563t5AKAhIHT69rMgTOIuCE8o3AgE=\n\
//!      AllowedIPs = 172.16.158.0/24, 172.16.158.7/32, 172.16.158.9/32\n\
//!      Endpoint = 192.168.10.101:51820\n"
//! ));
//! assert_eq!(text.matches("[Peer]").count(), 3);
//! // The private key shows only where asked for; Debug never shows it.
//! assert_eq!(format!("{private_key:?}"), "PrivateKey(<redacted>)");
//! # Ok::<(), calinet_wg::Error>(())
//! ```
//!
//! # Applying
//!
//! [`backend::sync`] reads the device through a [`backend::Backend`], plans a
//! [`DeviceDelta`] with [`plan_delta`] and applies it: only changed peers are
//! sent (update-only, allowed IPs replaced where they changed), unknown peers
//! are removed. Backends: [`backend::uapi::UapiBackend`] (wireguard-go,
//! boringtun), [`backend::kernel::KernelBackend`] (generic netlink, messages
//! split under a byte budget), [`backend::recording::RecordingBackend`] (tests).
//!
//! # Routing
//!
//! [`routing::device_mtu`] (host MTU - 60, - 80 on IPv6), the device's table
//! as calinet-types `RouteSpec`s (`throw` routes for nodes without a usable
//! key), the rule `not from all fwmark M/M lookup T` priority 99 as a
//! calinet-types `RuleSpec` (`routing::rule_spec`, programmed by
//! calinet-route's `reconcile_rules`), and `rule_decision`, which holds the
//! rule back until device and routes exist.
//!
//! # Features
//!
//! `tokio` (`backend::uapi::AsyncUapiBackend`), `proptest` (strategies and invariant
//! checkers in `proptest_support`).
//!
//! # Keys
//!
//! [`key::load_or_generate`] keeps the private key in a file created 0600 and
//! refuses one that group or others can read. Keys never appear in `Debug`,
//! errors or logs.

#![forbid(unsafe_code)]
pub mod backend;
pub mod delta;
mod error;
pub mod key;
pub mod model;
mod nl;
pub mod peers;
#[cfg(feature = "proptest")]
pub mod proptest_support;
pub mod routing;
pub mod seed;
pub mod showconf;

pub use calinet_types::RouteSpec;
pub use delta::{DeviceDelta, PeerUpdate, plan_delta, split};
pub use error::{Error, Result};
pub use key::{PresharedKey, PrivateKey, PublicKey};
pub use model::{
    DeviceConfig, DeviceSettings, Family, IfName, NodeName, NodeState, ObservedDevice, PeerConfig,
};
pub use peers::{Computed, Fallback, FallbackReason, Warning, compute_device, node_ranges};
pub use showconf::{normalized, parse_showconf, render_showconf};
