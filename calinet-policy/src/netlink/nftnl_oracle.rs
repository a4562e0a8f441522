//! The previous netlink batch builder, on libnftnl objects (`nftnl` and
//! `nftnl-sys`), kept as the oracle of the hand-written encoder: for the same IR
//! both must produce the same bytes. Tests only.
//!
//! Three changes from the builder as it shipped, made in both: set ids count
//! from 1 in each transaction (they were a process-wide counter), a DELSET
//! carries only table and name (it carried a dummy set description), and
//! elements added to or removed from an existing set carry no set id (the
//! kernel finds the set by name).

use std::ffi::{CStr, CString, c_void};
use std::os::raw::c_char;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;
use nftnl::{Batch, MsgType, NlMsg, ProtoFamily};

// Kernel ABI values, shared with the encoder (the real-kernel tests check them).
use super::encode::{
    BYTEORDER_BIG_ENDIAN, BYTEORDER_HOST, BYTEORDER_INVALID, IFNAMSIZ, NF_ACCEPT, NF_DROP,
    NF_NAT_RANGE_PROTO_RANDOM_FULLY, NFT_CMP_EQ, NFT_CMP_NEQ, NFT_CT_STATE, NFT_DATA_VERDICT,
    NFT_GOTO, NFT_JUMP, NFT_LOOKUP_F_INV, NFT_META_IIFNAME, NFT_META_L4PROTO, NFT_META_MARK,
    NFT_META_NFPROTO, NFT_META_OIFNAME, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER,
    NFT_RETURN, NFT_SET_ELEM_INTERVAL_END, NFT_SET_MAP, REG_1, REG_2, REG_VERDICT, REG32_01,
    REG32_02, REG32_05, addr_offset, port_offset, set_shape,
};
use crate::Error;
use crate::ir::{
    Chain as IrChain, Diff, Family, Hook, IfDir, Match, Rule as IrRule, Ruleset, SetElems, Stmt,
    port_ranges, v4_ranges, v6_ranges,
};

fn cstring(s: &str) -> CString {
    // Names come from the compiler (hex hashes, fixed words) or validated
    // interface names: they never contain NUL.
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

/// An nftnl expression built attribute by attribute through `nftnl-sys`. Kept
/// on the stack (fixed arrays, borrowed names): a full load builds ~100,000 of
/// them, and heap churn was most of the build time.
struct RawExpr<'a> {
    name: &'static CStr,
    u32s: [(u16, u32); 6],
    n_u32: usize,
    data: [(u16, [u8; 16], usize); 2],
    n_data: usize,
    text: Option<(u16, &'a str)>,
}

impl<'a> RawExpr<'a> {
    fn new(name: &'static CStr) -> Self {
        RawExpr {
            name,
            u32s: [(0, 0); 6],
            n_u32: 0,
            data: [(0, [0; 16], 0); 2],
            n_data: 0,
            text: None,
        }
    }
    fn u32(mut self, attr: u32, v: u32) -> Self {
        self.u32s[self.n_u32] = (attr as u16, v);
        self.n_u32 += 1;
        self
    }
    fn data(mut self, attr: u32, v: &[u8]) -> Self {
        let n = v.len().min(16);
        let mut buf = [0u8; 16];
        buf[..n].copy_from_slice(&v[..n]);
        self.data[self.n_data] = (attr as u16, buf, n);
        self.n_data += 1;
        self
    }
    fn str(mut self, attr: u32, v: &'a str) -> Self {
        self.text = Some((attr as u16, v));
        self
    }
}

impl Expression for RawExpr<'_> {
    fn to_expr(&self, _rule: &nftnl::Rule<'_>) -> NonNull<sys::nftnl_expr> {
        // SAFETY: nftnl_expr_alloc returns a fresh expression or NULL (checked);
        // the setters copy the data they are given (strings are NUL-terminated
        // in a local buffer first).
        unsafe {
            let Some(e) = NonNull::new(sys::nftnl_expr_alloc(self.name.as_ptr())) else {
                std::process::abort();
            };
            for (a, v) in &self.u32s[..self.n_u32] {
                sys::nftnl_expr_set_u32(e.as_ptr(), *a, *v);
            }
            for (a, v, n) in &self.data[..self.n_data] {
                sys::nftnl_expr_set(e.as_ptr(), *a, v.as_ptr().cast::<c_void>(), *n as u32);
            }
            if let Some((a, text)) = self.text {
                let mut buf = [0u8; 256];
                let n = text.len().min(255);
                buf[..n].copy_from_slice(&text.as_bytes()[..n]);
                sys::nftnl_expr_set(e.as_ptr(), a, buf.as_ptr().cast::<c_void>(), n as u32 + 1);
            }
            e
        }
    }
}

fn meta(key: u32, dreg: u32) -> RawExpr<'static> {
    RawExpr::new(c"meta")
        .u32(sys::NFTNL_EXPR_META_KEY, key)
        .u32(sys::NFTNL_EXPR_META_DREG, dreg)
}

fn meta_set(key: u32, sreg: u32) -> RawExpr<'static> {
    RawExpr::new(c"meta")
        .u32(sys::NFTNL_EXPR_META_KEY, key)
        .u32(sys::NFTNL_EXPR_META_SREG, sreg)
}

fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> RawExpr<'static> {
    RawExpr::new(c"payload")
        .u32(sys::NFTNL_EXPR_PAYLOAD_DREG, dreg)
        .u32(sys::NFTNL_EXPR_PAYLOAD_BASE, base)
        .u32(sys::NFTNL_EXPR_PAYLOAD_OFFSET, offset)
        .u32(sys::NFTNL_EXPR_PAYLOAD_LEN, len)
}

fn cmp(op: u32, data: &[u8]) -> RawExpr<'static> {
    RawExpr::new(c"cmp")
        .u32(sys::NFTNL_EXPR_CMP_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_CMP_OP, op)
        .data(sys::NFTNL_EXPR_CMP_DATA, data)
}

fn bitwise(mask: u32, xor: u32) -> RawExpr<'static> {
    RawExpr::new(c"bitwise")
        .u32(sys::NFTNL_EXPR_BITWISE_SREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_DREG, REG_1)
        .u32(sys::NFTNL_EXPR_BITWISE_LEN, 4)
        .data(sys::NFTNL_EXPR_BITWISE_MASK, &mask.to_ne_bytes())
        .data(sys::NFTNL_EXPR_BITWISE_XOR, &xor.to_ne_bytes())
}

fn lookup(set: &str, invert: bool) -> RawExpr<'_> {
    let mut e = RawExpr::new(c"lookup")
        .u32(sys::NFTNL_EXPR_LOOKUP_SREG, REG_1)
        .str(sys::NFTNL_EXPR_LOOKUP_SET, set);
    if invert {
        e = e.u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
    }
    e
}

fn verdict(code: i32, chain: Option<&str>) -> RawExpr<'_> {
    let mut e = RawExpr::new(c"immediate")
        .u32(sys::NFTNL_EXPR_IMM_DREG, REG_VERDICT)
        .u32(sys::NFTNL_EXPR_IMM_VERDICT, code as u32);
    if let Some(c) = chain {
        e = e.str(sys::NFTNL_EXPR_IMM_CHAIN, c);
    }
    e
}

fn op(negate: bool) -> u32 {
    if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }
}

/// The expressions of one IR rule, in the order nft emits them.
fn rule_exprs(r: &IrRule) -> Vec<RawExpr<'_>> {
    let mut v = Vec::new();
    for m in &r.matches {
        match m {
            Match::Family(f) => {
                v.push(meta(NFT_META_NFPROTO, REG_1));
                let proto: u8 = match f {
                    Family::V4 => libc::NFPROTO_IPV4 as u8,
                    Family::V6 => libc::NFPROTO_IPV6 as u8,
                };
                v.push(cmp(NFT_CMP_EQ, &[proto]));
            }
            Match::L4Proto { proto, negate } => {
                v.push(meta(NFT_META_L4PROTO, REG_1));
                v.push(cmp(op(*negate), &[*proto]));
            }
            Match::IfPrefix { dir, prefix } => {
                let key = if *dir == IfDir::In {
                    NFT_META_IIFNAME
                } else {
                    NFT_META_OIFNAME
                };
                v.push(meta(key, REG_1));
                v.push(cmp(NFT_CMP_EQ, prefix.as_bytes()));
            }
            Match::Addr {
                side,
                family,
                set,
                negate,
            } => {
                let (off, len) = addr_offset(*side, *family);
                v.push(payload(NFT_PAYLOAD_NETWORK_HEADER, off, len, REG_1));
                v.push(lookup(set, *negate));
            }
            Match::Prefix { side, net, negate } => {
                // nft: whole bytes of a byte-aligned prefix, compared; otherwise
                // the whole address, masked, compared.
                let family = if net.addr().is_ipv4() {
                    Family::V4
                } else {
                    Family::V6
                };
                let (off, addr_len) = addr_offset(*side, family);
                let network: Vec<u8> = match net.network() {
                    std::net::IpAddr::V4(a) => a.octets().to_vec(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec(),
                };
                let bits = net.prefix_len() as usize;
                if bits > 0 && bits.is_multiple_of(8) {
                    v.push(payload(
                        NFT_PAYLOAD_NETWORK_HEADER,
                        off,
                        bits as u32 / 8,
                        REG_1,
                    ));
                    v.push(cmp(op(*negate), &network[..bits / 8]));
                } else {
                    let mask: Vec<u8> = (0..addr_len as usize)
                        .map(|i| {
                            let ones = bits.saturating_sub(i * 8).min(8);
                            (0xff00u16 >> ones) as u8
                        })
                        .collect();
                    v.push(payload(NFT_PAYLOAD_NETWORK_HEADER, off, addr_len, REG_1));
                    v.push(
                        RawExpr::new(c"bitwise")
                            .u32(sys::NFTNL_EXPR_BITWISE_SREG, REG_1)
                            .u32(sys::NFTNL_EXPR_BITWISE_DREG, REG_1)
                            .u32(sys::NFTNL_EXPR_BITWISE_LEN, addr_len)
                            .data(sys::NFTNL_EXPR_BITWISE_MASK, &mask)
                            .data(sys::NFTNL_EXPR_BITWISE_XOR, &vec![0; addr_len as usize]),
                    );
                    v.push(cmp(op(*negate), &network));
                }
            }
            Match::Port { side, set, negate } => {
                v.push(payload(
                    NFT_PAYLOAD_TRANSPORT_HEADER,
                    port_offset(*side),
                    2,
                    REG_1,
                ));
                v.push(lookup(set, *negate));
            }
            Match::AddrProtoPort {
                side,
                family,
                set,
                negate,
            } => {
                let (off, len) = addr_offset(*side, *family);
                let (proto_reg, port_reg) = match family {
                    Family::V4 => (REG32_01, REG32_02),
                    Family::V6 => (REG_2, REG32_05),
                };
                v.push(payload(NFT_PAYLOAD_NETWORK_HEADER, off, len, REG_1));
                v.push(meta(NFT_META_L4PROTO, proto_reg));
                v.push(payload(
                    NFT_PAYLOAD_TRANSPORT_HEADER,
                    port_offset(*side),
                    2,
                    port_reg,
                ));
                v.push(lookup(set, *negate));
            }
            Match::Icmp {
                icmp_type,
                code,
                negate,
            } => match code {
                None => {
                    v.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, REG_1));
                    v.push(cmp(op(*negate), &[*icmp_type]));
                }
                Some(c) => {
                    v.push(payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, REG_1));
                    v.push(cmp(op(*negate), &[*icmp_type, *c]));
                }
            },
            Match::MarkAny(mask) => {
                v.push(meta(NFT_META_MARK, REG_1));
                v.push(bitwise(*mask, 0));
                v.push(cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes()));
            }
            Match::CtState(bits) => {
                v.push(
                    RawExpr::new(c"ct")
                        .u32(sys::NFTNL_EXPR_CT_DREG, REG_1)
                        .u32(sys::NFTNL_EXPR_CT_KEY, NFT_CT_STATE),
                );
                v.push(bitwise(*bits, 0));
                v.push(cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes()));
            }
        }
    }
    match &r.stmt {
        Stmt::Accept => v.push(verdict(NF_ACCEPT, None)),
        Stmt::Drop => v.push(verdict(NF_DROP, None)),
        Stmt::Return => v.push(verdict(NFT_RETURN, None)),
        Stmt::Jump(c) => v.push(verdict(NFT_JUMP, Some(c))),
        Stmt::SetMarkReturn(b) => {
            v.push(meta(NFT_META_MARK, REG_1));
            v.push(bitwise(!b, *b));
            v.push(meta_set(NFT_META_MARK, REG_1));
            v.push(verdict(NFT_RETURN, None));
        }
        Stmt::ClearMark(b) => {
            v.push(meta(NFT_META_MARK, REG_1));
            v.push(bitwise(!b, 0));
            v.push(meta_set(NFT_META_MARK, REG_1));
        }
        Stmt::Log(prefix) => {
            v.push(RawExpr::new(c"log").str(sys::NFTNL_EXPR_LOG_PREFIX, prefix));
        }
        Stmt::Dispatch { dir, map } => {
            let key = if *dir == IfDir::In {
                NFT_META_IIFNAME
            } else {
                NFT_META_OIFNAME
            };
            v.push(meta(key, REG_1));
            v.push(
                RawExpr::new(c"lookup")
                    .u32(sys::NFTNL_EXPR_LOOKUP_SREG, REG_1)
                    .u32(sys::NFTNL_EXPR_LOOKUP_DREG, REG_VERDICT)
                    .str(sys::NFTNL_EXPR_LOOKUP_SET, map),
            );
        }
        Stmt::MasqueradeFullyRandom => {
            v.push(
                RawExpr::new(c"masq")
                    .u32(sys::NFTNL_EXPR_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY),
            );
        }
    }
    v
}

/// One element as the kernel stores it: key, flags, and a goto target for maps.
struct Elem {
    key: Vec<u8>,
    flags: u32,
    goto: Option<String>,
}

/// Interval-set elements for inclusive ranges of an integer key type: each
/// range becomes a start key and an exclusive end key (none past the maximum),
/// in network byte order.
fn interval_set<T: Copy, const N: usize>(
    ranges: Vec<(T, T)>,
    to_be: fn(T) -> [u8; N],
    successor: fn(T) -> Option<T>,
) -> Vec<Elem> {
    interval_elems(
        ranges
            .into_iter()
            .map(|(a, b)| (to_be(a).to_vec(), successor(b).map(|x| to_be(x).to_vec())))
            .collect(),
        vec![0; N],
    )
}

fn interval_elems(ranges: Vec<(Vec<u8>, Option<Vec<u8>>)>, zero: Vec<u8>) -> Vec<Elem> {
    let mut out = Vec::new();
    // nft opens every interval set with a "0 end" element; do the same so both
    // backends leave identical sets.
    if ranges.first().is_some_and(|(a, _)| *a != zero) {
        out.push(Elem {
            key: zero,
            flags: NFT_SET_ELEM_INTERVAL_END,
            goto: None,
        });
    }
    for (start, end_excl) in ranges {
        out.push(Elem {
            key: start,
            flags: 0,
            goto: None,
        });
        if let Some(e) = end_excl {
            out.push(Elem {
                key: e,
                flags: NFT_SET_ELEM_INTERVAL_END,
                goto: None,
            });
        }
    }
    out
}

fn padded(mut v: Vec<u8>, len: usize) -> Vec<u8> {
    v.resize(len, 0);
    v
}

fn elems(e: &SetElems) -> Vec<Elem> {
    let plain = |key: Vec<u8>| Elem {
        key,
        flags: 0,
        goto: None,
    };
    match e {
        SetElems::Addr4(s) => s.iter().map(|a| plain(a.octets().to_vec())).collect(),
        SetElems::Addr6(s) => s.iter().map(|a| plain(a.octets().to_vec())).collect(),
        SetElems::Net4(s) => interval_set(v4_ranges(s), u32::to_be_bytes, |x| x.checked_add(1)),
        SetElems::Net6(s) => interval_set(v6_ranges(s), u128::to_be_bytes, |x| x.checked_add(1)),
        SetElems::Ports(s) => interval_set(port_ranges(s), u16::to_be_bytes, |x| x.checked_add(1)),
        SetElems::AddrProtoPort4(s) => s
            .iter()
            .map(|(a, p, n)| {
                let mut k = a.octets().to_vec();
                k.extend(padded(vec![*p], 4));
                k.extend(padded(n.to_be_bytes().to_vec(), 4));
                plain(k)
            })
            .collect(),
        SetElems::AddrProtoPort6(s) => s
            .iter()
            .map(|(a, p, n)| {
                let mut k = a.octets().to_vec();
                k.extend(padded(vec![*p], 4));
                k.extend(padded(n.to_be_bytes().to_vec(), 4));
                plain(k)
            })
            .collect(),
        SetElems::IfGoto(m) => m
            .iter()
            .map(|(k, c)| Elem {
                key: padded(k.as_bytes().to_vec(), IFNAMSIZ),
                flags: 0,
                goto: Some(c.clone()),
            })
            .collect(),
    }
}

/// A named set, built through `nftnl-sys` (nftnl's `Set` only knows anonymous
/// and plain named sets with fixed key types).
struct SetObj {
    set: NonNull<sys::nftnl_set>,
}

impl SetObj {
    fn named(table: &str, name: &str) -> SetObj {
        let t = cstring(table);
        let n = cstring(name);
        // SAFETY: fresh allocation checked for NULL; setters copy their inputs.
        unsafe {
            let Some(set) = NonNull::new(sys::nftnl_set_alloc()) else {
                std::process::abort();
            };
            let s = set.as_ptr();
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, ProtoFamily::Inet as u32);
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, n.as_ptr());
            SetObj { set }
        }
    }

    fn new(
        table: &str,
        name: &str,
        id: Option<u32>,
        shape: &SetElems,
        with_elems: Option<&[Elem]>,
    ) -> SetObj {
        let (key_type, key_len, flags) = set_shape(shape);
        let t = cstring(table);
        let n = cstring(name);
        // SAFETY: fresh allocations checked for NULL; setters copy their inputs.
        unsafe {
            let Some(set) = NonNull::new(sys::nftnl_set_alloc()) else {
                std::process::abort();
            };
            let s = set.as_ptr();
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, ProtoFamily::Inet as u32);
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, n.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, flags);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, key_type);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, key_len);
            if let Some(id) = id {
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, id);
            }
            if flags & NFT_SET_MAP != 0 {
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, NFT_DATA_VERDICT);
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, 0);
            }
            // nft reads the key's byte order from the set's user data when it
            // prints elements (an ifname key is a host-order string).
            let Some(ud) = NonNull::new(sys::nftnl_udata_buf_alloc(64)) else {
                std::process::abort();
            };
            let order = match shape {
                SetElems::IfGoto(_) => BYTEORDER_HOST,
                SetElems::AddrProtoPort4(_) | SetElems::AddrProtoPort6(_) => BYTEORDER_INVALID,
                _ => BYTEORDER_BIG_ENDIAN,
            };
            sys::nftnl_udata_put_u32(ud.as_ptr(), sys::NFTNL_UDATA_SET_KEYBYTEORDER as u8, order);
            if flags & NFT_SET_MAP != 0 {
                sys::nftnl_udata_put_u32(
                    ud.as_ptr(),
                    sys::NFTNL_UDATA_SET_DATABYTEORDER as u8,
                    BYTEORDER_INVALID,
                );
            }
            sys::nftnl_set_set_data(
                s,
                sys::NFTNL_SET_USERDATA as u16,
                sys::nftnl_udata_buf_data(ud.as_ptr()),
                sys::nftnl_udata_buf_len(ud.as_ptr()),
            );
            sys::nftnl_udata_buf_free(ud.as_ptr());
            for el in with_elems.unwrap_or_default() {
                let Some(e) = NonNull::new(sys::nftnl_set_elem_alloc()) else {
                    std::process::abort();
                };
                let e = e.as_ptr();
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    el.key.as_ptr().cast::<c_void>(),
                    el.key.len() as u32,
                );
                if el.flags != 0 {
                    sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16, el.flags);
                }
                if let Some(chain) = &el.goto {
                    let c = cstring(chain);
                    sys::nftnl_set_elem_set_u32(
                        e,
                        sys::NFTNL_SET_ELEM_VERDICT as u16,
                        NFT_GOTO as u32,
                    );
                    sys::nftnl_set_elem_set_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16, c.as_ptr());
                }
                sys::nftnl_set_elem_add(s, e);
            }
            SetObj { set }
        }
    }

    fn has_elems(&self) -> bool {
        // SAFETY: the set pointer is valid for self's lifetime.
        unsafe {
            let it = sys::nftnl_set_elems_iter_create(self.set.as_ptr());
            if it.is_null() {
                return false;
            }
            let any = !sys::nftnl_set_elems_iter_cur(it).is_null();
            sys::nftnl_set_elems_iter_destroy(it);
            any
        }
    }
}

impl Drop for SetObj {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_set_alloc, freed once.
        unsafe { sys::nftnl_set_free(self.set.as_ptr()) };
    }
}

/// NEWSET / DELSET of a [`SetObj`].
struct SetMsg<'a>(&'a SetObj);

// SAFETY: nftnl_set_nlmsg_build_payload writes at most one set message, which
// fits the buffer nftnl's batch reserves (nft_nlmsg_maxsize).
unsafe impl NlMsg for SetMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE),
            MsgType::Del => (libc::NFT_MSG_DELSET, 0),
        };
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty as u16,
                ProtoFamily::Inet as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_set_nlmsg_build_payload(h, self.0.set.as_ptr());
        }
    }
}

/// NEWSETELEM / DELSETELEM of some elements of a [`SetObj`], one message's worth
/// (the iterator stops when the message is full; see [`add_elems`]).
struct ElemMsg {
    set: *mut sys::nftnl_set,
    iter: *mut sys::nftnl_set_elems_iter,
    done: std::cell::Cell<bool>,
}

// SAFETY: the payload builder stops before the message exceeds one netlink
// message's maximum, which the batch reserves.
unsafe impl NlMsg for ElemMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, 0),
        };
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                ty as u16,
                ProtoFamily::Inet as u16,
                flags as u16,
                seq,
            );
            let r = sys::nftnl_set_elems_nlmsg_build_payload_iter(h, self.iter);
            let _ = self.set;
            self.done.set(r <= 0);
        }
    }
}

fn add_elems(batch: &mut Batch, set: &SetObj, ty: MsgType, count: &mut usize) {
    if !set.has_elems() {
        return;
    }
    // SAFETY: the iterator walks the set's element list and is destroyed below.
    unsafe {
        let it = sys::nftnl_set_elems_iter_create(set.set.as_ptr());
        if it.is_null() {
            std::process::abort();
        }
        loop {
            let msg = ElemMsg {
                set: set.set.as_ptr(),
                iter: it,
                done: std::cell::Cell::new(false),
            };
            batch.add(&msg, ty);
            *count += 1;
            if msg.done.get() || sys::nftnl_set_elems_iter_cur(it).is_null() {
                break;
            }
        }
        sys::nftnl_set_elems_iter_destroy(it);
    }
}

/// DELSETELEM without an element list: the kernel flushes the set.
struct FlushSetMsg {
    table: CString,
    name: CString,
}

fn put_attr(buf: *mut u8, off: &mut usize, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    // SAFETY: callers write a few short attributes into a buffer reserved for a
    // whole netlink message.
    unsafe {
        buf.add(*off).cast::<u16>().write_unaligned(len as u16);
        buf.add(*off + 2).cast::<u16>().write_unaligned(ty);
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf.add(*off + 4), data.len());
        let padded = (len + 3) & !3;
        for i in len..padded {
            buf.add(*off + i).write(0);
        }
        *off += padded;
    }
}

// SAFETY: the message is a header plus two short string attributes.
unsafe impl NlMsg for FlushSetMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        unsafe {
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                libc::NFT_MSG_DELSETELEM as u16,
                ProtoFamily::Inet as u16,
                0,
                seq,
            );
            let base = h.cast::<u8>();
            let mut off = (*h).nlmsg_len as usize;
            // NFTA_SET_ELEM_LIST_TABLE = 1, NFTA_SET_ELEM_LIST_SET = 2
            put_attr(base, &mut off, 1, self.table.as_bytes_with_nul());
            put_attr(base, &mut off, 2, self.name.as_bytes_with_nul());
            (*h).nlmsg_len = off as u32;
        }
    }
}

struct Builder<'t> {
    table: &'t nftnl::Table,
    batch: Batch,
    messages: usize,
    set_id: u32,
}

impl<'t> Builder<'t> {
    fn new(table: &'t nftnl::Table) -> Self {
        Builder {
            table,
            batch: Batch::new(),
            messages: 0,
            set_id: 0,
        }
    }

    fn chain_obj(&self, name: &str, c: Option<&IrChain>) -> nftnl::Chain<'t> {
        let mut ch = nftnl::Chain::new(cstring(name), self.table);
        if let Some(b) = c.and_then(|c| c.base) {
            let (hook, ty) = match b.hook {
                Hook::Input => (nftnl::Hook::In, nftnl::ChainType::Filter),
                Hook::Forward => (nftnl::Hook::Forward, nftnl::ChainType::Filter),
                Hook::Postrouting => (nftnl::Hook::PostRouting, nftnl::ChainType::Nat),
            };
            ch.set_hook(hook, b.priority);
            ch.set_type(ty);
            ch.set_policy(nftnl::Policy::Accept);
        }
        ch
    }

    fn add_chain(&mut self, name: &str, c: &IrChain) {
        let ch = self.chain_obj(name, Some(c));
        self.batch.add(&ch, MsgType::Add);
        self.messages += 1;
    }

    fn del_chain(&mut self, name: &str) {
        let ch = self.chain_obj(name, None);
        self.batch.add(&ch, MsgType::Del);
        self.messages += 1;
    }

    fn flush_chain(&mut self, name: &str) {
        // A DELRULE naming only the chain deletes all its rules.
        let ch = self.chain_obj(name, None);
        let rule = nftnl::Rule::new(&ch);
        self.batch.add(&rule, MsgType::Del);
        self.messages += 1;
    }

    fn add_rules(&mut self, name: &str, c: &IrChain) -> Result<(), Error> {
        let ch = self.chain_obj(name, None);
        for r in &c.rules {
            let mut rule = nftnl::Rule::new(&ch);
            for e in rule_exprs(r) {
                rule.add_expr(&e);
            }
            if let Some(comment) = &r.comment {
                rule.set_comment(cstring(comment))
                    .map_err(|e| Error::Netlink {
                        operation: format!("comment on a rule of chain {name}"),
                        errno: 0,
                        detail: e.to_owned(),
                    })?;
            }
            self.batch.add(&rule, MsgType::Add);
            self.messages += 1;
        }
        Ok(())
    }

    fn add_set(&mut self, name: &str, e: &SetElems) {
        let els = elems(e);
        let id = self.next_set_id();
        let s = SetObj::new(&self.table_name(), name, Some(id), e, Some(&els));
        self.batch.add(&SetMsg(&s), MsgType::Add);
        self.messages += 1;
        add_elems(&mut self.batch, &s, MsgType::Add, &mut self.messages);
    }

    fn set_elems(&mut self, name: &str, e: &SetElems, ty: MsgType) {
        // An existing set: found by name, no transaction id.
        let els = elems(e);
        let s = SetObj::new(&self.table_name(), name, None, e, Some(&els));
        add_elems(&mut self.batch, &s, ty, &mut self.messages);
    }

    fn flush_set(&mut self, name: &str) {
        let m = FlushSetMsg {
            table: cstring(&self.table_name()),
            name: cstring(name),
        };
        self.batch.add(&m, MsgType::Del);
        self.messages += 1;
    }

    fn del_set(&mut self, name: &str) {
        // Only what DELSET reads: table and name.
        let s = SetObj::named(&self.table_name(), name);
        self.batch.add(&SetMsg(&s), MsgType::Del);
        self.messages += 1;
    }

    fn next_set_id(&mut self) -> u32 {
        self.set_id += 1;
        self.set_id
    }

    fn table_name(&self) -> String {
        self.table.get_name().to_string_lossy().into_owned()
    }

    fn finish(self) -> (Vec<u8>, usize) {
        let fin = self.batch.finalize();
        let total = fin.iter().map(<[u8]>::len).sum();
        let mut bytes = Vec::with_capacity(total);
        for chunk in &fin {
            bytes.extend_from_slice(chunk);
        }
        clear_acks(&mut bytes);
        (bytes, self.messages)
    }
}

/// Drops NLM_F_ACK from every message but the batch end: the kernel then answers
/// a whole transaction with its errors (if any) and one final acknowledgement,
/// instead of one acknowledgement per rule.
fn clear_acks(bytes: &mut [u8]) {
    let mut off = 0;
    let mut last = None;
    while off + 16 <= bytes.len() {
        let len = u32::from_ne_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
            as usize;
        if len < 16 {
            break;
        }
        last = Some(off);
        let flags =
            u16::from_ne_bytes([bytes[off + 6], bytes[off + 7]]) & !(libc::NLM_F_ACK as u16);
        bytes[off + 6..off + 8].copy_from_slice(&flags.to_ne_bytes());
        off += (len + 3) & !3;
    }
    if let Some(l) = last {
        let flags = u16::from_ne_bytes([bytes[l + 6], bytes[l + 7]]) | libc::NLM_F_ACK as u16;
        bytes[l + 6..l + 8].copy_from_slice(&flags.to_ne_bytes());
    }
}

/// The batch that replaces the whole table (create if missing, delete, define).
pub(super) fn full_transaction(rs: &Ruleset) -> Result<(Vec<u8>, usize), Error> {
    let table = nftnl::Table::new(cstring(&rs.table), ProtoFamily::Inet);
    let mut b = Builder::new(&table);
    b.batch.add(&table, MsgType::Add);
    b.batch.add(&table, MsgType::Del);
    b.batch.add(&table, MsgType::Add);
    b.messages += 3;
    for (name, c) in &rs.chains {
        b.add_chain(name, c);
    }
    for name in rs.set_order() {
        b.add_set(name, &rs.sets[name]);
    }
    for (name, c) in &rs.chains {
        b.add_rules(name, c)?;
    }
    Ok(b.finish())
}

/// The batch applying `d` to the installed table `table` (same order as
/// [`crate::nft::render_diff`]).
pub(super) fn diff_transaction(table: &str, d: &Diff) -> Result<(Vec<u8>, usize), Error> {
    let t = nftnl::Table::new(cstring(table), ProtoFamily::Inet);
    let mut b = Builder::new(&t);
    for (name, e) in &d.add_sets {
        b.add_set(name, e);
    }
    for (name, c) in &d.add_chains {
        b.add_chain(name, c);
    }
    for name in d.replace_chains.keys().chain(d.del_chains.iter()) {
        b.flush_chain(name);
    }
    for (name, c) in d.add_chains.iter().chain(d.replace_chains.iter()) {
        b.add_rules(name, c)?;
    }
    for (name, e) in &d.reload_sets {
        b.flush_set(name);
        b.set_elems(name, e, MsgType::Add);
    }
    for (name, e) in &d.del_elems {
        b.set_elems(name, e, MsgType::Del);
    }
    for (name, e) in &d.add_elems {
        b.set_elems(name, e, MsgType::Add);
    }
    for name in &d.del_chains {
        b.del_chain(name);
    }
    for name in &d.del_sets {
        b.del_set(name);
    }
    Ok(b.finish())
}
