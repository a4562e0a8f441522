//! The lab: uniquely named namespaces, an underlay with segments and a router,
//! nodes and pods, helper processes, and teardown on drop (also on panic).

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};

use ipnet::Ipv4Net;

use crate::netns::Netns;
use crate::process::{Etcd, Process};
use crate::{Error, Result, cmd};

/// Namespaces of every lab start with this, followed by the owning process id,
/// so a later run can sweep what a killed run left behind.
pub const NETNS_PREFIX: &str = "cl";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// One test's private piece of the network. Everything it creates is named
/// `cl<pid>x<n>-<role>` and removed when the `Lab` is dropped.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    namespaces: Vec<Netns>,
    underlay: Option<Netns>,
    segments: u32,
    ports: u32,
    processes: Vec<Arc<Mutex<Option<std::process::Child>>>>,
}

/// A layer-2 segment: a bridge in the underlay namespace, with the router's
/// address (the first host of the subnet) on it.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The bridge's name inside the underlay namespace.
    pub bridge: String,
    /// The segment's subnet.
    pub net: Ipv4Net,
    /// The router's address on this segment (every node's default gateway).
    pub router: Ipv4Addr,
}

/// A node: a namespace with an uplink `eth0` on a segment, an address, a default
/// route via the router, and IP forwarding on. Derefs to its [`Netns`].
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name as the test knows it (`k8s-w1`).
    pub name: String,
    /// The namespace.
    pub ns: Netns,
    /// The uplink's address with the segment's prefix length.
    pub addr: ipnet::Ipv4Net,
    /// The uplink interface (`eth0`).
    pub uplink: String,
    /// The segment the node is on.
    pub segment: Segment,
}

impl Node {
    /// The node's address.
    pub fn address(&self) -> Ipv4Addr {
        self.addr.addr()
    }
}

impl Deref for Node {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

impl Lab {
    /// A new, empty lab. Needs root. `test` is only used in messages.
    pub fn new(test: &str) -> Result<Self> {
        if !crate::skip::is_root() {
            return Err(Error::Invalid(format!(
                "lab for {test}: network namespaces need root"
            )));
        }
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        let prefix = format!(
            "{NETNS_PREFIX}{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        );
        Ok(Self {
            prefix,
            state: Mutex::default(),
        })
    }

    /// The prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock must not stop teardown.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new namespace with `lo` up, named `<prefix>-<role>`.
    pub fn netns(&self, role: &str) -> Result<Netns> {
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(Error::Invalid(format!(
                "namespace role {role:?}: use ASCII letters, digits and '-'"
            )));
        }
        let ns = Netns::new(format!("{}-{role}", self.prefix));
        cmd::run("ip", &["netns", "add", ns.name()])?;
        self.state().namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Every namespace this lab created so far.
    pub fn namespaces(&self) -> Vec<Netns> {
        self.state().namespaces.clone()
    }

    /// The underlay namespace, which holds the segments' bridges and routes
    /// between them (it is the router). Created on first use.
    pub fn router(&self) -> Result<Netns> {
        if let Some(ns) = self.state().underlay.clone() {
            return Ok(ns);
        }
        let ns = self.netns("underlay")?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        self.state().underlay = Some(ns.clone());
        Ok(ns)
    }

    /// A new segment for `net` (e.g. `198.51.100.0/24`); the router takes its
    /// first host address.
    pub fn segment(&self, net: &str) -> Result<Segment> {
        let net: Ipv4Net = net
            .parse()
            .map_err(|e| Error::Invalid(format!("segment {net:?}: {e}")))?;
        let net = net.trunc();
        let router_addr = net
            .hosts()
            .next()
            .ok_or_else(|| Error::Invalid(format!("segment {net}: no host addresses")))?;
        let underlay = self.router()?;
        let bridge = {
            let mut state = self.state();
            state.segments += 1;
            format!("br{}", state.segments - 1)
        };
        underlay.ip(&["link", "add", &bridge, "type", "bridge"])?;
        underlay.ip(&["link", "set", &bridge, "up"])?;
        underlay.ip(&[
            "addr",
            "add",
            &format!("{router_addr}/{}", net.prefix_len()),
            "dev",
            &bridge,
        ])?;
        Ok(Segment {
            bridge,
            net,
            router: router_addr,
        })
    }

    /// A node named `name` on `segment` with address `addr`.
    pub fn node(&self, name: &str, segment: &Segment, addr: Ipv4Addr) -> Result<Node> {
        if !segment.net.contains(&addr) || addr == segment.router {
            return Err(Error::Invalid(format!(
                "node {name}: address {addr} is not a free host of segment {}",
                segment.net
            )));
        }
        let ns = self.netns(name)?;
        let underlay = self.router()?;
        let port = {
            let mut state = self.state();
            state.ports += 1;
            format!("u{}", state.ports - 1)
        };
        // Created directly in both namespaces: no name ever lives in the root
        // namespace, so parallel tests cannot collide.
        underlay.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        underlay.ip(&["link", "set", &port, "master", &segment.bridge])?;
        underlay.ip(&["link", "set", &port, "up"])?;
        let cidr = Ipv4Net::new(addr, segment.net.prefix_len())
            .map_err(|e| Error::Invalid(e.to_string()))?;
        ns.ip(&["addr", "add", &cidr.to_string(), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &segment.router.to_string(),
            "dev",
            "eth0",
        ])?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(Node {
            name: name.to_owned(),
            ns,
            addr: cidr,
            uplink: "eth0".to_owned(),
            segment: segment.clone(),
        })
    }

    /// An empty pod namespace (only `lo`, up), to hand to the code under test.
    pub fn pod(&self, name: &str) -> Result<Netns> {
        self.netns(name)
    }

    /// Plumbs `pod` into `node` by hand, the way Calico does (the lab's oracle
    /// for calinet-route): veth `host_if` in the node with MAC
    /// `ee:ee:ee:ee:ee:ee`, proxy ARP and the host route `addr/32`; `eth0` in the
    /// pod with `addr/32`, the `169.254.1.1` link route and the default route.
    pub fn plumb_pod(
        &self,
        node: &Netns,
        pod: &Netns,
        host_if: &str,
        addr: Ipv4Addr,
    ) -> Result<()> {
        node.ip(&[
            "link",
            "add",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])?;
        node.ip(&["link", "set", host_if, "address", "ee:ee:ee:ee:ee:ee", "up"])?;
        node.sysctl(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1")?;
        node.sysctl(&format!("net.ipv4.neigh.{host_if}.proxy_delay"), "0")?;
        node.sysctl(&format!("net.ipv4.conf.{host_if}.forwarding"), "1")?;
        node.ip(&[
            "route",
            "add",
            &format!("{addr}/32"),
            "dev",
            host_if,
            "scope",
            "link",
        ])?;
        pod.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"])?;
        pod.ip(&["link", "set", "eth0", "up"])?;
        pod.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    /// Starts `wireguard-go -f <device>` inside `ns`. The control socket is
    /// `/var/run/wireguard/<device>.sock`, shared by every namespace, so give
    /// each device a name unique on the machine (e.g. from [`Lab::prefix`]).
    pub fn wireguard_go(&self, ns: &Netns, device: &str) -> Result<Process> {
        if device.len() > 15 {
            return Err(Error::Invalid(format!(
                "WireGuard device {device:?}: interface names are at most 15 bytes"
            )));
        }
        let socket = std::path::PathBuf::from(format!("/var/run/wireguard/{device}.sock"));
        let process = Process::spawn(
            "ip",
            &["netns", "exec", ns.name(), "wireguard-go", "-f", device],
            &[("LOG_LEVEL", "error")],
        )?;
        self.state().processes.push(process.shared());
        // Ready once both the device and its control socket exist.
        crate::process::wait_for(
            &format!("wireguard-go {device} in {}", ns.name()),
            std::time::Duration::from_secs(10),
            || Ok(socket.exists() && ns.link(device)?.is_some()),
        )?;
        Ok(process)
    }

    /// Starts an `etcd` on free loopback ports of the root namespace, with a
    /// temporary data directory. Reachable from processes the test runs in
    /// its own namespace, not from inside lab namespaces.
    pub fn etcd(&self) -> Result<Etcd> {
        self.start_etcd(None)
    }

    /// Starts an `etcd` inside `ns` (a namespace of this lab), on free ports
    /// of that namespace's loopback: for code under test that runs in `ns`
    /// (a CNI plugin exec'd in a node's namespace). Query it with
    /// [`Etcd::ctl`] or from [`Netns::enter`]. Stopped before the lab deletes
    /// its namespaces.
    pub fn etcd_in(&self, ns: &Netns) -> Result<Etcd> {
        if !self.state().namespaces.contains(ns) {
            return Err(Error::Invalid(format!(
                "etcd in netns {}: not a namespace of lab {} (the lab must own the \
                 namespace so that it stops etcd before deleting it)",
                ns.name(),
                self.prefix
            )));
        }
        self.start_etcd(Some(ns.clone()))
    }

    fn start_etcd(&self, ns: Option<Netns>) -> Result<Etcd> {
        let etcd = Etcd::start_new(ns)?;
        self.state().processes.push(etcd.shared());
        Ok(etcd)
    }

    /// Adds a route on the router (the underlay namespace), e.g. for pod blocks.
    pub fn router_route(&self, dst: &str, via: IpAddr) -> Result<()> {
        self.router()?
            .ip(&["route", "replace", dst, "via", &via.to_string()])
            .map(|_| ())
    }

    /// Removes every namespace and process now (also done on drop).
    pub fn teardown(&self) {
        let (processes, namespaces) = {
            let mut state = self.state();
            state.underlay = None;
            (
                std::mem::take(&mut state.processes),
                std::mem::take(&mut state.namespaces),
            )
        };
        for process in processes {
            crate::process::kill_shared(&process);
        }
        for ns in namespaces.iter().rev() {
            if let Err(e) = cmd::run("ip", &["netns", "del", ns.name()]) {
                eprintln!("testlab: teardown of {}: {e}", ns.name());
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Namespaces of this lab family still present on the machine (any process).
pub fn leftover_namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| owner_pid(n).is_some())
        .collect()
}

/// The pid encoded in a lab namespace name (`cl<pid>x<n>-...` or `clprobe<pid>`).
fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let rest = rest.strip_prefix("probe").unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = &rest[digits.len()..];
    if digits.is_empty() || !(after.is_empty() || after.starts_with('x')) {
        return None;
    }
    digits.parse().ok()
}

/// Deletes namespaces left by lab processes that no longer run (a test binary
/// killed before its drops ran).
fn sweep_stale() {
    for name in leftover_namespaces() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        // SAFETY: signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = cmd::run("ip", &["netns", "del", &name]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_lab_names_only() {
        assert_eq!(owner_pid("cl1234x0-node1"), Some(1234));
        assert_eq!(owner_pid("clprobe77"), Some(77));
        assert_eq!(owner_pid("client"), None);
        assert_eq!(owner_pid("cl12ab"), None);
        assert_eq!(owner_pid("other"), None);
    }
}
