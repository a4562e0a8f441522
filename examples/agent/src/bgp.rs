//! BGP: whether a node runs BIRD, calinet-bgp's input from the cluster view,
//! the BIRD the agent keeps running, and the route-owner rule.
//!
//! BIRD runs when Calico would run it: some IP pool routes without VXLAN
//! (`vxlanMode: Never`, with or without IPIP). A VXLAN-only cluster needs no
//! BGP. BIRD's kernel protocol owns the routes of unencapsulated pools (remote
//! blocks, borrowed addresses, this node's blackholes; they carry `proto
//! bird`), so the agent neither programs nor deletes those; it keeps the
//! workload routes (`dev cali*`) and everything of encapsulated pools.

use std::path::{Path, PathBuf};
use std::time::Instant;

use calinet_bgp::{
    Applied, BirdProcess, Controller, EncapMode, Input, NodeBgpSpec, NodeInfo, Plan, Pool,
};
use calinet_ipam::EncapMode as IpamEncap;
use calinet_route::RouteSpec;
use ipnet::IpNet;

use crate::datastore::ClusterView;
use crate::error::{Error, Result};
use crate::resources::CalicoNode;

/// Why BGP is off, or `None` when it is on.
pub fn off_reason(view: &ClusterView) -> Option<&'static str> {
    if view.ipam.pools.is_empty() {
        return Some("no IP pools");
    }
    let unencapsulated_vxlan = view
        .ipam
        .pools
        .iter()
        .any(|p| p.spec.vxlan_mode.unwrap_or_default() == IpamEncap::Never);
    (!unencapsulated_vxlan).then_some("VXLAN-only pools")
}

/// Whether this cluster runs BIRD (some pool without VXLAN).
pub fn enabled(view: &ClusterView) -> bool {
    off_reason(view).is_none()
}

fn encap(m: Option<IpamEncap>) -> EncapMode {
    match m.unwrap_or_default() {
        IpamEncap::Always => EncapMode::Always,
        IpamEncap::CrossSubnet => EncapMode::CrossSubnet,
        _ => EncapMode::Never,
    }
}

/// The plan's view of a Node: name, labels and `spec.bgp` (read with
/// calinet-bgp's type, so `asNumber` and `routeReflectorClusterID` count).
pub fn node_info(node: &CalicoNode) -> Result<NodeInfo> {
    let bgp =
        match &node.spec.bgp {
            None => None,
            Some(b) => {
                let value = serde_json::to_value(b).expect("NodeBgp serialises");
                Some(serde_json::from_value::<NodeBgpSpec>(value).map_err(|e| {
                    Error::Usage(format!("Node {}: spec.bgp: {e}", node.metadata.name))
                })?)
            }
        };
    let mut info = NodeInfo::default();
    info.name.clone_from(&node.metadata.name);
    info.labels.clone_from(&node.metadata.labels);
    info.bgp = bgp;
    Ok(info)
}

/// calinet-bgp's input for `node` from the cluster view.
pub fn input(view: &ClusterView, node: &str) -> Result<Input> {
    let mut input = Input::new(node);
    for (n, _) in view.nodes.values() {
        input.nodes.push(node_info(n)?);
    }
    input.config = view.bgp_configs.get("default").cloned();
    input.peers = view.bgp_peers.clone();
    input.pools = view
        .ipam
        .pools
        .iter()
        .map(|p| {
            Pool::new(p.spec.cidr)
                .ipip(encap(p.spec.ipip_mode))
                .vxlan(encap(p.spec.vxlan_mode))
                .disable_bgp_export(p.spec.disable_bgp_export.unwrap_or(false))
                .disabled(p.spec.disabled.unwrap_or(false))
        })
        .collect();
    let mine = format!("host:{node}");
    for (b, _) in &view.ipam.blocks {
        let own = b.affinity() == Some(mine.as_str());
        if own {
            input.blocks.push(b.cidr().net());
            continue;
        }
        for (o, a) in b.allocations() {
            let user = a.secondary.as_ref().and_then(|s| s.get("node"));
            if user.is_some_and(|u| u == node) {
                input.borrowed.push(IpNet::from(b.addr(o)));
            }
        }
    }
    Ok(input)
}

/// Checks the BGP resources of a cluster as every node would plan them
/// (duplicate peers, node fields): the first error, if any.
pub fn check_cluster(
    nodes: &[NodeInfo],
    config: Option<&calinet_bgp::BgpConfiguration>,
    peers: &[calinet_bgp::BgpPeer],
) -> std::result::Result<(), calinet_bgp::Error> {
    for n in nodes.iter().filter(|n| n.bgp.is_some()) {
        let mut input = Input::new(n.name.clone());
        input.nodes = nodes.to_vec();
        input.config = config.cloned();
        input.peers = peers.to_vec();
        match calinet_bgp::plan(&input) {
            Ok(_) | Err(calinet_bgp::Error::MissingSecret { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The pools whose routes BIRD's kernel protocol programs: with BGP on, the
/// pools without encapsulation (calinet-bgp's `Routes::kernel`); none when
/// BGP is off.
pub fn bird_pools(view: &ClusterView) -> Vec<IpNet> {
    if !enabled(view) {
        return Vec::new();
    }
    view.ipam
        .pools
        .iter()
        .filter(|p| {
            p.spec.vxlan_mode.unwrap_or_default() == IpamEncap::Never
                && p.spec.ipip_mode.unwrap_or_default() == IpamEncap::Never
        })
        .map(|p| p.spec.cidr.trunc())
        .collect()
}

/// Whether `route` is BIRD's (a main-table route in one of `bird_pools`)
/// rather than the agent's. Workload routes (`dev cali*`) and WireGuard's
/// table stay the agent's.
pub fn owned_by_bird(bird_pools: &[IpNet], route: &RouteSpec) -> bool {
    if route.table != calinet_route::MAIN_TABLE
        || route
            .device
            .as_ref()
            .is_some_and(|d| d.as_str().starts_with(crate::dataplane::WORKLOAD_PREFIX))
    {
        return false;
    }
    bird_pools
        .iter()
        .any(|pool| pool.contains(&route.destination))
}

/// The runtime directory of a node's BIRD when none is given: beside the
/// datastore file, `bird-<node>`.
pub fn default_runtime_dir(datastore: &Path, node: &str) -> PathBuf {
    datastore.with_file_name(format!("bird-{node}"))
}

/// The BIRD of this node, kept running the latest plan.
#[derive(Debug)]
pub struct BgpPlane {
    ctl: Controller<BirdProcess>,
    secrets: Option<PathBuf>,
    plan: Option<Plan>,
    running: bool,
}

impl BgpPlane {
    /// A plane whose BIRD uses `dir` (configuration, socket, pid file, log),
    /// in the agent's network namespace.
    pub fn new(dir: PathBuf) -> Self {
        BgpPlane {
            ctl: Controller::new(BirdProcess::new(dir)),
            secrets: None,
            plan: None,
            running: false,
        }
    }

    /// Reads BGPPeer passwords (`password.secretKeyRef`) from `dir`, laid out
    /// like a mounted Kubernetes secret: `<dir>/<secret>/<key>`.
    pub fn with_secrets(mut self, dir: Option<PathBuf>) -> Self {
        self.secrets = dir;
        self
    }

    /// The plan BIRD runs (when BGP is on).
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Plans `node` from `view` and makes BIRD run it: started, reconfigured
    /// (no restart) or left alone. When BGP is off, a BIRD this agent runs
    /// withdraws its kernel routes and stops. Returns the plan in force.
    pub fn sync(&mut self, view: &ClusterView, node: &str, now: Instant) -> Result<Option<&Plan>> {
        if !enabled(view) {
            if self.running || self.ctl.bird_mut().pid().is_some() {
                self.withdraw_and_stop(view, node, now)?;
            }
            self.plan = None;
            return Ok(None);
        }
        let mut input = input(view, node)?;
        if let Some(dir) = &self.secrets {
            input.secrets = calinet_bgp::read_secrets(dir, &input.peers).map_err(Error::Bird)?;
        }
        let plan = calinet_bgp::plan(&input).map_err(Error::Bgp)?;
        let config = calinet_bgp::render(&plan);
        match self.ctl.apply(&config, now) {
            Ok(Applied::Unchanged) => {}
            Ok(a) => {
                tracing::info!(applied = ?a, sessions = plan.sessions.len(),
                    blocks = plan.v4.blocks.len(), "BIRD configuration applied");
            }
            Err(calinet_bgp::ControlError::Backoff { wait }) => {
                tracing::info!(?wait, "BIRD restart delayed (backoff)");
            }
            Err(e) => return Err(Error::Bird(e)),
        }
        self.running = true;
        self.plan = Some(plan);
        Ok(self.plan.as_ref())
    }

    /// Restarts BIRD (as a graceful restart) if it died; called every tick.
    pub fn ensure_running(&mut self, now: Instant) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        match self.ctl.ensure_running(now) {
            Ok(Applied::Restarted) => {
                tracing::warn!("BIRD had died: restarted (graceful restart, routes kept)");
                Ok(())
            }
            Ok(_) | Err(calinet_bgp::ControlError::Backoff { .. }) => Ok(()),
            Err(e) => Err(Error::Bird(e)),
        }
    }

    fn withdraw_and_stop(&mut self, view: &ClusterView, node: &str, now: Instant) -> Result<()> {
        // A plan without pools programs nothing: BIRD removes its kernel
        // routes before it stops (persist would otherwise keep them).
        let mut input = input(view, node)?;
        input.pools.clear();
        if let Ok(plan) = calinet_bgp::plan(&input) {
            let _ = self.ctl.apply(&calinet_bgp::render(&plan), now);
        }
        self.ctl.stop().map_err(Error::Bird)?;
        self.running = false;
        tracing::info!("BGP off (no pool without VXLAN): BIRD stopped");
        Ok(())
    }

    /// Lets BIRD run on when the agent exits (as calico-node's BIRD outlives
    /// Felix restarts); the next agent adopts it through its socket.
    pub fn detach(&mut self) {
        self.ctl.bird_mut().detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{apply, read_view};
    use crate::resources::parse_documents;
    use calinet_ipam::{Ipam, MemStore};
    use calinet_route::{IfName, RouteProtocol};
    use std::time::SystemTime;

    fn view(vxlan: &str, extra: &str) -> ClusterView {
        let text = format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\nspec: {{cidr: 172.16.0.0/16, blockSize: 24, vxlanMode: {vxlan}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: a, labels: {{rack: r1}}}}\nspec: {{bgp: {{ipv4Address: 198.51.100.10/24, routeReflectorClusterID: 244.0.0.1}}}}\n\
---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: b}}\nspec: {{bgp: {{ipv4Address: 198.51.100.11/24, asNumber: 65001}}}}\n{extra}"
        );
        let store = MemStore::new();
        apply(&store, &parse_documents("t", &text).unwrap()).unwrap();
        let ipam = Ipam::new(&store);
        let attrs = |n: &str| std::collections::BTreeMap::from([("node".to_owned(), n.to_owned())]);
        // a's block, and an address of it that b uses (borrowed by b).
        for (addr, handle, node) in [("172.16.1.1", "h1", "a"), ("172.16.1.9", "h2", "b")] {
            ipam.assign_ip(
                addr.parse().unwrap(),
                &handle.parse().unwrap(),
                &attrs(node),
                &"a".parse().unwrap(),
                SystemTime::UNIX_EPOCH,
            )
            .unwrap();
        }
        read_view(&store).unwrap()
    }

    #[test]
    fn bgp_runs_unless_every_pool_uses_vxlan() {
        assert_eq!(off_reason(&view("Always", "")), Some("VXLAN-only pools"));
        assert_eq!(
            off_reason(&view("CrossSubnet", "")),
            Some("VXLAN-only pools")
        );
        assert_eq!(off_reason(&view("Never", "")), None);
        assert_eq!(off_reason(&ClusterView::default()), Some("no IP pools"));
        assert!(bird_pools(&view("Always", "")).is_empty());
        assert_eq!(
            bird_pools(&view("Never", "")),
            ["172.16.0.0/16".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn input_carries_node_fields_blocks_and_borrowed_addresses() {
        let peer = "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 198.51.100.1, asNumber: 64513}\n";
        let v = view("Never", peer);
        let a = input(&v, "a").unwrap();
        assert_eq!(a.blocks, ["172.16.1.0/24".parse::<IpNet>().unwrap()]);
        assert!(a.borrowed.is_empty());
        let na = a.nodes.iter().find(|n| n.name == "a").unwrap();
        assert_eq!(na.labels["rack"], "r1");
        let bgp = na.bgp.as_ref().unwrap();
        assert_eq!(bgp.route_reflector_cluster_id.as_deref(), Some("244.0.0.1"));
        let nb = a.nodes.iter().find(|n| n.name == "b").unwrap();
        assert_eq!(
            nb.bgp.as_ref().unwrap().as_number.map(|n| n.get()),
            Some(65001)
        );
        assert_eq!(a.peers.len(), 1);
        let b = input(&v, "b").unwrap();
        assert!(b.blocks.is_empty());
        assert_eq!(b.borrowed, ["172.16.1.9/32".parse::<IpNet>().unwrap()]);
        // The plan a's BIRD runs: a reflector for b (another AS: eBGP, so
        // not a client), the global peer, a's block blackholed by BIRD.
        let plan = calinet_bgp::plan(&a).unwrap();
        let names: Vec<&str> = plan.sessions.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["Global_198_51_100_1", "Mesh_198_51_100_11"]);
        assert_eq!(plan.v4.kernel_blackholes, a.blocks);
    }

    #[test]
    fn node_status_plans_without_the_secrets_and_says_when_bird_is_down() {
        let peer = "---\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 198.51.100.1, asNumber: 64513, password: {secretKeyRef: {name: bgp, key: tor}}}\n";
        let dir = tempfile::tempdir().unwrap();
        let text = crate::show::node_status(&view("Never", peer), "a", 0, 15, dir.path()).unwrap();
        assert!(text.contains("BIRD is not running on node a"), "{text}");
        let off = crate::show::node_status(&view("Always", peer), "a", 0, 15, dir.path()).unwrap();
        assert!(
            off.contains("BGP is not running on this node (VXLAN-only pools)."),
            "{off}"
        );
        assert!(!off.contains("Established"), "{off}");
    }

    #[test]
    fn bird_owns_pool_routes_of_the_main_table_except_workload_routes() {
        let pools = ["172.16.0.0/16".parse::<IpNet>().unwrap()];
        let remote = RouteSpec::via(
            "172.16.2.0/24".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        )
        .protocol(RouteProtocol::CALICO);
        assert!(owned_by_bird(&pools, &remote));
        let workload = RouteSpec::workload(
            "172.16.1.1".parse().unwrap(),
            IfName::new("cali12345").unwrap(),
        );
        assert!(!owned_by_bird(&pools, &workload));
        assert!(owned_by_bird(
            &pools,
            &RouteSpec::blackhole("172.16.1.0/24".parse().unwrap())
        ));
        let mut table1 = remote.clone();
        table1.table = 1;
        assert!(!owned_by_bird(&pools, &table1), "WireGuard's table");
        let outside = RouteSpec::via(
            "10.0.0.0/24".parse().unwrap(),
            "198.51.100.11".parse().unwrap(),
        );
        assert!(!owned_by_bird(&pools, &outside));
        assert!(!owned_by_bird(&[], &remote), "BGP off");
    }
}
