//! The generic netlink (WireGuard) encoder's view of calinet-netlink's
//! framing: a message builder, and readers whose errors name the device.

use calinet_netlink::{Mark, Writer};

use crate::error::{Error, Result};

pub(crate) use calinet_netlink::attr_size as nla;
pub(crate) use calinet_netlink::consts::{NLA_HDRLEN, NLMSG_HDRLEN};

/// One netlink message being built: header, family header, attributes.
pub(crate) struct Msg {
    w: Writer,
    m: Mark,
}

impl Msg {
    pub(crate) fn new(ty: u16, flags: u16, seq: u32, family_header: &[u8]) -> Self {
        let mut w = Writer::with_buffer(Vec::new(), 256);
        let m = w.begin_message(ty, flags, seq);
        w.family_header(family_header);
        Self { w, m }
    }
    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) {
        self.w.attr(ty, payload);
    }
    pub(crate) fn begin(&mut self, ty: u16) -> Mark {
        self.w.begin_nested(ty)
    }
    pub(crate) fn end(&mut self, at: Mark) {
        self.w.end_nested(at);
    }
    /// The message. Its size is bounded by the split budget (peers and
    /// allowed IPs are split so every message fits it), far below netlink's
    /// 16-bit attribute lengths, so the writer has nothing to refuse.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.w.end_message(self.m);
        debug_assert!(self.w.invalid().is_none(), "{:?}", self.w.invalid());
        std::mem::take(self.w.bytes_mut())
    }
}

/// One parsed netlink message.
pub type RawMessage<'a> = calinet_netlink::Message<'a>;

pub(crate) fn malformed(ifname: &str, reason: impl Into<String>) -> Error {
    Error::NetlinkMalformed {
        ifname: ifname.to_owned(),
        reason: reason.into(),
    }
}

/// Split a buffer into netlink messages.
pub fn messages<'a>(ifname: &str, buf: &'a [u8]) -> Result<Vec<RawMessage<'a>>> {
    calinet_netlink::messages(buf)
        .collect::<calinet_netlink::Result<_>>()
        .map_err(|e| malformed(ifname, e.to_string()))
}

/// Attributes `(type without flags, payload)` of a TLV area.
pub fn attributes<'a>(ifname: &str, buf: &'a [u8]) -> Result<Vec<(u16, &'a [u8])>> {
    calinet_netlink::attributes(buf)
        .map(|a| a.map(|a| (a.ty, a.payload)))
        .collect::<calinet_netlink::Result<_>>()
        .map_err(|e| malformed(ifname, e.to_string()))
}

/// The errno of an `NLMSG_ERROR` message (0 for an ACK).
pub(crate) fn ack_errno(ifname: &str, msg: &RawMessage<'_>) -> Result<i32> {
    calinet_netlink::parse_error(msg.flags, msg.payload)
        .map(|e| e.errno)
        .map_err(|e| malformed(ifname, e.to_string()))
}
