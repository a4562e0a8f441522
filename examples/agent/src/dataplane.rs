//! The kernel edge: applies a [`Desired`]'s tunnel links, routes and VTEP
//! entries through calinet-route in the agent's network namespace, counting
//! every write, and reads the local facts. Pods are attached (and their
//! interfaces removed) through calinet-attach, by the agent.

use std::collections::BTreeSet;
use std::net::IpAddr;

use calinet_route::backend::Backend as _;
use calinet_route::{IfName, NetlinkBackend, Netns, Ownership, Reconciler, RouteProtocol, link};
use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::plan::{Desired, LocalFacts};

/// Prefix of the host-side workload interfaces the agent owns.
pub const WORKLOAD_PREFIX: &str = "cali";

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Netlink write requests (routes, links, addresses, neighbours, FDB;
    /// the agent adds the workloads' veths, plus one per pod side plumbed).
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
        Ok(Dataplane { rec })
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

    /// Makes `addr`/32 the only IPv4 address of link `name` (the WireGuard
    /// device's); returns whether it wrote. Nothing when the link is missing.
    pub async fn ensure_address(&mut self, name: &str, addr: std::net::Ipv4Addr) -> Result<bool> {
        let ifname = IfName::new(name)?;
        let links = self.rec.backend_mut().links().await?;
        let Some(l) = links.by_name(&ifname) else {
            return Ok(false);
        };
        let index = l.index;
        let want = IpNet::from(IpAddr::V4(addr));
        let conn = self.rec.backend_mut().conn();
        let have = link::addresses(conn, Some(index)).await?;
        let mut wrote = false;
        for a in &have {
            if a.address.addr().is_ipv4() && a.address != want {
                link::del_address(conn, index, &ifname, a.address).await?;
                wrote = true;
            }
        }
        if !have.iter().any(|a| a.address == want) {
            link::add_address(conn, index, &ifname, want, false).await?;
            wrote = true;
        }
        Ok(wrote)
    }

    /// The MTU of link `name` (`None` when it does not exist).
    pub async fn link_mtu(&mut self, name: &str) -> Result<Option<u32>> {
        let links = self.rec.backend_mut().links().await?;
        Ok(links.by_name(&IfName::new(name)?).map(|l| l.mtu))
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

    /// The host-side workload interfaces: `cali*` veths.
    pub async fn workload_links(&mut self) -> Result<Vec<IfName>> {
        let links = self.rec.backend_mut().links().await?;
        Ok(links
            .links()
            .filter(|l| {
                l.name.as_str().starts_with(WORKLOAD_PREFIX) && l.kind.as_deref() == Some("veth")
            })
            .map(|l| l.name.clone())
            .collect())
    }

    /// The owner recorded on a workload interface (its alias), if any.
    pub async fn workload_owner(&mut self, name: &IfName) -> Result<Option<String>> {
        Ok(calinet_route::workload::host_owner(self.rec.backend_mut().conn(), name).await?)
    }

    /// Makes the kernel's tunnel links, routes and VTEP entries match
    /// `desired` (the workloads are attached before, by the agent).
    pub async fn apply(&mut self, desired: &Desired) -> Result<ApplyReport> {
        let before = self.writes();
        let mut report = ApplyReport::default();

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
        report.writes = self.writes() - before;
        Ok(report)
    }
}
