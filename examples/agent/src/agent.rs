//! `run --node NAME`: the node agent's loop.
//!
//! Every tick: read the cluster view (polling the store), do this node's IPAM
//! (tunnel addresses; gone pods released through calinet-attach), plan
//! (pure), attach this node's pods through calinet-attach (addresses, IPv4
//! and IPv6, then veth, addresses and routes), apply tunnel links, routes and
//! VTEP entries (netlink), publish WorkloadEndpoints and the agent's status.
//! A full resync re-verifies every workload against the kernel. Datastore errors leave the dataplane as
//! it is and are retried with exponential backoff. SIGTERM / SIGINT stop the
//! loop cleanly (the dataplane stays, as with Calico).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calinet_attach::{
    AddressManager, FamilyRequest, IpamAddresses, KernelPlumber, Plumber as _, Request,
};
use calinet_ipam::{HandleId, NodeName, Store, TunnelKind};
use calinet_route::{IfName, ResyncTimer, RouteProtocol, WorkloadSpec};
use ipnet::IpNet;

use crate::bgp::{self, BgpPlane};
use crate::dataplane::Dataplane;
use crate::datastore::{
    AgentStatus, ClusterSource, ClusterView, DynStore, PollingSource, delete_if_present,
    put_if_changed,
};
use crate::error::{Error, Result, chain};
use crate::http::{Endpoints, Health};
use crate::metrics::{Counts, Metrics};
use crate::plan::{self, Desired, LocalFacts};
use crate::policy::{self, PolicyPlane};
use crate::resources::{
    CALICO_API, CalicoNode, NodeExt as _, ObjectMeta, WepPort, WorkloadEndpoint,
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
    /// Where to serve `/liveness` and `/readiness` (`None`: not at all).
    pub health: Option<SocketAddr>,
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
    /// Pod (and tunnel) addresses: calinet-attach's IPAM edge.
    addresses: IpamAddresses<DynStore>,
    /// Pod plumbing: calinet-attach's kernel edge, in the agent's namespace.
    plumber: KernelPlumber,
    /// Workloads as last attached and verified, so steady-state ticks skip
    /// the per-workload kernel check (a full check runs on every resync).
    attached: BTreeMap<IfName, WorkloadSpec>,
    /// Interfaces removed by releases since the last dataplane report.
    detach_writes: u64,
    source: Box<dyn ClusterSource>,
    /// Drives the netlink edge. The loop itself is synchronous, so blocking
    /// datastores (etcd's client refuses calls from inside a runtime) can be
    /// called directly.
    rt: tokio::runtime::Runtime,
    dp: Dataplane,
    policy: PolicyPlane,
    wg: WgPlane,
    /// `--uplink`, when given (else the default route's device).
    uplink: Option<String>,
    /// BIRD, run and configured by this agent when BGP is on.
    bgp: BgpPlane,
    /// The uplink and its MTU as read on the last tick.
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

/// Serves metrics and health and turns SIGTERM / SIGINT into `stop`, on its
/// own thread. A server that cannot bind is logged and left out; the agent
/// runs on.
fn spawn_control(servers: Vec<(SocketAddr, Endpoints)>, stop: Arc<AtomicBool>) -> Result<()> {
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
            for (addr, ep) in servers {
                let what = match ep {
                    Endpoints::Metrics(_) => "Prometheus metrics",
                    _ => "health (/liveness, /readiness)",
                };
                match crate::http::bind(addr).await {
                    Ok(listener) => {
                        tracing::info!(%addr, "serving {what}");
                        tokio::spawn(async move {
                            if let Err(e) = crate::http::serve(listener, ep).await {
                                tracing::error!(%addr, error = %e, "{what} server stopped");
                            }
                        });
                    }
                    Err(e) => tracing::error!(%addr, error = %e, "cannot serve {what}"),
                }
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
    let health = Health::new(crate::http::DEFAULT_LIVENESS_TIMEOUT);
    let stop = Arc::new(AtomicBool::new(false));
    let servers = (opts
        .metrics
        .map(|a| (a, Endpoints::Metrics(Box::new(metrics.clone()))))
        .into_iter())
    .chain(opts.health.map(|a| (a, Endpoints::Health(health.clone()))))
    .collect();
    spawn_control(servers, stop.clone())?;
    let rt = runtime()?;
    let mut dp = rt.block_on(Dataplane::open())?;
    let facts = rt.block_on(dp.local_facts(opts.uplink.as_deref()))?;
    tracing::info!(node = %opts.node, uplink = %facts.uplink, mtu = facts.mtu,
        gateway = ?facts.gateway_v4, "agent starting");
    let mut agent = Agent {
        node: opts.node.clone(),
        node_name,
        addresses: IpamAddresses::new(store.clone(), None),
        plumber: KernelPlumber::new().map_err(attach_err)?,
        attached: BTreeMap::new(),
        detach_writes: 0,
        source: Box::new(PollingSource::new(store.clone())),
        store,
        rt,
        dp,
        policy: PolicyPlane::default(),
        wg: WgPlane::new(opts.wireguard.clone()),
        uplink: opts.uplink.clone(),
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
        health.beat_at(now);
        let full = timer.due(now);
        if full {
            agent.metrics.resyncs_started.inc();
        }
        let t0 = Instant::now();
        match agent.tick(full, now) {
            Ok(ran) => {
                backoff.succeeded();
                agent.metrics.resync_state.set(3);
                health.set_ready(agent.last_converged);
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
                // Felix counts failed dataplane updates there, not datastore
                // or planning errors (calinet_errors_total has every kind).
                if matches!(kind, "dataplane" | "wireguard" | "policy") {
                    agent.metrics.dataplane_failures.inc();
                }
                health.set_ready(false);
                if kind == "datastore" {
                    agent.metrics.resync_state.set(1);
                }
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
        // The uplink's MTU is followed at run time: tunnel devices and
        // host-side veths are set from it on the next plan. A link dump per
        // tick; the uplink itself (default route) is looked for again only on
        // a full resync.
        let facts = if full {
            self.rt
                .block_on(self.dp.local_facts(self.uplink.as_deref()))?
        } else {
            let mut f = self.facts.clone();
            if let Some(mtu) = self.rt.block_on(self.dp.link_mtu(&f.uplink))? {
                f.mtu = mtu;
            }
            f
        };
        if facts != self.facts {
            tracing::info!(uplink = %facts.uplink, mtu = facts.mtu, was_mtu = self.facts.mtu,
                gateway = ?facts.gateway_v4, "uplink changed; planning again");
            self.facts = facts;
            self.last_converged = false;
        }
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
        if self.ipam_step(&view)? {
            view = self.source.snapshot()?;
        }
        let mut desired = self.plan(&view)?;
        let attached = self.attach_pods(&view, &desired, full)?;
        if attached.assigned {
            // New addresses: plan again so routes and endpoints include them.
            view = self.source.snapshot()?;
            desired = self.plan(&view)?;
        }
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
        let (rs, hash, rules) = policy::desired_ruleset(&view, &self.node, &desired.workloads)?;
        self.metrics
            .calc_graph_update_seconds
            .observe(now.elapsed().as_secs_f64());
        self.metrics
            .record_counts(&Counts::from_view(&view, &desired.workloads));
        let applying = Instant::now();
        let removed = self.remove_stale_workloads(&desired)?;
        let wg = self.wireguard_before(&view, &mut desired)?;
        let mut report = self.rt.block_on(self.dp.apply(&desired))?;
        if full {
            self.metrics
                .route_table_resync_seconds
                .observe(applying.elapsed().as_secs_f64());
        }
        report.writes += attached.writes + removed + std::mem::take(&mut self.detach_writes);
        report.pending += attached.pending;
        report.workloads_changed += attached.changed;
        report.workloads_removed += removed as usize;
        report.writes += self.wireguard_after(wg, report.pending)?;
        let nft_messages = self.policy.apply(&rs, &hash).inspect_err(|_| {
            self.metrics.nft_calls.inc();
            self.metrics.nft_errors.inc();
        })?;
        if nft_messages > 0 {
            self.metrics.nft_calls.inc();
        }
        report.writes += nft_messages;
        self.metrics
            .dataplane_apply_seconds
            .observe(applying.elapsed().as_secs_f64());
        self.metrics.policy_rules.set(rules as i64);
        self.metrics.record_nft(&rs);
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
        if let Some(addr) = view
            .nodes
            .get(&self.node)
            .and_then(|(n, _)| n.spec.wireguard.as_ref())
            .and_then(|w| w.interface_ipv4_address)
            && self.rt.block_on(self.dp.ensure_address(&ifname, addr))?
        {
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
        self.metrics.record_ipam(view, &self.node);
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
        let mut node = CalicoNode::new(&self.node_name);
        node.spec.bgp_mut().ipv4_address = Some(addr);
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

    /// Tunnel addresses, and releases of pods that are gone. Returns whether
    /// anything was written. Pods' addresses are [`Self::attach_pods`]'.
    fn ipam_step(&mut self, view: &ClusterView) -> Result<bool> {
        let now = SystemTime::now();
        let mut wrote = false;
        let (node_res, node_rev) = view
            .nodes
            .get(&self.node)
            .cloned()
            .ok_or_else(|| Error::Usage(format!("node {} has no Node resource", self.node)))?;
        let labels = node_res.metadata.labels.clone();
        let tunnel_handle = HandleId::tunnel(TunnelKind::Vxlan, &self.node_name);

        let by_handle = allocations(view);

        // The VXLAN tunnel address (claims this node's first block).
        let mut wanted_node = node_res.clone();
        if plan::wants_vxlan(view) {
            let tunnel = match by_handle
                .get(tunnel_handle.as_str())
                .and_then(|v| v.first())
            {
                Some(Held {
                    net: IpNet::V4(a), ..
                }) => a.addr(),
                _ => {
                    let a = self.addresses.ipam().assign_tunnel_addr(
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
            let mac =
                calinet_types::MacAddr::calico_vtep(&self.node_name, calinet_types::Family::V4);
            wanted_node.spec.vxlan_tunnel_mac_addr = Some(mac);
        } else if by_handle.contains_key(tunnel_handle.as_str())
            || node_res.spec.ipv4_vxlan_tunnel_addr.is_some()
        {
            self.addresses.ipam().release_handle(&tunnel_handle, now)?;
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
        // The WireGuard device's address (Calico: `wireguard-tunnel-addr-<node>`,
        // published as `spec.wireguard.interfaceIPv4Address`).
        let wg_handle = HandleId::tunnel(TunnelKind::Wireguard, &self.node_name);
        let wg_addr = node_res
            .spec
            .wireguard
            .as_ref()
            .and_then(|w| w.interface_ipv4_address);
        if view.wireguard_enabled(&self.node) {
            let addr = match by_handle.get(wg_handle.as_str()).and_then(|v| v.first()) {
                Some(Held {
                    net: IpNet::V4(a), ..
                }) => a.addr(),
                _ => {
                    let a = self.addresses.ipam().assign_tunnel_addr(
                        TunnelKind::Wireguard,
                        &self.node_name,
                        &labels,
                        now,
                    )?;
                    wrote = true;
                    tracing::info!(address = %a.addr, block = %a.block, "assigned WireGuard interface address");
                    match a.addr {
                        IpAddr::V4(v4) => v4,
                        IpAddr::V6(_) => unreachable!("an IPv4 tunnel address was asked for"),
                    }
                }
            };
            wanted_node.spec.wireguard_mut().interface_ipv4_address = Some(addr);
        } else if by_handle.contains_key(wg_handle.as_str()) || wg_addr.is_some() {
            self.addresses.ipam().release_handle(&wg_handle, now)?;
            wrote = true;
            wanted_node.spec.wireguard = None;
            tracing::info!("released the WireGuard interface address: WireGuard is disabled");
        }
        // The IPIP tunnel address (`tunl0`), when a pool uses IPIP.
        let ipip_handle = HandleId::tunnel(TunnelKind::Ipip, &self.node_name);
        if plan::wants_ipip(view) {
            let tunnel = match by_handle.get(ipip_handle.as_str()).and_then(|v| v.first()) {
                Some(Held {
                    net: IpNet::V4(a), ..
                }) => a.addr(),
                _ => {
                    let a = self.addresses.ipam().assign_tunnel_addr(
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
            wanted_node.spec.bgp_mut().ipv4_ipip_tunnel_addr = Some(tunnel);
        } else if by_handle.contains_key(ipip_handle.as_str())
            || node_res.spec.ipip_tunnel_addr().is_some()
        {
            self.addresses.ipam().release_handle(&ipip_handle, now)?;
            wrote = true;
            if let Some(bgp) = wanted_node.spec.bgp.as_mut() {
                bgp.ipv4_ipip_tunnel_addr = None;
            }
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

        // Releases: pod handles the agent allocated on this node whose pod is
        // gone. Through the attach core: the pod's interface (named from the
        // allocation's namespace and pod, removed only when it records the
        // agent as its owner) first, then the addresses. An allocation with a
        // `containerID` attribute was made by a CNI ADD: its DEL or GC
        // releases it, never the absence of a Pod resource.
        let live: BTreeSet<String> = view
            .pods
            .values()
            .map(|p| p.handle().as_str().to_owned())
            .collect();
        // A pod re-created under the same name (new handle) has the gone
        // one's interface name: that interface is the new pod's now.
        let live_ifnames: BTreeSet<IfName> = plan::local_pods(view, &self.node)
            .into_iter()
            .map(|p| IfName::calico_workload(p.namespace(), &p.metadata.name))
            .collect();
        for (handle, uses) in &by_handle {
            let Some(first) = uses.first() else { continue };
            if handle.starts_with("k8s-pod-network.")
                && uses
                    .iter()
                    .any(|u| u.attr("node") == Some(self.node.as_str()))
                && uses.iter().all(|u| u.attr("containerID").is_none())
                && !live.contains(handle)
            {
                let h: HandleId = handle.parse()?;
                // The interface is named after the allocation's pod; without
                // one, only the addresses go (the stale-interface sweep
                // removes unplanned interfaces).
                let ifname = match (first.attr("namespace"), first.attr("pod")) {
                    (Some(ns), Some(pod)) => {
                        Some(IfName::calico_workload(ns, pod)).filter(|i| !live_ifnames.contains(i))
                    }
                    _ => None,
                };
                let released = match &ifname {
                    Some(i) => calinet_attach::release(
                        &mut self.addresses,
                        Some(&mut self.plumber),
                        &calinet_attach::Endpoint::new(h.clone(), i.clone(), None)
                            .owner(agent_owner(&h)),
                    )
                    .map_err(attach_err)?,
                    None => calinet_attach::Released::addresses(
                        self.addresses.release(&h).map_err(attach_err)?,
                    ),
                };
                if let Some(i) = &ifname {
                    self.attached.remove(i);
                }
                if released.interface_removed {
                    self.detach_writes += 1;
                }
                wrote = true;
                tracing::info!(%handle, interface_removed = released.interface_removed,
                    released = ?released.addresses, "released a pod that is gone");
            }
        }
        Ok(wrote)
    }

    /// Plans the node from the addresses the pods hold in `view`: calinet-encap
    /// and the routes through [`plan::plan`] (IPv4), plus each workload's IPv6
    /// address and its /128 host route.
    fn plan(&self, view: &ClusterView) -> Result<Desired> {
        let held = pod_addresses(view);
        let first = |pod: &crate::resources::Pod, v6: bool| {
            held.get(pod.handle().as_str())
                .and_then(|nets| nets.iter().find(|n| n.addr().is_ipv6() == v6))
                .map(IpNet::addr)
        };
        let v4: BTreeMap<String, Ipv4Addr> = plan::local_pods(view, &self.node)
            .into_iter()
            .filter_map(|p| match first(p, false)? {
                IpAddr::V4(a) => Some((p.key(), a)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let mut desired = plan::plan(view, &self.node, &self.facts, &v4)?;
        for w in &mut desired.workloads {
            let Some(IpAddr::V6(a)) = first(&w.pod, true) else {
                continue;
            };
            w.spec.ipv6 = Some(a);
            desired.routes.extend(
                w.spec
                    .host_routes(RouteProtocol::CALICO)
                    .into_iter()
                    .filter(|r| r.destination.addr().is_ipv6()),
            );
        }
        desired.routes.sort_by_key(|r| r.destination);
        Ok(desired)
    }

    /// Attaches this node's pods that have a sandbox through calinet-attach:
    /// the addresses their handle holds (else one IPv4, and one IPv6 when an
    /// IPv6 pool is enabled), then their veth, addresses and routes. A pod
    /// whose attach fails is left out (its failed attach undone) and counted
    /// as pending; a datastore failure fails the tick.
    fn attach_pods(&mut self, view: &ClusterView, desired: &Desired, full: bool) -> Result<Attach> {
        let mut out = Attach::default();
        let labels = view
            .nodes
            .get(&self.node)
            .map(|(n, _)| n.metadata.labels.clone())
            .unwrap_or_default();
        let ipv6 = view
            .ipam
            .pools
            .iter()
            .any(|p| p.enabled() && p.spec.cidr.addr().is_ipv6());
        let planned: BTreeMap<&IfName, &WorkloadSpec> = desired
            .workloads
            .iter()
            .map(|w| (&w.spec.host_ifname, &w.spec))
            .collect();
        let mut ipam = ViewAddresses {
            held: pod_addresses(view),
            inner: &mut self.addresses,
        };
        for pod in plan::local_pods(view, &self.node) {
            let Some(netns) = pod.netns() else { continue };
            let ifname = IfName::calico_workload(pod.namespace(), &pod.metadata.name);
            if !full
                && planned
                    .get(&ifname)
                    .is_some_and(|s| self.attached.get(&ifname) == Some(*s))
            {
                continue;
            }
            let req = Request::new(
                pod.handle(),
                self.node_name.clone(),
                ifname.clone(),
                Some(netns.into()),
                desired.decisions.mtu.pod,
            )
            .pod(pod.namespace(), &pod.metadata.name)
            .owner(agent_owner(&pod.handle()))
            .node_labels(labels.clone())
            .ipv6(ipv6.then(FamilyRequest::any));
            match calinet_attach::add(&mut ipam, &mut self.plumber, &req) {
                Ok(a) => {
                    if a.allocation.fresh {
                        out.assigned = true;
                        tracing::info!(pod = %pod.key(), addresses = ?a.allocation.nets,
                            "assigned pod addresses");
                    }
                    if a.plumbed.changed {
                        out.changed += 1;
                        tracing::info!(pod = %pod.key(), interface = %ifname, "workload plumbed");
                    }
                    out.writes += a.plumbed.writes;
                    self.attached.insert(ifname, a.spec);
                }
                Err(e) if e.is_datastore_failure() => return Err(attach_err(e)),
                Err(e) => {
                    self.attached.remove(&ifname);
                    out.pending += 1;
                    tracing::warn!(pod = %pod.key(), error = %calinet_attach::chain(&e),
                        "pod not attached yet");
                }
            }
        }
        Ok(out)
    }

    /// Removes workload interfaces (`cali*` veths) no planned pod uses, through
    /// the attach core's plumber. Returns how many it removed.
    fn remove_stale_workloads(&mut self, desired: &Desired) -> Result<u64> {
        let wanted: BTreeSet<&IfName> = desired
            .workloads
            .iter()
            .map(|w| &w.spec.host_ifname)
            .collect();
        let eth0 = IfName::new("eth0")?;
        let mut removed = 0;
        for name in self.rt.block_on(self.dp.workload_links())? {
            if wanted.contains(&name) {
                continue;
            }
            // Only interfaces the agent made (their alias names the agent):
            // a CNI plugin's workloads and unknown `cali*` veths stay (policy
            // drops an unknown interface's traffic).
            let Some(owner) = self
                .rt
                .block_on(self.dp.workload_owner(&name))?
                .filter(|o| o.starts_with(AGENT_OWNER_PREFIX))
            else {
                continue;
            };
            if self
                .plumber
                .teardown(&name, None, &eth0, Some(&owner))
                .map_err(attach_err)?
            {
                removed += 1;
                tracing::info!(interface = %name, "removed workload interface of a pod that is gone");
            }
            self.attached.remove(&name);
        }
        Ok(removed)
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
                metadata: ObjectMeta::named(name)
                    .namespace(pod.namespace())
                    .labels(labels),
                spec: WorkloadEndpointSpec {
                    orchestrator: "k8s".into(),
                    node: self.node.clone(),
                    pod: pod.metadata.name.clone(),
                    container_id: None,
                    endpoint: "eth0".into(),
                    interface_name: w.spec.host_ifname.to_string(),
                    ip_networks: w
                        .spec
                        .ipv4
                        .map(IpAddr::V4)
                        .into_iter()
                        .chain(w.spec.ipv6.map(IpAddr::V6))
                        .map(IpNet::from)
                        .collect(),
                    mac: None,
                    profiles: vec![format!("kns.{}", pod.namespace())],
                    service_account_name: None,
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
        // Only endpoints the agent wrote: one with a containerID is a CNI
        // ADD's, removed by that container's DEL.
        for (key, (w, _)) in &view.weps {
            if w.spec.node == self.node && w.spec.container_id.is_none() && !wanted.contains(key) {
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

/// What [`Agent::attach_pods`] did.
#[derive(Debug, Default)]
struct Attach {
    /// Some pod got new addresses.
    assigned: bool,
    /// Netlink writes.
    writes: u64,
    /// Pods plumbed or rebuilt.
    changed: usize,
    /// Pods not attached (their attach failed).
    pending: usize,
}

/// One address of a handle, with its allocation's attributes.
#[derive(Debug, Clone)]
struct Held {
    /// The address with its block's prefix length.
    net: IpNet,
    /// The allocation's owner attributes (`node`, `namespace`, `pod`).
    attrs: Option<Arc<BTreeMap<String, String>>>,
}

impl Held {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.as_deref()?.get(key).map(String::as_str)
    }
}

/// Every allocation in the view's blocks, by handle.
fn allocations(view: &ClusterView) -> BTreeMap<String, Vec<Held>> {
    let mut by_handle: BTreeMap<String, Vec<Held>> = BTreeMap::new();
    for (b, _) in &view.ipam.blocks {
        for (o, a) in b.allocations() {
            if let Some(h) = &a.handle {
                by_handle.entry(h.to_string()).or_default().push(Held {
                    net: IpNet::new(b.addr(o), b.cidr().net().prefix_len())
                        .expect("a block's prefix length fits its family"),
                    attrs: a.secondary.clone(),
                });
            }
        }
    }
    by_handle
}

/// The addresses each handle holds in the view (with their block's prefix).
fn pod_addresses(view: &ClusterView) -> BTreeMap<String, Vec<IpNet>> {
    allocations(view)
        .into_iter()
        .map(|(h, v)| (h, v.into_iter().map(|a| a.net).collect()))
        .collect()
}

/// The attach core's address manager with `held` answered from the cluster
/// view the tick planned from (no datastore read per pod); assignments and
/// releases go to the datastore.
struct ViewAddresses<'a> {
    held: BTreeMap<String, Vec<IpNet>>,
    inner: &'a mut IpamAddresses<DynStore>,
}

impl AddressManager for ViewAddresses<'_> {
    fn held(&mut self, handle: &HandleId) -> calinet_attach::Result<Vec<IpNet>> {
        Ok(self.held.get(handle.as_str()).cloned().unwrap_or_default())
    }

    fn assign(
        &mut self,
        params: &calinet_attach::AssignParams,
    ) -> calinet_attach::Result<Vec<IpNet>> {
        self.inner.assign(params)
    }

    fn release(&mut self, handle: &HandleId) -> calinet_attach::Result<Vec<IpAddr>> {
        self.held.remove(handle.as_str());
        self.inner.release(handle)
    }
}

/// The agent's error for an attach-core error: IPAM and netlink failures
/// keep their kind (the errors metric's label); the rest are reported with
/// their whole chain.
/// What the agent records as the owner of the workloads it plumbs (the host
/// side's alias): this prefix and the pod's handle. A CNI plugin records its
/// container id, which cannot contain `:`, so the two never collide.
const AGENT_OWNER_PREFIX: &str = "calinet-agent:";

fn agent_owner(handle: &HandleId) -> String {
    format!("{AGENT_OWNER_PREFIX}{handle}")
}

fn attach_err(e: calinet_attach::Error) -> Error {
    match e.into_cause() {
        calinet_attach::Error::Ipam { source, .. } => Error::Ipam(source),
        calinet_attach::Error::Plumbing { source, .. } => Error::Route(source),
        other => Error::Usage(calinet_attach::chain(&other)),
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
