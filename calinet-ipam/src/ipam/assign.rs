//! Assignment: AutoAssign (affine blocks, then a new claim, then borrowing),
//! a specific address, a node's tunnel address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::cache::Cache;
use super::commit::Attempt;
use super::{
    Assigned, AssignedAddr, AutoAssignRequest, Ipam, Snapshot, affine_to, host_affinity, unix_secs,
};
use crate::block::{Block, Pick};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::{Revision, Store};
use crate::types::{
    AllowedUse, Attributes, BlockCidr, Family, HandleId, IpPool, NodeName, TunnelKind,
    WINDOWS_RESERVED_HANDLE,
};

/// The `type` attribute Calico gives a tunnel address's allocation
/// (libcalico-go `IPAMBlockAttributeType*`); Calico's tools find a node's
/// tunnel address by it.
fn tunnel_attribute_type(kind: TunnelKind) -> &'static str {
    match kind {
        TunnelKind::Ipip => "ipipTunnelAddress",
        TunnelKind::Vxlan => "vxlanTunnelAddress",
        TunnelKind::VxlanV6 => "vxlanV6TunnelAddress",
        TunnelKind::Wireguard => "wireguardTunnelAddress",
        TunnelKind::WireguardV6 => "wireguardV6TunnelAddress",
    }
}

/// Who new allocations belong to.
struct Owner<'a> {
    handle: &'a HandleId,
    /// The handle as stored in the block (shared by its allocations).
    name: Arc<str>,
    attrs: Arc<Attributes>,
}

impl<S: Store> Ipam<S> {
    fn usable_pools(
        &self,
        snap: &Snapshot,
        req: &AutoAssignRequest,
        fam: Family,
    ) -> Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, p) in snap.pools.iter().enumerate() {
            if p.family() != fam || !p.enabled() || !p.automatic() || !p.allows(req.ip_use) {
                continue;
            }
            if !req.pools.is_empty() && !req.pools.iter().any(|n| n == p.name()) {
                continue;
            }
            let sel = p.node_selector();
            let ok = self
                .selector
                .matches(sel, &req.node_labels)
                .map_err(|reason| Error::Selector {
                    pool: p.name().into(),
                    selector: sel.into(),
                    reason,
                })?;
            if ok {
                out.push(i);
            }
        }
        Ok(out)
    }

    // ----- AutoAssign ----------------------------------------------------------

    /// Assign `num_v4` IPv4 and `num_v6` IPv6 addresses to a handle on a node.
    /// All or nothing: if a family cannot be satisfied, everything this call
    /// assigned is released again and [`Error::Exhausted`] (or the cause) returned.
    pub fn auto_assign(&self, req: &AutoAssignRequest, now: SystemTime) -> Result<Assigned> {
        let mut c = self.lock();
        let mut out = Assigned::default();
        let mut res = Ok(());
        for (fam, n) in [(Family::V4, req.num_v4), (Family::V6, req.num_v6)] {
            if n == 0 {
                continue;
            }
            let dst = if fam == Family::V4 {
                &mut out.v4
            } else {
                &mut out.v6
            };
            res = self.assign_family(&mut c, req, fam, n, now, dst);
            if res.is_err() {
                break;
            }
        }
        match res {
            Ok(()) => Ok(out),
            Err(e) => {
                for a in out.v4.iter().chain(&out.v6) {
                    // Best effort; a failure here leaves an allocation the
                    // leak check finds, and the original error matters more.
                    let _ = self.release_locked(
                        &mut c,
                        a.addr,
                        Some(&req.handle),
                        Some(a.sequence),
                        now,
                    );
                }
                Err(e)
            }
        }
    }

    fn assign_family(
        &self,
        c: &mut Cache,
        req: &AutoAssignRequest,
        fam: Family,
        n: u32,
        now: SystemTime,
        out: &mut Vec<AssignedAddr>,
    ) -> Result<()> {
        let snap = self.snapshot(c, now)?;
        let pools = self.usable_pools(&snap, req, fam)?;
        if pools.is_empty() {
            return Err(Error::NoPool {
                node: req.node.to_string(),
                family: fam.label(),
                ip_use: req.ip_use,
            });
        }
        let in_pools = |cidr: &BlockCidr| {
            pools
                .iter()
                .any(|&i| snap.pools[i].spec.cidr.contains(&cidr.net().network()))
        };
        // Record the node with each allocation (as Calico's CNI plugin does),
        // so borrowed addresses can be reported.
        let attrs = if req.attributes.is_empty() {
            match c.node_attrs.get(&req.node) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(Attributes::from([(
                        "node".to_owned(),
                        req.node.to_string(),
                    )]));
                    c.node_attrs.insert(req.node.clone(), a.clone());
                    a
                }
            }
        } else {
            let mut attrs = req.attributes.clone();
            attrs
                .entry("node".to_owned())
                .or_insert_with(|| req.node.to_string());
            Arc::new(attrs)
        };
        let owner = Owner {
            handle: &req.handle,
            name: Arc::from(req.handle.as_str()),
            attrs,
        };
        let mut need = n - out.len() as u32;
        let mut refreshed = false;
        let mut claimed_nothing = false;
        let op_name = || format!("auto_assign of {} for node {}", req.handle, req.node);
        self.retry(c, op_name, |c| {
            // 1. Blocks affine to this node.
            let mut next = 0;
            // Indexing instead of iterating a copy of the list: no allocation
            // on the hot path (the list is re-read after any change).
            while let Some(cidr) = self.node_block_at(c, &req.node, fam, next)? {
                next += 1;
                if !in_pools(&cidr) {
                    continue;
                }
                let Some(block) = self
                    .take_block(c, cidr)?
                    .filter(|(b, _)| affine_to(b, &req.node))
                else {
                    // An affinity without its block: the list is stale.
                    Self::forget_node(c, &req.node, fam);
                    return Ok(Attempt::Conflict(vec![keys::affinity(&req.node, &cidr)]));
                };
                match self.allocate_from(c, block, &snap, &owner, now, false, &mut need, out)? {
                    Attempt::Done(()) if need == 0 => return Ok(Attempt::Done(())),
                    Attempt::Done(()) | Attempt::Again => {}
                    Attempt::Conflict(keys) => return Ok(Attempt::Conflict(keys)),
                }
            }
            // The cached view may be stale (another process released
            // addresses or claimed for this node): re-read once before
            // claiming or borrowing.
            if !refreshed {
                refreshed = true;
                Self::forget_node(c, &req.node, fam);
                return Ok(Attempt::Again);
            }
            // 2. Claim a new block; then start again from the affine blocks,
            // which now include it.
            let cfg = &snap.config;
            let owned = self.node_blocks(c, &req.node, fam)?.len() as u32;
            if !claimed_nothing && cfg.auto_allocate_blocks && owned < cfg.effective_max_blocks() {
                let pool_refs: Vec<&IpPool> = pools.iter().map(|&i| &snap.pools[i]).collect();
                match self.claim_block(c, &snap, &pool_refs, &req.node, fam, now)? {
                    Some(_) => return Ok(Attempt::Again),
                    None => claimed_nothing = true,
                }
            }
            // 3. Borrow from other nodes' blocks.
            if !cfg.strict_affinity {
                for kv in self.store.list(&keys::blocks_prefix(fam))? {
                    let block = Block::from_json(&kv.key, &kv.value)?;
                    let cidr = block.cidr();
                    if !in_pools(&cidr) || affine_to(&block, &req.node) {
                        continue;
                    }
                    let block = (Box::new(block), kv.mod_revision);
                    match self.allocate_from(c, block, &snap, &owner, now, true, &mut need, out)? {
                        Attempt::Done(()) if need == 0 => return Ok(Attempt::Done(())),
                        Attempt::Done(()) | Attempt::Again => {}
                        Attempt::Conflict(keys) => return Ok(Attempt::Conflict(keys)),
                    }
                }
            }
            Err(Error::Exhausted {
                node: req.node.to_string(),
                handle: req.handle.to_string(),
                family: fam.label(),
                requested: n as usize,
                available: n as usize - need as usize,
            })
        })
    }

    /// Take up to `need` addresses of `block` for `owner` and commit them
    /// (with the handle) in one transaction; the addresses go to `out` and
    /// `need` goes down. [`Attempt::Again`] when the block has no usable
    /// address (it stays cached).
    #[allow(clippy::too_many_arguments)]
    fn allocate_from(
        &self,
        c: &mut Cache,
        (block, rev): (Box<Block>, Revision),
        snap: &Snapshot,
        owner: &Owner<'_>,
        now: SystemTime,
        borrowed: bool,
        need: &mut u32,
        out: &mut Vec<AssignedAddr>,
    ) -> Result<Attempt<()>> {
        let cidr = block.cidr();
        let mask = Self::mask(c, snap, cidr);
        let pick = Pick {
            reserved: mask.as_deref().map(|m| m.as_bitslice()),
            now: unix_secs(now),
            cooldown: self.opts.reuse_cooldown.as_secs(),
        };
        if block.available(&pick) == 0 {
            c.blocks.insert(cidr, (block, rev));
            return Ok(Attempt::Again);
        }
        let mut nb = block;
        let ords = nb.allocate(*need, &owner.name, Some(&owner.attrs), &pick);
        let seq = nb.sequence_number();
        let k = ords.len() as u32;
        let res = self.commit_block(c, nb, rev, Some(owner.handle), i64::from(k), Vec::new())?;
        if let Attempt::Done(()) = res {
            out.extend(ords.iter().map(|&o| AssignedAddr {
                addr: cidr.addr(o),
                block: cidr,
                sequence: seq,
                borrowed,
            }));
            *need -= k;
        }
        Ok(res)
    }

    // ----- specific assignment -----------------------------------------------

    /// Assign one specific address to a handle on a node. Idempotent for the
    /// same handle. Claims the address's block for the node if it has none.
    pub fn assign_ip(
        &self,
        addr: IpAddr,
        handle: &HandleId,
        attributes: &Attributes,
        node: &NodeName,
        now: SystemTime,
    ) -> Result<AssignedAddr> {
        let mut c = self.lock();
        let snap = self.snapshot(&mut c, now)?;
        let pool = snap
            .pools
            .iter()
            .find(|p| p.spec.cidr.contains(&addr))
            .ok_or(Error::NotInPool { addr })?;
        if snap.reservations.iter().any(|r| r.contains(&addr)) {
            return Err(Error::AddressReserved { addr });
        }
        let cidr = pool.block_of(addr).ok_or(Error::NotInPool { addr })?;
        let ord = cidr.ordinal(addr).expect("address is in its block");
        let aff = host_affinity(node);
        // Answers not confirmed by a write (in use, already ours) are only
        // given after re-reading the block, never from the cache alone.
        let mut verified = false;
        let op_name = || format!("assign_ip {addr} for {handle}");
        self.retry(&mut c, op_name, |c| {
            let Some((block, rev)) = self.load_block(c, cidr)? else {
                // Counted like a conflict: the claim may lose a race, or find
                // a confirmed affinity whose block is gone.
                self.try_claim(c, node, cidr)?;
                return Ok(Attempt::Conflict(vec![keys::block(&cidr)]));
            };
            if !verified
                && (block.allocation(ord).is_some() || block.affinity() != Some(aff.as_str()))
            {
                verified = true;
                c.blocks.remove(&cidr);
                return Ok(Attempt::Again);
            }
            let borrowed = block.affinity() != Some(aff.as_str());
            if borrowed
                && snap.config.strict_affinity
                && let Some(owner) = block.affinity()
            {
                return Err(Error::StrictAffinity {
                    addr,
                    block: cidr.net(),
                    owner: owner.into(),
                });
            }
            if let Some(a) = block.allocation(ord) {
                if a.handle.as_deref() == Some(WINDOWS_RESERVED_HANDLE) {
                    return Err(Error::AddressReserved { addr });
                }
                if a.handle.as_deref() == Some(handle.as_str()) {
                    return Ok(Attempt::Done(AssignedAddr {
                        addr,
                        block: cidr,
                        sequence: a.sequence.unwrap_or(0),
                        borrowed,
                    }));
                }
                return Err(Error::AddressInUse {
                    addr,
                    handle: a.handle.as_deref().map(str::to_owned),
                });
            }
            let mut nb = block;
            nb.assign(
                ord,
                &Arc::from(handle.as_str()),
                Some(&Arc::new(attributes.clone())),
            )
            .map_err(|_| Error::AddressInUse { addr, handle: None })?;
            let seq = nb.sequence_number();
            let res = self.commit_block(c, Box::new(nb), rev, Some(handle), 1, Vec::new())?;
            Ok(res.map(|()| AssignedAddr {
                addr,
                block: cidr,
                sequence: seq,
                borrowed,
            }))
        })
    }

    /// Assign a node's tunnel address (handle `vxlan-tunnel-addr-<node>` etc.)
    /// from pools that allow `Tunnel`; returns the existing one if present.
    pub fn assign_tunnel_addr(
        &self,
        kind: TunnelKind,
        node: &NodeName,
        node_labels: &BTreeMap<String, String>,
        now: SystemTime,
    ) -> Result<AssignedAddr> {
        let handle = HandleId::tunnel(kind, node);
        let v6 = matches!(kind, TunnelKind::VxlanV6 | TunnelKind::WireguardV6);
        if let Some(a) = self
            .addresses_of(&handle)?
            .into_iter()
            .find(|a| a.addr.is_ipv6() == v6)
        {
            return Ok(a);
        }
        let req = AutoAssignRequest {
            handle,
            node: node.clone(),
            node_labels: node_labels.clone(),
            num_v4: u32::from(!v6),
            num_v6: u32::from(v6),
            attributes: [
                ("node".to_string(), node.to_string()),
                ("type".to_string(), tunnel_attribute_type(kind).to_string()),
            ]
            .into(),
            ip_use: AllowedUse::Tunnel,
            pools: Vec::new(),
        };
        let a = self.auto_assign(&req, now)?;
        Ok(a.v4
            .into_iter()
            .chain(a.v6)
            .next()
            .expect("one address assigned"))
    }

    /// The addresses currently held by a handle (read from the store).
    pub fn addresses_of(&self, handle: &HandleId) -> Result<Vec<AssignedAddr>> {
        let mut c = self.lock();
        c.handles.remove(handle);
        let Some((h, _)) = self.load_handle(&mut c, handle)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for cidr in h.block.keys() {
            let Ok(cidr) = cidr.parse::<BlockCidr>() else {
                continue;
            };
            c.blocks.remove(&cidr);
            if let Some((b, _)) = self.load_block(&mut c, cidr)? {
                for o in b.ordinals_of(handle.as_str()) {
                    let a = b.allocation(o).expect("allocated");
                    out.push(AssignedAddr {
                        addr: cidr.addr(o),
                        block: cidr,
                        sequence: a.sequence.unwrap_or(0),
                        borrowed: false,
                    });
                }
            }
        }
        Ok(out)
    }
}
