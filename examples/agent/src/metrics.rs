//! Prometheus metrics (prometheus-client), in the Prometheus text format
//! (0.0.4) that Felix serves on port 9091.
//!
//! Three groups share one registry:
//!
//! - Felix's names, types and labels where the agent does what Felix does
//!   (`felix_cluster_num_hosts`, `felix_active_local_endpoints`,
//!   `felix_int_dataplane_apply_time_seconds`, `felix_resyncs_started`, ...).
//!   Felix's counters carry no `_total` suffix (client_golang's classic
//!   format); prometheus-client appends one to every counter, so those are
//!   [`FelixCounter`]s, encoded untyped and re-typed `counter` in
//!   [`Metrics::render`].
//! - kube-controllers' IPAM gauges (`ipam_allocations_in_use{ippool,node}`,
//!   `ipam_blocks_per_node{node}`, `ipam_ippool_size{ippool}`), for this
//!   node's share.
//! - calinet's own `calinet_*` families, for what Felix has no name for.
//!
//! Plus the standard `process_*` metrics, read from `/proc/self` at scrape time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::datastore::ClusterView;
use crate::plan::LocalWorkload;

/// Felix's metrics port.
pub const DEFAULT_PORT: u16 = 9091;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Labels = Vec<(String, String)>;

/// The error kinds the `calinet_errors_total` family always shows (at 0
/// until one happens, so queries over them return data from the start).
pub const ERROR_KINDS: [&str; 7] = [
    "datastore",
    "ipam",
    "dataplane",
    "plan",
    "wireguard",
    "policy",
    "other",
];

/// A counter exposed under its bare name, as Felix's counters are
/// (`felix_resyncs_started`, not `felix_resyncs_started_total`).
#[derive(Debug, Clone, Default)]
pub struct FelixCounter(Arc<AtomicU64>);

impl FelixCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for FelixCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        // Untyped keeps the name bare; `render` writes `counter` in the TYPE line.
        MetricType::Unknown
    }
}

/// Every metric the agent exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reconcile durations (`calinet_reconcile_duration_seconds`).
    pub reconcile_seconds: Histogram,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Dataplane writes (netlink requests, WireGuard and nftables updates).
    pub dataplane_writes: Counter,
    /// Errors by kind (`datastore`, `ipam`, `dataplane`, `plan`, ...).
    pub errors: Family<Labels, Counter>,
    /// Routes the agent owns.
    pub routes: Gauge,
    /// Workload endpoints on the node.
    pub endpoints: Gauge,
    /// VXLAN VTEP neighbours.
    pub vxlan_neighbours: Gauge,
    /// WireGuard peers.
    pub wireguard_peers: Gauge,
    /// nftables rules programmed (policy and NAT).
    pub policy_rules: Gauge,
    /// Addresses allocated on this node (pods and tunnel).
    pub ipam_addresses_in_use: Gauge,
    /// Blocks affine to this node.
    pub ipam_blocks: Gauge,
    /// 1 when the last reconcile left nothing pending.
    pub converged: Gauge,

    /// `felix_cluster_num_hosts`: Node resources in the cluster.
    pub cluster_num_hosts: Gauge,
    /// `felix_cluster_num_workload_endpoints`: WorkloadEndpoints cluster-wide.
    pub cluster_num_workload_endpoints: Gauge,
    /// `felix_cluster_num_policies`: policies of every kind cluster-wide.
    pub cluster_num_policies: Gauge,
    /// `felix_cluster_num_profiles`: profiles, stored and per-namespace.
    pub cluster_num_profiles: Gauge,
    /// `felix_cluster_num_tiers`: tiers (the implicit `default` included).
    pub cluster_num_tiers: Gauge,
    /// `felix_active_local_endpoints`: endpoints programmed on this node.
    pub active_local_endpoints: Gauge,
    /// `felix_active_local_policies`: policies selecting a local endpoint.
    pub active_local_policies: Gauge,
    /// `felix_active_local_selectors`: distinct rule selectors of those.
    pub active_local_selectors: Gauge,
    /// `felix_calc_graph_update_time_seconds`: read and plan time per reconcile.
    pub calc_graph_update_seconds: Histogram,
    /// `felix_int_dataplane_apply_time_seconds`: dataplane apply time.
    pub dataplane_apply_seconds: Histogram,
    /// `felix_int_dataplane_failures`: failed dataplane updates (routes,
    /// links, WireGuard, nftables) that will be retried.
    pub dataplane_failures: FelixCounter,
    /// `felix_resyncs_started`: full resyncs with the datastore and kernel.
    pub resyncs_started: FelixCounter,
    /// `felix_resync_state`: 1 waiting for the datastore, 3 in sync.
    pub resync_state: Gauge,
    /// `felix_route_table_resync_seconds`: time of a full resync's apply.
    pub route_table_resync_seconds: Histogram,
    /// `felix_nft_calls`: nftables transactions sent.
    pub nft_calls: FelixCounter,
    /// `felix_nft_errors`: nftables transactions that failed.
    pub nft_errors: FelixCounter,
    /// `felix_nft_chains{ip_version,table}`: chains of the agent's table.
    pub nft_chains: Family<Labels, Gauge>,
    /// `felix_nft_rules{ip_version,table}`: rules of the agent's table.
    pub nft_rules: Family<Labels, Gauge>,
    /// `felix_nft_maps{ip_version}`: verdict maps of the agent's table.
    pub nft_maps: Family<Labels, Gauge>,
    /// `felix_ipsets_calico{ip_version}`: address sets of the agent's table.
    pub ipsets_calico: Family<Labels, Gauge>,

    /// `ipam_allocations_in_use{ippool,node}` for this node.
    pub ipam_allocations_in_use: Family<Labels, Gauge>,
    /// `ipam_blocks_per_node{node}` for this node.
    pub ipam_blocks_per_node: Family<Labels, Gauge>,
    /// `ipam_ippool_size{ippool}`: addresses in each pool.
    pub ipam_ippool_size: Family<Labels, Gauge>,
    /// Pools of the last [`Metrics::record_ipam`], whose series go when the pool does.
    ipam_pools: Arc<std::sync::Mutex<BTreeSet<String>>>,

    registry: Arc<Registry>,
}

/// Names of the [`FelixCounter`]s, re-typed `counter` when rendering.
const FELIX_COUNTERS: [&str; 4] = [
    "felix_int_dataplane_failures",
    "felix_resyncs_started",
    "felix_nft_calls",
    "felix_nft_errors",
];

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let m = Metrics {
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconciles: Counter::default(),
            dataplane_writes: Counter::default(),
            errors: Family::default(),
            routes: Gauge::default(),
            endpoints: Gauge::default(),
            vxlan_neighbours: Gauge::default(),
            wireguard_peers: Gauge::default(),
            policy_rules: Gauge::default(),
            ipam_addresses_in_use: Gauge::default(),
            ipam_blocks: Gauge::default(),
            converged: Gauge::default(),
            cluster_num_hosts: Gauge::default(),
            cluster_num_workload_endpoints: Gauge::default(),
            cluster_num_policies: Gauge::default(),
            cluster_num_profiles: Gauge::default(),
            cluster_num_tiers: Gauge::default(),
            active_local_endpoints: Gauge::default(),
            active_local_policies: Gauge::default(),
            active_local_selectors: Gauge::default(),
            // Felix's buckets for these two (from when they were histograms;
            // newer Felix reports summaries, which prometheus-client lacks).
            calc_graph_update_seconds: Histogram::new([0.001, 0.01, 0.1, 1.0]),
            dataplane_apply_seconds: Histogram::new([0.02, 0.05, 0.1, 0.2, 0.5, 1.0]),
            dataplane_failures: FelixCounter::default(),
            resyncs_started: FelixCounter::default(),
            resync_state: Gauge::default(),
            route_table_resync_seconds: Histogram::new([0.001, 0.01, 0.1, 1.0, 10.0]),
            nft_calls: FelixCounter::default(),
            nft_errors: FelixCounter::default(),
            nft_chains: Family::default(),
            nft_rules: Family::default(),
            nft_maps: Family::default(),
            ipsets_calico: Family::default(),
            ipam_allocations_in_use: Family::default(),
            ipam_blocks_per_node: Family::default(),
            ipam_ippool_size: Family::default(),
            ipam_pools: Arc::default(),
            registry: Arc::new(Registry::default()),
        };
        let mut r = Registry::default();
        m.register_felix(&mut r);
        m.register_ipam(&mut r);
        m.register_calinet(r.sub_registry_with_prefix("calinet"));
        r.register_collector(Box::new(ProcessCollector));
        for kind in ERROR_KINDS {
            let _ = m.errors.get_or_create(&label("kind", kind));
        }
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    fn register_felix(&self, r: &mut Registry) {
        let gauges: [(&str, &str, &Gauge); 9] = [
            (
                "felix_cluster_num_hosts",
                "Total number of Calico hosts in the cluster",
                &self.cluster_num_hosts,
            ),
            (
                "felix_cluster_num_workload_endpoints",
                "Total number of workload endpoints cluster-wide",
                &self.cluster_num_workload_endpoints,
            ),
            (
                "felix_cluster_num_policies",
                "Total number of policies in the cluster",
                &self.cluster_num_policies,
            ),
            (
                "felix_cluster_num_profiles",
                "Total number of profiles in the cluster",
                &self.cluster_num_profiles,
            ),
            (
                "felix_cluster_num_tiers",
                "Total number of tiers in the cluster",
                &self.cluster_num_tiers,
            ),
            (
                "felix_active_local_endpoints",
                "Number of active endpoints on this host",
                &self.active_local_endpoints,
            ),
            (
                "felix_active_local_policies",
                "Number of active policies on this host",
                &self.active_local_policies,
            ),
            (
                "felix_active_local_selectors",
                "Number of active selectors on this host",
                &self.active_local_selectors,
            ),
            (
                "felix_resync_state",
                "Current datastore state (1 waiting for datastore, 3 in sync)",
                &self.resync_state,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        r.register(
            "felix_calc_graph_update_time_seconds",
            "Seconds to read the cluster view and plan the node's dataplane",
            self.calc_graph_update_seconds.clone(),
        );
        r.register(
            "felix_int_dataplane_apply_time_seconds",
            "Time in seconds that it took to apply a dataplane update",
            self.dataplane_apply_seconds.clone(),
        );
        r.register(
            "felix_route_table_resync_seconds",
            "Time taken to resync the routes (and every other dataplane object) in a full resync",
            self.route_table_resync_seconds.clone(),
        );
        let counters: [(&str, &str, &FelixCounter); 4] = [
            (
                FELIX_COUNTERS[0],
                "Number of times dataplane updates failed and will be retried",
                &self.dataplane_failures,
            ),
            (
                FELIX_COUNTERS[1],
                "Number of full resyncs started",
                &self.resyncs_started,
            ),
            (FELIX_COUNTERS[2], "Number of nft calls", &self.nft_calls),
            (FELIX_COUNTERS[3], "Number of nft errors", &self.nft_errors),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        let families: [(&str, &str, &Family<Labels, Gauge>); 4] = [
            (
                "felix_nft_chains",
                "Number of active nft chains",
                &self.nft_chains,
            ),
            (
                "felix_nft_rules",
                "Number of active nftables rules",
                &self.nft_rules,
            ),
            (
                "felix_nft_maps",
                "Number of active Calico nftables maps",
                &self.nft_maps,
            ),
            (
                "felix_ipsets_calico",
                "Number of active Calico IP sets",
                &self.ipsets_calico,
            ),
        ];
        for (name, help, f) in families {
            r.register(name, help, f.clone());
        }
    }

    fn register_ipam(&self, r: &mut Registry) {
        r.register(
            "ipam_allocations_in_use",
            "IPs currently allocated in IPAM to a workload or tunnel endpoint",
            self.ipam_allocations_in_use.clone(),
        );
        r.register(
            "ipam_blocks_per_node",
            "Number of blocks in IPAM",
            self.ipam_blocks_per_node.clone(),
        );
        r.register(
            "ipam_ippool_size",
            "Total number of addresses in the IP Pool",
            self.ipam_ippool_size.clone(),
        );
    }

    fn register_calinet(&self, r: &mut Registry) {
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile (read, plan, apply) took",
            self.reconcile_seconds.clone(),
        );
        r.register("reconciles", "Reconciles run", self.reconciles.clone());
        r.register(
            "dataplane_writes",
            "Dataplane write requests (netlink, WireGuard, nftables)",
            self.dataplane_writes.clone(),
        );
        r.register("errors", "Errors by kind", self.errors.clone());
        r.register("routes", "Routes owned by the agent", self.routes.clone());
        r.register(
            "workload_endpoints",
            "Workload endpoints on this node",
            self.endpoints.clone(),
        );
        r.register(
            "vxlan_neighbours",
            "VXLAN VTEP neighbours programmed",
            self.vxlan_neighbours.clone(),
        );
        r.register(
            "wireguard_peers",
            "WireGuard peers configured",
            self.wireguard_peers.clone(),
        );
        r.register(
            "policy_rules",
            "nftables rules programmed for policy and NAT",
            self.policy_rules.clone(),
        );
        r.register(
            "ipam_addresses_in_use",
            "Addresses allocated to this node (pods and tunnel)",
            self.ipam_addresses_in_use.clone(),
        );
        r.register(
            "ipam_blocks",
            "IPAM blocks affine to this node",
            self.ipam_blocks.clone(),
        );
        r.register(
            "converged",
            "1 when the last reconcile left nothing pending",
            self.converged.clone(),
        );
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&label("kind", kind)).inc();
    }

    /// Sets the cluster-wide and local counts from one reconcile's inputs.
    pub fn record_counts(&self, c: &Counts) {
        self.cluster_num_hosts.set(c.hosts as i64);
        self.cluster_num_workload_endpoints
            .set(c.workload_endpoints as i64);
        self.cluster_num_policies.set(c.policies as i64);
        self.cluster_num_profiles.set(c.profiles as i64);
        self.cluster_num_tiers.set(c.tiers as i64);
        self.active_local_endpoints.set(c.local_endpoints as i64);
        self.active_local_policies.set(c.local_policies as i64);
        self.active_local_selectors.set(c.local_selectors as i64);
    }

    /// Sets the nftables gauges from the table the agent installs. The one
    /// `inet` table carries both families; its chains, rules and maps are
    /// reported as `ip_version="4"`, its address sets by their family.
    pub fn record_nft(&self, rs: &calinet_policy::ir::Ruleset) {
        use calinet_policy::ir::SetElems;
        let table = vec![
            ("ip_version".to_owned(), "4".to_owned()),
            ("table".to_owned(), rs.table.clone()),
        ];
        self.nft_chains
            .get_or_create(&table)
            .set(rs.chains.len() as i64);
        let rules: usize = rs.chains.values().map(|c| c.rules.len()).sum();
        self.nft_rules.get_or_create(&table).set(rules as i64);
        let (mut v4, mut v6, mut maps) = (0i64, 0i64, 0i64);
        for set in rs.sets.values() {
            match set {
                SetElems::Addr4(_) | SetElems::Net4(_) | SetElems::AddrProtoPort4(_) => v4 += 1,
                SetElems::Addr6(_) | SetElems::Net6(_) | SetElems::AddrProtoPort6(_) => v6 += 1,
                SetElems::IfGoto(_) => maps += 1,
                // Port sets are not IP sets.
                _ => {}
            }
        }
        self.nft_maps
            .get_or_create(&label("ip_version", "4"))
            .set(maps);
        self.ipsets_calico
            .get_or_create(&label("ip_version", "4"))
            .set(v4);
        self.ipsets_calico
            .get_or_create(&label("ip_version", "6"))
            .set(v6);
    }

    /// Sets the IPAM gauges for `node` from the view: its blocks, its
    /// allocations per pool, and every pool's size.
    pub fn record_ipam(&self, view: &ClusterView, node: &str) {
        let aff = format!("host:{node}");
        let mut blocks = 0i64;
        let mut in_use: BTreeMap<String, i64> = BTreeMap::new();
        for pool in &view.ipam.pools {
            in_use.insert(pool.metadata.name.clone(), 0);
            let bits = if pool.spec.cidr.addr().is_ipv4() {
                32
            } else {
                128
            };
            let host_bits = bits - u32::from(pool.spec.cidr.prefix_len());
            let size = if host_bits >= 63 {
                i64::MAX
            } else {
                1i64 << host_bits
            };
            self.ipam_ippool_size
                .get_or_create(&label("ippool", &pool.metadata.name))
                .set(size);
        }
        for (b, _) in &view.ipam.blocks {
            let cidr = b.cidr();
            let pool = view
                .ipam
                .pools
                .iter()
                .find(|p| p.spec.cidr.contains(&cidr.net().network()))
                .map(|p| p.metadata.name.clone());
            if b.affinity() == Some(aff.as_str()) {
                blocks += 1;
                if let Some(pool) = pool {
                    *in_use.entry(pool).or_default() += i64::from(b.allocated_count());
                }
            }
        }
        self.ipam_blocks_per_node
            .get_or_create(&label("node", node))
            .set(blocks);
        let pool_labels = |pool: &str| {
            vec![
                ("ippool".to_owned(), pool.to_owned()),
                ("node".to_owned(), node.to_owned()),
            ]
        };
        let mut known = self
            .ipam_pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in known.iter().filter(|p| !in_use.contains_key(*p)) {
            self.ipam_allocations_in_use.remove(&pool_labels(gone));
            self.ipam_ippool_size.remove(&label("ippool", gone));
        }
        *known = in_use.keys().cloned().collect();
        for (pool, n) in in_use {
            self.ipam_allocations_in_use
                .get_or_create(&pool_labels(&pool))
                .set(n);
        }
    }

    /// The Prometheus text format (0.0.4), served with [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        for name in FELIX_COUNTERS {
            out = out.replacen(
                &format!("# TYPE {name} untyped\n"),
                &format!("# TYPE {name} counter\n"),
                1,
            );
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_owned(), v.to_owned())]
}

/// Cluster-wide and local counts Felix reports, computed from the cluster
/// view and the node's workloads (pure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Node resources.
    pub hosts: usize,
    /// WorkloadEndpoints.
    pub workload_endpoints: usize,
    /// Calico NetworkPolicies, GlobalNetworkPolicies and Kubernetes NetworkPolicies.
    pub policies: usize,
    /// Stored profiles plus one `kns.<namespace>` per pod namespace.
    pub profiles: usize,
    /// Tiers, the `default` tier always among them.
    pub tiers: usize,
    /// Workloads programmed on this node.
    pub local_endpoints: usize,
    /// Policies whose selector matches a local endpoint.
    pub local_policies: usize,
    /// Distinct rule selectors (selector and notSelector, source and
    /// destination) of the active local policies.
    pub local_selectors: usize,
}

impl Counts {
    /// Counts from `view` for a node whose workloads are `local`.
    pub fn from_view(view: &ClusterView, local: &[LocalWorkload]) -> Self {
        use calinet_policy::model::AnyResource;
        use calinet_policy::semantics::{Endpoint, Endpoints, PolicyModel};

        let mut tiers = BTreeSet::from(["default".to_owned()]);
        let mut profiles = BTreeSet::new();
        let mut policies = 0;
        for r in &view.policies {
            match r {
                AnyResource::Tier(t) => {
                    tiers.insert(t.metadata.name.clone());
                }
                AnyResource::Profile(p) => {
                    profiles.insert(p.metadata.name.clone());
                }
                AnyResource::NetworkPolicy(_)
                | AnyResource::GlobalNetworkPolicy(_)
                | AnyResource::K8sNetworkPolicy(_) => policies += 1,
                _ => {}
            }
        }
        for p in view.pods.values() {
            profiles.insert(format!("kns.{}", p.namespace()));
        }
        let (mut local_policies, mut selectors) = (0, BTreeSet::new());
        // A model that does not build is reported by the policy step; here it
        // only means no policy is counted as active.
        if let Ok(model) = PolicyModel::build(&view.policies) {
            let eps = Endpoints::new(
                &model,
                local.iter().map(|w| Endpoint {
                    name: w.pod.key(),
                    namespace: Some(w.pod.namespace().to_owned()),
                    local: true,
                    interface: w.spec.host_ifname.to_string(),
                    addrs: Vec::new(),
                    labels: w.pod.metadata.labels.clone(),
                    profiles: vec![format!("kns.{}", w.pod.namespace())],
                    named_ports: Vec::new(),
                }),
            );
            for tier in &model.tiers {
                for p in &tier.policies {
                    if eps.selected(&p.applies_to).next().is_none() {
                        continue;
                    }
                    local_policies += 1;
                    let rules = p.ingress.iter().chain(p.egress.iter()).flatten();
                    for r in rules {
                        for e in [&r.src, &r.dst] {
                            for s in [&e.selector, &e.not_selector].into_iter().flatten() {
                                selectors.insert(format!("{s:?}"));
                            }
                        }
                    }
                }
            }
        }
        Counts {
            hosts: view.nodes.len(),
            workload_endpoints: view.weps.len(),
            policies,
            profiles: profiles.len(),
            tiers: tiers.len(),
            local_endpoints: local.len(),
            local_policies,
            local_selectors: selectors.len(),
        }
    }
}

/// The standard `process_*` metrics of the running process, read from
/// `/proc/self` on every scrape (what client_golang's process collector
/// reports). A file that cannot be read leaves its metrics out of that scrape.
#[derive(Debug)]
struct ProcessCollector;

/// `/proc` reports CPU times in USER_HZ, which the kernel fixes at 100 for
/// user space on every architecture.
const USER_HZ: f64 = 100.0;

/// What the collector reads; `None` where the file was not readable.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures from `/proc`.
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let fields = stat.as_deref().map(stat_fields).unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // Fields after the command name, numbered as in proc(5) minus 3:
        // utime 14, stime 15, starttime 22, vsize 23.
        let cpu_seconds = field(11)
            .zip(field(12))
            .map(|(u, s)| (u + s) as f64 / USER_HZ);
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let start_time_seconds = boot
            .zip(field(19))
            .map(|(b, ticks)| b as f64 + ticks as f64 / USER_HZ);
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb * 1024);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Max open files"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            });
        ProcessStats {
            cpu_seconds,
            resident_bytes,
            virtual_bytes: field(20),
            open_fds,
            max_fds,
            start_time_seconds,
        }
    }
}

/// The fields of `/proc/<pid>/stat` after the `(comm)` field, which may
/// itself contain spaces and parentheses.
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let p = ProcessStats::read();
        if let Some(v) = p.cpu_seconds {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        let gauges: [(&str, &str, Option<u64>); 4] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                p.max_fds,
            ),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(m)?;
            }
        }
        if let Some(v) = p.start_time_seconds {
            let g = ConstGauge::new(v);
            let m = encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
        }
        Ok(())
    }
}

/// Reads one sample value from the text format (`name` without labels, or
/// with the exact label text, e.g. `calinet_errors_total{kind="datastore"}`).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reads_back() {
        let m = Metrics::new();
        m.dataplane_writes.inc_by(7);
        m.routes.set(12);
        m.error("datastore");
        let text = m.render();
        assert_eq!(sample(&text, "calinet_dataplane_writes_total"), Some(7.0));
        assert_eq!(sample(&text, "calinet_routes"), Some(12.0));
        assert_eq!(
            sample(&text, "calinet_errors_total{kind=\"datastore\"}"),
            Some(1.0)
        );
        // Kinds that never happened are there at 0.
        assert_eq!(
            sample(&text, "calinet_errors_total{kind=\"policy\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn felix_counters_keep_their_bare_name_and_counter_type() {
        let m = Metrics::new();
        m.resyncs_started.inc();
        m.dataplane_failures.inc_by(2);
        let text = m.render();
        assert!(
            text.contains("# TYPE felix_resyncs_started counter\nfelix_resyncs_started 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE felix_int_dataplane_failures counter\nfelix_int_dataplane_failures 2\n"
            ),
            "{text}"
        );
        assert!(!text.contains("untyped"), "{text}");
        assert!(!text.contains("felix_resyncs_started_total"), "{text}");
    }

    #[test]
    fn felix_histograms_have_felix_buckets() {
        let m = Metrics::new();
        m.dataplane_apply_seconds.observe(0.03);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "felix_int_dataplane_apply_time_seconds_bucket{le=\"0.02\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "felix_int_dataplane_apply_time_seconds_bucket{le=\"0.05\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "felix_int_dataplane_apply_time_seconds_count"),
            Some(1.0)
        );
    }

    #[test]
    fn process_metrics_come_from_proc() {
        let p = ProcessStats::read();
        assert!(p.cpu_seconds.is_some_and(|v| v >= 0.0), "{p:?}");
        assert!(p.resident_bytes.is_some_and(|v| v > 0), "{p:?}");
        assert!(
            p.virtual_bytes
                .zip(p.resident_bytes)
                .is_some_and(|(v, r)| v >= r),
            "{p:?}"
        );
        assert!(p.open_fds.is_some_and(|v| v >= 3), "{p:?}");
        assert!(
            p.max_fds.zip(p.open_fds).is_some_and(|(m, o)| m >= o),
            "{p:?}"
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.start_time_seconds
                .is_some_and(|s| s <= now + 1.0 && s > now - 86_400.0 * 365.0),
            "{p:?}"
        );
        let text = Metrics::new().render();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(sample(&text, name).is_some(), "{name} missing:\n{text}");
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
        }
    }

    #[test]
    fn ipam_gauges_follow_pools_and_blocks() {
        use calinet_ipam::{AutoAssignRequest, Ipam, MemStore, NodeName};
        use std::sync::Arc;

        let store = Arc::new(MemStore::new());
        let docs = crate::resources::parse_documents(
            "t",
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1}\nspec: {cidr: 10.10.0.0/24, blockSize: 28}\n",
        )
        .unwrap();
        crate::datastore::apply(store.as_ref(), &docs).unwrap();
        let node: NodeName = "n1".parse().unwrap();
        let ipam = Ipam::new(store.clone());
        for i in 0..3 {
            let req = AutoAssignRequest {
                handle: format!("k8s-pod-network.p{i}").parse().unwrap(),
                node: node.clone(),
                node_labels: Default::default(),
                num_v4: 1,
                num_v6: 0,
                attributes: Default::default(),
                ip_use: calinet_ipam::AllowedUse::Workload,
                pools: Vec::new(),
            };
            ipam.auto_assign(&req, std::time::SystemTime::now())
                .unwrap();
        }
        let m = Metrics::new();
        m.record_ipam(&crate::datastore::read_view(store.as_ref()).unwrap(), "n1");
        let text = m.render();
        assert_eq!(
            sample(&text, "ipam_allocations_in_use{ippool=\"p1\",node=\"n1\"}"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "ipam_blocks_per_node{node=\"n1\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "ipam_ippool_size{ippool=\"p1\"}"),
            Some(256.0)
        );
        // A pool that is gone takes its series with it.
        let empty = crate::datastore::read_view(&MemStore::new()).unwrap();
        m.record_ipam(&empty, "n1");
        let text = m.render();
        assert!(!text.contains("ippool=\"p1\""), "{text}");
        assert_eq!(
            sample(&text, "ipam_blocks_per_node{node=\"n1\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn counts_follow_the_cluster_and_the_local_endpoints() {
        use calinet_route::{IfName, WorkloadSpec};

        let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec: {nodeName: a}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: data, labels: {app: db}}
spec: {nodeName: b}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.web}
spec:
  tier: security
  selector: app == 'web'
  ingress:
  - {action: Allow, source: {selector: app == 'db'}}
  - {action: Allow, source: {selector: app == 'db'}}
  - {action: Deny, source: {notSelector: app == 'web'}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: db-only}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: role == 'x'}}]
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: a}
spec: {bgp: {ipv4Address: 198.51.100.10/24}}
";
        let store = calinet_ipam::MemStore::new();
        let docs = crate::resources::parse_documents("t", yaml).unwrap();
        crate::datastore::apply(&store, &docs).unwrap();
        let view = crate::datastore::read_view(&store).unwrap();
        let pod = view.pods["default/web"].clone();
        let spec = WorkloadSpec::new(
            IfName::calico_workload("default", "web"),
            "/run/netns/x",
            1450,
        )
        .ipv4("172.16.1.1".parse().unwrap());
        let c = Counts::from_view(&view, &[LocalWorkload { pod, spec }]);
        assert_eq!(
            c,
            Counts {
                hosts: 1,
                workload_endpoints: 0,
                policies: 2,
                // kns.default and kns.data
                profiles: 2,
                // default and security
                tiers: 2,
                local_endpoints: 1,
                // Only the policy selecting `web` is active here; its two
                // distinct rule selectors count once each.
                local_policies: 1,
                local_selectors: 2,
            }
        );
        assert_eq!(Counts::from_view(&view, &[]).local_policies, 0);
    }

    #[test]
    fn nft_gauges_count_the_installed_table() {
        use calinet_policy::ir::{Chain, Rule, Ruleset, SetElems, Stmt};
        let mut rs = Ruleset {
            table: "calinet".into(),
            ..Ruleset::default()
        };
        let rule = || Rule::new(Vec::new(), Stmt::Return);
        rs.chains.insert(
            "a".into(),
            Chain {
                base: None,
                rules: vec![rule(), rule()],
            },
        );
        rs.chains.insert(
            "b".into(),
            Chain {
                base: None,
                rules: vec![rule()],
            },
        );
        rs.sets
            .insert("s4".into(), SetElems::Addr4(Default::default()));
        rs.sets
            .insert("n4".into(), SetElems::Net4(Default::default()));
        rs.sets
            .insert("s6".into(), SetElems::Addr6(Default::default()));
        rs.sets
            .insert("p".into(), SetElems::Ports(Default::default()));
        rs.sets
            .insert("dispatch".into(), SetElems::IfGoto(Default::default()));
        let m = Metrics::new();
        m.record_nft(&rs);
        let text = m.render();
        let t = "{ip_version=\"4\",table=\"calinet\"}";
        assert_eq!(sample(&text, &format!("felix_nft_chains{t}")), Some(2.0));
        assert_eq!(sample(&text, &format!("felix_nft_rules{t}")), Some(3.0));
        assert_eq!(sample(&text, "felix_nft_maps{ip_version=\"4\"}"), Some(1.0));
        assert_eq!(
            sample(&text, "felix_ipsets_calico{ip_version=\"4\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "felix_ipsets_calico{ip_version=\"6\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let f = stat_fields("42 (a) b (c)) S 1 2 3");
        assert_eq!(f, ["S", "1", "2", "3"]);
    }
}
