//! The pure per-node BGP plan: from the datastore's resources to the sessions
//! this node's BIRD runs and the routes it exports, imports and programs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::Error;
use crate::node::NodeBgpSpec;
use crate::resources::{
    AsNumber, BgpConfiguration, BgpConfigurationSpec, BgpPeer, CheckedPeer, Password, SecretKeyRef,
    SourceAddress, Target,
};

/// An address family; BIRD 2 keeps one table, one kernel protocol and one set
/// of BGP sessions per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// `4` or `6`, as BIRD's names use it (`ipv4`, `kernel4`).
    pub fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }
}

/// An IP pool's `ipipMode` / `vxlanMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncapMode {
    /// No encapsulation (Calico's default).
    #[default]
    Never,
    /// Always encapsulate.
    Always,
    /// Encapsulate only towards nodes in other subnets.
    CrossSubnet,
}

/// What the plan needs to know about an IP pool.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pool {
    /// The pool's CIDR.
    pub cidr: IpNet,
    /// `disableBGPExport`: blocks of this pool are not advertised.
    pub disable_bgp_export: bool,
    /// `ipipMode`.
    pub ipip_mode: EncapMode,
    /// `vxlanMode`.
    pub vxlan_mode: EncapMode,
    /// `disabled`: no new allocations; existing blocks are still routed.
    pub disabled: bool,
}

impl Pool {
    /// A pool with Calico's defaults (exported, no encapsulation, enabled).
    pub fn new(cidr: IpNet) -> Self {
        Pool {
            cidr: cidr.trunc(),
            disable_bgp_export: false,
            ipip_mode: EncapMode::Never,
            vxlan_mode: EncapMode::Never,
            disabled: false,
        }
    }

    /// Sets `disableBGPExport`.
    pub fn disable_bgp_export(mut self, yes: bool) -> Self {
        self.disable_bgp_export = yes;
        self
    }

    /// Sets `ipipMode`.
    pub fn ipip(mut self, mode: EncapMode) -> Self {
        self.ipip_mode = mode;
        self
    }

    /// Sets `vxlanMode`.
    pub fn vxlan(mut self, mode: EncapMode) -> Self {
        self.vxlan_mode = mode;
        self
    }

    /// Sets `disabled`.
    pub fn disabled(mut self, yes: bool) -> Self {
        self.disabled = yes;
        self
    }

    /// Whether routes of this pool go through a tunnel, which calinet-route
    /// programs; BIRD programs only unencapsulated pools' routes.
    pub fn encapsulated(&self) -> bool {
        self.ipip_mode != EncapMode::Never || self.vxlan_mode != EncapMode::Never
    }
}

/// A node as the plan sees it: name, labels, `spec.bgp`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The node's labels (what `nodeSelector` / `peerSelector` match).
    pub labels: BTreeMap<String, String>,
    /// `spec.bgp`; a node without it takes no part in BGP.
    pub bgp: Option<NodeBgpSpec>,
}

impl NodeInfo {
    /// A node with BGP settings and no labels.
    pub fn new(name: impl Into<String>, bgp: NodeBgpSpec) -> Self {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::new(),
            bgp: Some(bgp),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    fn address(&self, family: Family) -> Option<IpAddr> {
        let bgp = self.bgp.as_ref()?;
        match family {
            Family::V4 => bgp.ipv4_address.map(|a| IpAddr::V4(a.addr())),
            Family::V6 => bgp.ipv6_address.map(|a| IpAddr::V6(a.addr())),
        }
    }
}

/// Everything the plan of one node depends on.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Input {
    /// The node being planned (must be in `nodes`).
    pub node: String,
    /// Every node, this one included.
    pub nodes: Vec<NodeInfo>,
    /// The `default` BGPConfiguration, if there is one.
    pub config: Option<BgpConfiguration>,
    /// Every BGPPeer.
    pub peers: Vec<BgpPeer>,
    /// Every IP pool.
    pub pools: Vec<Pool>,
    /// Blocks affine to this node.
    pub blocks: Vec<IpNet>,
    /// Addresses (/32, /128) this node uses from other nodes' blocks.
    pub borrowed: Vec<IpNet>,
    /// Passwords for `password.secretKeyRef`, as the caller read them.
    pub secrets: BTreeMap<SecretKeyRef, Password>,
}

impl Input {
    /// An input for node `node`; fill in the rest.
    pub fn new(node: impl Into<String>) -> Self {
        Input {
            node: node.into(),
            ..Default::default()
        }
    }
}

/// The `PEER TYPE` column of `calicoctl node status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum PeerType {
    /// A node of the node-to-node mesh.
    Mesh,
    /// A BGPPeer without `node` or `nodeSelector`.
    Global,
    /// A BGPPeer with `node` or `nodeSelector`.
    NodeSpecific,
}

impl PeerType {
    /// Calico's label: `node-to-node mesh`, `global`, `node specific`.
    pub fn label(self) -> &'static str {
        match self {
            PeerType::Mesh => "node-to-node mesh",
            PeerType::Global => "global",
            PeerType::NodeSpecific => "node specific",
        }
    }

    /// The prefix of BIRD protocol names, as Calico's confd writes them.
    pub fn name_prefix(self) -> &'static str {
        match self {
            PeerType::Mesh => "Mesh_",
            PeerType::Global => "Global_",
            PeerType::NodeSpecific => "Node_",
        }
    }
}

impl fmt::Display for PeerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One BGP session of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// BIRD's protocol name, e.g. `Mesh_198_51_100_11`.
    pub name: String,
    /// The session's family (of the peer's address).
    pub family: Family,
    /// The peer's address.
    pub peer_address: IpAddr,
    /// The peer's port when it is not 179.
    pub port: Option<u16>,
    /// The peer's AS.
    pub peer_as: AsNumber,
    /// This node's AS.
    pub local_as: AsNumber,
    /// Where the session comes from.
    pub peer_type: PeerType,
    /// The Calico node at the other end, if it is one.
    pub peer_node: Option<String>,
    /// The BGPPeer resource that asked for it (none for the mesh).
    pub resource: Option<String>,
    /// The local address the session uses.
    pub source_address: Option<IpAddr>,
    /// TCP-MD5 password.
    pub password: Option<Password>,
    /// Keep the next hop of re-advertised routes.
    pub keep_original_next_hop: bool,
    /// This node reflects routes to the peer (it is a route reflector client).
    pub rr_client: bool,
    /// Wait for the peer to connect (one side of each mesh pair).
    pub passive: bool,
    /// Graceful restart time the peer is asked to honour.
    pub restart_time: Option<Duration>,
    /// The peer is not on one of this node's subnets: an eBGP session needs
    /// `multihop` (iBGP sessions are multihop in BIRD anyway).
    pub multihop: bool,
}

impl Session {
    /// iBGP (same AS) or not.
    pub fn is_internal(&self) -> bool {
        self.peer_as == self.local_as
    }
}

/// The routes of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Routes {
    /// This node's address in the family.
    pub local_address: Option<IpAddr>,
    /// Own blocks, advertised whole, with a blackhole route.
    pub blocks: Vec<IpNet>,
    /// Own blocks whose blackhole BIRD programs into the kernel (blocks of
    /// unencapsulated pools; calinet-route owns the others').
    pub kernel_blackholes: Vec<IpNet>,
    /// Borrowed addresses, advertised as host routes.
    pub borrowed: Vec<IpNet>,
    /// Service CIDRs, advertised.
    pub services: Vec<IpNet>,
    /// Pools whose routes are accepted from peers.
    pub import: Vec<IpNet>,
    /// Pools whose learned routes are passed on to other peers (reflection,
    /// transit); excludes pools with `disableBGPExport`.
    pub reexport: Vec<IpNet>,
    /// Pools whose learned routes BIRD programs into the kernel.
    pub kernel: Vec<IpNet>,
}

/// A node's BGP plan: BIRD's configuration as a value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plan {
    /// The node.
    pub node: String,
    /// BIRD's router id (the node's IPv4 address).
    pub router_id: Ipv4Addr,
    /// The node's AS.
    pub local_as: AsNumber,
    /// The port BIRD listens on.
    pub listen_port: u16,
    /// `logSeverityScreen`.
    pub log_severity: String,
    /// The route reflector cluster id, if this node is a reflector.
    pub rr_cluster_id: Option<Ipv4Addr>,
    /// Sessions, ordered by name.
    pub sessions: Vec<Session>,
    /// IPv4 routes.
    pub v4: Routes,
    /// IPv6 routes.
    pub v6: Routes,
}

impl Plan {
    /// The routes of `family`.
    pub fn routes(&self, family: Family) -> &Routes {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// The session named `name`.
    pub fn session(&self, name: &str) -> Option<&Session> {
        self.sessions.iter().find(|s| s.name == name)
    }
}

/// BIRD's protocol name for a peer: `<prefix><ip with . and : as _>`, plus
/// `_port_<n>` for a non-default port.
pub fn session_name(peer_type: PeerType, ip: IpAddr, port: Option<u16>) -> String {
    let mut name = String::from(peer_type.name_prefix());
    name.extend(
        ip.to_string()
            .chars()
            .map(|c| if c == '.' || c == ':' { '_' } else { c }),
    );
    if let Some(p) = port {
        name.push_str(&format!("_port_{p}"));
    }
    name
}

/// Computes `input.node`'s plan. Checks every resource first; nothing is
/// planned when anything is invalid.
pub fn plan(input: &Input) -> Result<Plan, Error> {
    let (config, peers) = check(input)?;
    let spec = &config.spec;
    let me = input
        .nodes
        .iter()
        .find(|n| n.name == input.node)
        .ok_or_else(|| Error::UnknownNode {
            node: input.node.clone(),
            known: input.nodes.len(),
        })?;
    let my_bgp = me.bgp.clone().unwrap_or_default();
    let router_id = my_bgp
        .ipv4_address
        .map(|a| a.addr())
        .ok_or_else(|| Error::NoRouterId {
            node: me.name.clone(),
        })?;
    let cluster_as = spec.as_number();
    let node_as = |n: &NodeInfo| {
        n.bgp
            .as_ref()
            .and_then(|b| b.as_number)
            .unwrap_or(cluster_as)
    };
    let local_as = node_as(me);
    let my_cluster = my_bgp.cluster_id(&me.name)?;
    let cluster_of = |n: &NodeInfo| {
        n.bgp
            .as_ref()
            .and_then(|b| b.cluster_id(&n.name).ok().flatten())
    };
    let on_link = |ip: IpAddr| match (ip, &my_bgp) {
        (IpAddr::V4(ip), b) => b.ipv4_address.is_some_and(|n| n.contains(&ip)),
        (IpAddr::V6(ip), b) => b.ipv6_address.is_some_and(|n| n.contains(&ip)),
    };
    let listen_port = spec.listen_port();
    let mesh_port = (listen_port != crate::resources::DEFAULT_PORT).then_some(listen_port);

    let mut sessions: BTreeMap<(IpAddr, Option<u16>), Session> = BTreeMap::new();
    let mut owners: BTreeMap<(IpAddr, Option<u16>), String> = BTreeMap::new();
    let others = || input.nodes.iter().filter(|n| n.name != me.name);
    let node_session =
        |other: &NodeInfo, family: Family, peer_type, port, peer: Option<&CheckedPeer>| {
            let peer_address = other.address(family)?;
            let local = me.address(family);
            let peer_as = node_as(other);
            let rr_client =
                my_cluster.is_some() && cluster_of(other) != my_cluster && peer_as == local_as;
            let source = match peer.map(|p| p.source) {
                Some(SourceAddress::None) => None,
                _ => local,
            };
            Some(Session {
                name: session_name(peer_type, peer_address, port),
                family,
                peer_address,
                port,
                peer_as,
                local_as,
                peer_type,
                peer_node: Some(other.name.clone()),
                resource: peer.map(|p| p.name.clone()),
                source_address: source,
                password: None,
                keep_original_next_hop: peer.is_some_and(|p| p.keep_original_next_hop),
                rr_client,
                // Only one side of a node-to-node pair connects, as in Calico:
                // the one whose address is smaller as a string.
                passive: local.is_some_and(|l| peer_address.to_string() > l.to_string()),
                restart_time: peer.and_then(|p| p.max_restart_time),
                multihop: !on_link(peer_address),
            })
        };

    if spec.mesh_enabled() {
        for other in others() {
            for family in [Family::V4, Family::V6] {
                if me.address(family).is_none() {
                    continue;
                }
                if let Some(s) = node_session(other, family, PeerType::Mesh, mesh_port, None) {
                    sessions.insert((s.peer_address, s.port), s);
                }
            }
        }
    }

    // Whether a BGPPeer applies to a node: by name, by nodeSelector, or to
    // every node (a global peer).
    let applies_to = |p: &CheckedPeer, n: &NodeInfo| match (&p.node, &p.node_selector) {
        (Some(name), _) => *name == n.name,
        (None, Some(sel)) => sel.matches(&n.labels),
        (None, None) => true,
    };
    let applies = |p: &CheckedPeer| applies_to(p, me);
    let peer_type = |p: &CheckedPeer| {
        if p.node.is_some() || p.node_selector.is_some() {
            PeerType::NodeSpecific
        } else {
            PeerType::Global
        }
    };
    let password = |p: &CheckedPeer| -> Result<Option<Password>, Error> {
        p.password
            .as_ref()
            .map(|r| {
                input
                    .secrets
                    .get(r)
                    .cloned()
                    .ok_or_else(|| Error::MissingSecret {
                        peer: p.name.clone(),
                        name: r.name.clone(),
                        key: r.key.clone(),
                    })
            })
            .transpose()
    };
    // Explicit addresses first: a duplicate between two of them is an error.
    for p in peers.iter().filter(|p| applies(p)) {
        let Target::Address(addr) = p.peer else {
            continue;
        };
        let key = (addr.ip, addr.port);
        if me.address(Family::of(addr.ip)) == Some(addr.ip) {
            continue;
        }
        if let Some(first) = owners.get(&key) {
            return Err(Error::DuplicatePeer {
                first: first.clone(),
                second: p.name.clone(),
                node: me.name.clone(),
                peer: addr.to_string(),
            });
        }
        owners.insert(key, p.name.clone());
        if sessions.contains_key(&key) {
            // Already a mesh peer: the mesh session stays.
            continue;
        }
        let family = Family::of(addr.ip);
        let peer_as = p.as_number.unwrap_or(cluster_as);
        let peer_node = input
            .nodes
            .iter()
            .find(|n| n.address(family) == Some(addr.ip));
        let rr_client = my_cluster.is_some()
            && peer_as == local_as
            && peer_node.is_some_and(|n| cluster_of(n) != my_cluster);
        let pt = peer_type(p);
        sessions.insert(
            key,
            Session {
                name: session_name(pt, addr.ip, addr.port),
                family,
                peer_address: addr.ip,
                port: addr.port,
                peer_as,
                local_as,
                peer_type: pt,
                peer_node: peer_node.map(|n| n.name.clone()),
                resource: Some(p.name.clone()),
                source_address: match p.source {
                    SourceAddress::None => None,
                    _ => me.address(family),
                },
                password: password(p)?,
                keep_original_next_hop: p.keep_original_next_hop,
                rr_client,
                passive: false,
                restart_time: p.max_restart_time,
                multihop: !on_link(addr.ip),
            },
        );
    }
    // Then node-to-node peerings chosen by peerSelector, in both directions
    // (as confd does: a session needs both ends configured): nodes the
    // BGPPeer applies to peer with the nodes its peerSelector selects, and
    // the selected nodes peer back. Overlaps are merged.
    for p in &peers {
        let Target::Nodes(sel) = &p.peer else {
            continue;
        };
        let forward = applies_to(p, me);
        let reverse = sel.matches(&me.labels);
        for other in others()
            .filter(|n| (forward && sel.matches(&n.labels)) || (reverse && applies_to(p, n)))
        {
            for family in [Family::V4, Family::V6] {
                if me.address(family).is_none() {
                    continue;
                }
                let Some(mut s) = node_session(other, family, peer_type(p), mesh_port, Some(p))
                else {
                    continue;
                };
                s.password = password(p)?;
                sessions.entry((s.peer_address, s.port)).or_insert(s);
            }
        }
    }
    let mut sessions: Vec<Session> = sessions.into_values().collect();
    sessions.sort_by(|a, b| a.name.cmp(&b.name));

    Ok(Plan {
        node: me.name.clone(),
        router_id,
        local_as,
        listen_port,
        log_severity: spec.log_severity().to_owned(),
        rr_cluster_id: my_cluster,
        sessions,
        v4: routes(input, me, spec, Family::V4),
        v6: routes(input, me, spec, Family::V6),
    })
}

/// Checks every resource of `input`; the BGPConfiguration (Calico's defaults
/// when absent) and the BGPPeers, parsed and ordered by name.
fn check(input: &Input) -> Result<(BgpConfiguration, Vec<CheckedPeer>), Error> {
    let config = input
        .config
        .clone()
        .unwrap_or_else(|| BgpConfiguration::new("default"));
    config.validate()?;
    let mut seen = BTreeSet::new();
    for node in &input.nodes {
        if !seen.insert(node.name.as_str()) {
            return Err(Error::DuplicateNode {
                node: node.name.clone(),
            });
        }
        if let Some(bgp) = &node.bgp {
            bgp.validate(&node.name)?;
        }
    }
    let mut peers = Vec::with_capacity(input.peers.len());
    for p in &input.peers {
        peers.push(p.check()?);
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    for pool in &input.pools {
        if pool.cidr.prefix_len() == 0 {
            return Err(Error::Invalid {
                resource: format!("IPPool {}", pool.cidr),
                field: "spec.cidr",
                value: pool.cidr.to_string(),
                rule: "a pool may not be a default route",
            });
        }
    }
    for b in &input.borrowed {
        if b.prefix_len() != b.max_prefix_len() {
            return Err(Error::Invalid {
                resource: format!("Node {}", input.node),
                field: "borrowed addresses",
                value: b.to_string(),
                rule: "a borrowed address is a /32 or /128",
            });
        }
    }
    Ok((config, peers))
}

/// What `me` exports, imports and programs in `family`.
fn routes(input: &Input, me: &NodeInfo, spec: &BgpConfigurationSpec, family: Family) -> Routes {
    let in_family = |n: &IpNet| Family::of(n.addr()) == family;
    let pool_of = |n: &IpNet| input.pools.iter().find(|p| p.cidr.contains(n));
    let exported = |n: &IpNet| pool_of(n).is_some_and(|p| !p.disable_bgp_export);
    let sorted = |mut v: Vec<IpNet>| {
        v.sort();
        v.dedup();
        v
    };
    let blocks = sorted(
        input
            .blocks
            .iter()
            .map(IpNet::trunc)
            .filter(|b| in_family(b) && exported(b))
            .collect(),
    );
    let kernel_blackholes = sorted(
        input
            .blocks
            .iter()
            .map(IpNet::trunc)
            .filter(|b| in_family(b) && pool_of(b).is_some_and(|p| !p.encapsulated()))
            .collect(),
    );
    let pools = |f: &dyn Fn(&Pool) -> bool| {
        sorted(
            input
                .pools
                .iter()
                .filter(|p| in_family(&p.cidr) && f(p))
                .map(|p| p.cidr)
                .collect(),
        )
    };
    Routes {
        local_address: me.address(family),
        kernel_blackholes,
        borrowed: sorted(
            input
                .borrowed
                .iter()
                .copied()
                .filter(|b| in_family(b) && exported(b))
                .filter(|b| !blocks.iter().any(|own| own.contains(b)))
                .collect(),
        ),
        blocks,
        services: sorted(
            spec.service_cidrs()
                .map(|c| c.trunc())
                .filter(in_family)
                .collect(),
        ),
        import: pools(&|_| true),
        reexport: pools(&|p| !p.disable_bgp_export),
        kernel: pools(&|p| !p.encapsulated()),
    }
}
