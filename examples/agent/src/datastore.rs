//! The datastore side: opening the store, `apply` as one transaction, and the
//! cluster view the agent plans from.
//!
//! The agent reads the cluster through [`ClusterSource`]. Today the only source
//! is [`PollingSource`], which lists the store's prefixes (the `Store` trait has
//! no watch yet); a watch-backed source only has to produce the same
//! [`ClusterView`].

use std::collections::BTreeMap;
use std::sync::Arc;

use calinet_ipam::report::Dump;
use calinet_ipam::{IpPool, Revision, Store, StoreError, TxnOp};
use calinet_policy::compile::EndpointToHostAction;
use calinet_policy::model::AnyResource;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::resources::{
    CalicoNode, FelixConfiguration, NodeExt as _, Parsed, Pod, Resource, WorkloadEndpoint, keys,
};

/// The store every command uses.
pub type DynStore = Arc<dyn Store>;

/// etcd connection settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct EtcdArgs {
    /// Comma-separated endpoints (`http://` or `https://`).
    pub endpoints: String,
    /// CA file for `https://` endpoints.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Opens the datastore named on the command line: etcd when endpoints are
/// given, else the SQLite file.
pub fn open(path: &std::path::Path, etcd: Option<&EtcdArgs>) -> Result<DynStore> {
    if let Some(e) = etcd {
        let endpoints: Vec<&str> = e
            .endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let mut config = calinet_ipam::EtcdConfig::new(endpoints);
        if let Some(ca) = &e.ca {
            config = config.with_tls(calinet_ipam::TlsFiles {
                ca: ca.clone(),
                client: e.client.clone(),
                domain: None,
            });
        }
        return Ok(Arc::new(calinet_ipam::EtcdStore::connect(config)?));
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "create the datastore directory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(Arc::new(calinet_ipam::SqliteStore::open(path)?))
}

/// A store that fails with [`StoreError::Unavailable`] while a marker file
/// exists: fault injection for outage tests (`run --datastore-fault-file`),
/// the stand-in for an etcd outage until the etcd store lands.
#[derive(Debug)]
pub struct FaultStore<S> {
    inner: S,
    marker: std::path::PathBuf,
}

impl<S> FaultStore<S> {
    /// Wraps `inner`; it fails while `marker` exists.
    pub fn new(inner: S, marker: std::path::PathBuf) -> Self {
        FaultStore { inner, marker }
    }

    fn check(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if self.marker.exists() {
            return Err(StoreError::Unavailable {
                op,
                key: key.to_owned(),
                source: format!("fault injected ({} exists)", self.marker.display()).into(),
            });
        }
        Ok(())
    }
}

impl<S: Store> Store for FaultStore<S> {
    fn get(&self, key: &str) -> Result<Option<calinet_ipam::KeyValue>, StoreError> {
        self.check("get", key)?;
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<calinet_ipam::KeyValue>, StoreError> {
        self.check("list", prefix)?;
        self.inner.list(prefix)
    }
    fn create(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.check("create", key)?;
        self.inner.create(key, value)
    }
    fn update(&self, key: &str, value: &[u8], expected: Revision) -> Result<Revision, StoreError> {
        self.check("update", key)?;
        self.inner.update(key, value, expected)
    }
    fn delete(&self, key: &str, expected: Revision) -> Result<(), StoreError> {
        self.check("delete", key)?;
        self.inner.delete(key, expected)
    }
    fn txn(&self, ops: &[TxnOp]) -> Result<Revision, StoreError> {
        self.check("txn", ops.first().map_or("", TxnOp::key))?;
        self.inner.txn(ops)
    }
    fn list_with_revision(&self, prefix: &str) -> Result<calinet_ipam::Listing, StoreError> {
        self.check("list", prefix)?;
        self.inner.list_with_revision(prefix)
    }
    fn watch(&self, prefix: &str, from: Revision) -> Result<calinet_ipam::Watcher, StoreError> {
        self.check("watch", prefix)?;
        self.inner.watch(prefix, from)
    }
}

/// What `apply` did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Configured,
    /// It existed unchanged.
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|source| Error::Decode {
        key: key.to_owned(),
        source,
    })
}

/// Writes all `docs` in one compare-and-swap transaction: either every document
/// is stored or none. Pools are checked against each other and the stored ones
/// (overlaps, immutable `cidr` / `blockSize`) first; a re-applied Node keeps the
/// fields the agent wrote (tunnel address, VTEP MAC, WireGuard key).
pub fn apply(store: &dyn Store, docs: &[Parsed]) -> Result<Vec<(String, Outcome)>> {
    // Later documents for the same key win, as with sequential applies.
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        last.insert(d.resource.key_value().0, i);
    }
    for attempt in 0.. {
        // One read of the stored pools serves both the checks and the
        // compare-and-swap revisions of the pool documents.
        let mut pools: BTreeMap<String, IpPool> = BTreeMap::new();
        let mut stored_pools: BTreeMap<String, calinet_ipam::KeyValue> = BTreeMap::new();
        for kv in store.list(calinet_ipam::keys::POOLS_PREFIX)? {
            let p: IpPool = decode(&kv.key, &kv.value)?;
            pools.insert(p.name().to_owned(), p);
            stored_pools.insert(kv.key.clone(), kv);
        }
        // Which document last names each pool, to blame for a bad batch.
        let mut pool_doc: BTreeMap<String, usize> = BTreeMap::new();
        let mut ops = Vec::new();
        let mut outcomes = Vec::new();
        for (i, d) in docs.iter().enumerate() {
            let (key, mut value) = d.resource.key_value();
            if last[&key] != i {
                continue;
            }
            let stored = match &d.resource {
                Resource::IpPool(_) => stored_pools.get(&key).cloned(),
                _ => store.get(&key)?,
            };
            match &d.resource {
                Resource::IpPool(p) => {
                    if let Some(old) = pools.get(p.name())
                        && (old.spec.cidr != p.spec.cidr || old.block_size() != p.block_size())
                    {
                        return Err(d.err(
                            "spec.cidr",
                            format!(
                                "IPPool {}: cidr and blockSize are immutable (stored {} /{}, given {} /{})",
                                p.name(),
                                old.spec.cidr,
                                old.block_size(),
                                p.spec.cidr,
                                p.block_size()
                            ),
                        ));
                    }
                    pools.insert(p.name().to_owned(), p.clone());
                    pool_doc.insert(p.name().to_owned(), i);
                }
                Resource::Node(n) => {
                    if let Some(kv) = &stored {
                        let old: CalicoNode = decode(&kv.key, &kv.value)?;
                        let mut merged = n.clone();
                        merged.keep_agent_fields(&old);
                        value = serde_json::to_vec(&merged).expect("nodes serialise");
                    }
                }
                _ => {}
            }
            let outcome = match &stored {
                None => {
                    ops.push(TxnOp::Create {
                        key: key.clone(),
                        value,
                    });
                    Outcome::Created
                }
                Some(kv) if same_json(&kv.value, &value) => Outcome::Unchanged,
                Some(kv) => {
                    ops.push(TxnOp::Update {
                        key: key.clone(),
                        value,
                        expected: kv.mod_revision,
                    });
                    Outcome::Configured
                }
            };
            outcomes.push((d.resource.describe(), outcome));
        }
        check_bgp(store, docs, &last)?;
        // The whole batch with the stored pools, checked once (sorted, so
        // near-linear in the number of pools); the error goes to the document
        // of the newest pool it names.
        if !pool_doc.is_empty() {
            let all: Vec<IpPool> = pools.into_values().collect();
            if let Err(e) = calinet_ipam::validate_pools(&all) {
                let named: Vec<&str> = match &e {
                    calinet_ipam::Error::OverlappingPools { a, b, .. } => vec![a, b],
                    calinet_ipam::Error::InvalidPool { pool, .. } => vec![pool],
                    _ => Vec::new(),
                };
                let i = named
                    .iter()
                    .filter_map(|n| pool_doc.get(*n))
                    .max()
                    .or_else(|| pool_doc.values().min())
                    .copied()
                    .expect("a pool document exists");
                return Err(docs[i].err("spec.cidr", crate::error::chain(&e)));
            }
        }
        if ops.is_empty() {
            return Ok(outcomes);
        }
        match store.txn(&ops) {
            Ok(_) => return Ok(outcomes),
            Err(e) if e.is_conflict() && attempt < 10 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!("the loop returns")
}

/// Checks the BGP resources the cluster would have after `docs` (the stored
/// Nodes, BGPConfigurations and BGPPeers with the documents' replacing them)
/// as every node's plan would: two BGPPeers giving a node the same peer are
/// refused here, naming the document of the later one.
fn check_bgp(store: &dyn Store, docs: &[Parsed], last: &BTreeMap<String, usize>) -> Result<()> {
    let touches_bgp = docs.iter().any(|d| {
        matches!(
            d.resource,
            Resource::BgpPeer(_) | Resource::BgpConfiguration(_) | Resource::Node(_)
        )
    });
    if !touches_bgp {
        return Ok(());
    }
    let mut nodes: BTreeMap<String, CalicoNode> = BTreeMap::new();
    for kv in store.list(keys::NODES)? {
        let n: CalicoNode = decode(&kv.key, &kv.value)?;
        nodes.insert(n.metadata.name.clone(), n);
    }
    let mut peers: BTreeMap<String, calinet_bgp::BgpPeer> = BTreeMap::new();
    for kv in store.list(keys::BGP_PEERS)? {
        let p: calinet_bgp::BgpPeer = decode(&kv.key, &kv.value)?;
        peers.insert(p.metadata.name.clone(), p);
    }
    let mut config: Option<calinet_bgp::BgpConfiguration> = store
        .get(&format!("{}default", keys::BGP_CONFIGS))?
        .map(|kv| decode(&kv.key, &kv.value))
        .transpose()?;
    // Which document brought each resource, to name it in the error.
    let mut origin: BTreeMap<String, &Parsed> = BTreeMap::new();
    for (i, d) in docs.iter().enumerate() {
        if last[&d.resource.key_value().0] != i {
            continue;
        }
        match &d.resource {
            Resource::Node(n) => {
                nodes.insert(n.metadata.name.clone(), n.clone());
                origin.insert(format!("Node {}", n.metadata.name), d);
            }
            Resource::BgpPeer(p) => {
                peers.insert(p.metadata.name.clone(), p.clone());
                origin.insert(format!("BGPPeer {}", p.metadata.name), d);
            }
            Resource::BgpConfiguration(c) if c.metadata.name == "default" => {
                config = Some(c.clone());
                origin.insert("BGPConfiguration default".into(), d);
            }
            _ => {}
        }
    }
    let mut infos = Vec::with_capacity(nodes.len());
    for n in nodes.values() {
        infos.push(crate::bgp::node_info(n)?);
    }
    let peers: Vec<_> = peers.into_values().collect();
    let Err(e) = crate::bgp::check_cluster(&infos, config.as_ref(), &peers) else {
        return Ok(());
    };
    let (resource, field) = match &e {
        calinet_bgp::Error::DuplicatePeer { second, first, .. } => {
            let second = format!("BGPPeer {second}");
            let which = if origin.contains_key(&second) {
                second
            } else {
                format!("BGPPeer {first}")
            };
            (which, "spec.peerIP")
        }
        calinet_bgp::Error::Invalid {
            resource, field, ..
        } => (resource.clone(), *field),
        calinet_bgp::Error::Selector {
            resource, field, ..
        } => (resource.clone(), *field),
        calinet_bgp::Error::NoRouterId { node } => (format!("Node {node}"), "spec.bgp.ipv4Address"),
        _ => (String::new(), "."),
    };
    let message = crate::error::chain(&e);
    Err(
        match origin.get(&resource).or_else(|| origin.values().next()) {
            Some(d) => d.err(field, message),
            None => Error::Bgp(e),
        },
    )
}

fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<serde_json::Value>(a),
        serde_json::from_slice::<serde_json::Value>(b),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// What an agent publishes about itself (what `node status` shows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Node name.
    pub node: String,
    /// The node's address.
    pub address: String,
    /// Unix seconds of the agent's start.
    pub started: u64,
    /// Unix seconds of the last successful reconcile.
    pub last_reconcile: u64,
    /// Whether the last reconcile left nothing pending.
    pub converged: bool,
    /// Path to each remote node: (node, address, path kind).
    pub peers: Vec<PeerStatus>,
    /// Routes the agent owns.
    pub routes: usize,
    /// Workload endpoints on the node.
    pub endpoints: usize,
    /// Dataplane writes since the agent started.
    pub dataplane_writes: u64,
}

/// One remote node as an agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Node name.
    pub node: String,
    /// Its address.
    pub address: String,
    /// `direct`, `vxlan`, `ipip` or `wireguard`.
    pub path: String,
}

/// Everything one node needs to plan, read at one point in time.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// IPAM state (pools, config, blocks, affinities, handles).
    pub ipam: Dump,
    /// Nodes by name, with their revisions.
    pub nodes: BTreeMap<String, (CalicoNode, Revision)>,
    /// FelixConfigurations by name.
    pub felix: BTreeMap<String, FelixConfiguration>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, Pod>,
    /// Policy resources.
    pub policies: Vec<AnyResource>,
    /// WorkloadEndpoints by store key, with revisions.
    pub weps: BTreeMap<String, (WorkloadEndpoint, Revision)>,
    /// BGPConfigurations by name.
    pub bgp_configs: BTreeMap<String, calinet_bgp::BgpConfiguration>,
    /// BGPPeers, by name.
    pub bgp_peers: Vec<calinet_bgp::BgpPeer>,
    /// Agent statuses by node.
    pub statuses: BTreeMap<String, (AgentStatus, Revision)>,
    /// A fingerprint of every (key, revision) read except agent heartbeats:
    /// it changes whenever a key is written, created or deleted.
    pub revision: i64,
}

impl ClusterView {
    /// Whether WireGuard is enabled for `node` (`node.<name>` overrides `default`).
    pub fn wireguard_enabled(&self, node: &str) -> bool {
        self.felix
            .get(&format!("node.{node}"))
            .and_then(|f| f.spec.wireguard_enabled)
            .or_else(|| {
                self.felix
                    .get("default")
                    .and_then(|f| f.spec.wireguard_enabled)
            })
            .unwrap_or(false)
    }

    /// What happens to a local pod's traffic to this node after its egress
    /// policy (`defaultEndpointToHostAction`; `node.<name>` overrides
    /// `default`; Drop when unset, as Felix). Values are checked when the
    /// resource is read; one that does not parse counts as unset.
    pub fn endpoint_to_host_action(&self, node: &str) -> EndpointToHostAction {
        let get = |name: &str| {
            self.felix
                .get(name)
                .and_then(|f| f.spec.default_endpoint_to_host_action.as_deref())
                .and_then(|a| a.parse().ok())
        };
        get(&format!("node.{node}"))
            .or_else(|| get("default"))
            .unwrap_or_default()
    }
}

/// Where the agent gets its cluster view from.
pub trait ClusterSource {
    /// The current view.
    fn snapshot(&self) -> Result<ClusterView>;
}

/// A source that lists the store's prefixes on every call.
#[derive(Debug, Clone)]
pub struct PollingSource<S> {
    store: S,
}

impl<S> PollingSource<S> {
    /// Polls `store`.
    pub fn new(store: S) -> Self {
        PollingSource { store }
    }
}

/// FNV-1a over the (key, revision) pairs read, for change detection.
#[derive(Debug, Clone, Copy)]
struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    fn add(&mut self, key: &str, rev: Revision) {
        for b in key.bytes().chain(rev.to_le_bytes()) {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn list_decoded<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
    fp: &mut Fingerprint,
) -> Result<Vec<(String, T, Revision)>> {
    let mut out = Vec::new();
    for kv in store.list(prefix)? {
        fp.add(&kv.key, kv.mod_revision);
        out.push((kv.key.clone(), decode(&kv.key, &kv.value)?, kv.mod_revision));
    }
    Ok(out)
}

impl<S: Store> ClusterSource for PollingSource<S> {
    fn snapshot(&self) -> Result<ClusterView> {
        read_view(&self.store)
    }
}

/// Reads a whole [`ClusterView`] from a store.
pub fn read_view(store: &dyn Store) -> Result<ClusterView> {
    let mut rev = Fingerprint::default();
    let ipam = calinet_ipam::report::dump(store)?;
    for (b, r) in &ipam.blocks {
        rev.add(&b.cidr().to_string(), *r);
    }
    // Affinity, pool and handle revisions are not in the dump; list them too.
    for prefix in [
        calinet_ipam::keys::HOSTS_PREFIX,
        calinet_ipam::keys::POOLS_PREFIX,
        calinet_ipam::keys::HANDLES_PREFIX,
    ] {
        for kv in store.list(prefix)? {
            rev.add(&kv.key, kv.mod_revision);
        }
    }
    let mut view = ClusterView {
        ipam,
        ..ClusterView::default()
    };
    for (_, n, r) in list_decoded::<CalicoNode>(store, keys::NODES, &mut rev)? {
        view.nodes.insert(n.metadata.name.clone(), (n, r));
    }
    for (_, f, _) in list_decoded::<FelixConfiguration>(store, keys::FELIX, &mut rev)? {
        view.felix.insert(f.metadata.name.clone(), f);
    }
    for (_, p, _) in list_decoded::<Pod>(store, keys::PODS, &mut rev)? {
        view.pods.insert(p.key(), p);
    }
    for (_, c, _) in
        list_decoded::<calinet_bgp::BgpConfiguration>(store, keys::BGP_CONFIGS, &mut rev)?
    {
        view.bgp_configs.insert(c.metadata.name.clone(), c);
    }
    for (_, p, _) in list_decoded::<calinet_bgp::BgpPeer>(store, keys::BGP_PEERS, &mut rev)? {
        view.bgp_peers.push(p);
    }
    for (k, w, r) in list_decoded::<WorkloadEndpoint>(store, keys::WEPS, &mut rev)? {
        view.weps.insert(k, (w, r));
    }
    // Heartbeats change every few seconds; they do not count as cluster changes.
    let mut status_rev = Fingerprint::default();
    for (_, s, r) in list_decoded::<AgentStatus>(store, keys::STATUS, &mut status_rev)? {
        view.statuses.insert(s.node.clone(), (s, r));
    }
    for (prefix, kind) in [
        (keys::TIERS, "Tier"),
        (keys::NETWORK_POLICIES, "NetworkPolicy"),
        (keys::GLOBAL_POLICIES, "GlobalNetworkPolicy"),
        (keys::PROFILES, "Profile"),
        (keys::K8S_POLICIES, "K8sNetworkPolicy"),
    ] {
        for kv in store.list(prefix)? {
            rev.add(&kv.key, kv.mod_revision);
            let r = match kind {
                "Tier" => AnyResource::Tier(decode(&kv.key, &kv.value)?),
                "NetworkPolicy" => AnyResource::NetworkPolicy(decode(&kv.key, &kv.value)?),
                "GlobalNetworkPolicy" => {
                    AnyResource::GlobalNetworkPolicy(decode(&kv.key, &kv.value)?)
                }
                "Profile" => AnyResource::Profile(decode(&kv.key, &kv.value)?),
                _ => AnyResource::K8sNetworkPolicy(decode(&kv.key, &kv.value)?),
            };
            view.policies.push(r);
        }
    }
    view.revision = rev.0 as i64;
    Ok(view)
}

/// Creates or replaces `key` with `value` unless it already holds it.
/// Returns whether it wrote.
pub fn put_if_changed(
    store: &dyn Store,
    key: &str,
    value: &[u8],
    current: Option<Revision>,
) -> Result<bool, StoreError> {
    match current {
        None => match store.get(key)? {
            None => store.create(key, value).map(|_| true),
            Some(kv) if same_json(&kv.value, value) => Ok(false),
            Some(kv) => store.update(key, value, kv.mod_revision).map(|_| true),
        },
        Some(rev) => store.update(key, value, rev).map(|_| true),
    }
}

/// The kinds `patch` takes: (accepted names, Calico kind, store key prefix).
const PATCHABLE: [(&[&str], &str, &str); 2] = [
    (
        &["ippool", "ippools"],
        "IPPool",
        calinet_ipam::keys::POOLS_PREFIX,
    ),
    (
        &["felixconfiguration", "felixconfigurations", "felixconfig"],
        "FelixConfiguration",
        keys::FELIX,
    ),
];

/// Applies a JSON merge patch (RFC 7386) to `target`: objects merge key by
/// key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// `calicoctl patch KIND NAME -p PATCH`: merges `patch` (JSON, RFC 7386) into
/// the stored resource and writes the result through [`apply`], so it is
/// validated like `apply` (a bad patch is an error and nothing is written).
/// Returns the patched resource's description (`IPPool default-ipv4-ippool`).
pub fn patch(store: &dyn Store, kind: &str, name: &str, patch: &str) -> Result<String> {
    let lower = kind.to_ascii_lowercase();
    let Some((_, calico_kind, prefix)) = PATCHABLE
        .iter()
        .find(|(n, _, _)| n.contains(&lower.as_str()))
    else {
        return Err(Error::Usage(format!(
            "patch {kind}: patchable kinds are ippool and felixconfiguration"
        )));
    };
    let patch_value: serde_json::Value = serde_json::from_str(patch).map_err(|e| {
        Error::Usage(format!(
            "patch {calico_kind} {name}: the patch is not JSON: {e}"
        ))
    })?;
    if !patch_value.is_object() {
        return Err(Error::Usage(format!(
            "patch {calico_kind} {name}: a merge patch of a resource must be a JSON object, not {patch_value}"
        )));
    }
    let key = format!("{prefix}{name}");
    let stored = store.get(&key)?.ok_or_else(|| {
        Error::Usage(format!(
            "patch {calico_kind} {name}: resource does not exist"
        ))
    })?;
    let mut value: serde_json::Value =
        serde_json::from_slice(&stored.value).map_err(|source| Error::Decode {
            key: key.clone(),
            source,
        })?;
    merge_patch(&mut value, &patch_value);
    // The patch may not rename or retype the resource.
    let obj = value
        .as_object_mut()
        .expect("a stored resource is an object");
    obj.insert("apiVersion".into(), crate::resources::CALICO_API.into());
    obj.insert("kind".into(), (*calico_kind).into());
    let patched_name = value.pointer("/metadata/name").and_then(|n| n.as_str());
    if patched_name != Some(name) {
        return Err(Error::Usage(format!(
            "patch {calico_kind} {name}: metadata.name cannot be patched (got {patched_name:?})"
        )));
    }
    let origin = format!("patch of {calico_kind} {name}");
    let docs = crate::resources::parse_documents(&origin, &value.to_string())?;
    apply(store, &docs)?;
    Ok(format!("{calico_kind} {name}"))
}

/// Deletes `key` if present.
pub fn delete_if_present(store: &dyn Store, key: &str) -> Result<bool, StoreError> {
    match store.get(key)? {
        Some(kv) => store.delete(key, kv.mod_revision).map(|_| true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_documents;
    use calinet_ipam::MemStore;

    const POOL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1}\nspec: {cidr: 172.16.0.0/16, blockSize: 24}\n";

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // RFC 7386, appendix A (a selection).
        for (target, patch, result) in [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
            (
                r#"{}"#,
                r#"{"a":{"bb":{"ccc":null}}}"#,
                r#"{"a":{"bb":{}}}"#,
            ),
        ] {
            let mut t: serde_json::Value = serde_json::from_str(target).unwrap();
            merge_patch(&mut t, &serde_json::from_str(patch).unwrap());
            let want: serde_json::Value = serde_json::from_str(result).unwrap();
            assert_eq!(t, want, "{target} + {patch}");
        }
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let store = MemStore::new();
        let docs = parse_documents("a.yaml", POOL).unwrap();
        let out = apply(&store, &docs).unwrap();
        assert_eq!(out, [("IPPool p1".to_owned(), Outcome::Created)]);
        assert_eq!(apply(&store, &docs).unwrap()[0].1, Outcome::Unchanged);
        // A second pool overlapping the first fails, and the node before it in the
        // same input is not written either.
        let bad = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 198.51.100.10/24}}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p2}\nspec: {cidr: 172.16.8.0/24}\n";
        let docs = parse_documents("b.yaml", bad).unwrap();
        let e = crate::error::chain(&apply(&store, &docs).unwrap_err());
        assert!(e.starts_with("b.yaml: document 1: spec.cidr:"), "{e}");
        assert!(e.contains("overlaps"), "{e}");
        assert!(store.list(keys::NODES).unwrap().is_empty());
        // Immutable block size.
        let changed = POOL.replace("blockSize: 24", "blockSize: 26");
        let docs = parse_documents("c.yaml", &changed).unwrap();
        let e = crate::error::chain(&apply(&store, &docs).unwrap_err());
        assert!(e.contains("immutable"), "{e}");
    }

    #[test]
    fn fingerprint_sees_deletions_of_old_keys() {
        let store = MemStore::new();
        let two = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\n";
        apply(&store, &parse_documents("t", two).unwrap()).unwrap();
        let before = read_view(&store).unwrap().revision;
        assert_eq!(read_view(&store).unwrap().revision, before);
        // Deleting the older key leaves the highest revision as it was.
        delete_if_present(&store, &format!("{}default/a", keys::PODS)).unwrap();
        assert_ne!(read_view(&store).unwrap().revision, before);
    }

    #[test]
    fn reapplied_node_keeps_agent_fields() {
        let store = MemStore::new();
        let node = "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 198.51.100.10/24}}\n";
        apply(&store, &parse_documents("n", node).unwrap()).unwrap();
        let mut view = read_view(&store).unwrap();
        let (mut n, rev) = view.nodes.remove("n1").unwrap();
        n.spec.ipv4_vxlan_tunnel_addr = Some("172.16.1.0".parse().unwrap());
        put_if_changed(
            &store,
            &format!("{}n1", keys::NODES),
            &serde_json::to_vec(&n).unwrap(),
            Some(rev),
        )
        .unwrap();
        apply(&store, &parse_documents("n", node).unwrap()).unwrap();
        let view = read_view(&store).unwrap();
        assert_eq!(
            view.nodes["n1"].0.spec.ipv4_vxlan_tunnel_addr,
            Some("172.16.1.0".parse().unwrap())
        );
    }
}
