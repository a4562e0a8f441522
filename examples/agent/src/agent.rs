//! `run --node NAME`: the node agent's loop.
//!
//! Every tick: read the cluster view (polling the store), do this node's IPAM
//! (tunnel address, pod addresses, releases), plan (pure), apply (netlink),
//! publish WorkloadEndpoints and the agent's status. A full resync re-verifies
//! every workload against the kernel. Datastore errors leave the dataplane as
//! it is and are retried with exponential backoff. SIGTERM / SIGINT stop the
//! loop cleanly (the dataplane stays, as with Calico).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calinet_ipam::{AllowedUse, AutoAssignRequest, HandleId, Ipam, NodeName, Store, TunnelKind};
use calinet_route::ResyncTimer;

use crate::bgp::{self, BgpPlane};
use crate::dataplane::Dataplane;
use crate::datastore::{
    AgentStatus, ClusterSource, ClusterView, DynStore, PollingSource, delete_if_present,
    put_if_changed,
};
use crate::error::{Error, Result, chain};
use crate::metrics::Metrics;
use crate::plan::{self, Desired, LocalFacts};
use crate::policy::{self, PolicyPlane};
use crate::resources::{
    CALICO_API, CalicoNode, Meta, NodeBgp, NodeSpec, NodeStatus, WepPort, WorkloadEndpoint,
    WorkloadEndpointSpec, keys, wep_name,
};
use crate::wireguard::{self, WgOptions, WgPlane};

/// Options of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// This node's name.
    pub node: String,
    /// Uplink interface (default: the default route's device).
    pub uplink: Option<String>,
    /// Where to serve metrics (`None`: not at all).
    pub metrics: Option<SocketAddr>,
    /// How often to poll the datastore.
    pub poll: Duration,
    /// How often to re-verify everything against the kernel.
    pub resync: Duration,
    /// Stop after this many successful reconciles (tests; `None`: run forever).
    pub max_reconciles: Option<u64>,
    /// WireGuard device name and key file.
    pub wireguard: WgOptions,
    /// BIRD's runtime directory (configuration, control socket, pid file, log).
    pub bgp_dir: std::path::PathBuf,
    /// Where BGPPeer passwords are read from (`<dir>/<secret>/<key>`).
    pub bgp_secrets: Option<std::path::PathBuf>,
}

/// Exponential backoff for datastore retries, time passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    /// Starts at `min`, doubles to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: None,
        }
    }

    /// The next wait after a failure.
    pub fn failed(&mut self) -> Duration {
        let next = match self.current {
            None => self.min,
            Some(c) => (c * 2).min(self.max),
        };
        self.current = Some(next);
        next
    }

    /// Back to the start after a success.
    pub fn succeeded(&mut self) {
        self.current = None;
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Which part of a tick failed (the `kind` label of the errors metric).
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Store(_) | Error::Decode { .. } => "datastore",
        Error::Ipam(calinet_ipam::Error::Store(_)) => "datastore",
        Error::Ipam(_) => "ipam",
        Error::Route(_) => "dataplane",
        Error::Encap(_) | Error::Usage(_) => "plan",
        Error::Wireguard(_) => "wireguard",
        Error::Policy(_) => "policy",
        Error::Bgp(_) | Error::Bird(_) => "bgp",
        _ => "other",
    }
}

struct Agent {
    node: String,
    node_name: NodeName,
    store: DynStore,
    ipam: Ipam<DynStore>,
    source: Box<dyn ClusterSource>,
    /// Drives the netlink edge. The loop itself is synchronous, so blocking
    /// datastores (etcd's client refuses calls from inside a runtime) can be
    /// called directly.
    rt: tokio::runtime::Runtime,
    dp: Dataplane,
    policy: PolicyPlane,
    wg: WgPlane,
    bgp: BgpPlane,
    facts: LocalFacts,
    metrics: Metrics,
    started: u64,
    writes_total: u64,
    last_status: Option<(AgentStatus, Instant)>,
    last_revision: Option<i64>,
    last_converged: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start the runtime",
            path: "tokio".into(),
            source,
        })
}

/// Serves metrics and turns SIGTERM / SIGINT into `stop`, on its own thread.
fn spawn_control(metrics: Metrics, addr: Option<SocketAddr>, stop: Arc<AtomicBool>) -> Result<()> {
    let rt = runtime()?;
    // Handlers are installed before the loop starts, so no signal is lost.
    let (mut term, mut int) = rt
        .block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            Ok::<_, std::io::Error>((
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            ))
        })
        .map_err(|source| Error::Io {
            what: "install the signal handlers",
            path: "signal".into(),
            source,
        })?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            if let Some(addr) = addr {
                tokio::spawn(async move {
                    if let Err(e) = metrics.serve(addr).await {
                        tracing::error!(%addr, error = %e, "metrics server stopped");
                    }
                });
            }
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down, dataplane left as is"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down, dataplane left as is"),
            }
            stop.store(true, Ordering::SeqCst);
        });
    });
    Ok(())
}

/// Waits up to `d` for a change under the watch; returns early on a change
/// (false) or when asked to stop (true).
fn wait_for_change(
    w: &mut calinet_ipam::Watcher,
    d: Duration,
    stop: &AtomicBool,
) -> Result<bool, calinet_ipam::WatchError> {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(true);
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        if w.next_timeout(left.min(Duration::from_millis(50)))?
            .is_some()
        {
            // Take what else is ready, then reconcile once for all of it.
            let mut n = 0;
            while n < 10_000 && w.try_next()?.is_some() {
                n += 1;
            }
            return Ok(false);
        }
    }
}

/// Sleeps up to `d`; returns early (true) when asked to stop.
fn sleep_or_stop(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Runs the agent until SIGTERM/SIGINT (or `max_reconciles`).
pub fn run(store: DynStore, opts: RunOptions) -> Result<()> {
    let node_name: NodeName = opts.node.parse()?;
    let metrics = Metrics::new();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_control(metrics.clone(), opts.metrics, stop.clone())?;
    let rt = runtime()?;
    let mut dp = rt.block_on(Dataplane::open())?;
    let facts = rt.block_on(dp.local_facts(opts.uplink.as_deref()))?;
    tracing::info!(node = %opts.node, uplink = %facts.uplink, mtu = facts.mtu,
        gateway = ?facts.gateway_v4, "agent starting");
    let mut agent = Agent {
        node: opts.node.clone(),
        node_name,
        ipam: Ipam::new(store.clone()),
        source: Box::new(PollingSource::new(store.clone())),
        store,
        rt,
        dp,
        policy: PolicyPlane::default(),
        wg: WgPlane::new(opts.wireguard.clone()),
        bgp: BgpPlane::new(opts.bgp_dir.clone()).with_secrets(opts.bgp_secrets.clone()),
        facts,
        metrics,
        started: unix(SystemTime::now()),
        writes_total: 0,
        last_status: None,
        last_revision: None,
        last_converged: false,
    };

    let mut timer = ResyncTimer::new(opts.resync);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut wait = Duration::ZERO;
    let mut reconciles = 0u64;
    // A watch wakes the loop as soon as anything changes; the poll stays as
    // the fallback (stores without watch, a failed watch, the gap before it).
    let mut watcher: Option<calinet_ipam::Watcher> = None;
    let mut watch_failed_logged = false;
    loop {
        let stopped = match &mut watcher {
            Some(w) if wait == opts.poll => match wait_for_change(w, wait, &stop) {
                Ok(stopped) => stopped,
                Err(e) => {
                    tracing::info!(error = %e, "datastore watch ended; polling until it is back");
                    watcher = None;
                    sleep_or_stop(wait, &stop)
                }
            },
            _ => sleep_or_stop(wait, &stop),
        };
        if stopped {
            break;
        }
        let now = Instant::now();
        let full = timer.due(now);
        let t0 = Instant::now();
        match agent.tick(full, now) {
            Ok(ran) => {
                backoff.succeeded();
                if watcher.is_none() {
                    match agent.store.watch("/", 0) {
                        Ok(w) => watcher = Some(w),
                        Err(e) if !watch_failed_logged => {
                            tracing::info!(error = %e, "no datastore watch; polling");
                            watch_failed_logged = true;
                        }
                        Err(_) => {}
                    }
                }
                if full {
                    timer.done(now);
                }
                if ran {
                    agent
                        .metrics
                        .reconcile_seconds
                        .observe(t0.elapsed().as_secs_f64());
                    agent.metrics.reconciles.inc();
                    reconciles += 1;
                }
                wait = opts.poll;
            }
            Err(e) => {
                let kind = error_kind(&e);
                agent.metrics.error(kind);
                agent.metrics.converged.set(0);
                agent.last_converged = false;
                agent.last_revision = None;
                wait = if kind == "datastore" {
                    backoff.failed()
                } else {
                    opts.poll.max(Duration::from_secs(1))
                };
                tracing::warn!(kind, error = %chain(&e), retry_in = ?wait,
                    "reconcile failed; dataplane kept as it is");
            }
        }
        if opts.max_reconciles.is_some_and(|m| reconciles >= m) {
            break;
        }
    }
    agent.bgp.detach();
    Ok(())
}

impl Agent {
    /// One reconcile; returns false when nothing changed and no resync was due.
    fn tick(&mut self, full: bool, now: Instant) -> Result<bool> {
        let mut view = self.source.snapshot()?;
        if !view.nodes.contains_key(&self.node) {
            self.create_own_node()?;
            view = self.source.snapshot()?;
        }
        if let Err(e) = self.bgp.ensure_running(now) {
            self.metrics.error("bgp");
            tracing::warn!(error = %chain(&e), "BIRD is not running; retrying");
        }
        let idle = !full && self.last_converged && self.last_revision == Some(view.revision);
        if idle {
            self.publish_status(&view, None, now)?;
            return Ok(false);
        }
        let (addrs, ipam_wrote) = self.ipam_step(&view)?;
        if ipam_wrote {
            view = self.source.snapshot()?;
        }
        let mut desired = plan::plan(&view, &self.node, &self.facts, &addrs)?;
        // One owner per route: BIRD's kernel protocol programs the routes of
        // unencapsulated pools (as `proto bird`), the agent the rest.
        let bird_pools = bgp::bird_pools(&view);
        desired
            .routes
            .retain(|r| !bgp::owned_by_bird(&bird_pools, r));
        let mut bgp_ok = true;
        if let Err(e) = self.bgp.sync(&view, &self.node, now) {
            // The rest of the dataplane does not wait for BGP.
            bgp_ok = false;
            self.metrics.error("bgp");
            tracing::warn!(error = %chain(&e), "BGP not applied; retrying");
        }
        let wg = self.wireguard_before(&view, &mut desired)?;
        let mut report = self.rt.block_on(self.dp.apply(&desired, full))?;
        report.writes += self.wireguard_after(wg, report.pending)?;
        let (rs, hash, rules) = policy::desired_ruleset(&view, &self.node, &desired.workloads)?;
        report.writes += self.policy.apply(&rs, &hash)?;
        self.metrics.policy_rules.set(rules as i64);
        self.writes_total += report.writes;
        self.metrics.dataplane_writes.inc_by(report.writes);
        if report.writes > 0 {
            tracing::info!(
                writes = report.writes,
                workloads = report.workloads_changed,
                removed = report.workloads_removed,
                links = report.links_changed,
                pending = report.pending,
                "dataplane updated"
            );
        }
        self.publish_weps(&view, &desired)?;
        let converged = report.pending == 0 && desired.waiting_for.is_empty() && bgp_ok;
        self.metrics.converged.set(i64::from(converged));
        self.metrics.routes.set(report.routes as i64);
        self.metrics.endpoints.set(desired.workloads.len() as i64);
        self.metrics.vxlan_neighbours.set(report.neighbours as i64);
        self.update_ipam_metrics(&view);
        if !desired.waiting_for.is_empty() {
            tracing::info!(nodes = ?desired.waiting_for, "waiting for remote nodes to publish their tunnel address");
        }
        self.last_converged = converged;
        // The revision planned from: anything written since (by us or others)
        // makes the next tick plan again.
        self.last_revision = Some(view.revision);
        self.publish_status(&view, Some((&desired, converged)), now)?;
        Ok(true)
    }

    /// WireGuard before the routes: device, MTU, and the table-1 routes added
    /// to the plan. Returns the device to sync after the routes, with the
    /// writes made so far.
    fn wireguard_before(
        &mut self,
        view: &ClusterView,
        desired: &mut Desired,
    ) -> Result<Option<(calinet_wg::Computed, calinet_wg::DeviceSettings, u64)>> {
        let settings = wireguard::settings(self.wg.options())?;
        let ifname = self.wg.options().ifname.clone();
        if !view.wireguard_enabled(&self.node) {
            let mut writes = 0;
            if self.rt.block_on(self.dp.link_exists(&ifname))? {
                if self.wg.rule(&settings, false)? {
                    writes += 1;
                }
                self.rt.block_on(self.dp.delete_link(&ifname))?;
                self.wg.stopped();
                writes += 1;
                tracing::info!(%ifname, "WireGuard disabled: device removed");
            }
            self.metrics.wireguard_peers.set(0);
            self.metrics.dataplane_writes.inc_by(writes);
            self.writes_total += writes;
            return Ok(None);
        }
        let mut writes = 0;
        let exists = self.rt.block_on(self.dp.link_exists(&ifname))?;
        if self.wg.ensure_device(exists)? {
            writes += 1;
        }
        let mtu = calinet_wg::routing::device_mtu(self.facts.mtu, calinet_wg::Family::V4);
        if self.rt.block_on(self.dp.ensure_link_up(&ifname, mtu))? == Some(true) {
            writes += 1;
        }
        let key = self.wg.key()?.clone();
        let (computed, routes) = wireguard::compute(view, &self.node, &key, &settings)?;
        for p in &mut desired.peers {
            p.path = if computed
                .peer_nodes
                .iter()
                .any(|(n, _)| n.as_str() == p.node)
            {
                format!("wireguard (underlying {})", p.path)
            } else {
                format!("{} (no WireGuard peer yet)", p.path)
            };
        }
        desired.routes.extend(routes);
        desired.routes.sort_by_key(|r| (r.table, r.destination));
        Ok(Some((computed, settings, writes)))
    }

    /// WireGuard after the routes: peers as a delta, then the fwmark rule
    /// once nothing is pending. Returns the writes.
    fn wireguard_after(
        &mut self,
        wg: Option<(calinet_wg::Computed, calinet_wg::DeviceSettings, u64)>,
        pending: usize,
    ) -> Result<u64> {
        let Some((computed, settings, mut writes)) = wg else {
            return Ok(0);
        };
        writes += self.wg.sync(&computed)?;
        if pending == 0 && self.wg.rule(&settings, true)? {
            writes += 1;
        }
        self.metrics
            .wireguard_peers
            .set(computed.device.peers.len() as i64);
        Ok(writes)
    }

    fn update_ipam_metrics(&self, view: &ClusterView) {
        let aff = format!("host:{}", self.node);
        let mine: Vec<_> = view
            .ipam
            .blocks
            .iter()
            .filter(|(b, _)| b.affinity() == Some(aff.as_str()))
            .collect();
        self.metrics.ipam_blocks.set(mine.len() as i64);
        let used: u32 = mine.iter().map(|(b, _)| b.allocated_count()).sum();
        self.metrics.ipam_addresses_in_use.set(i64::from(used));
    }

    /// Creates this node's Node resource from the uplink's address (Calico's
    /// address autodetection), when nobody applied one.
    fn create_own_node(&mut self) -> Result<()> {
        let addr = self
            .rt
            .block_on(self.dp.uplink_address(&self.facts.uplink))?
            .ok_or_else(|| {
                Error::Usage(format!(
                    "node {} has no Node resource and uplink {} has no IPv4 address to autodetect",
                    self.node, self.facts.uplink
                ))
            })?;
        let node = CalicoNode {
            api_version: CALICO_API.into(),
            kind: "Node".into(),
            metadata: Meta {
                name: self.node.clone(),
                ..Meta::default()
            },
            spec: NodeSpec {
                bgp: Some(NodeBgp {
                    ipv4_address: Some(addr),
                    ..NodeBgp::default()
                }),
                ..NodeSpec::default()
            },
            status: NodeStatus::default(),
        };
        let key = format!("{}{}", keys::NODES, self.node);
        match self
            .store
            .create(&key, &serde_json::to_vec(&node).expect("serialises"))
        {
            Ok(_) => {
                tracing::info!(node = %self.node, %addr, "created Node resource from the uplink address");
                Ok(())
            }
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Tunnel address, pod addresses and releases. Returns the pods' addresses
    /// and whether anything was written.
    fn ipam_step(&mut self, view: &ClusterView) -> Result<(BTreeMap<String, Ipv4Addr>, bool)> {
        let now = SystemTime::now();
        let mut wrote = false;
        let (node_res, node_rev) = view
            .nodes
            .get(&self.node)
            .cloned()
            .ok_or_else(|| Error::Usage(format!("node {} has no Node resource", self.node)))?;
        let labels = node_res.metadata.labels.clone();
        let tunnel_handle = HandleId::tunnel(TunnelKind::Vxlan, &self.node_name);

        // Addresses by handle, from the blocks in the view.
        let mut by_handle: BTreeMap<String, Vec<(IpAddr, String)>> = BTreeMap::new();
        for (b, _) in &view.ipam.blocks {
            for (o, a) in b.allocations() {
                if let Some(h) = &a.handle {
                    let user = a
                        .secondary
                        .as_ref()
                        .and_then(|s| s.get("node").cloned())
                        .unwrap_or_default();
                    by_handle
                        .entry(h.to_string())
                        .or_default()
                        .push((b.addr(o), user));
                }
            }
        }

        // The VXLAN tunnel address (claims this node's first block).
        let mut wanted_node = node_res.clone();
        if plan::wants_vxlan(view) {
            let tunnel = match by_handle
                .get(tunnel_handle.as_str())
                .and_then(|v| v.first())
            {
                Some((IpAddr::V4(a), _)) => *a,
                _ => {
                    let a = self.ipam.assign_tunnel_addr(
                        TunnelKind::Vxlan,
                        &self.node_name,
                        &labels,
                        now,
                    )?;
                    wrote = true;
                    tracing::info!(address = %a.addr, block = %a.block, "assigned VXLAN tunnel address");
                    match a.addr {
                        IpAddr::V4(v4) => v4,
                        IpAddr::V6(_) => unreachable!("an IPv4 tunnel address was asked for"),
                    }
                }
            };
            wanted_node.spec.ipv4_vxlan_tunnel_addr = Some(tunnel);
            let mac = calinet_encap::MacAddr::calico_vtep(
                &self
                    .node
                    .parse()
                    .map_err(|e: calinet_encap::Error| Error::Usage(e.to_string()))?,
                calinet_encap::Family::V4,
            );
            wanted_node.spec.vxlan_tunnel_mac_addr = Some(mac.to_string());
        } else if by_handle.contains_key(tunnel_handle.as_str())
            || node_res.spec.ipv4_vxlan_tunnel_addr.is_some()
        {
            self.ipam.release_handle(&tunnel_handle, now)?;
            wrote = true;
            wanted_node.spec.ipv4_vxlan_tunnel_addr = None;
            wanted_node.spec.vxlan_tunnel_mac_addr = None;
            tracing::info!("released the VXLAN tunnel address: no pool uses VXLAN");
        }
        wanted_node.status.wireguard_public_key = if view.wireguard_enabled(&self.node) {
            Some(self.wg.key()?.public_key().to_base64())
        } else {
            None
        };
        // The IPIP tunnel address (`tunl0`), when a pool uses IPIP.
        let ipip_handle = HandleId::tunnel(TunnelKind::Ipip, &self.node_name);
        if plan::wants_ipip(view) {
            let tunnel = match by_handle.get(ipip_handle.as_str()).and_then(|v| v.first()) {
                Some((IpAddr::V4(a), _)) => *a,
                _ => {
                    let a = self.ipam.assign_tunnel_addr(
                        TunnelKind::Ipip,
                        &self.node_name,
                        &labels,
                        now,
                    )?;
                    wrote = true;
                    tracing::info!(address = %a.addr, block = %a.block, "assigned IPIP tunnel address");
                    match a.addr {
                        IpAddr::V4(v4) => v4,
                        IpAddr::V6(_) => unreachable!("an IPv4 tunnel address was asked for"),
                    }
                }
            };
            wanted_node.spec.ipv4_ipip_tunnel_addr = Some(tunnel);
        } else if by_handle.contains_key(ipip_handle.as_str())
            || node_res.spec.ipv4_ipip_tunnel_addr.is_some()
        {
            self.ipam.release_handle(&ipip_handle, now)?;
            wrote = true;
            wanted_node.spec.ipv4_ipip_tunnel_addr = None;
            tracing::info!("released the IPIP tunnel address: no pool uses IPIP");
        }
        if wanted_node != node_res {
            let key = format!("{}{}", keys::NODES, self.node);
            put_if_changed(
                self.store.as_ref(),
                &key,
                &serde_json::to_vec(&wanted_node).expect("serialises"),
                Some(node_rev),
            )?;
            wrote = true;
        }

        // Pod addresses.
        let mut addrs = BTreeMap::new();
        let mut live = BTreeSet::new();
        for pod in plan::local_pods(view, &self.node) {
            let handle = pod.handle();
            live.insert(handle.as_str().to_owned());
            if pod.netns().is_none() {
                continue;
            }
            let existing = by_handle.get(handle.as_str()).and_then(|v| {
                v.iter().find_map(|(a, _)| match a {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
            });
            let addr = match existing {
                Some(a) => a,
                None => {
                    let req = AutoAssignRequest {
                        handle: handle.clone(),
                        node: self.node_name.clone(),
                        node_labels: labels.clone(),
                        num_v4: 1,
                        num_v6: 0,
                        attributes: BTreeMap::from([
                            ("node".to_owned(), self.node.clone()),
                            ("namespace".to_owned(), pod.namespace().to_owned()),
                            ("pod".to_owned(), pod.metadata.name.clone()),
                        ]),
                        ip_use: AllowedUse::Workload,
                        pools: Vec::new(),
                    };
                    let got = self.ipam.auto_assign(&req, now)?;
                    wrote = true;
                    let a = got.v4.first().ok_or_else(|| {
                        Error::Usage(format!("IPAM gave pod {} no IPv4 address", pod.key()))
                    })?;
                    tracing::info!(pod = %pod.key(), address = %a.addr, block = %a.block,
                        borrowed = a.borrowed, "assigned pod address");
                    match a.addr {
                        IpAddr::V4(v4) => v4,
                        IpAddr::V6(_) => unreachable!("IPv4 was asked for"),
                    }
                }
            };
            addrs.insert(pod.key(), addr);
        }
        // Releases: pod handles used on this node whose pod is gone.
        for (handle, uses) in &by_handle {
            if handle.starts_with("k8s-pod-network.")
                && uses.iter().any(|(_, user)| user == &self.node)
                && !live.contains(handle)
                && !view.pods.values().any(|p| p.handle().as_str() == handle)
            {
                let h: HandleId = handle.parse()?;
                let released = self.ipam.release_handle(&h, now)?;
                wrote = true;
                tracing::info!(%handle, ?released, "released addresses of a pod that is gone");
            }
        }
        Ok((addrs, wrote))
    }

    fn publish_weps(&self, view: &ClusterView, desired: &Desired) -> Result<()> {
        let mut wanted = BTreeSet::new();
        for w in &desired.workloads {
            let pod = &w.pod;
            let name = wep_name(&self.node, &pod.metadata.name, "eth0");
            let key = format!("{}{}/{}", keys::WEPS, pod.namespace(), name);
            // Identity labels come from the namespace, never from the pod.
            let mut labels = calinet_policy::model::without_reserved_labels(&pod.metadata.labels);
            labels.insert(
                "projectcalico.org/namespace".into(),
                pod.namespace().to_owned(),
            );
            labels.insert("projectcalico.org/orchestrator".into(), "k8s".into());
            let wep = WorkloadEndpoint {
                api_version: CALICO_API.into(),
                kind: "WorkloadEndpoint".into(),
                metadata: Meta {
                    name,
                    namespace: Some(pod.namespace().to_owned()),
                    labels,
                    ..Meta::default()
                },
                spec: WorkloadEndpointSpec {
                    orchestrator: "k8s".into(),
                    node: self.node.clone(),
                    pod: pod.metadata.name.clone(),
                    endpoint: "eth0".into(),
                    interface_name: w.spec.host_ifname.to_string(),
                    ip_networks: w
                        .spec
                        .ipv4
                        .map(|a| ipnet::IpNet::from(IpAddr::V4(a)))
                        .into_iter()
                        .collect(),
                    profiles: vec![format!("kns.{}", pod.namespace())],
                    ports: pod
                        .spec
                        .containers
                        .iter()
                        .flat_map(|c| &c.ports)
                        .filter_map(|p| {
                            Some(WepPort {
                                name: p.name.clone()?,
                                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                                port: p.container_port,
                            })
                        })
                        .collect(),
                },
            };
            let current = view.weps.get(&key);
            if current.map(|(w, _)| w) != Some(&wep) {
                put_if_changed(
                    self.store.as_ref(),
                    &key,
                    &serde_json::to_vec(&wep).expect("serialises"),
                    current.map(|(_, r)| *r),
                )?;
            }
            wanted.insert(key);
        }
        for (key, (w, _)) in &view.weps {
            if w.spec.node == self.node && !wanted.contains(key) {
                delete_if_present(self.store.as_ref(), key)?;
            }
        }
        Ok(())
    }

    /// Publishes the agent's status when it changed, and at least every 5 s
    /// (the heartbeat `node status` reads).
    fn publish_status(
        &mut self,
        view: &ClusterView,
        planned: Option<(&Desired, bool)>,
        now: Instant,
    ) -> Result<()> {
        let mut status = match (&self.last_status, planned) {
            (Some((s, _)), None) => s.clone(),
            (_, Some((d, converged))) => AgentStatus {
                node: self.node.clone(),
                address: view
                    .nodes
                    .get(&self.node)
                    .and_then(|(n, _)| n.ipv4())
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                started: self.started,
                last_reconcile: 0,
                converged,
                peers: d.peers.clone(),
                routes: d.routes.len(),
                endpoints: d.workloads.len(),
                dataplane_writes: self.writes_total,
            },
            (None, None) => return Ok(()),
        };
        let changed = self.last_status.as_ref().is_none_or(|(s, at)| {
            let mut old = s.clone();
            old.last_reconcile = 0;
            let mut new = status.clone();
            new.last_reconcile = 0;
            old != new || now.duration_since(*at) >= Duration::from_secs(5)
        });
        if !changed {
            return Ok(());
        }
        status.last_reconcile = unix(SystemTime::now());
        let key = format!("{}{}", keys::STATUS, self.node);
        put_if_changed(
            self.store.as_ref(),
            &key,
            &serde_json::to_vec(&status).expect("serialises"),
            None,
        )?;
        self.last_status = Some((status, now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let waits: Vec<_> = (0..5).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed().as_millis(), 200);
    }
}
