//! The plugin's core: what ADD, DEL, CHECK, GC and STATUS do, as functions over
//! two edges: an [`AddressManager`] (IPAM) and a [`Plumber`] (the kernel). ADD
//! and DEL are calinet-attach's (allocate, plumb, roll back, release); what
//! is CNI's (the workload identity from `CNI_*`, results, CHECK, GC, STATUS)
//! is here. The core reads no environment, file, clock or socket;
//! [`crate::edge`] has the real edges and the unit tests below use recording
//! ones.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use calinet_attach::wep::{ObjectMeta, WorkloadEndpoint, WorkloadEndpointSpec, wep_key, wep_name};
use calinet_attach::{Endpoint, FamilyRequest, Request};
use calinet_ipam::{Attributes, HandleId, NodeName};
use calinet_route::{IfName, POD_GATEWAY_V4, WorkloadSpec};
use ipnet::IpNet;

use crate::config::{Config, IpamConfig};
use crate::env::{ContainerId, Env};
use crate::error::{Error, Result};
use crate::result::{CniResult, Interface, Route};

pub use calinet_attach::{AssignParams, Plumbed, Plumber};

/// The IPAM edge: calinet-attach's address manager plus what GC and STATUS
/// ask of the datastore.
pub trait AddressManager: calinet_attach::AddressManager {
    /// Handles starting with `prefix` that hold addresses allocated by
    /// `node`, each with the owner attributes of its allocation.
    fn handles_on_node(
        &mut self,
        prefix: &str,
        node: &NodeName,
    ) -> Result<Vec<(HandleId, Attributes)>>;
    /// Whether ADDs could be served with these settings (STATUS).
    fn status(&mut self, ipam: &IpamConfig) -> Result<()>;
    /// Creates or replaces the WorkloadEndpoint at `key` (see
    /// [`calinet_attach::wep`]).
    fn put_endpoint(&mut self, key: &str, wep: &WorkloadEndpoint) -> Result<()>;
    /// Deletes the WorkloadEndpoints in `namespace` of pod `pod` whose
    /// `containerID` is `container` (another container's stays); returns how
    /// many it deleted.
    fn delete_endpoints(&mut self, namespace: &str, pod: &str, container: &str) -> Result<usize>;
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

    /// The attach request: this workload on `node`, the configured families,
    /// pools and MTU.
    pub fn request(&self, cfg: &Config, node: &NodeName) -> Request {
        let family = |on: bool, pools: &[crate::config::PoolRef], block: Option<u8>| {
            on.then(|| FamilyRequest::from_pools(pools.to_vec(), block))
        };
        let mut req = Request::new(
            self.handle.clone(),
            node.clone(),
            self.host_ifname.clone(),
            self.netns.clone(),
            cfg.mtu,
        )
        .container_id(self.container.to_string())
        .owner(self.container.to_string())
        .pod_ifname(self.pod_ifname.clone())
        .ipv4(family(
            cfg.ipam.assign_ipv4,
            &cfg.ipam.ipv4_pools,
            cfg.ipam.ipv4_block_size,
        ))
        .ipv6(family(
            cfg.ipam.assign_ipv6,
            &cfg.ipam.ipv6_pools,
            cfg.ipam.ipv6_block_size,
        ));
        if let Some((ns, pod)) = &self.pod {
            req = req.pod(ns.clone(), pod.clone());
        }
        req
    }

    /// The handle and interfaces (what DEL releases), owned by the container
    /// id: DEL removes only interfaces whose host side records it.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(
            self.handle.clone(),
            self.host_ifname.clone(),
            self.netns.clone(),
        )
        .pod_ifname(self.pod_ifname.clone())
        .owner(self.container.to_string())
    }

    fn pod_namespace(&self) -> String {
        self.pod
            .as_ref()
            .map(|(ns, _)| ns.clone())
            .unwrap_or_default()
    }

    /// The WorkloadEndpoint an ADD records for a Kubernetes pod (`None`
    /// without `K8S_POD_NAMESPACE`/`K8S_POD_NAME`). Its identity comes only
    /// from what the runtime passed (`CNI_ARGS`), never from the pod's own
    /// labels.
    pub fn workload_endpoint(
        &self,
        node: &NodeName,
        attached: &calinet_attach::Attached,
    ) -> Option<WorkloadEndpoint> {
        let (ns, pod) = self.pod.as_ref()?;
        let labels = [
            ("projectcalico.org/namespace".to_owned(), ns.clone()),
            (
                "projectcalico.org/orchestrator".to_owned(),
                "k8s".to_owned(),
            ),
        ]
        .into_iter()
        .collect();
        Some(WorkloadEndpoint {
            api_version: calinet_types::CALICO_API_VERSION.into(),
            kind: "WorkloadEndpoint".into(),
            metadata: ObjectMeta::named(wep_name(node.as_str(), pod, self.pod_ifname.as_str()))
                .namespace(ns.clone())
                .labels(labels),
            spec: WorkloadEndpointSpec {
                orchestrator: "k8s".into(),
                node: node.to_string(),
                pod: pod.clone(),
                container_id: Some(self.container.to_string()),
                endpoint: self.pod_ifname.to_string(),
                interface_name: self.host_ifname.to_string(),
                ip_networks: attached
                    .spec
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(attached.spec.ipv6.map(IpAddr::V6))
                    .map(IpNet::from)
                    .collect(),
                mac: attached.plumbed.pod_mac.map(|m| m.to_string()),
                profiles: vec![format!("kns.{ns}")],
                service_account_name: None,
                ports: Vec::new(),
            },
        })
    }

    /// The workload spec for these addresses (first IPv4, first IPv6).
    pub fn spec(&self, cfg: &Config, nets: &[IpNet]) -> Result<WorkloadSpec> {
        self.netns()?;
        Ok(self.endpoint().workload_spec(cfg.mtu, nets)?)
    }
}

fn sorted(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    // IPv4 first, then IPv6: results list them in this order.
    nets.sort_by_key(|n| (n.addr().is_ipv6(), n.addr()));
    nets
}

fn host_net(a: IpAddr) -> IpNet {
    IpNet::from(a)
}

/// ADD. Returns the addresses a retried ADD already holds (same address for
/// the same container), else assigns new ones. In plugin mode, a plumbing
/// failure removes whatever was created and releases what this ADD assigned,
/// so nothing is left half-applied.
pub fn add(
    cfg: &Config,
    env: &Env,
    node: &NodeName,
    ipam: &mut dyn AddressManager,
    attach: Attach<'_>,
) -> Result<CniResult> {
    let w = Workload::new(cfg, env)?;
    let v = cfg.version;
    let mut result = CniResult::new(v);
    match attach {
        Attach::IpamOnly => {
            let allocation = calinet_attach::allocate(ipam, &w.request(cfg, node))?;
            // The block's prefix length, not /32: plugins such as `ptp` and
            // `bridge` treat the prefix as the pod's subnet (ptp fails on /32).
            for n in &allocation.nets {
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
            // CNI_NETNS is required before anything else is looked at.
            w.netns()?;
            let req = w.request(cfg, node);
            let attached = calinet_attach::add(ipam, plumber, &req)?;
            if let Some(wep) = w.workload_endpoint(node, &attached)
                && let Err(e) =
                    ipam.put_endpoint(&wep_key(&w.pod_namespace(), &wep.metadata.name), &wep)
            {
                // Nothing half-applied: what this ADD created goes again (a
                // retry's earlier state stays for the retry after this one).
                if attached.allocation.fresh {
                    calinet_attach::release(ipam, Some(plumber), &req.endpoint())?;
                }
                return Err(e);
            }
            let (spec, plumbed) = (attached.spec, attached.plumbed);
            let mtu = v.has_gc_status().then_some(cfg.mtu);
            result.interfaces = vec![
                Interface {
                    name: w.host_ifname.to_string(),
                    mac: plumbed.host_mac.map(|m| m.to_string()),
                    mtu,
                    sandbox: None,
                },
                Interface {
                    name: w.pod_ifname.to_string(),
                    mac: plumbed.pod_mac.map(|m| m.to_string()),
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

/// DEL: removes the interfaces (plugin mode) and releases the handle.
/// Succeeds when either is already gone, and without `CNI_NETNS`.
pub fn del(
    cfg: &Config,
    env: &Env,
    ipam: &mut dyn AddressManager,
    attach: Attach<'_>,
) -> Result<()> {
    let w = Workload::new(cfg, env)?;
    let plumber = match attach {
        Attach::Plugin(p) => Some(p),
        Attach::IpamOnly => None,
    };
    let plugin = plumber.is_some();
    calinet_attach::release(ipam, plumber, &w.endpoint())?;
    if plugin && let Some((ns, pod)) = &w.pod {
        ipam.delete_endpoints(ns, pod, w.container.as_str())?;
    }
    Ok(())
}

/// The plugin's error for an attach-core error: the CNI codes stay those of
/// the underlying failure (3 for a missing namespace, 100 for exhaustion, 102
/// for plumbing, ...).
impl From<calinet_attach::Error> for Error {
    fn from(e: calinet_attach::Error) -> Error {
        use calinet_attach::Error as A;
        match e {
            A::AttachFailed { source, .. } => Error::from(*source),
            A::RollbackFailed {
                source, rollback, ..
            } => Error::RollbackFailed {
                original: Box::new(Error::from(*source)),
                rollback: rollback
                    .iter()
                    .map(|e| calinet_attach::chain(e))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            A::NetnsMissing { path, source } => Error::NetnsMissing { path, source },
            A::NetnsUnusable { path, source } => Error::InvalidEnv {
                var: "CNI_NETNS",
                value: path.display().to_string(),
                rule: format!("must be a network namespace that can be entered ({source})"),
            },
            A::Plumbing {
                source: calinet_route::Error::InterfaceInUse { netns, name, owner },
                ..
            } => Error::InterfaceInUse { netns, name, owner },
            A::UnknownPool { name } => Error::InvalidConfig {
                field: "ipam.ipv4_pools/ipv6_pools".into(),
                value: name,
                rule: "no IPPool of this name exists in the datastore".into(),
            },
            A::Ipam { operation, source } => Error::Ipam { operation, source },
            A::Plumbing { what, source } => Error::Plumbing { what, source },
            A::Lock { path, source } => Error::Lock { path, source },
            A::InvalidRequest { field, value, rule } => Error::InvalidConfig {
                field: field.into(),
                value,
                rule,
            },
            other => Error::InvalidConfig {
                field: "-".into(),
                value: String::new(),
                rule: calinet_attach::chain(&other),
            },
        }
    }
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
    let held_nets = sorted(ipam.held(&w.handle)?);
    let held: Vec<IpAddr> = held_nets.iter().map(IpNet::addr).collect();
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
        diffs.extend(p.check(&w.spec(cfg, &held_nets)?)?);
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
        let owner = h
            .as_str()
            .strip_prefix(&format!("{}.", cfg.name))
            .unwrap_or(h.as_str())
            .to_owned();
        if let Attach::Plugin(p) = &mut attach
            && let Some(ifname) = host_ifname_of(cfg, &attrs)
            && !kept_ifnames.contains(&ifname)
        {
            // Only the interface this container's ADD made (it records the
            // container id): another container's of the same name stays.
            p.teardown(&ifname, None, &eth0, Some(&owner))?;
        }
        ipam.release(&h)?;
        if matches!(attach, Attach::Plugin(_))
            && let (Some(ns), Some(pod)) = (attrs.get("namespace"), attrs.get("pod"))
        {
            ipam.delete_endpoints(ns, pod, &owner)?;
        }
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
    use calinet_attach::AddressManager as _;
    use calinet_attach::fake::RecordingPlumber;
    use calinet_ipam::MemStore;
    use std::collections::HashMap;

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
