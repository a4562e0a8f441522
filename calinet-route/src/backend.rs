//! The I/O edge of the reconciler: a [`Backend`] trait, the real
//! [`NetlinkBackend`], and an in-memory [`MemoryBackend`] that records writes
//! (for unit tests here and downstream).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;

use crate::error::Result;
use crate::kernel::{
    self, LinkIndex, LinkState, RouteMsgKind, fdb_message, neighbour_message, route_message,
};
use crate::netns::Netns;
use crate::nl::{Conn, Nack, Stats};
use crate::plan::{ObservedFdb, ObservedNeighbour};
use crate::spec::{FdbSpec, NeighbourSpec, RouteSpec};

/// One route write.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteOp {
    /// Create. `exclusive` fails if the key exists (`NLM_F_EXCL`); it is false when a
    /// foreign route shares the key and ours must be added beside it.
    Add {
        /// The route.
        route: RouteSpec,
        /// Whether to fail on an existing key.
        exclusive: bool,
    },
    /// Create or replace the route with this key.
    Replace(RouteSpec),
    /// Delete exactly this route (key, protocol, type, device, gateway).
    Delete(RouteSpec),
}

impl RouteOp {
    /// The route this op writes.
    pub fn route(&self) -> &RouteSpec {
        match self {
            RouteOp::Add { route, .. } | RouteOp::Replace(route) | RouteOp::Delete(route) => route,
        }
    }
}

impl fmt::Display for RouteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteOp::Add {
                route,
                exclusive: true,
            } => write!(f, "route add {route}"),
            RouteOp::Add {
                route,
                exclusive: false,
            } => write!(f, "route prepend {route}"),
            RouteOp::Replace(r) => write!(f, "route replace {r}"),
            RouteOp::Delete(r) => write!(f, "route del {r}"),
        }
    }
}

/// One neighbour or FDB write.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryOp<T> {
    /// Create or replace.
    Set(T),
    /// Delete.
    Delete(T),
}

impl<T> EntryOp<T> {
    /// The entry.
    pub fn entry(&self) -> &T {
        match self {
            EntryOp::Set(t) | EntryOp::Delete(t) => t,
        }
    }
}

impl fmt::Display for EntryOp<NeighbourSpec> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryOp::Set(n) => write!(f, "neigh replace {n}"),
            EntryOp::Delete(n) => write!(f, "neigh del {n}"),
        }
    }
}

impl fmt::Display for EntryOp<FdbSpec> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryOp::Set(e) => write!(f, "fdb replace {e}"),
            EntryOp::Delete(e) => write!(f, "fdb del {e}"),
        }
    }
}

/// Per-op outcome: `None` when the kernel accepted it.
pub type Outcomes = Vec<Option<Nack>>;

/// What the reconciler needs from the kernel of one namespace.
///
/// Observation methods return complete, consistent snapshots (the netlink backend
/// re-dumps on `NLM_F_DUMP_INTR` and overruns); apply methods return one outcome per
/// op, in order.
pub trait Backend {
    /// All links.
    fn links(&mut self) -> impl Future<Output = Result<LinkIndex>> + Send;
    /// All IPv4/IPv6 routes of every table.
    fn routes(&mut self, links: &LinkIndex) -> impl Future<Output = Result<Vec<RouteSpec>>> + Send;
    /// All IPv4/IPv6 neighbour entries.
    fn neighbours(
        &mut self,
        links: &LinkIndex,
    ) -> impl Future<Output = Result<Vec<ObservedNeighbour>>> + Send;
    /// All bridge-family FDB entries with a destination.
    fn fdb(&mut self, links: &LinkIndex) -> impl Future<Output = Result<Vec<ObservedFdb>>> + Send;
    /// Executes route writes.
    fn apply_routes(
        &mut self,
        ops: &[RouteOp],
        links: &LinkIndex,
    ) -> impl Future<Output = Result<Outcomes>> + Send;
    /// Executes neighbour writes.
    fn apply_neighbours(
        &mut self,
        ops: &[EntryOp<NeighbourSpec>],
        links: &LinkIndex,
    ) -> impl Future<Output = Result<Outcomes>> + Send;
    /// Executes FDB writes.
    fn apply_fdb(
        &mut self,
        ops: &[EntryOp<FdbSpec>],
        links: &LinkIndex,
    ) -> impl Future<Output = Result<Outcomes>> + Send;
    /// Write requests issued so far.
    fn writes(&self) -> u64;
}

/// The real backend: one netlink socket in one namespace.
#[derive(Debug)]
pub struct NetlinkBackend {
    conn: Conn,
}

impl NetlinkBackend {
    /// Opens a socket in `netns`. Call inside a tokio runtime.
    pub async fn open(netns: &Netns) -> Result<Self> {
        Ok(NetlinkBackend {
            conn: Conn::open(netns).await?,
        })
    }

    /// The transport's counters (writes, dumps, re-dumps, sends).
    pub fn stats(&self) -> Stats {
        self.conn.stats()
    }

    /// The underlying connection (for link and address operations).
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

fn enodev() -> Option<Nack> {
    Some(Nack {
        errno: libc::ENODEV,
        message: Some("device not found when building the request".to_string()),
    })
}

/// Sends the ops whose device resolved; fills ENODEV for the rest.
async fn send_resolved(
    conn: &mut Conn,
    built: Vec<Option<(RouteNetlinkMessage, u16)>>,
    what: &str,
) -> Result<Outcomes> {
    let mut idx = Vec::with_capacity(built.len());
    let mut reqs = Vec::with_capacity(built.len());
    let mut out: Outcomes = Vec::with_capacity(built.len());
    for (i, b) in built.into_iter().enumerate() {
        match b {
            Some(r) => {
                idx.push(i);
                reqs.push(r);
                out.push(None);
            }
            None => out.push(enodev()),
        }
    }
    let res = conn.execute(&reqs, what).await?;
    for (i, r) in idx.into_iter().zip(res) {
        out[i] = r;
    }
    Ok(out)
}

/// Dumps every IPv4/IPv6 route of every table as specs.
pub(crate) async fn dump_routes(conn: &mut Conn, links: &LinkIndex) -> Result<Vec<RouteSpec>> {
    let msgs = conn
        .dump(
            &RouteNetlinkMessage::GetRoute(kernel::route_dump_request()),
            "routes",
        )
        .await?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => kernel::route_from_message(r, links),
            _ => None,
        })
        .collect())
}

impl Backend for NetlinkBackend {
    async fn links(&mut self) -> Result<LinkIndex> {
        crate::link::dump_links(&mut self.conn).await
    }

    async fn routes(&mut self, links: &LinkIndex) -> Result<Vec<RouteSpec>> {
        dump_routes(&mut self.conn, links).await
    }

    async fn neighbours(&mut self, links: &LinkIndex) -> Result<Vec<ObservedNeighbour>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = NeighbourMessage::default();
            req.header.family = fam;
            let msgs = self
                .conn
                .dump(&RouteNetlinkMessage::GetNeighbour(req), "neighbours")
                .await?;
            out.extend(msgs.iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => kernel::neighbour_from_message(n, links),
                _ => None,
            }));
        }
        Ok(out)
    }

    async fn fdb(&mut self, links: &LinkIndex) -> Result<Vec<ObservedFdb>> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let msgs = self
            .conn
            .dump(&RouteNetlinkMessage::GetNeighbour(req), "fdb")
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => kernel::fdb_from_message(n, links),
                _ => None,
            })
            .collect())
    }

    async fn apply_routes(&mut self, ops: &[RouteOp], links: &LinkIndex) -> Result<Outcomes> {
        let built = ops
            .iter()
            .map(|op| {
                let r = op.route();
                let oif = match &r.device {
                    Some(d) => Some(links.by_name(d)?.index),
                    None => None,
                };
                Some(match op {
                    RouteOp::Add { exclusive, .. } => (
                        RouteNetlinkMessage::NewRoute(route_message(r, oif, RouteMsgKind::New)),
                        NLM_F_CREATE | if *exclusive { NLM_F_EXCL } else { 0 },
                    ),
                    RouteOp::Replace(_) => (
                        RouteNetlinkMessage::NewRoute(route_message(r, oif, RouteMsgKind::New)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ),
                    RouteOp::Delete(_) => (
                        RouteNetlinkMessage::DelRoute(route_message(r, oif, RouteMsgKind::Delete)),
                        0,
                    ),
                })
            })
            .collect();
        send_resolved(&mut self.conn, built, "route writes").await
    }

    async fn apply_neighbours(
        &mut self,
        ops: &[EntryOp<NeighbourSpec>],
        links: &LinkIndex,
    ) -> Result<Outcomes> {
        let built = ops
            .iter()
            .map(|op| {
                let n = op.entry();
                let i = links.by_name(&n.device)?.index;
                Some(match op {
                    EntryOp::Set(_) => (
                        RouteNetlinkMessage::NewNeighbour(neighbour_message(n, i, false)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ),
                    EntryOp::Delete(_) => (
                        RouteNetlinkMessage::DelNeighbour(neighbour_message(n, i, true)),
                        0,
                    ),
                })
            })
            .collect();
        send_resolved(&mut self.conn, built, "neighbour writes").await
    }

    async fn apply_fdb(&mut self, ops: &[EntryOp<FdbSpec>], links: &LinkIndex) -> Result<Outcomes> {
        let built = ops
            .iter()
            .map(|op| {
                let e = op.entry();
                let i = links.by_name(&e.device)?.index;
                Some(match op {
                    EntryOp::Set(_) => (
                        RouteNetlinkMessage::NewNeighbour(fdb_message(e, i)),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    ),
                    EntryOp::Delete(_) => (RouteNetlinkMessage::DelNeighbour(fdb_message(e, i)), 0),
                })
            })
            .collect();
        send_resolved(&mut self.conn, built, "fdb writes").await
    }

    fn writes(&self) -> u64 {
        self.conn.stats().writes
    }
}

/// An in-memory kernel for unit tests: keeps links, routes, neighbours and FDB
/// entries, applies ops with the kernel's key rules, and records every write.
///
/// Like the kernel, it refuses routes through a missing (`ENODEV`) or down
/// (`ENETDOWN`) device, and [`MemoryBackend::set_link_up`]`(.., false)` flushes the
/// routes through that device.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    /// Links by name.
    pub links: BTreeMap<String, LinkState>,
    /// Routes, in insertion order.
    pub routes: Vec<RouteSpec>,
    /// Neighbour entries.
    pub neighbours: Vec<ObservedNeighbour>,
    /// FDB entries.
    pub fdb: Vec<ObservedFdb>,
    /// Every write, rendered like the `ip` command.
    pub log: Vec<String>,
    /// Ops (by their rendered text) that should fail with the given errno.
    pub fail: BTreeMap<String, i32>,
}

impl MemoryBackend {
    /// An empty kernel.
    pub fn new() -> Self {
        MemoryBackend::default()
    }

    /// Adds (or replaces) a link; index = position + 1.
    pub fn add_link(&mut self, name: &str, up: bool) {
        let index = self
            .links
            .get(name)
            .map(|l| l.index)
            .unwrap_or_else(|| self.links.values().map(|l| l.index).max().unwrap_or(0) + 1);
        let state = LinkState {
            index,
            name: name.parse().expect("valid test link name"),
            up,
            lower_up: up,
            loopback: false,
            mtu: 1500,
            mac: None,
            kind: None,
            vxlan: None,
            ipip: None,
        };
        self.links.insert(name.to_string(), state);
    }

    /// Deletes a link and, like the kernel, every route, neighbour and FDB entry on it.
    pub fn remove_link(&mut self, name: &str) {
        self.links.remove(name);
        self.flush(name);
    }

    /// Sets a link's admin state; down flushes its routes (IPv4 kernel behaviour).
    pub fn set_link_up(&mut self, name: &str, up: bool) {
        if let Some(l) = self.links.get_mut(name) {
            l.up = up;
        }
        if !up {
            self.routes
                .retain(|r| r.device.as_ref().map(|d| d.as_str()) != Some(name));
        }
    }

    fn flush(&mut self, name: &str) {
        self.routes
            .retain(|r| r.device.as_ref().map(|d| d.as_str()) != Some(name));
        self.neighbours.retain(|n| n.spec.device.as_str() != name);
        self.fdb.retain(|n| n.spec.device.as_str() != name);
    }

    fn check_device(&self, r: &RouteSpec) -> Option<Nack> {
        let d = r.device.as_ref()?;
        match self.links.get(d.as_str()) {
            None => Some(Nack {
                errno: libc::ENODEV,
                message: None,
            }),
            Some(l) if !l.up => Some(Nack {
                errno: libc::ENETDOWN,
                message: None,
            }),
            Some(_) => None,
        }
    }

    fn injected(&self, text: &str) -> Option<Nack> {
        self.fail.get(text).map(|&errno| Nack {
            errno,
            message: Some("injected".to_string()),
        })
    }

    fn apply_route(&mut self, op: &RouteOp) -> Option<Nack> {
        let text = op.to_string();
        self.log.push(text.clone());
        if let Some(n) = self.injected(&text) {
            return Some(n);
        }
        let r = op.route().normalized();
        match op {
            RouteOp::Add { exclusive, .. } => {
                if let Some(n) = self.check_device(&r) {
                    return Some(n);
                }
                if *exclusive && self.routes.iter().any(|o| o.key() == r.key()) {
                    return Some(Nack {
                        errno: libc::EEXIST,
                        message: None,
                    });
                }
                self.routes.insert(0, r);
                None
            }
            RouteOp::Replace(_) => {
                if let Some(n) = self.check_device(&r) {
                    return Some(n);
                }
                match self.routes.iter().position(|o| o.key() == r.key()) {
                    Some(p) => self.routes[p] = r,
                    None => self.routes.push(r),
                }
                None
            }
            RouteOp::Delete(_) => {
                let hit = self.routes.iter().position(|o| {
                    o.key() == r.key()
                        && o.protocol == r.protocol
                        && o.kind == r.kind
                        && (r.device.is_none() || o.device == r.device)
                        && (r.gateway.is_none() || o.gateway == r.gateway)
                });
                match hit {
                    Some(p) => {
                        self.routes.remove(p);
                        None
                    }
                    None => Some(Nack {
                        errno: libc::ESRCH,
                        message: None,
                    }),
                }
            }
        }
    }
}

impl Backend for MemoryBackend {
    async fn links(&mut self) -> Result<LinkIndex> {
        Ok(LinkIndex::new(self.links.values().cloned()))
    }

    async fn routes(&mut self, _links: &LinkIndex) -> Result<Vec<RouteSpec>> {
        Ok(self.routes.clone())
    }

    async fn neighbours(&mut self, _links: &LinkIndex) -> Result<Vec<ObservedNeighbour>> {
        Ok(self.neighbours.clone())
    }

    async fn fdb(&mut self, _links: &LinkIndex) -> Result<Vec<ObservedFdb>> {
        Ok(self.fdb.clone())
    }

    async fn apply_routes(&mut self, ops: &[RouteOp], _links: &LinkIndex) -> Result<Outcomes> {
        Ok(ops.iter().map(|op| self.apply_route(op)).collect())
    }

    async fn apply_neighbours(
        &mut self,
        ops: &[EntryOp<NeighbourSpec>],
        _links: &LinkIndex,
    ) -> Result<Outcomes> {
        let mut out = Vec::new();
        for op in ops {
            let text = op.to_string();
            self.log.push(text.clone());
            if let Some(n) = self.injected(&text) {
                out.push(Some(n));
                continue;
            }
            let e = op.entry();
            if !self.links.contains_key(e.device.as_str()) {
                out.push(Some(Nack {
                    errno: libc::ENODEV,
                    message: None,
                }));
                continue;
            }
            self.neighbours.retain(|o| o.spec.key() != e.key());
            if let EntryOp::Set(_) = op {
                self.neighbours.push(ObservedNeighbour {
                    spec: e.clone(),
                    permanent: true,
                    incomplete: false,
                });
            }
            out.push(None);
        }
        Ok(out)
    }

    async fn apply_fdb(
        &mut self,
        ops: &[EntryOp<FdbSpec>],
        _links: &LinkIndex,
    ) -> Result<Outcomes> {
        let mut out = Vec::new();
        for op in ops {
            let text = op.to_string();
            self.log.push(text.clone());
            if let Some(n) = self.injected(&text) {
                out.push(Some(n));
                continue;
            }
            let e = op.entry();
            if !self.links.contains_key(e.device.as_str()) {
                out.push(Some(Nack {
                    errno: libc::ENODEV,
                    message: None,
                }));
                continue;
            }
            match op {
                EntryOp::Set(_) => {
                    // Replace semantics: the MAC's destination is overwritten.
                    self.fdb.retain(|o| o.spec.key() != e.key());
                    self.fdb.push(ObservedFdb {
                        spec: e.clone(),
                        permanent: true,
                        is_self: true,
                    });
                }
                EntryOp::Delete(_) => self.fdb.retain(|o| o.spec != *e),
            }
            out.push(None);
        }
        Ok(out)
    }

    fn writes(&self) -> u64 {
        self.log.len() as u64
    }
}
