//! Reports: what `calicoctl ipam show` shows, as data and as a table, and
//! `ipam check` (leaks, orphan handles, disagreeing blocks).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::block::Block;
use crate::error::Result;
use crate::keys;
use crate::store::{Revision, Store};
use crate::types::{
    AffinityState, BlockAffinity, BlockCidr, Family, HandleId, IpPool, IpReservation,
    IpamConfigSpec, IpamHandle, NodeName, WINDOWS_RESERVED_HANDLE,
};

/// A stored document that could not be decoded or is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDoc {
    /// Store key.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// Everything IPAM keeps in a store, read in one go.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    /// Pools.
    pub pools: Vec<IpPool>,
    /// IPAM configuration.
    pub config: IpamConfigSpec,
    /// Reserved CIDRs.
    pub reservations: Vec<IpNet>,
    /// Decodable blocks and their revisions.
    pub blocks: Vec<(Block, Revision)>,
    /// Affinities: node, block, value.
    pub affinities: Vec<(NodeName, BlockCidr, BlockAffinity)>,
    /// Handles.
    pub handles: Vec<IpamHandle>,
    /// Documents that failed to decode or check.
    pub invalid: Vec<InvalidDoc>,
}

/// Read all IPAM state from a store. Undecodable documents are reported in
/// [`Dump::invalid`] instead of failing the read.
pub fn dump<S: Store + ?Sized>(store: &S) -> Result<Dump> {
    let mut d = Dump::default();
    let bad = |key: &str, reason: String| d_invalid(key, reason);
    let mut invalid = Vec::new();
    for kv in store.list(keys::POOLS_PREFIX)? {
        match serde_json::from_slice::<IpPool>(&kv.value) {
            Ok(p) => d.pools.push(p),
            Err(e) => invalid.push(bad(&kv.key, e.to_string())),
        }
    }
    if let Some(kv) = store.get(keys::IPAM_CONFIG)? {
        match crate::encoding::decode_config(&kv.key, &kv.value) {
            Ok(c) => d.config = c,
            Err(e) => invalid.push(bad(&kv.key, error_chain(&e))),
        }
    }
    for kv in store.list(keys::RESERVATIONS_PREFIX)? {
        match serde_json::from_slice::<IpReservation>(&kv.value) {
            Ok(r) => d.reservations.extend(r.spec.reserved_cidrs),
            Err(e) => invalid.push(bad(&kv.key, e.to_string())),
        }
    }
    for fam in [Family::V4, Family::V6] {
        for kv in store.list(&keys::blocks_prefix(fam))? {
            match Block::from_json(&kv.key, &kv.value) {
                Ok(b) if keys::block(&b.cidr()) != kv.key => invalid.push(bad(
                    &kv.key,
                    format!("block {} stored under the wrong key", b.cidr()),
                )),
                Ok(b) => d.blocks.push((b, kv.mod_revision)),
                Err(e) => invalid.push(bad(&kv.key, error_chain(&e))),
            }
        }
    }
    for kv in store.list(keys::HOSTS_PREFIX)? {
        let Some((node, cidr)) = keys::parse_affinity(&kv.key) else {
            invalid.push(bad(&kv.key, "not an affinity key".into()));
            continue;
        };
        match crate::encoding::decode_affinity(&kv.key, &node, cidr, &kv.value) {
            Ok(a) => d.affinities.push((node, cidr, a)),
            Err(e) => invalid.push(bad(&kv.key, error_chain(&e))),
        }
    }
    for kv in store.list(keys::HANDLES_PREFIX)? {
        match crate::encoding::decode_handle(&kv.key, &kv.value) {
            Ok(h) => d.handles.push(h),
            Err(e) => invalid.push(bad(&kv.key, error_chain(&e))),
        }
    }
    d.invalid = invalid;
    Ok(d)
}

fn d_invalid(key: &str, reason: String) -> InvalidDoc {
    InvalidDoc {
        key: key.to_owned(),
        reason,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let _ = write!(s, ": {c}");
        cur = c.source();
    }
    s
}

/// Row grouping, as in calicoctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Grouping {
    /// A pool row.
    IpPool,
    /// A block row.
    Block,
}

/// One usage row of `ipam show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Pool or block.
    pub grouping: Grouping,
    /// The CIDR.
    pub cidr: IpNet,
    /// Addresses in the CIDR.
    pub total: u128,
    /// Allocated (not counting reserved).
    pub in_use: u128,
    /// Reserved (IPReservation and Windows reserved).
    pub reserved: u128,
    /// total - in_use - reserved.
    pub free: u128,
}

/// One row of `ipam show --show-borrowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorrowedRow {
    /// The borrowed address.
    pub ip: IpAddr,
    /// The node using it.
    pub borrowing_node: String,
    /// Its block.
    pub block: BlockCidr,
    /// The block's owner.
    pub block_owner: String,
    /// Allocation type (e.g. pod, vxlanTunnelAddress).
    pub kind: String,
    /// namespace/pod or the handle.
    pub allocated_to: String,
}

/// `ipam show` as data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShowReport {
    /// One row per pool.
    pub pools: Vec<UsageRow>,
    /// One row per block (`--show-blocks`).
    pub blocks: Vec<UsageRow>,
    /// Borrowed addresses (`--show-borrowed`).
    pub borrowed: Vec<BorrowedRow>,
    /// `--show-configuration`: property, value.
    pub configuration: Vec<(String, String)>,
}

fn net_size(n: &IpNet) -> u128 {
    let bits = if n.addr().is_ipv4() { 32 } else { 128 };
    let host = bits - u32::from(n.prefix_len());
    if host >= 128 {
        u128::MAX
    } else {
        1u128 << host
    }
}

fn overlap(a: &IpNet, b: &IpNet) -> u128 {
    if a.contains(&b.network()) && a.prefix_len() <= b.prefix_len() {
        net_size(b)
    } else if b.contains(&a.network()) {
        net_size(a)
    } else {
        0
    }
}

/// Compute `ipam show` from a store.
pub fn show<S: Store + ?Sized>(store: &S) -> Result<ShowReport> {
    Ok(show_from(&dump(store)?))
}

/// Compute `ipam show` from a dump.
pub fn show_from(d: &Dump) -> ShowReport {
    let mut r = ShowReport::default();
    let mut blocks: Vec<&(Block, Revision)> = d.blocks.iter().collect();
    blocks.sort_by_key(|(b, _)| b.cidr());
    let mut block_rows = Vec::new();
    for (b, _) in &blocks {
        let cidr = b.cidr();
        let total = u128::from(b.size());
        let win = u128::from(b.windows_reserved_count());
        let in_use = u128::from(b.allocated_count()) - win;
        let resv: u128 = (0..b.size())
            .filter(|o| {
                b.allocation(*o).is_none()
                    && d.reservations.iter().any(|n| n.contains(&cidr.addr(*o)))
            })
            .count() as u128
            + win;
        block_rows.push(UsageRow {
            grouping: Grouping::Block,
            cidr: cidr.net(),
            total,
            in_use,
            reserved: resv,
            free: total.saturating_sub(in_use + resv),
        });
    }
    let mut pools: Vec<&IpPool> = d.pools.iter().collect();
    pools.sort_by_key(|p| p.spec.cidr);
    for p in pools {
        let pc = p.spec.cidr;
        let total = net_size(&pc);
        let in_blocks: Vec<&UsageRow> = block_rows
            .iter()
            .filter(|b| pc.contains(&b.cidr.network()))
            .collect();
        let in_use: u128 = in_blocks.iter().map(|b| b.in_use).sum();
        let block_reserved: u128 = in_blocks.iter().map(|b| b.reserved).sum();
        // Reserved addresses outside claimed blocks count too.
        let outside: u128 = d
            .reservations
            .iter()
            .map(|res| {
                let all = overlap(&pc, res);
                let inside: u128 = in_blocks.iter().map(|b| overlap(&b.cidr, res)).sum();
                all.saturating_sub(inside)
            })
            .sum();
        let reserved = block_reserved + outside;
        r.pools.push(UsageRow {
            grouping: Grouping::IpPool,
            cidr: pc,
            total,
            in_use,
            reserved,
            free: total.saturating_sub(in_use + reserved),
        });
    }
    r.blocks = block_rows;
    for (b, _) in &blocks {
        let owner = b
            .affinity()
            .and_then(|a| a.strip_prefix("host:"))
            .unwrap_or("");
        for (o, a) in b.allocations() {
            let sec = a.secondary.as_ref();
            let node = sec
                .and_then(|s| s.get("node"))
                .map(String::as_str)
                .unwrap_or("");
            if node.is_empty()
                || node == owner
                || a.handle.as_deref() == Some(WINDOWS_RESERVED_HANDLE)
            {
                continue;
            }
            let kind = sec.and_then(|s| s.get("type").cloned()).unwrap_or_else(|| {
                if sec.is_some_and(|s| s.contains_key("pod")) {
                    "pod".into()
                } else {
                    "-".into()
                }
            });
            let allocated_to = match (
                sec.and_then(|s| s.get("namespace")),
                sec.and_then(|s| s.get("pod")),
            ) {
                (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                _ => a.handle.as_deref().unwrap_or_default().to_owned(),
            };
            r.borrowed.push(BorrowedRow {
                ip: b.addr(o),
                borrowing_node: node.into(),
                block: b.cidr(),
                block_owner: owner.into(),
                kind,
                allocated_to,
            });
        }
    }
    r.configuration = vec![
        (
            "StrictAffinity".into(),
            d.config.strict_affinity.to_string(),
        ),
        (
            "AutoAllocateBlocks".into(),
            d.config.auto_allocate_blocks.to_string(),
        ),
        (
            "MaxBlocksPerHost".into(),
            d.config.max_blocks_per_host.to_string(),
        ),
    ];
    r
}

/// Render a calicoctl-style table.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = {
        let mut s = String::from("+");
        for x in &w {
            s.push_str(&"-".repeat(x + 2));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let mut out = line.clone();
    out.push('|');
    for (h, x) in headers.iter().zip(&w) {
        let pad = x - h.len();
        let _ = write!(
            out,
            " {}{}{} |",
            " ".repeat(pad / 2),
            h,
            " ".repeat(pad - pad / 2)
        );
    }
    out.push('\n');
    out.push_str(&line);
    for row in rows {
        out.push('|');
        for (c, x) in row.iter().zip(&w) {
            let _ = write!(out, " {c:<x$} |");
        }
        out.push('\n');
    }
    out.push_str(&line);
    out
}

fn pct(n: u128, total: u128) -> String {
    // Rounded to the nearest percent, as calicoctl prints `%.0f%%`.
    let p = n
        .saturating_mul(100)
        .saturating_add(total / 2)
        .checked_div(total)
        .unwrap_or(0);
    format!("{n} ({p}%)")
}

impl ShowReport {
    /// `calicoctl ipam show` (with `--show-blocks` when `show_blocks`).
    pub fn render(&self, show_blocks: bool) -> String {
        let mut rows = Vec::new();
        for p in &self.pools {
            rows.push(usage_cells(p));
            if show_blocks {
                for b in self
                    .blocks
                    .iter()
                    .filter(|b| p.cidr.contains(&b.cidr.network()))
                {
                    rows.push(usage_cells(b));
                }
            }
        }
        render_table(
            &[
                "GROUPING",
                "CIDR",
                "IPS TOTAL",
                "IPS IN USE",
                "IPS RESERVED",
                "IPS FREE",
            ],
            &rows,
        )
    }

    /// `calicoctl ipam show --show-borrowed`.
    pub fn render_borrowed(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .borrowed
            .iter()
            .map(|b| {
                vec![
                    b.ip.to_string(),
                    b.borrowing_node.clone(),
                    b.block.to_string(),
                    b.block_owner.clone(),
                    b.kind.clone(),
                    b.allocated_to.clone(),
                ]
            })
            .collect();
        render_table(
            &[
                "IP",
                "BORROWING-NODE",
                "BLOCK",
                "BLOCK OWNER",
                "TYPE",
                "ALLOCATED-TO",
            ],
            &rows,
        )
    }

    /// `calicoctl ipam show --show-configuration`.
    pub fn render_configuration(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .configuration
            .iter()
            .map(|(k, v)| vec![k.clone(), v.clone()])
            .collect();
        render_table(&["PROPERTY", "VALUE"], &rows)
    }
}

fn usage_cells(r: &UsageRow) -> Vec<String> {
    vec![
        match r.grouping {
            Grouping::IpPool => "IP Pool".into(),
            Grouping::Block => "Block".into(),
        },
        r.cidr.to_string(),
        r.total.to_string(),
        pct(r.in_use, r.total),
        pct(r.reserved, r.total),
        pct(r.free, r.total),
    ]
}

/// An allocated address and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrOwner {
    /// The address.
    pub addr: IpAddr,
    /// Its block.
    pub block: BlockCidr,
    /// The allocation's handle (Calico allows none).
    pub handle: Option<String>,
}

/// A leaked address: allocated to a handle that is not live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// The address.
    pub addr: IpAddr,
    /// The dead handle.
    pub handle: String,
}

/// A handle record that disagrees with the blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleDisagreement {
    /// Handle.
    pub handle: String,
    /// Block (CIDR string as in the handle).
    pub block: String,
    /// Count in the handle record.
    pub recorded: u32,
    /// Count found in the block.
    pub actual: u32,
}

/// An affinity that disagrees with its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityProblem {
    /// Node.
    pub node: String,
    /// Block.
    pub block: BlockCidr,
    /// What is wrong.
    pub reason: String,
}

/// `ipam check` as data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckReport {
    /// Addresses allocated (excluding Windows reserved).
    pub addresses_in_use: usize,
    /// Allocations whose handle is not in the live set (only when one was given).
    pub leaked: Vec<Leak>,
    /// Allocations with no handle, or whose handle has no record.
    pub allocations_without_handle: Vec<AddrOwner>,
    /// Handle records with no allocation in any block.
    pub orphan_handles: Vec<String>,
    /// Handle records whose per-block counts disagree with the blocks.
    pub handle_mismatches: Vec<HandleDisagreement>,
    /// Addresses allocated in more than one block.
    pub duplicates: Vec<IpAddr>,
    /// Confirmed affinities whose block is missing or owned by another node,
    /// and blocks claiming a node that has no confirmed affinity for them.
    pub affinity_problems: Vec<AffinityProblem>,
    /// Pending affinities (in-flight or crashed claims; GC removes them).
    pub pending_affinities: Vec<(String, BlockCidr)>,
    /// Undecodable or inconsistent documents.
    pub invalid: Vec<InvalidDoc>,
}

impl CheckReport {
    /// No corruption: every block decodes, handles agree with blocks,
    /// affinities agree with blocks, no duplicate address.
    pub fn is_consistent(&self) -> bool {
        self.allocations_without_handle.is_empty()
            && self.orphan_handles.is_empty()
            && self.handle_mismatches.is_empty()
            && self.duplicates.is_empty()
            && self.affinity_problems.is_empty()
            && self.invalid.is_empty()
    }
    /// Consistent, and nothing leaked or in flight.
    pub fn is_clean(&self) -> bool {
        self.is_consistent() && self.leaked.is_empty() && self.pending_affinities.is_empty()
    }
}

/// Check a store. With `live`, allocations of handles not in it are leaks.
pub fn check<S: Store + ?Sized>(
    store: &S,
    live: Option<&HashSet<HandleId>>,
) -> Result<CheckReport> {
    Ok(check_dump(&dump(store)?, live))
}

/// Check a dump (see [`check`]).
pub fn check_dump(d: &Dump, live: Option<&HashSet<HandleId>>) -> CheckReport {
    let mut r = CheckReport {
        invalid: d.invalid.clone(),
        ..Default::default()
    };
    let handles: HashMap<&str, &IpamHandle> = d
        .handles
        .iter()
        .map(|h| (h.handle_id.as_str(), h))
        .collect();
    let live: Option<HashSet<&str>> = live.map(|l| l.iter().map(HandleId::as_str).collect());
    let mut seen: HashSet<IpAddr> = HashSet::new();
    // handle -> block cidr string -> count
    let mut actual: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
    for (b, _) in &d.blocks {
        let cidr = b.cidr();
        for (o, a) in b.allocations() {
            let addr = b.addr(o);
            if !seen.insert(addr) {
                r.duplicates.push(addr);
            }
            if a.handle.as_deref() == Some(WINDOWS_RESERVED_HANDLE) {
                continue;
            }
            r.addresses_in_use += 1;
            match a.handle.as_deref() {
                None => r.allocations_without_handle.push(AddrOwner {
                    addr,
                    block: cidr,
                    handle: None,
                }),
                Some(h) => {
                    *actual
                        .entry(h.to_owned())
                        .or_default()
                        .entry(cidr.to_string())
                        .or_default() += 1;
                    if !handles.contains_key(h) {
                        r.allocations_without_handle.push(AddrOwner {
                            addr,
                            block: cidr,
                            handle: Some(h.into()),
                        });
                    }
                    if let Some(l) = &live
                        && !l.contains(h)
                    {
                        r.leaked.push(Leak {
                            addr,
                            handle: h.into(),
                        });
                    }
                }
            }
        }
    }
    for h in &d.handles {
        let Some(act) = actual.get(&h.handle_id) else {
            r.orphan_handles.push(h.handle_id.clone());
            continue;
        };
        let blocks: HashSet<&String> = h.block.keys().chain(act.keys()).collect();
        for blk in blocks {
            let recorded = h.block.get(blk).copied().unwrap_or(0);
            let a = act.get(blk).copied().unwrap_or(0);
            if recorded != a {
                r.handle_mismatches.push(HandleDisagreement {
                    handle: h.handle_id.clone(),
                    block: blk.clone(),
                    recorded,
                    actual: a,
                });
            }
        }
    }
    let block_aff: HashMap<BlockCidr, Option<&str>> = d
        .blocks
        .iter()
        .map(|(b, _)| (b.cidr(), b.affinity()))
        .collect();
    let mut confirmed: HashSet<(String, BlockCidr)> = HashSet::new();
    for (node, cidr, a) in &d.affinities {
        let want = format!("host:{node}");
        match a.state {
            AffinityState::Pending => {
                r.pending_affinities.push((node.to_string(), *cidr));
                continue;
            }
            AffinityState::Confirmed => {
                confirmed.insert((node.to_string(), *cidr));
            }
            _ => continue,
        }
        match block_aff.get(cidr) {
            None => r.affinity_problems.push(AffinityProblem {
                node: node.to_string(),
                block: *cidr,
                reason: "confirmed affinity but no block".into(),
            }),
            Some(got) if *got != Some(want.as_str()) => r.affinity_problems.push(AffinityProblem {
                node: node.to_string(),
                block: *cidr,
                reason: format!("block affinity is {got:?}"),
            }),
            Some(_) => {}
        }
    }
    for (b, _) in &d.blocks {
        if let Some(node) = b.affinity().and_then(|a| a.strip_prefix("host:"))
            && !confirmed.contains(&(node.to_owned(), b.cidr()))
        {
            r.affinity_problems.push(AffinityProblem {
                node: node.into(),
                block: b.cidr(),
                reason: "block names the node but the node has no confirmed affinity".into(),
            });
        }
    }
    r
}
