//! One IPAM block in its working form: an allocation bitmap, per-address
//! attributes and the FIFO of free ordinals.
//!
//! The stored form is Calico's [`IpamBlock`] JSON; [`Block::from_model`] and
//! [`Block::to_model`] convert and check consistency. Reuse order is Calico's:
//! `unallocated` is a FIFO, so the address free the longest is handed out
//! first, and a just-released address goes to the back. An optional cooldown
//! (seconds, with `now` passed in) additionally keeps a released address out
//! of use until it has been free that long.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use bitvec::prelude::*;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::error::{Error, Result};
use crate::types::{
    AllocationAttribute, Attributes, BlockCidr, Extra, IpamBlock, WINDOWS_RESERVED_HANDLE,
};

/// The attributes of one allocated address.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Allocation {
    /// Owning handle (Calico allows none; calinet always sets one).
    pub handle: Option<Arc<str>>,
    /// Owner attributes.
    pub secondary: Option<Arc<Attributes>>,
    /// Sequence number of the block write that made this allocation.
    pub sequence: Option<u64>,
    /// Unknown attribute fields, kept.
    pub extra: Extra,
}

/// A block in working form.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    cidr: BlockCidr,
    // Derived from `cidr`, kept because formatting addresses is a measurable
    // part of every write.
    cidr_text: String,
    key: String,
    affinity: Option<String>,
    allocated: BitVec<u64, Lsb0>,
    allocs: Vec<Option<Allocation>>,
    free: VecDeque<u32>,
    released_at: BTreeMap<u32, u64>,
    sequence_number: u64,
    deleted: bool,
    extra: Extra,
}

/// Reuse rules applied when picking a free ordinal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pick<'a> {
    /// Ordinals never to hand out (IPReservation), if any.
    pub reserved: Option<&'a BitSlice<u64, Lsb0>>,
    /// Current time, unix seconds.
    pub now: u64,
    /// Seconds a released ordinal stays unused (0 = off).
    pub cooldown: u64,
}

impl Pick<'_> {
    fn usable(&self, ord: u32, released_at: &BTreeMap<u32, u64>) -> bool {
        if let Some(r) = self.reserved
            && r.get(ord as usize).is_some_and(|b| *b)
        {
            return false;
        }
        if self.cooldown > 0
            && let Some(t) = released_at.get(&ord)
        {
            return self.now >= t.saturating_add(self.cooldown);
        }
        true
    }
}

impl Block {
    /// A new empty block. With `windows_reserved`, the first three and the last
    /// address are allocated to Calico's Windows reserved handle.
    pub fn new(cidr: BlockCidr, affinity: Option<String>, windows_reserved: bool) -> Block {
        let size = cidr.size();
        let mut b = Block {
            cidr,
            cidr_text: cidr.to_string(),
            key: crate::keys::block(&cidr),
            affinity,
            allocated: bitvec![u64, Lsb0; 0; size as usize],
            allocs: vec![None; size as usize],
            free: (0..size).collect(),
            released_at: BTreeMap::new(),
            sequence_number: 0,
            deleted: false,
            extra: Extra::new(),
        };
        if windows_reserved {
            let mut ords = vec![0, 1, 2, size - 1];
            ords.retain(|o| *o < size);
            ords.dedup();
            for o in ords {
                b.take(o, Some(Arc::from(WINDOWS_RESERVED_HANDLE)), None, 0);
            }
            let allocated = &b.allocated;
            b.free.retain(|o| !allocated[*o as usize]);
        }
        b
    }

    /// Parse and check Calico's stored form.
    pub fn from_model(m: IpamBlock) -> Result<Block> {
        let cidr = BlockCidr::new(m.cidr).map_err(|_| Error::CorruptBlock {
            block: m.cidr,
            reason: "cidr is not a valid block CIDR".into(),
        })?;
        let corrupt = |reason: String| Error::CorruptBlock {
            block: m.cidr,
            reason,
        };
        let size = cidr.size() as usize;
        if m.allocations.len() != size {
            return Err(corrupt(format!(
                "{} allocations for {size} addresses",
                m.allocations.len()
            )));
        }
        let seqs = m.sequence_number_for_allocation.unwrap_or_default();
        let mut allocated = bitvec![u64, Lsb0; 0; size];
        let mut allocs = vec![None; size];
        for (ord, a) in m.allocations.iter().enumerate() {
            if let Some(i) = a {
                let attr = m.attributes.get(*i).ok_or_else(|| {
                    corrupt(format!("ordinal {ord} refers to missing attribute {i}"))
                })?;
                allocated.set(ord, true);
                allocs[ord] = Some(Allocation {
                    handle: attr.handle_id.as_deref().map(Arc::from),
                    secondary: attr.secondary.clone().map(Arc::new),
                    sequence: seqs.get(&ord.to_string()).copied(),
                    extra: attr.extra.clone(),
                });
            }
        }
        let mut seen = bitvec![u64, Lsb0; 0; size];
        for &o in &m.unallocated {
            let ou = o as usize;
            if ou >= size {
                return Err(corrupt(format!("unallocated ordinal {o} out of range")));
            }
            if allocated[ou] {
                return Err(corrupt(format!(
                    "ordinal {o} is both allocated and unallocated"
                )));
            }
            if seen[ou] {
                return Err(corrupt(format!("ordinal {o} listed twice in unallocated")));
            }
            seen.set(ou, true);
        }
        if seen.count_ones() + allocated.count_ones() != size {
            return Err(corrupt(
                "some ordinals are neither allocated nor unallocated".into(),
            ));
        }
        let released_at = m
            .released_at
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| k.parse::<u32>().ok().map(|k| (k, v)))
            .collect();
        Ok(Block {
            cidr,
            cidr_text: cidr.to_string(),
            key: crate::keys::block(&cidr),
            affinity: m.affinity,
            allocated,
            allocs,
            free: m.unallocated.into_iter().collect(),
            released_at,
            sequence_number: m.sequence_number,
            deleted: m.deleted,
            extra: m.extra,
        })
    }

    /// Decode from stored JSON.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Block> {
        let m: IpamBlock = serde_json::from_slice(bytes).map_err(|source| Error::Decode {
            what: "IPAMBlock",
            key: key.to_owned(),
            source,
        })?;
        Block::from_model(m)
    }

    /// Calico's stored form. Attributes are shared by ordinals with the same
    /// owner, as Calico does.
    pub fn to_model(&self) -> IpamBlock {
        let mut attributes: Vec<AllocationAttribute> = Vec::new();
        let mut allocations = Vec::with_capacity(self.allocs.len());
        let mut seqs = BTreeMap::new();
        for (ord, a) in self.allocs.iter().enumerate() {
            match a {
                None => allocations.push(None),
                Some(a) => {
                    let idx = attributes
                        .iter()
                        .position(|x| {
                            x.handle_id.as_deref() == a.handle.as_deref()
                                && x.secondary.as_ref() == a.secondary.as_deref()
                                && x.extra == a.extra
                        })
                        .unwrap_or_else(|| {
                            attributes.push(AllocationAttribute {
                                handle_id: a.handle.as_deref().map(str::to_owned),
                                secondary: a.secondary.as_deref().cloned(),
                                extra: a.extra.clone(),
                            });
                            attributes.len() - 1
                        });
                    allocations.push(Some(idx));
                    if let Some(s) = a.sequence {
                        seqs.insert(ord.to_string(), s);
                    }
                }
            }
        }
        IpamBlock {
            cidr: self.cidr.net(),
            affinity: self.affinity.clone(),
            strict_affinity: false,
            allocations,
            unallocated: self.free.iter().copied().collect(),
            attributes,
            deleted: self.deleted,
            sequence_number: self.sequence_number,
            sequence_number_for_allocation: Some(seqs),
            released_at: (!self.released_at.is_empty()).then(|| {
                self.released_at
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect()
            }),
            extra: self.extra.clone(),
        }
    }

    /// Encode as stored JSON: Calico's `AllocationBlock`, the same document
    /// as the block's `Serialize` impl and as serialising [`Block::to_model`]
    /// (unit tests compare them). The one JSON writer kept by hand: it is on
    /// every allocation's path, and through serde it costs about 1.4x (+330
    /// ns CPU per /26 write, +55 % on the MemStore AutoAssign+release pair);
    /// strings and attributes still go through serde_json.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }

    /// [`Block::to_json`] appending to a caller's buffer (reused across writes).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.reserve(192 + self.allocs.len() * 7);
        let mut attrs: Vec<&Allocation> = Vec::new();
        out.extend_from_slice(b"{\"cidr\":");
        json_str(out, &self.cidr_text);
        out.extend_from_slice(b",\"affinity\":");
        match &self.affinity {
            Some(a) => json_str(out, a),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"allocations\":[");
        // Free ordinals are runs of nulls: copy each run from a static
        // "null,null,..." slice instead of writing them one by one.
        let mut i = 0;
        while i < self.allocs.len() {
            if i > 0 {
                out.push(b',');
            }
            match &self.allocs[i] {
                None => {
                    let run = self.allocs[i..].iter().take_while(|a| a.is_none()).count();
                    let run = run.min(NULLS.len() / 5);
                    out.extend_from_slice(&NULLS.as_bytes()[..run * 5 - 1]);
                    i += run;
                }
                Some(a) => {
                    let idx = attrs
                        .iter()
                        .position(|x| same_owner(x, a))
                        .unwrap_or_else(|| {
                            attrs.push(a);
                            attrs.len() - 1
                        });
                    json_u64(out, idx as u64);
                    i += 1;
                }
            }
        }
        out.extend_from_slice(b"],\"unallocated\":[");
        let mut buf = [0u8; 64 * 6];
        let mut n = 0;
        for (i, o) in self.free.iter().enumerate() {
            // Batch the small numbers in a stack buffer: far fewer Vec pushes.
            if n + 6 > buf.len() {
                out.extend_from_slice(&buf[..n]);
                n = 0;
            }
            if i > 0 {
                buf[n] = b',';
                n += 1;
            }
            n += small_u32(&mut buf[n..], *o);
        }
        out.extend_from_slice(&buf[..n]);
        out.extend_from_slice(b"],\"attributes\":[");
        for (i, a) in attrs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, &AttrRef(a)).expect("attributes serialise");
        }
        out.extend_from_slice(if self.deleted {
            b"],\"deleted\":true,\"sequenceNumber\":"
        } else {
            b"],\"deleted\":false,\"sequenceNumber\":"
        });
        json_u64(out, self.sequence_number);
        out.extend_from_slice(b",\"sequenceNumberForAllocation\":{");
        let mut first = true;
        for (i, a) in self.allocs.iter().enumerate() {
            if let Some(q) = a.as_ref().and_then(|a| a.sequence) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.push(b'"');
                json_u64(out, i as u64);
                out.extend_from_slice(b"\":");
                json_u64(out, q);
            }
        }
        out.push(b'}');
        if !self.released_at.is_empty() {
            out.extend_from_slice(b",\"calinetReleasedAt\":{");
            for (i, (o, t)) in self.released_at.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                json_u64(out, u64::from(*o));
                out.extend_from_slice(b"\":");
                json_u64(out, *t);
            }
            out.push(b'}');
        }
        for (k, v) in &self.extra {
            out.push(b',');
            json_str(out, k);
            out.push(b':');
            serde_json::to_writer(&mut *out, v).expect("JSON value serialises");
        }
        out.push(b'}');
    }

    /// The block CIDR.
    pub fn cidr(&self) -> BlockCidr {
        self.cidr
    }
    /// The block CIDR as text (`10.0.0.0/26`).
    pub fn cidr_text(&self) -> &str {
        &self.cidr_text
    }
    /// The block's store key.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// `host:<node>` etc.
    pub fn affinity(&self) -> Option<&str> {
        self.affinity.as_deref()
    }
    /// Set the affinity (claim, reclaim, release).
    pub fn set_affinity(&mut self, affinity: Option<String>) {
        self.affinity = affinity;
        self.sequence_number += 1;
    }
    /// Block sequence number.
    pub fn sequence_number(&self) -> u64 {
        self.sequence_number
    }
    /// Number of addresses.
    pub fn size(&self) -> u32 {
        self.cidr.size()
    }
    /// Allocated addresses (including Windows reserved ones).
    pub fn allocated_count(&self) -> u32 {
        self.allocated.count_ones() as u32
    }
    /// Free addresses (FIFO length).
    pub fn free_count(&self) -> u32 {
        self.free.len() as u32
    }
    /// Addresses allocated to the Windows reserved handle.
    pub fn windows_reserved_count(&self) -> u32 {
        self.allocs
            .iter()
            .filter(|a| {
                a.as_ref().and_then(|a| a.handle.as_deref()) == Some(WINDOWS_RESERVED_HANDLE)
            })
            .count() as u32
    }
    /// True when nothing but Windows reserved addresses is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocated_count() == self.windows_reserved_count()
    }
    /// The allocation bitmap.
    pub fn bitmap(&self) -> &BitSlice<u64, Lsb0> {
        &self.allocated
    }
    /// Free ordinals in reuse order.
    pub fn free_order(&self) -> impl Iterator<Item = u32> + '_ {
        self.free.iter().copied()
    }
    /// The allocation at an ordinal.
    pub fn allocation(&self, ord: u32) -> Option<&Allocation> {
        self.allocs.get(ord as usize).and_then(|a| a.as_ref())
    }
    /// All allocations: (ordinal, allocation).
    pub fn allocations(&self) -> impl Iterator<Item = (u32, &Allocation)> + '_ {
        self.allocs
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.as_ref().map(|a| (i as u32, a)))
    }
    /// Ordinals owned by a handle.
    pub fn ordinals_of(&self, handle: &str) -> Vec<u32> {
        self.allocations()
            .filter(|(_, a)| a.handle.as_deref() == Some(handle))
            .map(|(o, _)| o)
            .collect()
    }
    /// The address at an ordinal.
    pub fn addr(&self, ord: u32) -> IpAddr {
        self.cidr.addr(ord)
    }

    /// How many addresses `allocate` could hand out now.
    pub fn available(&self, pick: &Pick<'_>) -> u32 {
        if pick.reserved.is_none() && (pick.cooldown == 0 || self.released_at.is_empty()) {
            return self.free.len() as u32;
        }
        self.free
            .iter()
            .filter(|o| pick.usable(**o, &self.released_at))
            .count() as u32
    }

    fn take(
        &mut self,
        ord: u32,
        handle: Option<Arc<str>>,
        secondary: Option<Arc<Attributes>>,
        seq: u64,
    ) {
        self.allocated.set(ord as usize, true);
        if !self.released_at.is_empty() {
            self.released_at.remove(&ord);
        }
        self.allocs[ord as usize] = Some(Allocation {
            handle,
            secondary,
            sequence: Some(seq),
            extra: Extra::new(),
        });
    }

    /// Allocate one address in FIFO order for `handle` (no result vector).
    pub fn allocate_one(
        &mut self,
        handle: &Arc<str>,
        secondary: Option<&Arc<Attributes>>,
        pick: &Pick<'_>,
    ) -> Option<u32> {
        let i = self.next_usable(pick, 0)?;
        let ord = self.remove_free_at(i);
        self.sequence_number += 1;
        self.take(
            ord,
            Some(handle.clone()),
            secondary.cloned(),
            self.sequence_number,
        );
        Some(ord)
    }

    fn next_usable(&self, pick: &Pick<'_>, from: usize) -> Option<usize> {
        if pick.reserved.is_none() && (pick.cooldown == 0 || self.released_at.is_empty()) {
            return (from < self.free.len()).then_some(from);
        }
        (from..self.free.len()).find(|&i| pick.usable(self.free[i], &self.released_at))
    }

    fn remove_free_at(&mut self, i: usize) -> u32 {
        if i == 0 {
            self.free.pop_front().expect("index in range")
        } else {
            self.free.remove(i).expect("index in range")
        }
    }

    /// Allocate up to `n` addresses in FIFO order for `handle`. Returns the
    /// ordinals (fewer than `n` if the block runs out). Bumps the sequence
    /// number once when anything was allocated.
    pub fn allocate(
        &mut self,
        n: u32,
        handle: &Arc<str>,
        secondary: Option<&Arc<Attributes>>,
        pick: &Pick<'_>,
    ) -> Vec<u32> {
        let mut out = Vec::with_capacity(n as usize);
        let seq = self.sequence_number + 1;
        let mut i = 0;
        while out.len() < n as usize {
            let Some(j) = self.next_usable(pick, i) else {
                break;
            };
            let ord = self.remove_free_at(j);
            self.take(ord, Some(handle.clone()), secondary.cloned(), seq);
            out.push(ord);
            i = j;
        }
        if !out.is_empty() {
            self.sequence_number = seq;
        }
        out
    }

    /// Allocate one specific ordinal. `Err(existing)` if it is taken.
    pub fn assign(
        &mut self,
        ord: u32,
        handle: &Arc<str>,
        secondary: Option<&Arc<Attributes>>,
    ) -> std::result::Result<(), Option<Allocation>> {
        if ord >= self.size() {
            return Err(None);
        }
        if self.allocated[ord as usize] {
            // (checked before touching the FIFO)
            return Err(self.allocs[ord as usize].clone());
        }
        let pos = self
            .free
            .iter()
            .position(|o| *o == ord)
            .expect("free ordinal is in the FIFO");
        self.free.remove(pos);
        self.sequence_number += 1;
        self.take(
            ord,
            Some(handle.clone()),
            secondary.cloned(),
            self.sequence_number,
        );
        Ok(())
    }

    /// Release one ordinal (to the back of the FIFO). Returns what it held,
    /// `None` if it was already free. With `cooldown > 0` the release time is
    /// recorded so the ordinal is not reused before `now + cooldown`.
    pub fn release(&mut self, ord: u32, now: u64, cooldown: u64) -> Option<Allocation> {
        let a = self.allocs.get_mut(ord as usize)?.take()?;
        self.allocated.set(ord as usize, false);
        self.free.push_back(ord);
        self.sequence_number += 1;
        if cooldown > 0 {
            self.released_at
                .retain(|_, t| t.saturating_add(cooldown) > now);
            self.released_at.insert(ord, now);
        }
        Some(a)
    }

    /// Release every ordinal of a handle; returns them.
    pub fn release_handle(&mut self, handle: &str, now: u64, cooldown: u64) -> Vec<u32> {
        let mut ords = Vec::new();
        for o in 0..self.allocs.len() {
            if self.allocs[o].as_ref().and_then(|a| a.handle.as_deref()) == Some(handle) {
                self.release(o as u32, now, cooldown);
                ords.push(o as u32);
            }
        }
        ords
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a string serialises");
}

/// 64 "null," entries (a block of /26 or smaller in one copy).
const NULLS: &str = "null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,\
null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,\
null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,\
null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,null,";

/// Write `n` (< 100000) in decimal into `buf`; returns the length.
fn small_u32(buf: &mut [u8], n: u32) -> usize {
    // Ordinals of /26 blocks are below 100: one or two bytes, no division loop.
    if n < 10 {
        buf[0] = b'0' + n as u8;
        return 1;
    }
    if n < 100 {
        buf[0] = b'0' + (n / 10) as u8;
        buf[1] = b'0' + (n % 10) as u8;
        return 2;
    }
    let digits = match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    let mut v = n;
    for i in (0..digits).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    digits
}

fn json_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn same_owner(a: &Allocation, b: &Allocation) -> bool {
    a.handle == b.handle && a.secondary == b.secondary && a.extra == b.extra
}

struct AttrRef<'a>(&'a Allocation);

impl Serialize for AttrRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("handle_id", &self.0.handle.as_deref())?;
        m.serialize_entry("secondary", &self.0.secondary.as_deref())?;
        for (k, v) in &self.0.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

struct SeqMap<'a>(&'a [Option<Allocation>]);

impl Serialize for SeqMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // Integer keys are written as JSON strings ("5": 12), as Calico does.
        s.collect_map(
            self.0
                .iter()
                .enumerate()
                .filter_map(|(i, a)| a.as_ref().and_then(|a| a.sequence).map(|q| (i as u32, q))),
        )
    }
}

impl Serialize for Block {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut attrs: Vec<&Allocation> = Vec::new();
        let mut index: Vec<Option<usize>> = Vec::with_capacity(self.allocs.len());
        for a in &self.allocs {
            index.push(
                a.as_ref()
                    .map(|a| match attrs.iter().position(|x| same_owner(x, a)) {
                        Some(i) => i,
                        None => {
                            attrs.push(a);
                            attrs.len() - 1
                        }
                    }),
            );
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("cidr", &self.cidr_text)?;
        m.serialize_entry("affinity", &self.affinity)?;
        m.serialize_entry("allocations", &index)?;
        m.serialize_entry("unallocated", &self.free)?;
        let attr_refs: Vec<AttrRef<'_>> = attrs.into_iter().map(AttrRef).collect();
        m.serialize_entry("attributes", &attr_refs)?;
        m.serialize_entry("deleted", &self.deleted)?;
        m.serialize_entry("sequenceNumber", &self.sequence_number)?;
        m.serialize_entry("sequenceNumberForAllocation", &SeqMap(&self.allocs))?;
        if !self.released_at.is_empty() {
            m.serialize_entry("calinetReleasedAt", &self.released_at)?;
        }
        for (k, v) in &self.extra {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blk(s: &str) -> Block {
        Block::new(s.parse().expect("cidr"), Some("host:n1".into()), false)
    }

    #[test]
    fn allocates_in_fifo_order_and_reuses_oldest_free_first() {
        let mut b = blk("10.0.0.0/30");
        let p = Pick::default();
        assert_eq!(b.allocate(2, &Arc::from("h1"), None, &p), vec![0, 1]);
        assert_eq!(
            b.release(0, 0, 0)
                .and_then(|a| a.handle.as_deref().map(str::to_owned)),
            Some("h1".into())
        );
        // 2 and 3 have been free longer than 0.
        assert_eq!(b.allocate(3, &Arc::from("h2"), None, &p), vec![2, 3, 0]);
        assert_eq!(b.allocate(1, &Arc::from("h3"), None, &p), Vec::<u32>::new());
        assert_eq!(b.free_count(), 0);
    }

    #[test]
    fn cooldown_holds_released_addresses_back_until_time_passes() {
        let mut b = blk("10.0.0.0/31");
        let p = Pick {
            reserved: None,
            now: 100,
            cooldown: 30,
        };
        assert_eq!(b.allocate(2, &Arc::from("h"), None, &p), vec![0, 1]);
        b.release(1, 100, 30);
        assert_eq!(b.available(&Pick { now: 129, ..p }), 0);
        assert!(
            b.allocate(1, &Arc::from("h2"), None, &Pick { now: 129, ..p })
                .is_empty()
        );
        assert_eq!(
            b.allocate(1, &Arc::from("h2"), None, &Pick { now: 130, ..p }),
            vec![1]
        );
    }

    #[test]
    fn reserved_ordinals_are_skipped() {
        let mut b = blk("10.0.0.0/30");
        let mut r = bitvec![u64, Lsb0; 0; 4];
        r.set(0, true);
        r.set(2, true);
        let p = Pick {
            reserved: Some(&r),
            now: 0,
            cooldown: 0,
        };
        assert_eq!(b.available(&p), 2);
        assert_eq!(b.allocate(4, &Arc::from("h"), None, &p), vec![1, 3]);
    }

    #[test]
    fn windows_reserves_first_three_and_last() {
        let b = Block::new("10.0.0.0/28".parse().expect("cidr"), None, true);
        assert_eq!(b.windows_reserved_count(), 4);
        assert!(b.is_empty());
        for o in [0, 1, 2, 15] {
            assert_eq!(
                b.allocation(o).and_then(|a| a.handle.as_deref()),
                Some(WINDOWS_RESERVED_HANDLE)
            );
        }
        assert_eq!(b.free_order().next(), Some(3));
    }

    #[test]
    fn assign_specific_and_conflict() {
        let mut b = blk("10.0.0.0/29");
        b.assign(5, &Arc::from("h"), None).expect("free");
        assert_eq!(
            b.assign(5, &Arc::from("h2"), None)
                .map_err(|e| e.and_then(|a| a.handle.as_deref().map(str::to_owned))),
            Err(Some("h".into()))
        );
        assert_eq!(
            b.allocate(8, &Arc::from("x"), None, &Pick::default()).len(),
            7
        );
        assert_eq!(b.release_handle("h", 0, 0), vec![5]);
        assert_eq!(b.release(5, 0, 0), None, "double release is a no-op");
    }

    #[test]
    fn model_round_trip_and_sequence_numbers() {
        let mut b = blk("10.0.0.0/29");
        let attrs: Attributes = [("pod".to_string(), "p1".to_string())].into();
        b.allocate(
            2,
            &Arc::from("h1"),
            Some(&Arc::new(attrs.clone())),
            &Pick::default(),
        );
        b.allocate(1, &Arc::from("h2"), None, &Pick::default());
        b.release(0, 7, 10);
        let m = b.to_model();
        assert_eq!(
            m.attributes.len(),
            2,
            "ordinals of one owner share an attribute"
        );
        assert_eq!(m.sequence_number, 3);
        assert_eq!(
            m.sequence_number_for_allocation
                .as_ref()
                .and_then(|s| s.get("2")),
            Some(&2)
        );
        let back = Block::from_json("k", &b.to_json()).expect("decode");
        assert_eq!(back, b);
        let direct: serde_json::Value = serde_json::from_slice(&b.to_json()).expect("json");
        let via_model = serde_json::to_value(b.to_model()).expect("json");
        assert_eq!(direct, via_model, "direct writer and model disagree");
        assert_eq!(
            serde_json::to_value(&b).expect("json"),
            via_model,
            "Serialize and model disagree"
        );
        let mut m = b.to_model();
        m.extra
            .insert("futureField".into(), serde_json::json!({"a": [1, "x\"y"]}));
        m.affinity = Some("host:n\"1".into());
        let odd = Block::from_model(m.clone()).expect("decode");
        let direct: serde_json::Value = serde_json::from_slice(&odd.to_json()).expect("json");
        assert_eq!(
            direct,
            serde_json::to_value(&m).expect("json"),
            "extra fields or escaping lost"
        );
        assert_eq!(
            b.allocate_one(&Arc::from("h3"), None, &Pick::default()),
            Some(3)
        );
    }

    #[test]
    fn corrupt_models_are_rejected_with_reasons() {
        let good = blk("10.0.0.0/30").to_model();
        let mut m = good.clone();
        m.unallocated.push(1);
        assert!(
            matches!(Block::from_model(m), Err(Error::CorruptBlock { reason, .. }) if reason.contains("twice"))
        );
        let mut m = good.clone();
        m.allocations[0] = Some(3);
        assert!(
            matches!(Block::from_model(m), Err(Error::CorruptBlock { reason, .. }) if reason.contains("attribute"))
        );
        let mut m = good.clone();
        m.allocations.pop();
        assert!(Block::from_model(m).is_err());
        let mut m = good;
        m.unallocated.retain(|o| *o != 2);
        assert!(Block::from_model(m).is_err());
    }
}
