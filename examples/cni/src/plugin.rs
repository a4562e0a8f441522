//! The plugin's core: what ADD, DEL, CHECK, GC and STATUS do, as functions over
//! two edges: an [`AddressManager`] (IPAM) and a [`Plumber`] (the kernel). The
//! core reads no environment, file, clock or socket; [`crate::edge`] has the
//! real edges and the unit tests below use recording ones.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use calinet_ipam::{Attributes, HandleId, NodeName};
use calinet_route::{IfName, POD_GATEWAY_V4, WorkloadSpec};
use ipnet::IpNet;

use crate::config::{Config, IpamConfig, PoolRef};
use crate::env::{ContainerId, Env};
use crate::error::{Error, Result};
use crate::result::{CniResult, Interface, Route};

/// What an address request asks of the IPAM edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignParams {
    /// The handle (`<network name>.<containerID>`).
    pub handle: HandleId,
    /// The node asking.
    pub node: NodeName,
    /// Assign one IPv4 address.
    pub ipv4: bool,
    /// Assign one IPv6 address.
    pub ipv6: bool,
    /// IPv4 pools (empty: any).
    pub ipv4_pools: Vec<PoolRef>,
    /// IPv6 pools (empty: any).
    pub ipv6_pools: Vec<PoolRef>,
    /// Block size for IPv4 pools the edge creates.
    pub ipv4_block_size: Option<u8>,
    /// Block size for IPv6 pools the edge creates.
    pub ipv6_block_size: Option<u8>,
    /// Owner attributes stored with the allocation (Calico's `namespace`,
    /// `pod`, `node`, plus `containerID`).
    pub attributes: Attributes,
}

/// The IPAM edge.
pub trait AddressManager {
    /// Addresses currently held by `handle`, each with its block's prefix
    /// length (empty when none).
    fn held(&mut self, handle: &HandleId) -> Result<Vec<IpNet>>;
    /// Assigns the requested addresses (all or nothing), each with its
    /// block's prefix length.
    fn assign(&mut self, params: &AssignParams) -> Result<Vec<IpNet>>;
    /// Releases everything `handle` holds; idempotent.
    fn release(&mut self, handle: &HandleId) -> Result<Vec<IpAddr>>;
    /// Handles starting with `prefix` that hold addresses allocated by
    /// `node`, each with the owner attributes of its allocation.
    fn handles_on_node(
        &mut self,
        prefix: &str,
        node: &NodeName,
    ) -> Result<Vec<(HandleId, Attributes)>>;
    /// Whether ADDs could be served with these settings (STATUS).
    fn status(&mut self, ipam: &IpamConfig) -> Result<()>;
}

/// What the kernel edge reports after plumbing a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plumbed {
    /// The host side's MAC.
    pub host_mac: Option<String>,
    /// The pod side's MAC.
    pub pod_mac: Option<String>,
    /// The host side's IPv6 link-local address (the pod's IPv6 gateway).
    pub host_link_local: Option<IpAddr>,
}

/// The kernel edge.
pub trait Plumber {
    /// Ok when the namespace path exists ([`Error::NetnsMissing`] otherwise).
    fn netns_exists(&mut self, path: &Path) -> Result<()>;
    /// Creates (or re-creates) the workload's veth, addresses and routes.
    fn setup(&mut self, spec: &WorkloadSpec) -> Result<Plumbed>;
    /// Differences between the kernel and `spec` (empty when equal).
    fn check(&mut self, spec: &WorkloadSpec) -> Result<Vec<String>>;
    /// Removes the workload's interfaces; tolerates their absence and a
    /// missing namespace.
    fn teardown(&mut self, host: &IfName, netns: Option<&Path>, pod: &IfName) -> Result<()>;
}

/// How the plugin attaches a container.
#[non_exhaustive]
pub enum Attach<'a> {
    /// The full plugin (`calinet`): IPAM plus the workload's veth and routes.
    Plugin(&'a mut dyn Plumber),
    /// IPAM only (`calinet-ipam`), under another plugin.
    IpamOnly,
}

impl std::fmt::Debug for Attach<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Attach::Plugin(_) => "Attach::Plugin",
            Attach::IpamOnly => "Attach::IpamOnly",
        })
    }
}

/// Who a container is, derived from the configuration and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `CNI_CONTAINERID`.
    pub container: ContainerId,
    /// The IPAM handle: `<network name>.<containerID>` (Calico's
    /// `k8s-pod-network.<containerID>` for the default network name).
    pub handle: HandleId,
    /// Host-side veth: prefix + 11 hex of SHA-1(`<namespace>.<pod>`) for
    /// Kubernetes pods, of `cni.<containerID>` otherwise.
    pub host_ifname: IfName,
    /// `CNI_IFNAME`.
    pub pod_ifname: IfName,
    /// `CNI_NETNS`.
    pub netns: Option<PathBuf>,
    /// Kubernetes namespace and pod name, when given in `CNI_ARGS`.
    pub pod: Option<(String, String)>,
}

impl Workload {
    /// Derives the workload identity.
    pub fn new(cfg: &Config, env: &Env) -> Result<Workload> {
        let container = env.container()?.clone();
        let handle: HandleId =
            format!("{}.{}", cfg.name, container)
                .parse()
                .map_err(|e: calinet_ipam::Error| Error::InvalidEnv {
                    var: "CNI_CONTAINERID",
                    value: container.to_string(),
                    rule: e.to_string(),
                })?;
        let pod = env
            .args
            .pod()
            .map(|(ns, pod)| (ns.to_owned(), pod.to_owned()));
        let (a, b) = match &pod {
            Some((ns, p)) => (ns.as_str(), p.as_str()),
            None => ("cni", container.as_str()),
        };
        let host_ifname =
            IfName::workload(&cfg.interface_prefix, a, b).map_err(|e| Error::InvalidConfig {
                field: "interface_prefix".into(),
                value: cfg.interface_prefix.clone(),
                rule: e.to_string(),
            })?;
        Ok(Workload {
            container,
            handle,
            host_ifname,
            pod_ifname: env.interface()?.clone(),
            netns: env.netns.clone(),
            pod,
        })
    }

    fn netns(&self) -> Result<&Path> {
        self.netns.as_deref().ok_or(Error::MissingEnv {
            var: "CNI_NETNS",
            command: "ADD and CHECK".into(),
        })
    }

    /// The workload spec for these addresses (first IPv4, first IPv6).
    pub fn spec(&self, cfg: &Config, addrs: &[IpAddr]) -> Result<WorkloadSpec> {
        let mut spec = WorkloadSpec::new(
            self.host_ifname.clone(),
            self.netns()?.to_path_buf(),
            cfg.mtu,
        )
        .pod_ifname(self.pod_ifname.clone());
        if let Some(v4) = first_v4(addrs) {
            spec = spec.ipv4(v4);
        }
        if let Some(v6) = first_v6(addrs) {
            spec = spec.ipv6(v6);
        }
        Ok(spec)
    }
}

fn first_v4(addrs: &[IpAddr]) -> Option<Ipv4Addr> {
    addrs.iter().find_map(|a| match a {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    })
}

fn first_v6(addrs: &[IpAddr]) -> Option<Ipv6Addr> {
    addrs.iter().find_map(|a| match a {
        IpAddr::V6(v) => Some(*v),
        IpAddr::V4(_) => None,
    })
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

fn sorted(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    // IPv4 first, then IPv6: results list them in this order.
    nets.sort_by_key(|n| (n.addr().is_ipv6(), n.addr()));
    nets
}

fn addrs_of(nets: &[IpNet]) -> Vec<IpAddr> {
    nets.iter().map(IpNet::addr).collect()
}

fn params(cfg: &Config, w: &Workload, node: &NodeName) -> AssignParams {
    let mut attributes = Attributes::new();
    attributes.insert("node".into(), node.to_string());
    attributes.insert("containerID".into(), w.container.to_string());
    if let Some((ns, pod)) = &w.pod {
        attributes.insert("namespace".into(), ns.clone());
        attributes.insert("pod".into(), pod.clone());
    }
    AssignParams {
        handle: w.handle.clone(),
        node: node.clone(),
        ipv4: cfg.ipam.assign_ipv4,
        ipv6: cfg.ipam.assign_ipv6,
        ipv4_pools: cfg.ipam.ipv4_pools.clone(),
        ipv6_pools: cfg.ipam.ipv6_pools.clone(),
        ipv4_block_size: cfg.ipam.ipv4_block_size,
        ipv6_block_size: cfg.ipam.ipv6_block_size,
        attributes,
    }
}

/// ADD. Returns the addresses a retried ADD already holds (same address for
/// the same container), else assigns new ones. In plugin mode, a plumbing
/// failure removes whatever was created and releases the handle, so nothing
/// is left half-applied.
pub fn add(
    cfg: &Config,
    env: &Env,
    node: &NodeName,
    ipam: &mut dyn AddressManager,
    mut attach: Attach<'_>,
) -> Result<CniResult> {
    let w = Workload::new(cfg, env)?;
    if let Attach::Plugin(p) = &mut attach {
        // Before anything is allocated: an unknown namespace leaves nothing behind.
        p.netns_exists(w.netns()?)?;
    }
    let held = ipam.held(&w.handle)?;
    let nets = sorted(if held.is_empty() {
        ipam.assign(&params(cfg, &w, node))?
    } else {
        held
    });
    let addrs = addrs_of(&nets);
    let v = cfg.version;
    let mut result = CniResult::new(v);
    match attach {
        Attach::IpamOnly => {
            // The block's prefix length, not /32: plugins such as `ptp` and
            // `bridge` treat the prefix as the pod's subnet (ptp fails on /32).
            for n in &nets {
                let gw = if n.addr().is_ipv4() {
                    cfg.ipam.gateway_v4
                } else {
                    cfg.ipam.gateway_v6
                };
                result.push_ip(v, *n, gw, None);
            }
            Ok(result)
        }
        Attach::Plugin(plumber) => {
            let spec = match w.spec(cfg, &addrs) {
                Ok(s) => s,
                Err(e) => return Err(rollback(e, &w, ipam, None)),
            };
            let plumbed = match plumber.setup(&spec) {
                Ok(p) => p,
                Err(e) => return Err(rollback(e, &w, ipam, Some(plumber))),
            };
            let mtu = v.has_gc_status().then_some(cfg.mtu);
            result.interfaces = vec![
                Interface {
                    name: w.host_ifname.to_string(),
                    mac: plumbed.host_mac,
                    mtu,
                    sandbox: None,
                },
                Interface {
                    name: w.pod_ifname.to_string(),
                    mac: plumbed.pod_mac,
                    mtu,
                    sandbox: Some(spec.pod_netns.display().to_string()),
                },
            ];
            if let Some(v4) = spec.ipv4 {
                let gw = IpAddr::V4(POD_GATEWAY_V4);
                result.push_ip(v, host_net(IpAddr::V4(v4)), Some(gw), Some(1));
                result.routes.push(Route {
                    dst: "0.0.0.0/0".parse().expect("valid CIDR"),
                    gw: Some(gw),
                });
            }
            if let Some(v6) = spec.ipv6 {
                result.push_ip(
                    v,
                    host_net(IpAddr::V6(v6)),
                    plumbed.host_link_local,
                    Some(1),
                );
                result.routes.push(Route {
                    dst: "::/0".parse().expect("valid CIDR"),
                    gw: plumbed.host_link_local,
                });
            }
            Ok(result)
        }
    }
}

/// Undoes a failed ADD: removes the interfaces, releases the handle. The
/// original error is kept; rollback failures are appended to it.
fn rollback(
    original: Error,
    w: &Workload,
    ipam: &mut dyn AddressManager,
    plumber: Option<&mut dyn Plumber>,
) -> Error {
    let mut failures = Vec::new();
    if let Some(p) = plumber
        && let Err(e) = p.teardown(&w.host_ifname, w.netns.as_deref(), &w.pod_ifname)
    {
        failures.push(format!("removing {}: {e}", w.host_ifname));
    }
    if let Err(e) = ipam.release(&w.handle) {
        failures.push(format!("releasing handle {}: {e}", w.handle));
    }
    if failures.is_empty() {
        original
    } else {
        Error::RollbackFailed {
            original: Box::new(original),
            rollback: failures.join("; "),
        }
    }
}

/// DEL: removes the interfaces (plugin mode) and releases the handle.
/// Succeeds when either is already gone, and without `CNI_NETNS`.
pub fn del(
    cfg: &Config,
    env: &Env,
    ipam: &mut dyn AddressManager,
    attach: Attach<'_>,
) -> Result<()> {
    let w = Workload::new(cfg, env)?;
    if let Attach::Plugin(p) = attach {
        // Interfaces first: an address is never free while still configured.
        p.teardown(&w.host_ifname, w.netns.as_deref(), &w.pod_ifname)?;
    }
    ipam.release(&w.handle)?;
    Ok(())
}

/// CHECK: the stored addresses must exist, match `prevResult` when given, and
/// (plugin mode) be configured in the kernel as ADD left them.
pub fn check(
    cfg: &Config,
    env: &Env,
    ipam: &mut dyn AddressManager,
    mut attach: Attach<'_>,
) -> Result<()> {
    if !cfg.version.has_check() {
        return Err(Error::IncompatibleVersion {
            version: cfg.version.to_string(),
            rule: "CHECK needs cniVersion 0.4.0 or later".into(),
        });
    }
    let w = Workload::new(cfg, env)?;
    let plugin = matches!(attach, Attach::Plugin(_));
    if let Attach::Plugin(p) = &mut attach {
        p.netns_exists(w.netns()?)?;
    }
    let held = addrs_of(&sorted(ipam.held(&w.handle)?));
    let mut diffs = Vec::new();
    if held.is_empty() {
        diffs.push(format!("no addresses are stored for handle {}", w.handle));
    }
    if let Some(prev) = &cfg.prev_result {
        let prev = CniResult::from_value(prev)?;
        let prev_addrs: HashSet<IpAddr> = prev.ips.iter().map(|i| i.address.addr()).collect();
        for a in &held {
            if !prev_addrs.contains(a) {
                diffs.push(format!("stored address {a} is missing from prevResult"));
            }
        }
        for a in &prev_addrs {
            if !held.contains(a) {
                diffs.push(format!(
                    "prevResult address {a} is not stored for handle {}",
                    w.handle
                ));
            }
        }
        if plugin {
            let netns = w.netns()?.display().to_string();
            if !prev
                .interfaces
                .iter()
                .any(|i| i.name == w.host_ifname.as_str() && i.sandbox.is_none())
            {
                diffs.push(format!("prevResult lacks host interface {}", w.host_ifname));
            }
            if !prev
                .interfaces
                .iter()
                .any(|i| i.name == w.pod_ifname.as_str() && i.sandbox.as_deref() == Some(&netns))
            {
                diffs.push(format!(
                    "prevResult lacks interface {} in sandbox {netns}",
                    w.pod_ifname
                ));
            }
        }
    }
    if let Attach::Plugin(p) = attach
        && !held.is_empty()
    {
        diffs.extend(p.check(&w.spec(cfg, &held)?)?);
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed {
            container: w.container.to_string(),
            differences: diffs,
        })
    }
}

/// GC (CNI 1.1): for this network's handles on this node whose container is
/// not among `cni.dev/valid-attachments`, removes the host interface (plugin
/// mode) and releases the handle. The interface name comes from the
/// allocation's attributes (`namespace`/`pod`, else `containerID`) and is left
/// alone when a kept attachment maps to the same name (a pod re-created under
/// the same name). Returns the released handles.
pub fn gc(
    cfg: &Config,
    node: &NodeName,
    ipam: &mut dyn AddressManager,
    mut attach: Attach<'_>,
) -> Result<Vec<HandleId>> {
    if !cfg.version.has_gc_status() {
        return Err(Error::IncompatibleVersion {
            version: cfg.version.to_string(),
            rule: "GC needs cniVersion 1.1.0 or later".into(),
        });
    }
    let mut keep: HashSet<HandleId> = HashSet::new();
    for a in cfg.valid_attachments.iter().flatten() {
        if let Ok(h) = format!("{}.{}", cfg.name, a.container_id).parse() {
            keep.insert(h);
        }
    }
    let handles = ipam.handles_on_node(&format!("{}.", cfg.name), node)?;
    let kept_ifnames: HashSet<IfName> = handles
        .iter()
        .filter(|(h, _)| keep.contains(h))
        .filter_map(|(_, a)| host_ifname_of(cfg, a))
        .collect();
    let eth0 = IfName::new("eth0").expect("valid interface name");
    let mut released = Vec::new();
    for (h, attrs) in handles {
        if keep.contains(&h) {
            continue;
        }
        if let Attach::Plugin(p) = &mut attach
            && let Some(ifname) = host_ifname_of(cfg, &attrs)
            && !kept_ifnames.contains(&ifname)
        {
            p.teardown(&ifname, None, &eth0)?;
        }
        ipam.release(&h)?;
        released.push(h);
    }
    Ok(released)
}

/// The host interface name ADD gave the workload these attributes belong to.
fn host_ifname_of(cfg: &Config, attrs: &Attributes) -> Option<IfName> {
    let (a, b) = match (
        attrs.get("namespace"),
        attrs.get("pod"),
        attrs.get("containerID"),
    ) {
        (Some(ns), Some(pod), _) => (ns.as_str(), pod.as_str()),
        (_, _, Some(id)) => ("cni", id.as_str()),
        _ => return None,
    };
    IfName::workload(&cfg.interface_prefix, a, b).ok()
}

/// STATUS (CNI 1.1): Ok when ADDs can be served.
pub fn status(cfg: &Config, ipam: &mut dyn AddressManager) -> Result<()> {
    if !cfg.version.has_gc_status() {
        return Err(Error::IncompatibleVersion {
            version: cfg.version.to_string(),
            rule: "STATUS needs cniVersion 1.1.0 or later".into(),
        });
    }
    ipam.status(&cfg.ipam)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::StoreIpam;
    use crate::version::CniVersion;
    use calinet_ipam::MemStore;
    use std::collections::HashMap;

    /// Records calls; fails `setup` when told to.
    #[derive(Default)]
    struct RecordingPlumber {
        calls: Vec<String>,
        fail_setup: bool,
        missing_netns: bool,
        check_diffs: Vec<String>,
    }

    impl Plumber for RecordingPlumber {
        fn netns_exists(&mut self, path: &Path) -> Result<()> {
            self.calls.push(format!("netns_exists {}", path.display()));
            if self.missing_netns {
                return Err(Error::NetnsMissing {
                    path: path.to_path_buf(),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            Ok(())
        }
        fn setup(&mut self, spec: &WorkloadSpec) -> Result<Plumbed> {
            self.calls
                .push(format!("setup {} {:?}", spec.host_ifname, spec.ipv4));
            if self.fail_setup {
                return Err(Error::Plumbing {
                    what: spec.host_ifname.to_string(),
                    source: calinet_route::Error::Netlink {
                        request: "link add".into(),
                        errno: libc::EEXIST,
                        message: "File exists".into(),
                    },
                });
            }
            Ok(Plumbed {
                host_mac: Some("ee:ee:ee:ee:ee:ee".into()),
                pod_mac: Some("02:00:00:00:00:01".into()),
                host_link_local: None,
            })
        }
        fn check(&mut self, spec: &WorkloadSpec) -> Result<Vec<String>> {
            self.calls.push(format!("check {}", spec.host_ifname));
            Ok(self.check_diffs.clone())
        }
        fn teardown(&mut self, host: &IfName, netns: Option<&Path>, _pod: &IfName) -> Result<()> {
            self.calls.push(format!(
                "teardown {host} {:?}",
                netns.map(|p| p.display().to_string())
            ));
            Ok(())
        }
    }

    fn cfg(extra_ipam: &str) -> Config {
        Config::parse(
            format!(
                r#"{{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"calinet","mtu":1400,
                   "ipam":{{"type":"calinet-ipam","ipv4_pools":["172.16.0.0/24"],
                   "ipv4_block_size":30{extra_ipam}}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn env(cmd: &str, id: &str) -> Env {
        let m: HashMap<&str, String> = [
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", id.to_string()),
            ("CNI_NETNS", format!("/run/netns/{id}")),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", "/opt/cni/bin".into()),
            (
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}"),
            ),
        ]
        .into_iter()
        .collect();
        Env::from_lookup(|k| m.get(k).cloned()).unwrap()
    }

    fn node() -> NodeName {
        "node-1".parse().unwrap()
    }

    fn held(ipam: &mut StoreIpam<MemStore>, id: &str) -> Vec<IpNet> {
        ipam.held(&format!("k8s-pod-network.{id}").parse().unwrap())
            .unwrap()
    }

    #[test]
    fn add_returns_interfaces_ips_routes_and_a_retry_gets_the_same_address() {
        let c = cfg("");
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let mut p = RecordingPlumber::default();
        let r1 = add(
            &c,
            &env("ADD", "c1"),
            &node(),
            &mut ipam,
            Attach::Plugin(&mut p),
        )
        .unwrap();
        assert_eq!(r1.interfaces.len(), 2);
        assert_eq!(r1.interfaces[1].sandbox.as_deref(), Some("/run/netns/c1"));
        assert_eq!(r1.interfaces[1].mtu, Some(1400));
        assert_eq!(r1.ips.len(), 1);
        assert_eq!(r1.ips[0].address.prefix_len(), 32);
        assert!(
            "172.16.0.0/24"
                .parse::<IpNet>()
                .unwrap()
                .contains(&r1.ips[0].address.addr())
        );
        assert_eq!(r1.routes[0].gw, Some(IpAddr::V4(POD_GATEWAY_V4)));
        let r2 = add(
            &c,
            &env("ADD", "c1"),
            &node(),
            &mut ipam,
            Attach::Plugin(&mut p),
        )
        .unwrap();
        assert_eq!(r1.ips, r2.ips);
        assert_eq!(held(&mut ipam, "c1").len(), 1);
        assert_eq!(
            p.calls.iter().filter(|c| c.starts_with("setup")).count(),
            2,
            "{:?}",
            p.calls
        );
    }

    #[test]
    fn a_plumbing_failure_tears_down_and_releases() {
        let c = cfg("");
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let mut p = RecordingPlumber {
            fail_setup: true,
            ..Default::default()
        };
        let e = add(
            &c,
            &env("ADD", "c1"),
            &node(),
            &mut ipam,
            Attach::Plugin(&mut p),
        )
        .unwrap_err();
        assert_eq!(e.code(), 102, "{e}");
        assert!(held(&mut ipam, "c1").is_empty());
        assert!(
            p.calls.iter().any(|c| c.starts_with("teardown")),
            "{:?}",
            p.calls
        );
    }

    #[test]
    fn an_unknown_netns_allocates_nothing() {
        let c = cfg("");
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let mut p = RecordingPlumber {
            missing_netns: true,
            ..Default::default()
        };
        let e = add(
            &c,
            &env("ADD", "c1"),
            &node(),
            &mut ipam,
            Attach::Plugin(&mut p),
        )
        .unwrap_err();
        assert_eq!(e.code(), 3);
        assert!(held(&mut ipam, "c1").is_empty());
        assert_eq!(p.calls.len(), 1, "{:?}", p.calls);
    }

    #[test]
    fn exhaustion_is_code_100_and_leaves_nothing() {
        // One /30 block: four addresses, and the pool is that block only.
        let c = Config::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calinet",
               "ipam":{"type":"calinet-ipam","ipv4_pools":["172.16.0.0/30"],"ipv4_block_size":30}}"#,
        )
        .unwrap();
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let mut p = RecordingPlumber::default();
        let mut got = HashSet::new();
        for i in 0..4 {
            let r = add(
                &c,
                &env("ADD", &format!("c{i}")),
                &node(),
                &mut ipam,
                Attach::Plugin(&mut p),
            )
            .unwrap();
            assert!(got.insert(r.ips[0].address));
        }
        let e = add(
            &c,
            &env("ADD", "c4"),
            &node(),
            &mut ipam,
            Attach::Plugin(&mut p),
        )
        .unwrap_err();
        assert_eq!(e.code(), 100, "{e}");
        assert!(held(&mut ipam, "c4").is_empty());
        assert!(
            !p.calls
                .iter()
                .any(|c| c.contains("setup cali") && c.contains("c4"))
        );
    }

    #[test]
    fn del_is_idempotent_and_works_without_netns() {
        let c = cfg("");
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let mut p = RecordingPlumber::default();
        add(
            &c,
            &env("ADD", "c1"),
            &node(),
            &mut ipam,
            Attach::Plugin(&mut p),
        )
        .unwrap();
        let mut e = env("DEL", "c1");
        e.netns = None;
        del(&c, &e, &mut ipam, Attach::Plugin(&mut p)).unwrap();
        assert!(held(&mut ipam, "c1").is_empty());
        del(&c, &e, &mut ipam, Attach::Plugin(&mut p)).unwrap();
        assert!(p.calls.last().unwrap().ends_with("None"), "{:?}", p.calls);
    }

    #[test]
    fn check_compares_prev_result_and_the_kernel() {
        let mut c = cfg("");
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let mut p = RecordingPlumber::default();
        let r = add(
            &c,
            &env("ADD", "c1"),
            &node(),
            &mut ipam,
            Attach::Plugin(&mut p),
        )
        .unwrap();
        c.prev_result = Some(serde_json::to_value(&r).unwrap());
        check(&c, &env("CHECK", "c1"), &mut ipam, Attach::Plugin(&mut p)).unwrap();

        let mut wrong = r.clone();
        wrong.ips[0].address = "172.16.0.200/32".parse().unwrap();
        c.prev_result = Some(serde_json::to_value(&wrong).unwrap());
        let e = check(&c, &env("CHECK", "c1"), &mut ipam, Attach::Plugin(&mut p)).unwrap_err();
        assert_eq!(e.code(), 103);
        assert!(e.to_string().contains("172.16.0.200"), "{e}");

        c.prev_result = Some(serde_json::to_value(&r).unwrap());
        p.check_diffs =
            vec!["pod address 172.16.0.1/32: expected present, observed missing".into()];
        let e = check(&c, &env("CHECK", "c1"), &mut ipam, Attach::Plugin(&mut p)).unwrap_err();
        assert!(e.to_string().contains("observed missing"), "{e}");

        let e = check(&c, &env("CHECK", "nope"), &mut ipam, Attach::IpamOnly).unwrap_err();
        assert!(e.to_string().contains("no addresses are stored"), "{e}");
    }

    #[test]
    fn ipam_only_returns_ips_with_the_configured_gateway_and_no_interfaces() {
        let c = cfg(r#","gateway":"169.254.1.1""#);
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let r = add(&c, &env("ADD", "c1"), &node(), &mut ipam, Attach::IpamOnly).unwrap();
        assert!(r.interfaces.is_empty() && r.routes.is_empty());
        assert_eq!(r.ips[0].gateway, Some("169.254.1.1".parse().unwrap()));
        assert_eq!(r.ips[0].interface, None);
        assert_eq!(r.ips[0].address.prefix_len(), 30, "the block's prefix");
        del(&c, &env("DEL", "c1"), &mut ipam, Attach::IpamOnly).unwrap();
        assert!(held(&mut ipam, "c1").is_empty());
    }

    #[test]
    fn gc_releases_only_invalid_attachments_of_this_network_and_node() {
        let mut c = cfg("");
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        for id in ["a", "b", "c"] {
            add(&c, &env("ADD", id), &node(), &mut ipam, Attach::IpamOnly).unwrap();
        }
        // Another node's allocation under the same network name stays.
        add(
            &c,
            &env("ADD", "d"),
            &"node-2".parse().unwrap(),
            &mut ipam,
            Attach::IpamOnly,
        )
        .unwrap();
        c.valid_attachments = Some(vec![crate::config::Attachment {
            container_id: "a".into(),
            ifname: "eth0".into(),
        }]);
        let mut released = gc(&c, &node(), &mut ipam, Attach::IpamOnly).unwrap();
        released.sort();
        let names: Vec<&str> = released.iter().map(|h| h.as_str()).collect();
        assert_eq!(names, ["k8s-pod-network.b", "k8s-pod-network.c"]);
        assert_eq!(held(&mut ipam, "a").len(), 1);
        assert_eq!(held(&mut ipam, "d").len(), 1);
        assert!(held(&mut ipam, "b").is_empty());
    }

    #[test]
    fn gc_in_plugin_mode_removes_stale_interfaces_but_not_a_recreated_pods() {
        let mut c = cfg("");
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        let mut p = RecordingPlumber::default();
        let with_pod = |cmd: &str, id: &str, pod: &str| {
            let mut e = env(cmd, id);
            e.args = crate::env::CniArgs::parse(&format!(
                "K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"
            ))
            .unwrap();
            e
        };
        // "old" and "new" are two sandboxes of the same pod (same veth name);
        // "gone" is a pod that no longer exists.
        for (id, pod) in [("old", "web"), ("new", "web"), ("gone", "db")] {
            add(
                &c,
                &with_pod("ADD", id, pod),
                &node(),
                &mut ipam,
                Attach::Plugin(&mut p),
            )
            .unwrap();
        }
        c.valid_attachments = Some(vec![crate::config::Attachment {
            container_id: "new".into(),
            ifname: "eth0".into(),
        }]);
        p.calls.clear();
        let mut released = gc(&c, &node(), &mut ipam, Attach::Plugin(&mut p)).unwrap();
        released.sort();
        let names: Vec<&str> = released.iter().map(|h| h.as_str()).collect();
        assert_eq!(names, ["k8s-pod-network.gone", "k8s-pod-network.old"]);
        let web = IfName::calico_workload("default", "web");
        let db = IfName::calico_workload("default", "db");
        assert_eq!(p.calls, [format!("teardown {db} None")], "{:?}", p.calls);
        assert!(!p.calls.iter().any(|c| c.contains(web.as_str())));
        assert_eq!(held(&mut ipam, "new").len(), 1);
    }

    #[test]
    fn old_versions_refuse_newer_commands() {
        let mut c = cfg("");
        c.version = CniVersion::V0_3_1;
        let mut ipam = StoreIpam::new(MemStore::new(), None);
        assert_eq!(
            check(&c, &env("CHECK", "x"), &mut ipam, Attach::IpamOnly)
                .unwrap_err()
                .code(),
            1
        );
        c.version = CniVersion::V1_0_0;
        assert_eq!(
            gc(&c, &node(), &mut ipam, Attach::IpamOnly)
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(status(&c, &mut ipam).unwrap_err().code(), 1);
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Add(usize),
        Del(usize),
        Check(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..6usize).prop_map(Op::Add),
            (0..6usize).prop_map(Op::Del),
            (0..6usize).prop_map(Op::Check),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random ADD/DEL/CHECK sequences (with retries) against the real
        /// allocator on a MemStore, checked against a model: a live container
        /// holds exactly one address, distinct from every other live one, the
        /// same across retried ADDs; DEL frees it; CHECK passes iff live; and
        /// the store's `ipam check` is clean at the end.
        #[test]
        fn add_del_check_sequences_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let mut c = cfg("");
            let mut ipam = StoreIpam::new(MemStore::new(), None);
            let mut p = RecordingPlumber::default();
            let mut live: HashMap<usize, IpNet> = HashMap::new();
            for o in ops {
                match o {
                    Op::Add(i) => {
                        let r = add(&c, &env("ADD", &format!("c{i}")), &node(), &mut ipam, Attach::Plugin(&mut p)).unwrap();
                        let a = r.ips[0].address;
                        if let Some(prev) = live.get(&i) {
                            proptest::prop_assert_eq!(*prev, a, "retry changed the address");
                        } else {
                            proptest::prop_assert!(!live.values().any(|v| *v == a), "duplicate {}", a);
                        }
                        live.insert(i, a);
                    }
                    Op::Del(i) => {
                        del(&c, &env("DEL", &format!("c{i}")), &mut ipam, Attach::Plugin(&mut p)).unwrap();
                        live.remove(&i);
                    }
                    Op::Check(i) => {
                        c.prev_result = None;
                        let got = check(&c, &env("CHECK", &format!("c{i}")), &mut ipam, Attach::Plugin(&mut p));
                        proptest::prop_assert_eq!(got.is_ok(), live.contains_key(&i), "{:?}", got.err());
                    }
                }
                for j in 0..6 {
                    let n = held(&mut ipam, &format!("c{j}")).len();
                    proptest::prop_assert_eq!(n, usize::from(live.contains_key(&j)), "container c{}", j);
                }
            }
            let handles: HashSet<HandleId> = live
                .keys()
                .map(|i| format!("k8s-pod-network.c{i}").parse().unwrap())
                .collect();
            let report = calinet_ipam::report::check(ipam.ipam().store(), Some(&handles)).unwrap();
            proptest::prop_assert!(report.is_clean(), "{:?}", report);
            proptest::prop_assert_eq!(report.addresses_in_use, live.len());
        }
    }
}
