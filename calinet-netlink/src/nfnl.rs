//! nfnetlink framing: the `struct nfgenmsg` family header and the batch
//! begin/end messages that make a list of nf_tables messages one transaction.
#![forbid(unsafe_code)]

use crate::consts::{NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NLM_F_ACK, NLM_F_REQUEST};
use crate::message::Writer;

/// `struct nfgenmsg`: family, version `NFNETLINK_V0`, resource id (big endian).
#[inline]
pub fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

/// Writes `NFNL_MSG_BATCH_BEGIN` for `subsys` (e.g. `NFNL_SUBSYS_NFTABLES`).
pub fn batch_begin(w: &mut Writer, seq: u32, subsys: u16) {
    let m = w.begin_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq);
    w.family_header(&nfgenmsg(0, subsys));
    w.end_message(m);
}

/// Writes `NFNL_MSG_BATCH_END` for `subsys`, with `NLM_F_ACK`: its
/// acknowledgement comes after the answers to every message of the batch
/// (see [`crate::Acks::until`]).
pub fn batch_end(w: &mut Writer, seq: u32, subsys: u16) {
    let m = w.begin_message(NFNL_MSG_BATCH_END, NLM_F_REQUEST | NLM_F_ACK, seq);
    w.family_header(&nfgenmsg(0, subsys));
    w.end_message(m);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::NFNL_SUBSYS_NFTABLES;
    use crate::message::messages;

    #[test]
    fn batch_markers_match_libnftnl() {
        let mut w = Writer::new();
        batch_begin(&mut w, 1, NFNL_SUBSYS_NFTABLES);
        batch_end(&mut w, 2, NFNL_SUBSYS_NFTABLES);
        let b = w.finish().unwrap();
        // libnftnl's nftnl_batch_begin: len 20, type 0x10, flags REQUEST, seq,
        // port 0, nfgenmsg AF_UNSPEC / v0 / res_id 10 big endian.
        #[cfg(target_endian = "little")]
        assert_eq!(
            &b[..20],
            &[
                20, 0, 0, 0, 0x10, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10
            ]
        );
        let m: Vec<_> = messages(&b).map(|m| m.unwrap()).collect();
        assert_eq!((m[1].ty, m[1].flags, m[1].seq), (NFNL_MSG_BATCH_END, 5, 2));
    }
}
