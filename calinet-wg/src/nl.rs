//! Minimal netlink TLV building and parsing shared by the generic netlink
//! (WireGuard) and rtnetlink (fwmark rule) encoders.

use crate::error::{Error, Result};

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLA_HDRLEN: usize = 4;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Size of an attribute with `payload` bytes, padding included.
pub(crate) const fn nla(payload: usize) -> usize {
    NLA_HDRLEN + align4(payload)
}

/// A netlink message being built: header, family header, attributes.
pub(crate) struct Msg(Vec<u8>);

impl Msg {
    pub(crate) fn new(ty: u16, flags: u16, seq: u32, family_header: &[u8]) -> Self {
        let mut b = Vec::with_capacity(256);
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(family_header);
        b.resize(align4(b.len()), 0);
        Self(b)
    }
    pub(crate) fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = (NLA_HDRLEN + payload.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(align4(self.0.len()), 0);
    }
    pub(crate) fn begin(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }
    pub(crate) fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// One parsed netlink message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

pub(crate) fn malformed(ifname: &str, reason: impl Into<String>) -> Error {
    Error::NetlinkMalformed {
        ifname: ifname.to_owned(),
        reason: reason.into(),
    }
}

/// Split a buffer into netlink messages.
pub fn messages<'a>(ifname: &str, mut buf: &'a [u8]) -> Result<Vec<RawMessage<'a>>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(malformed(
                ifname,
                format!("netlink message length {len} out of range"),
            ));
        }
        out.push(RawMessage {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// Attributes `(type without flags, payload)` of a TLV area.
pub fn attributes<'a>(ifname: &str, mut buf: &'a [u8]) -> Result<Vec<(u16, &'a [u8])>> {
    let mut out = Vec::new();
    while buf.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < NLA_HDRLEN || len > buf.len() {
            return Err(malformed(
                ifname,
                format!("attribute {ty} length {len} out of range"),
            ));
        }
        out.push((ty, &buf[NLA_HDRLEN..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` message (0 for an ACK).
pub(crate) fn ack_errno(ifname: &str, msg: &RawMessage<'_>) -> Result<i32> {
    msg.payload
        .get(0..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| malformed(ifname, "short NLMSG_ERROR"))
}
