//! calinet's network-namespace test lab (dev-only, not published).
//!
//! Every kernel test of calinet builds its piece of network here: underlay
//! segments (bridges in an underlay namespace that also routes between them),
//! nodes (a namespace with an uplink, an address and a default route), pods (an
//! empty namespace handed to the code under test), helper processes
//! (`wireguard-go`, `etcd`), and observation: commands in a namespace, typed
//! `ip -j` output, ping and TCP probes, `tcpdump` captures.
//!
//! An `etcd` runs on the root namespace's loopback ([`Lab::etcd`], for code
//! the test runs itself) or on a lab namespace's ([`Lab::etcd_in`], for code
//! exec'd inside that namespace, such as a CNI plugin on a node).
//!
//! The lab deliberately uses the `ip`, `bridge`, `sysctl` and `tcpdump`
//! commands rather than netlink: it is the independent oracle that calinet's
//! netlink code is checked against.
//!
//! Names are unique per test (`cl<pid>x<n>-<role>`), so tests run in
//! parallel; a [`Lab`] removes its namespaces and processes when dropped, also
//! when the test panics, and a new run sweeps what a killed run left.
//!
//! Tests that cannot run here skip *visibly*:
//!
//! ```
//! # fn main() {}
//! # fn test() {
//! testlab::require!(testlab::Feature::Vxlan); // prints "SKIPPED: ..." and returns
//! let lab = testlab::Lab::new("my_test").unwrap();
//! let seg = lab.segment("198.51.100.0/24").unwrap();
//! let n1 = lab.node("n1", &seg, "198.51.100.10".parse().unwrap()).unwrap();
//! let n2 = lab.node("n2", &seg, "198.51.100.11".parse().unwrap()).unwrap();
//! assert!(n1.ping(n2.address().into(), std::time::Duration::from_secs(2)));
//! # }
//! ```

mod capture;
pub mod cmd;
mod error;
mod features;
pub mod ipjson;
mod lab;
mod netns;
mod process;
pub mod seed;
pub mod skip;

pub use capture::{Capture, Packets};
pub use error::{Error, Result};
pub use features::Feature;
pub use ipjson::{Addr, FdbEntry, Link, Neighbour, Route};
pub use lab::{Lab, NETNS_PREFIX, Node, Segment, leftover_namespaces};
pub use netns::{Netns, NetnsThread, TcpServer};
pub use process::{
    DetachedChild, DetachedCommand, Etcd, Process, Signal, cmdline, is_alive, pids_with_cmdline,
    read_pid_file, reap, signal, signal_group, stop_pid, wait_for,
};
