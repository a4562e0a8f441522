//! The nf_tables batch encoder: netlink headers, `nfgenmsg` and (nested)
//! attributes written straight into one pre-sized buffer, in the layout
//! libnftnl produces for the same objects (the tests compare the two byte for
//! byte). Attribute numbers and constants are the kernel's
//! (`linux/netfilter/nf_tables.h`, `linux/netfilter/nfnetlink.h`).

use ipnet::IpNet;

use crate::Error;
use crate::ir::{
    Chain as IrChain, Family, Hook, IfDir, Match, Rule as IrRule, SetElems, Side, Stmt,
    port_ranges, v4_ranges, v6_ranges,
};

// Netlink and nfnetlink framing: calinet-netlink's (the workspace's one copy).
use calinet_netlink::consts::{
    NFNL_SUBSYS_NFTABLES, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
};
use calinet_netlink::{Mark, Writer, nfnl};
const NFPROTO_INET: u8 = 1;

// nf_tables message types.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

// Attributes, per object.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_FLAGS: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_LOG_PREFIX: u16 = 2;
const NFTA_MASQ_FLAGS: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;

// Registers as nft allocates them (128-bit NFT_REG_n and 32-bit NFT_REG32_nn).
pub(super) const REG_VERDICT: u32 = 0;
pub(super) const REG_1: u32 = 1;
pub(super) const REG_2: u32 = 2;
pub(super) const REG32_01: u32 = 9;
pub(super) const REG32_02: u32 = 10;
pub(super) const REG32_05: u32 = 13;

pub(super) const NFT_META_MARK: u32 = 3;
pub(super) const NFT_META_IIFNAME: u32 = 6;
pub(super) const NFT_META_OIFNAME: u32 = 7;
pub(super) const NFT_META_NFPROTO: u32 = 15;
pub(super) const NFT_META_L4PROTO: u32 = 16;
pub(super) const NFT_CT_STATE: u32 = 0;
pub(super) const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub(super) const NFT_CMP_EQ: u32 = 0;
pub(super) const NFT_CMP_NEQ: u32 = 1;
pub(super) const NFT_LOOKUP_F_INV: u32 = 1;
pub(super) const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 16;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;

const NFT_SET_INTERVAL: u32 = 4;
pub(super) const NFT_SET_MAP: u32 = 8;
pub(super) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
pub(super) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
pub(super) const NFT_GOTO: i32 = -4;
pub(super) const NFT_JUMP: i32 = -3;
pub(super) const NFT_RETURN: i32 = -5;
pub(super) const NF_ACCEPT: i32 = 1;
pub(super) const NF_DROP: i32 = 0;

// nft's datatype ids, for set keys (what `nft list` shows as the set's type).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
const TYPE_BITS: u32 = 6;
// nft's user-data TLVs (libnftnl `NFTNL_UDATA_*`) and byte orders.
const UDATA_SET_KEYBYTEORDER: u8 = 0;
const UDATA_SET_DATABYTEORDER: u8 = 1;
const UDATA_RULE_COMMENT: u8 = 0;
pub(super) const BYTEORDER_INVALID: u32 = 0;
pub(super) const BYTEORDER_HOST: u32 = 1;
pub(super) const BYTEORDER_BIG_ENDIAN: u32 = 2;
pub(super) const IFNAMSIZ: usize = 16;
/// libnftnl's user-data buffer for a rule comment (`NFTNL_UDATA_COMMENT_MAXLEN`),
/// TLV header and terminating NUL included; nft refuses longer comments too.
const COMMENT_MAXLEN: usize = 128;
/// Expression payloads (compared data, masks) are at most one 128-bit register.
const DATA_MAX: usize = 16;

/// One nf_tables batch being written: `BATCH_BEGIN`, the messages, `BATCH_END`,
/// back to back in one buffer.
#[derive(Debug)]
pub(super) struct Encoder {
    /// The batch, framed by calinet-netlink's writer (which also keeps the
    /// first reason the batch cannot be sent: a name holding a NUL byte, an
    /// attribute too long for its 16-bit length).
    w: Writer,
    seq: u32,
    messages: usize,
    set_id: u32,
}

/// How set elements are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ElemOp {
    Add,
    Del,
}

impl Encoder {
    /// A batch written into `buf` (emptied first; its allocation is reused),
    /// with room for about `capacity` bytes reserved up front so a big batch
    /// does not grow and copy, opened with `BATCH_BEGIN`.
    pub(super) fn new(buf: Vec<u8>, capacity: usize) -> Encoder {
        let mut w = Writer::with_buffer(buf, capacity);
        nfnl::batch_begin(&mut w, 1, NFNL_SUBSYS_NFTABLES);
        Encoder {
            w,
            seq: 2,
            messages: 0,
            set_id: 0,
        }
    }

    /// Closes the batch with `BATCH_END`, the one message the kernel acknowledges
    /// (no per-message acknowledgements: errors still come back, each naming its
    /// message's sequence number). Returns the bytes and the message count
    /// (batch begin/end excluded) and the batch end's sequence number, or why
    /// the batch is invalid.
    pub(super) fn finish(mut self) -> Result<(Vec<u8>, usize, u32), String> {
        let end_seq = self.seq;
        nfnl::batch_end(&mut self.w, end_seq, NFNL_SUBSYS_NFTABLES);
        match self.w.finish() {
            Ok(bytes) => Ok((bytes, self.messages, end_seq)),
            Err(calinet_netlink::Error::Encode { reason }) => Err(reason),
            Err(other) => Err(other.to_string()),
        }
    }

    fn begin(&mut self, kind: u16, flags: u16) -> Mark {
        let m = self.w.begin_message(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            self.seq,
        );
        self.w.family_header(&nfnl::nfgenmsg(NFPROTO_INET, 0));
        self.seq += 1;
        m
    }

    fn end(&mut self, m: Mark) {
        self.w.end_message(m);
        self.messages += 1;
    }

    #[inline]
    fn attr_header(&mut self, ty: u16, payload_len: usize) {
        self.w.attr_header(ty, payload_len);
    }

    #[inline]
    fn pad(&mut self) {
        self.w.pad();
    }

    #[inline]
    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.w.attr(ty, data);
    }

    #[inline]
    fn be32(&mut self, ty: u16, v: u32) {
        self.w.attr_be32(ty, v);
    }

    /// A NUL-terminated string. Names come from the compiler or are validated
    /// interface names; one holding a NUL fails the transaction (the kernel
    /// would read a different name).
    #[inline]
    fn strz(&mut self, ty: u16, s: &str) {
        self.w.attr_str(ty, s);
    }

    #[inline]
    fn nest(&mut self, ty: u16) -> Mark {
        self.w.begin_nested(ty)
    }

    #[inline]
    fn nest_end(&mut self, m: Mark) {
        self.w.end_nested(m);
    }

    // --- tables and chains ---

    pub(super) fn table(&mut self, name: &str, add: bool) {
        let m = self.begin(
            if add {
                NFT_MSG_NEWTABLE
            } else {
                NFT_MSG_DELTABLE
            },
            0,
        );
        self.strz(NFTA_TABLE_NAME, name);
        self.be32(NFTA_TABLE_FLAGS, 0);
        self.end(m);
    }

    pub(super) fn add_chain(&mut self, table: &str, name: &str, c: &IrChain) {
        let m = self.begin(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
        self.strz(NFTA_CHAIN_TABLE, table);
        self.strz(NFTA_CHAIN_NAME, name);
        if let Some(b) = c.base {
            let (hook, ty) = match b.hook {
                Hook::Input => (NF_INET_LOCAL_IN, "filter"),
                Hook::Forward => (NF_INET_FORWARD, "filter"),
                Hook::Postrouting => (NF_INET_POST_ROUTING, "nat"),
            };
            let h = self.nest(NFTA_CHAIN_HOOK);
            self.be32(NFTA_HOOK_HOOKNUM, hook);
            self.be32(NFTA_HOOK_PRIORITY, b.priority as u32);
            self.nest_end(h);
            self.be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
            self.strz(NFTA_CHAIN_TYPE, ty);
        }
        self.end(m);
    }

    pub(super) fn del_chain(&mut self, table: &str, name: &str) {
        self.table_and_name(
            NFT_MSG_DELCHAIN,
            (NFTA_CHAIN_TABLE, table),
            (NFTA_CHAIN_NAME, name),
        );
    }

    /// A DELRULE naming only the chain: the kernel deletes all its rules.
    pub(super) fn flush_chain(&mut self, table: &str, name: &str) {
        self.table_and_name(
            NFT_MSG_DELRULE,
            (NFTA_RULE_TABLE, table),
            (NFTA_RULE_CHAIN, name),
        );
    }

    /// A message carrying only a table and an object name (deletes and flushes).
    fn table_and_name(&mut self, msg: u16, table: (u16, &str), name: (u16, &str)) {
        let m = self.begin(msg, 0);
        self.strz(table.0, table.1);
        self.strz(name.0, name.1);
        self.end(m);
    }

    // --- rules ---

    /// One NEWRULE (appended) per rule of `c`.
    pub(super) fn add_rules(&mut self, table: &str, name: &str, c: &IrChain) -> Result<(), Error> {
        for r in &c.rules {
            let m = self.begin(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND | NLM_F_EXCL);
            self.strz(NFTA_RULE_TABLE, table);
            self.strz(NFTA_RULE_CHAIN, name);
            if let Some(comment) = &r.comment {
                self.comment(comment).map_err(|detail| Error::Netlink {
                    operation: format!("comment on a rule of chain {name}"),
                    errno: 0,
                    detail: detail.to_owned(),
                })?;
            }
            let l = self.nest(NFTA_RULE_EXPRESSIONS);
            self.rule_exprs(r);
            self.nest_end(l);
            self.end(m);
        }
        Ok(())
    }

    /// The comment as nft stores it: a user-data TLV holding the string and its
    /// NUL.
    fn comment(&mut self, comment: &str) -> Result<(), &'static str> {
        let text = comment.as_bytes();
        let nuls = text.iter().filter(|&&c| c == 0).count();
        let tlv_len = text.len() - nuls + 1;
        if 2 + tlv_len > COMMENT_MAXLEN {
            return Err("Comment too big");
        }
        self.attr_header(NFTA_RULE_USERDATA, 2 + tlv_len);
        let buf = self.w.bytes_mut();
        buf.push(UDATA_RULE_COMMENT);
        buf.push(tlv_len as u8);
        if nuls == 0 {
            buf.extend_from_slice(text);
        } else {
            buf.extend(text.iter().copied().filter(|&c| c != 0));
        }
        buf.push(0);
        self.pad();
        Ok(())
    }

    /// Opens one expression of a rule's list; `expr_end` closes it.
    fn expr(&mut self, name_z: &[u8]) -> (Mark, Mark) {
        let l = self.nest(NFTA_LIST_ELEM);
        self.attr(NFTA_EXPR_NAME, name_z);
        (l, self.nest(NFTA_EXPR_DATA))
    }

    fn expr_end(&mut self, (l, d): (Mark, Mark)) {
        self.nest_end(d);
        self.nest_end(l);
    }

    fn meta(&mut self, key: u32, dreg: u32) {
        let e = self.expr(b"meta\0");
        self.be32(NFTA_META_KEY, key);
        self.be32(NFTA_META_DREG, dreg);
        self.expr_end(e);
    }

    fn meta_set(&mut self, key: u32, sreg: u32) {
        let e = self.expr(b"meta\0");
        self.be32(NFTA_META_KEY, key);
        self.be32(NFTA_META_SREG, sreg);
        self.expr_end(e);
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) {
        let e = self.expr(b"payload\0");
        self.be32(NFTA_PAYLOAD_DREG, dreg);
        self.be32(NFTA_PAYLOAD_BASE, base);
        self.be32(NFTA_PAYLOAD_OFFSET, offset);
        self.be32(NFTA_PAYLOAD_LEN, len);
        self.expr_end(e);
    }

    fn data_value(&mut self, ty: u16, data: &[u8]) {
        let n = self.nest(ty);
        self.attr(NFTA_DATA_VALUE, data);
        self.nest_end(n);
    }

    fn cmp(&mut self, op: u32, data: &[u8]) {
        let e = self.expr(b"cmp\0");
        self.be32(NFTA_CMP_SREG, REG_1);
        self.be32(NFTA_CMP_OP, op);
        self.data_value(NFTA_CMP_DATA, &data[..data.len().min(DATA_MAX)]);
        self.expr_end(e);
    }

    fn bitwise(&mut self, mask: u32, xor: u32) {
        // Mask and xor apply to the register as loaded (host order).
        self.bitwise_bytes(&mask.to_ne_bytes(), &xor.to_ne_bytes());
    }

    fn bitwise_bytes(&mut self, mask: &[u8], xor: &[u8]) {
        let e = self.expr(b"bitwise\0");
        self.be32(NFTA_BITWISE_SREG, REG_1);
        self.be32(NFTA_BITWISE_DREG, REG_1);
        self.be32(NFTA_BITWISE_LEN, mask.len() as u32);
        self.data_value(NFTA_BITWISE_MASK, mask);
        self.data_value(NFTA_BITWISE_XOR, xor);
        self.expr_end(e);
    }

    fn lookup(&mut self, set: &str, dreg: Option<u32>, invert: bool) {
        let e = self.expr(b"lookup\0");
        self.be32(NFTA_LOOKUP_SREG, REG_1);
        if let Some(d) = dreg {
            self.be32(NFTA_LOOKUP_DREG, d);
        }
        self.strz(NFTA_LOOKUP_SET, set);
        if invert {
            self.be32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
        }
        self.expr_end(e);
    }

    fn verdict(&mut self, code: i32, chain: Option<&str>) {
        let e = self.expr(b"immediate\0");
        self.be32(NFTA_IMMEDIATE_DREG, REG_VERDICT);
        let d = self.nest(NFTA_IMMEDIATE_DATA);
        let v = self.nest(NFTA_DATA_VERDICT);
        self.be32(NFTA_VERDICT_CODE, code as u32);
        if let Some(c) = chain {
            self.strz(NFTA_VERDICT_CHAIN, c);
        }
        self.nest_end(v);
        self.nest_end(d);
        self.expr_end(e);
    }

    /// The expressions of one IR rule, in the order nft emits them for the
    /// script backend's text (same registers), so both backends leave the same
    /// kernel state.
    fn rule_exprs(&mut self, r: &IrRule) {
        for m in &r.matches {
            match m {
                Match::Family(f) => {
                    self.meta(NFT_META_NFPROTO, REG_1);
                    let proto = match f {
                        Family::V4 => libc::NFPROTO_IPV4 as u8,
                        Family::V6 => libc::NFPROTO_IPV6 as u8,
                    };
                    self.cmp(NFT_CMP_EQ, &[proto]);
                }
                Match::L4Proto { proto, negate } => {
                    self.meta(NFT_META_L4PROTO, REG_1);
                    self.cmp(op(*negate), &[*proto]);
                }
                Match::IfPrefix { dir, prefix } => {
                    self.meta(if_key(*dir), REG_1);
                    self.cmp(NFT_CMP_EQ, prefix.as_bytes());
                }
                Match::Addr {
                    side,
                    family,
                    set,
                    negate,
                } => {
                    let (off, len) = addr_offset(*side, *family);
                    self.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len, REG_1);
                    self.lookup(set, None, *negate);
                }
                Match::Prefix { side, net, negate } => {
                    let p = PrefixLoad::new(*side, net);
                    self.payload(NFT_PAYLOAD_NETWORK_HEADER, p.offset, p.len, REG_1);
                    if let Some(mask) = &p.mask {
                        self.bitwise_bytes(mask, &[0; 16][..mask.len()]);
                    }
                    self.cmp(op(*negate), &p.value);
                }
                Match::Port { side, set, negate } => {
                    self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, port_offset(*side), 2, REG_1);
                    self.lookup(set, None, *negate);
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
                    self.payload(NFT_PAYLOAD_NETWORK_HEADER, off, len, REG_1);
                    self.meta(NFT_META_L4PROTO, proto_reg);
                    self.payload(
                        NFT_PAYLOAD_TRANSPORT_HEADER,
                        port_offset(*side),
                        2,
                        port_reg,
                    );
                    self.lookup(set, None, *negate);
                }
                Match::Icmp {
                    icmp_type,
                    code,
                    negate,
                } => match code {
                    None => {
                        self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1, REG_1);
                        self.cmp(op(*negate), &[*icmp_type]);
                    }
                    Some(c) => {
                        self.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 0, 2, REG_1);
                        self.cmp(op(*negate), &[*icmp_type, *c]);
                    }
                },
                Match::MarkAny(mask) => {
                    self.meta(NFT_META_MARK, REG_1);
                    self.bitwise(*mask, 0);
                    self.cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes());
                }
                Match::CtState(bits) => {
                    let e = self.expr(b"ct\0");
                    self.be32(NFTA_CT_KEY, NFT_CT_STATE);
                    self.be32(NFTA_CT_DREG, REG_1);
                    self.expr_end(e);
                    self.bitwise(*bits, 0);
                    self.cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes());
                }
            }
        }
        match &r.stmt {
            Stmt::Accept => self.verdict(NF_ACCEPT, None),
            Stmt::Drop => self.verdict(NF_DROP, None),
            Stmt::Return => self.verdict(NFT_RETURN, None),
            Stmt::Jump(c) => self.verdict(NFT_JUMP, Some(c)),
            Stmt::SetMarkReturn(b) => {
                self.meta(NFT_META_MARK, REG_1);
                self.bitwise(!b, *b);
                self.meta_set(NFT_META_MARK, REG_1);
                self.verdict(NFT_RETURN, None);
            }
            Stmt::ClearMark(b) => {
                self.meta(NFT_META_MARK, REG_1);
                self.bitwise(!b, 0);
                self.meta_set(NFT_META_MARK, REG_1);
            }
            Stmt::Log(prefix) => {
                let e = self.expr(b"log\0");
                self.strz(NFTA_LOG_PREFIX, prefix);
                self.expr_end(e);
            }
            Stmt::Dispatch { dir, map } => {
                self.meta(if_key(*dir), REG_1);
                self.lookup(map, Some(REG_VERDICT), false);
            }
            Stmt::MasqueradeFullyRandom => {
                let e = self.expr(b"masq\0");
                self.be32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY);
                self.expr_end(e);
            }
        }
    }

    // --- sets ---

    fn next_set_id(&mut self) -> u32 {
        self.set_id += 1;
        self.set_id
    }

    /// NEWSET, then its elements.
    pub(super) fn add_set(&mut self, table: &str, name: &str, e: &SetElems) {
        let id = self.next_set_id();
        let (key_type, key_len, flags) = set_shape(e);
        let m = self.begin(NFT_MSG_NEWSET, NLM_F_CREATE);
        self.strz(NFTA_SET_TABLE, table);
        self.strz(NFTA_SET_NAME, name);
        self.be32(NFTA_SET_FLAGS, flags);
        self.be32(NFTA_SET_KEY_TYPE, key_type);
        self.be32(NFTA_SET_KEY_LEN, key_len);
        let map = flags & NFT_SET_MAP != 0;
        if map {
            self.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            self.be32(NFTA_SET_DATA_LEN, 0);
        }
        self.be32(NFTA_SET_ID, id);
        // nft reads the key's byte order from the set's user data when it prints
        // elements (an ifname key is a host-order string).
        let order = match e {
            SetElems::IfGoto(_) => BYTEORDER_HOST,
            SetElems::AddrProtoPort4(_) | SetElems::AddrProtoPort6(_) => BYTEORDER_INVALID,
            _ => BYTEORDER_BIG_ENDIAN,
        };
        let mut ud = [0u8; 12];
        ud[0] = UDATA_SET_KEYBYTEORDER;
        ud[1] = 4;
        ud[2..6].copy_from_slice(&order.to_ne_bytes());
        ud[6] = UDATA_SET_DATABYTEORDER;
        ud[7] = 4;
        ud[8..12].copy_from_slice(&BYTEORDER_INVALID.to_ne_bytes());
        self.attr(NFTA_SET_USERDATA, if map { &ud } else { &ud[..6] });
        self.end(m);
        self.elems(table, name, Some(id), e, ElemOp::Add);
    }

    /// DELSET.
    pub(super) fn del_set(&mut self, table: &str, name: &str) {
        self.table_and_name(
            NFT_MSG_DELSET,
            (NFTA_SET_TABLE, table),
            (NFTA_SET_NAME, name),
        );
    }

    /// A DELSETELEM without an element list: the kernel flushes the set.
    pub(super) fn flush_set(&mut self, table: &str, name: &str) {
        self.table_and_name(
            NFT_MSG_DELSETELEM,
            (NFTA_SET_ELEM_LIST_TABLE, table),
            (NFTA_SET_ELEM_LIST_SET, name),
        );
    }

    /// Adds or removes the elements `e` of an existing set.
    pub(super) fn set_elems(&mut self, table: &str, name: &str, e: &SetElems, op: ElemOp) {
        self.elems(table, name, None, e, op);
    }

    fn elems_begin(&mut self, table: &str, set: &str, id: Option<u32>, op: ElemOp) -> (Mark, Mark) {
        let m = match op {
            ElemOp::Add => self.begin(NFT_MSG_NEWSETELEM, NLM_F_CREATE),
            ElemOp::Del => self.begin(NFT_MSG_DELSETELEM, 0),
        };
        self.strz(NFTA_SET_ELEM_LIST_SET, set);
        if let Some(id) = id {
            self.be32(NFTA_SET_ELEM_LIST_SET_ID, id);
        }
        self.strz(NFTA_SET_ELEM_LIST_TABLE, table);
        (m, self.nest(NFTA_SET_ELEM_LIST_ELEMENTS))
    }

    /// NEWSETELEM/DELSETELEM messages holding `e`, as many as needed: an
    /// element list is one attribute, whose length is 16 bits.
    fn elems(&mut self, table: &str, set: &str, id: Option<u32>, e: &SetElems, op: ElemOp) {
        if e.is_empty() {
            return;
        }
        let mut w = ElemWriter {
            enc: self,
            table,
            set,
            id,
            op,
            open: None,
            index: 0,
        };
        for_each_elem(e, |key, flags, goto| w.push(key, flags, goto));
        w.close();
    }

    fn elem(&mut self, index: u16, key: &[u8], flags: u32, goto: Option<&str>) {
        let n = self.nest(index);
        if flags != 0 {
            self.be32(NFTA_SET_ELEM_FLAGS, flags);
        }
        self.data_value(NFTA_SET_ELEM_KEY, key);
        if let Some(chain) = goto {
            let d = self.nest(NFTA_SET_ELEM_DATA);
            let v = self.nest(NFTA_DATA_VERDICT);
            self.be32(NFTA_VERDICT_CODE, NFT_GOTO as u32);
            self.strz(NFTA_VERDICT_CHAIN, chain);
            self.nest_end(v);
            self.nest_end(d);
        }
        self.nest_end(n);
    }
}

/// Writes elements into element messages, starting a new message when the
/// element list attribute would overflow its 16-bit length.
struct ElemWriter<'e, 's> {
    enc: &'e mut Encoder,
    table: &'s str,
    set: &'s str,
    id: Option<u32>,
    op: ElemOp,
    open: Option<(Mark, Mark)>,
    index: u16,
}

impl ElemWriter<'_, '_> {
    fn push(&mut self, key: &[u8], flags: u32, goto: Option<&str>) {
        let (_, list) = match self.open {
            Some(o) => o,
            None => self.reopen(),
        };
        let at = self.enc.w.len();
        self.index += 1;
        self.enc.elem(self.index, key, flags, goto);
        if self.enc.w.len() - list.offset() > usize::from(u16::MAX) {
            // Too long for this message: drop it here and start the next with it.
            self.enc.w.bytes_mut().truncate(at);
            self.close();
            self.reopen();
            self.index = 1;
            self.enc.elem(1, key, flags, goto);
        }
    }

    fn reopen(&mut self) -> (Mark, Mark) {
        let o = self.enc.elems_begin(self.table, self.set, self.id, self.op);
        self.open = Some(o);
        self.index = 0;
        o
    }

    fn close(&mut self) {
        if let Some((m, list)) = self.open.take() {
            self.enc.nest_end(list);
            self.enc.end(m);
        }
    }
}

/// Calls `f(key, flags, goto)` for each element of `e` as the kernel stores it:
/// keys in network byte order (ifnames padded to IFNAMSIZ), interval sets as
/// start keys and exclusive end keys (flagged), maps with their goto chains.
fn for_each_elem(e: &SetElems, mut f: impl FnMut(&[u8], u32, Option<&str>)) {
    match e {
        SetElems::Addr4(s) => s.iter().for_each(|a| f(&a.octets(), 0, None)),
        SetElems::Addr6(s) => s.iter().for_each(|a| f(&a.octets(), 0, None)),
        SetElems::Net4(s) => intervals(&v4_ranges(s), u32::to_be_bytes, |x| x.checked_add(1), f),
        SetElems::Net6(s) => intervals(&v6_ranges(s), u128::to_be_bytes, |x| x.checked_add(1), f),
        SetElems::Ports(s) => intervals(&port_ranges(s), u16::to_be_bytes, |x| x.checked_add(1), f),
        SetElems::AddrProtoPort4(s) => {
            for (a, p, n) in s {
                // Concatenated keys: each field padded to 32 bits.
                let mut k = [0u8; 12];
                k[..4].copy_from_slice(&a.octets());
                k[4] = *p;
                k[8..10].copy_from_slice(&n.to_be_bytes());
                f(&k, 0, None);
            }
        }
        SetElems::AddrProtoPort6(s) => {
            for (a, p, n) in s {
                let mut k = [0u8; 24];
                k[..16].copy_from_slice(&a.octets());
                k[16] = *p;
                k[20..22].copy_from_slice(&n.to_be_bytes());
                f(&k, 0, None);
            }
        }
        SetElems::IfGoto(m) => {
            for (ifname, chain) in m {
                let mut k = [0u8; IFNAMSIZ];
                let n = ifname.len().min(IFNAMSIZ);
                k[..n].copy_from_slice(&ifname.as_bytes()[..n]);
                f(&k, 0, Some(chain));
            }
        }
    }
}

/// Interval-set elements for inclusive ranges of an integer key type: each
/// range becomes a start key and an exclusive end key (none past the maximum).
fn intervals<T: Copy, const N: usize>(
    ranges: &[(T, T)],
    to_be: fn(T) -> [u8; N],
    successor: fn(T) -> Option<T>,
    mut f: impl FnMut(&[u8], u32, Option<&str>),
) {
    // nft opens every interval set with a "0 end" element; do the same so both
    // backends leave identical sets.
    if ranges.first().is_some_and(|&(a, _)| to_be(a) != [0; N]) {
        f(&[0; N], NFT_SET_ELEM_INTERVAL_END, None);
    }
    for &(start, end) in ranges {
        f(&to_be(start), 0, None);
        if let Some(e) = successor(end) {
            f(&to_be(e), NFT_SET_ELEM_INTERVAL_END, None);
        }
    }
}

/// Key type, key length, flags of a set.
pub(super) fn set_shape(e: &SetElems) -> (u32, u32, u32) {
    let concat =
        |a: u32| (((a << TYPE_BITS) | TYPE_INET_PROTOCOL) << TYPE_BITS) | TYPE_INET_SERVICE;
    match e {
        SetElems::Addr4(_) => (TYPE_IPADDR, 4, 0),
        SetElems::Addr6(_) => (TYPE_IP6ADDR, 16, 0),
        SetElems::Net4(_) => (TYPE_IPADDR, 4, NFT_SET_INTERVAL),
        SetElems::Net6(_) => (TYPE_IP6ADDR, 16, NFT_SET_INTERVAL),
        SetElems::Ports(_) => (TYPE_INET_SERVICE, 2, NFT_SET_INTERVAL),
        SetElems::AddrProtoPort4(_) => (concat(TYPE_IPADDR), 12, 0),
        SetElems::AddrProtoPort6(_) => (concat(TYPE_IP6ADDR), 24, 0),
        SetElems::IfGoto(_) => (TYPE_IFNAME, IFNAMSIZ as u32, NFT_SET_MAP),
    }
}

/// The NUL check the writer applies to names (tested here too).
#[cfg(test)]
pub(super) use calinet_netlink::message::has_nul;

fn op(negate: bool) -> u32 {
    if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ }
}

fn if_key(dir: IfDir) -> u32 {
    match dir {
        IfDir::In => NFT_META_IIFNAME,
        IfDir::Out => NFT_META_OIFNAME,
    }
}

pub(super) fn addr_offset(side: Side, family: Family) -> (u32, u32) {
    match (family, side) {
        (Family::V4, Side::Src) => (12, 4),
        (Family::V4, Side::Dst) => (16, 4),
        (Family::V6, Side::Src) => (8, 16),
        (Family::V6, Side::Dst) => (24, 16),
    }
}

/// A prefix match the way nft compiles it: a prefix ending on a byte boundary
/// loads just its bytes and compares; any other loads the whole address and
/// masks it first.
struct PrefixLoad {
    offset: u32,
    len: u32,
    mask: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl PrefixLoad {
    fn new(side: Side, net: &IpNet) -> PrefixLoad {
        let (family, network, netmask) = match net {
            IpNet::V4(n) => (
                Family::V4,
                n.network().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
            IpNet::V6(n) => (
                Family::V6,
                n.network().octets().to_vec(),
                n.netmask().octets().to_vec(),
            ),
        };
        let (offset, full) = addr_offset(side, family);
        let bits = u32::from(net.prefix_len());
        if bits.is_multiple_of(8) && bits > 0 {
            let len = bits / 8;
            PrefixLoad {
                offset,
                len,
                mask: None,
                value: network[..len as usize].to_vec(),
            }
        } else {
            PrefixLoad {
                offset,
                len: full,
                mask: Some(netmask),
                value: network,
            }
        }
    }
}

pub(super) fn port_offset(side: Side) -> u32 {
    match side {
        Side::Src => 0,
        Side::Dst => 2,
    }
}

/// Rough encoded size of a rule (headers, names, ~8 expressions), to size
/// the buffer once.
pub(super) const RULE_BYTES: usize = 400;
/// Rough encoded size of a set element.
pub(super) const ELEM_BYTES: usize = 64;
/// Rough encoded size of a chain or set header message.
pub(super) const OBJECT_BYTES: usize = 160;
