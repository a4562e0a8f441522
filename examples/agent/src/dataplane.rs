//! The kernel edge: applies a [`Desired`] through calinet-route in the agent's
//! network namespace, counting every write, and reads the local facts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use calinet_route::backend::Backend as _;
use calinet_route::{
    IfName, NetlinkBackend, Netns, Ownership, Reconciler, RouteProtocol, WorkloadSpec, link,
    workload,
};
use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::plan::{Desired, LocalFacts};

/// Prefix of the host-side workload interfaces the agent owns.
pub const WORKLOAD_PREFIX: &str = "cali";

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Netlink write requests (routes, links, addresses, neighbours, FDB,
    /// veths) plus one per pod side plumbed.
    pub writes: u64,
    /// Routes the agent owns after the apply.
    pub routes: usize,
    /// VXLAN neighbours programmed.
    pub neighbours: usize,
    /// Whether something is still pending (a device missing, a write refused).
    pub pending: usize,
    /// Workloads plumbed or rebuilt by this apply.
    pub workloads_changed: usize,
    /// Workload interfaces removed.
    pub workloads_removed: usize,
    /// Tunnel links created, changed or removed.
    pub links_changed: usize,
}

/// The agent's dataplane in its own network namespace.
#[derive(Debug)]
pub struct Dataplane {
    rec: Reconciler<NetlinkBackend>,
    /// Workload specs as last applied and verified, so steady-state ticks skip
    /// the per-workload kernel check (a full check runs on every resync).
    applied: BTreeMap<IfName, WorkloadSpec>,
}

impl Dataplane {
    /// Opens netlink in the calling thread's namespace.
    pub async fn open() -> Result<Self> {
        let ns = Netns::current().map_err(calinet_route::Error::from)?;
        let backend = NetlinkBackend::open(&ns).await?;
        // Calico's ownership: protocol 80 routes in the main table.
        // WireGuard's routing table (1) is ours too.
        let ownership = Ownership::by_protocol(RouteProtocol::CALICO)
            .tables([calinet_route::MAIN_TABLE, calinet_wg::model::DEFAULT_TABLE]);
        let rec = Reconciler::new(backend, ownership);
        Ok(Dataplane {
            rec,
            applied: BTreeMap::new(),
        })
    }

    /// Netlink writes so far.
    pub fn writes(&self) -> u64 {
        self.rec.backend().stats().writes
    }

    /// Brings a (WireGuard) link up with `mtu`; returns whether it wrote.
    /// `Ok(None)` when the link does not exist.
    pub async fn ensure_link_up(&mut self, name: &str, mtu: u32) -> Result<Option<bool>> {
        let ifname = IfName::new(name)?;
        let links = self.rec.backend_mut().links().await?;
        let Some(l) = links.by_name(&ifname) else {
            return Ok(None);
        };
        let change = link::LinkChange {
            up: (!l.up).then_some(true),
            mtu: (l.mtu != mtu).then_some(mtu),
            mac: None,
        };
        if change == link::LinkChange::default() {
            return Ok(Some(false));
        }
        let index = l.index;
        link::set_link(self.rec.backend_mut().conn(), index, &ifname, &change).await?;
        Ok(Some(true))
    }

    /// Whether a link exists.
    pub async fn link_exists(&mut self, name: &str) -> Result<bool> {
        let links = self.rec.backend_mut().links().await?;
        Ok(links.by_name(&IfName::new(name)?).is_some())
    }

    /// Deletes a link if present; returns whether it did.
    pub async fn delete_link(&mut self, name: &str) -> Result<bool> {
        Ok(link::delete_link(self.rec.backend_mut().conn(), &IfName::new(name)?).await?)
    }

    /// The uplink (default route's device), its MTU and the gateway.
    pub async fn local_facts(&mut self, uplink: Option<&str>) -> Result<LocalFacts> {
        let links = self.rec.backend_mut().links().await?;
        let routes = self.rec.backend_mut().routes(&links).await?;
        let default = routes.iter().find(|r| {
            r.destination == IpNet::V4(Default::default()) && r.table == calinet_route::MAIN_TABLE
        });
        let name = match (uplink, default.and_then(|r| r.device.as_ref())) {
            (Some(u), _) => u.to_owned(),
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(Error::Usage(
                    "no default route to find the uplink from; pass --uplink".into(),
                ));
            }
        };
        let ifname = IfName::new(name.clone())?;
        let l = links.by_name(&ifname).ok_or_else(|| {
            Error::Usage(format!("uplink {name} does not exist in this namespace"))
        })?;
        let gateway_v4 = default.and_then(|r| match r.gateway {
            Some(IpAddr::V4(g)) => Some(g),
            _ => None,
        });
        Ok(LocalFacts {
            uplink: name,
            mtu: l.mtu,
            gateway_v4,
        })
    }

    /// The uplink's first global IPv4 address with its prefix (for a Node
    /// resource the agent creates itself).
    pub async fn uplink_address(&mut self, uplink: &str) -> Result<Option<ipnet::Ipv4Net>> {
        let links = self.rec.backend_mut().links().await?;
        let Some(l) = links.by_name(&IfName::new(uplink)?) else {
            return Ok(None);
        };
        let index = l.index;
        let addrs = link::addresses(self.rec.backend_mut().conn(), Some(index)).await?;
        Ok(addrs.into_iter().find_map(|a| match a.address {
            IpNet::V4(n) if !n.addr().is_loopback() => Some(n),
            _ => None,
        }))
    }

    /// Makes the kernel match `desired`. `full` re-verifies every workload
    /// against the kernel (a resync); otherwise workloads already applied with
    /// the same spec are trusted.
    pub async fn apply(&mut self, desired: &Desired, full: bool) -> Result<ApplyReport> {
        let before = self.writes();
        let mut report = ApplyReport::default();
        let mut extra_writes = 0;

        // Tunnel devices first: routes through them need them.
        for spec in &desired.specs.links {
            let r = link::reconcile_link(self.rec.backend_mut().conn(), spec).await?;
            if !r.unchanged() {
                tracing::info!(link = %spec.name, created = r.created, recreated = ?r.recreated,
                    changed = ?r.changed, "tunnel link reconciled");
                report.links_changed += 1;
            }
        }
        let links = self.rec.backend_mut().links().await?;
        for name in &desired.specs.remove_links {
            if let Some(l) = links.by_name(name)
                && l.kind.as_deref() == Some("vxlan")
            {
                link::delete_link(self.rec.backend_mut().conn(), name).await?;
                tracing::info!(link = %name, "removed tunnel link no longer wanted");
                report.links_changed += 1;
            } else if let Some(l) = links.by_name(name)
                && l.kind.as_deref() == Some("ipip")
            {
                // The kernel never deletes tunl0: take it down and strip its
                // addresses instead (as Calico does).
                let index = l.index;
                let up = l.up;
                let conn = self.rec.backend_mut().conn();
                let addrs = link::addresses(conn, Some(index)).await?;
                for a in &addrs {
                    link::del_address(conn, index, name, a.address).await?;
                }
                if up {
                    let down = link::LinkChange {
                        up: Some(false),
                        ..link::LinkChange::default()
                    };
                    link::set_link(conn, index, name, &down).await?;
                }
                if up || !addrs.is_empty() {
                    tracing::info!(link = %name, "tunl0 no longer wanted: down, addresses removed");
                    report.links_changed += 1;
                }
            }
        }

        // Workloads: plumb the wanted ones, remove the others.
        let wanted: BTreeSet<&IfName> = desired
            .workloads
            .iter()
            .map(|w| &w.spec.host_ifname)
            .collect();
        for w in &desired.workloads {
            if !full && self.applied.get(&w.spec.host_ifname) == Some(&w.spec) {
                continue;
            }
            let conn = self.rec.backend_mut().conn();
            let setup = workload::setup_workload(conn, &w.spec, RouteProtocol::CALICO).await;
            match setup {
                Ok(s) => {
                    if s.changed {
                        // The pod side is written over its own socket.
                        extra_writes += 1;
                        report.workloads_changed += 1;
                        tracing::info!(pod = %w.pod.key(), interface = %w.spec.host_ifname,
                            rebuilt_because = ?s.rebuilt_because, "workload plumbed");
                    }
                    self.applied
                        .insert(w.spec.host_ifname.clone(), w.spec.clone());
                }
                Err(e) => {
                    self.applied.remove(&w.spec.host_ifname);
                    report.pending += 1;
                    tracing::warn!(pod = %w.pod.key(), error = %crate::error::chain(&e),
                        "workload not plumbed yet");
                }
            }
        }
        let links = self.rec.backend_mut().links().await?;
        for l in links.links() {
            if l.name.as_str().starts_with(WORKLOAD_PREFIX)
                && l.kind.as_deref() == Some("veth")
                && !wanted.contains(&l.name)
            {
                let name = l.name.clone();
                let pod_if = IfName::new("eth0")?;
                let conn = self.rec.backend_mut().conn();
                workload::teardown_workload(conn, &name, None, &pod_if).await?;
                self.applied.remove(&name);
                report.workloads_removed += 1;
                tracing::info!(interface = %name, "removed workload interface of a pod that is gone");
            }
        }

        // Routes: everything with protocol 80 in the main table.
        let r = self.rec.reconcile_routes(&desired.routes).await?;
        report.pending += r.pending.len();
        for f in &r.failures {
            tracing::warn!(error = %crate::error::chain(f), "route write refused");
        }
        report.pending += r.failures.len();
        report.routes = desired.routes.len();

        // VTEP neighbours and FDB entries on the VXLAN device.
        let devices: BTreeSet<IfName> = desired
            .specs
            .links
            .iter()
            .filter(|l| matches!(l.kind, calinet_route::LinkKind::Vxlan(_)))
            .map(|l| l.name.clone())
            .collect();
        if !devices.is_empty() {
            let (n, f) = self
                .rec
                .reconcile_neighbours(&desired.specs.neighbours, &desired.specs.fdb, &devices)
                .await?;
            report.pending +=
                n.pending.len() + f.pending.len() + n.failures.len() + f.failures.len();
            report.neighbours = desired.specs.neighbours.len();
        }
        report.writes = self.writes() - before + extra_writes;
        Ok(report)
    }
}
