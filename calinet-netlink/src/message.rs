//! Writing and reading netlink messages and their attributes, without a socket.
//!
//! [`Writer`] appends messages to one buffer: a header whose length is patched
//! when the message ends, a family header, then TLV attributes padded to four
//! bytes, nested attributes patched the same way. An attribute too long for
//! netlink's 16-bit length is not wrapped: the writer remembers the first such
//! problem and [`Writer::finish`] refuses the buffer.
//!
//! [`messages`] splits a received buffer into [`Message`]s and [`attributes`]
//! splits an attribute area into [`Attr`]s, both checking every length.
#![forbid(unsafe_code)]

use crate::consts::{NLA_F_NESTED, NLA_HDRLEN, NLA_TYPE_MASK, NLMSG_HDRLEN};
use crate::error::{Error, Result};

/// `n` rounded up to netlink's four-byte alignment.
#[inline]
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes an attribute with `payload` bytes takes, header and padding included.
#[inline]
pub const fn attr_size(payload: usize) -> usize {
    NLA_HDRLEN + align4(payload)
}

/// Where a message or a nested attribute starts, to patch its length when it
/// ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark(usize);

impl Mark {
    /// Offset of the message or attribute in the writer's buffer.
    pub fn offset(self) -> usize {
        self.0
    }
}

/// Builds netlink messages into one buffer (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    invalid: Option<String>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// A writer that appends to `buf` after clearing it (its allocation is
    /// reused), with room for `capacity` bytes reserved.
    pub fn with_buffer(mut buf: Vec<u8>, capacity: usize) -> Self {
        buf.clear();
        buf.reserve(capacity);
        Writer { buf, invalid: None }
    }

    /// Starts a message: `struct nlmsghdr` with `ty`, `flags` and `seq` (port id
    /// 0, the length patched by [`Writer::end_message`]).
    #[inline]
    pub fn begin_message(&mut self, ty: u16, flags: u16, seq: u32) -> Mark {
        let m = Mark(self.buf.len());
        let mut h = [0u8; NLMSG_HDRLEN];
        h[4..6].copy_from_slice(&ty.to_ne_bytes());
        h[6..8].copy_from_slice(&flags.to_ne_bytes());
        h[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&h);
        m
    }

    /// Appends a family header (`struct rtmsg`, `struct nfgenmsg`, ...), padded.
    #[inline]
    pub fn family_header(&mut self, header: &[u8]) {
        self.buf.extend_from_slice(header);
        self.pad();
    }

    /// Ends the message started at `m`: patches its 32-bit length.
    #[inline]
    pub fn end_message(&mut self, m: Mark) {
        let len = (self.buf.len() - m.0) as u32;
        self.buf[m.0..m.0 + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Appends an attribute header for a payload of `payload_len` bytes; the
    /// caller writes the payload (through [`Writer::bytes_mut`]) and calls
    /// [`Writer::pad`].
    #[inline]
    pub fn attr_header(&mut self, ty: u16, payload_len: usize) {
        let Ok(len) = u16::try_from(NLA_HDRLEN + payload_len) else {
            self.refuse(|| {
                format!("an attribute of {payload_len} bytes does not fit netlink's 16-bit length")
            });
            self.buf.extend_from_slice(&[0; NLA_HDRLEN]);
            return;
        };
        let mut h = [0u8; NLA_HDRLEN];
        h[..2].copy_from_slice(&len.to_ne_bytes());
        h[2..].copy_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&h);
    }

    /// Zero bytes up to the next four-byte boundary.
    #[inline]
    pub fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend_from_slice(&[0u8; 3][..n]);
    }

    /// An attribute with `data` as payload.
    #[inline]
    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        self.attr_header(ty, data.len());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// A `u8` attribute.
    pub fn attr_u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }

    /// A `u16` attribute in host byte order.
    pub fn attr_u16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// A `u32` attribute in host byte order.
    #[inline]
    pub fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// A `u32` attribute in network byte order (nfnetlink's convention).
    #[inline]
    pub fn attr_be32(&mut self, ty: u16, v: u32) {
        let mut a = [0u8; 8];
        a[..2].copy_from_slice(&8u16.to_ne_bytes());
        a[2..4].copy_from_slice(&ty.to_ne_bytes());
        a[4..].copy_from_slice(&v.to_be_bytes());
        self.buf.extend_from_slice(&a);
    }

    /// A `u64` attribute in network byte order.
    pub fn attr_be64(&mut self, ty: u16, v: u64) {
        self.attr(ty, &v.to_be_bytes());
    }

    /// A NUL-terminated string attribute. A string holding a NUL byte would be
    /// read as a different string by the kernel: the writer refuses it.
    #[inline]
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let b = s.as_bytes();
        if has_nul(b) {
            self.refuse(|| format!("name {s:?} holds a NUL byte"));
        }
        self.attr_header(ty, b.len() + 1);
        self.buf.extend_from_slice(b);
        self.buf.push(0);
        self.pad();
    }

    /// Starts a nested attribute (`NLA_F_NESTED` is set on `ty`).
    #[inline]
    pub fn begin_nested(&mut self, ty: u16) -> Mark {
        let m = Mark(self.buf.len());
        self.attr_header(ty | NLA_F_NESTED, 0);
        m
    }

    /// Ends the nested attribute started at `m`: patches its 16-bit length.
    #[inline]
    pub fn end_nested(&mut self, m: Mark) {
        let n = self.buf.len() - m.0;
        let Ok(len) = u16::try_from(n) else {
            return self.refuse(|| {
                format!("a nested attribute of {n} bytes does not fit netlink's 16-bit length")
            });
        };
        self.buf[m.0..m.0 + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Records why the buffer must not be sent (the first reason is kept);
    /// [`Writer::finish`] returns it.
    pub fn refuse(&mut self, why: impl FnOnce() -> String) {
        if self.invalid.is_none() {
            self.invalid = Some(why());
        }
    }

    /// Why the buffer must not be sent, if anything.
    pub fn invalid(&self) -> Option<&str> {
        self.invalid.as_deref()
    }

    /// The raw buffer, for payloads written in place.
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The finished buffer, or an [`Error::Encode`] naming the first problem.
    pub fn finish(self) -> Result<Vec<u8>> {
        match self.invalid {
            Some(reason) => Err(Error::Encode { reason }),
            None => Ok(self.buf),
        }
    }
}

/// Whether `b` holds a NUL byte, eight bytes at a time: names are short, and
/// a `memchr` call per string was a tenth of an nf_tables batch build.
#[inline]
pub fn has_nul(b: &[u8]) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let v = u64::from_ne_bytes(a);
        // Sets the high bit of a byte that was zero (and only then, if no
        // earlier byte was).
        if v.wrapping_sub(LOW) & !v & HIGH != 0 {
            return true;
        }
    }
    words.remainder().contains(&0)
}

/// One received netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub ty: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub port: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

#[inline]
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Iterator over the messages of a buffer (see [`messages`]).
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.buf;
        if self.failed || self.at + NLMSG_HDRLEN > b.len() {
            return None;
        }
        let at = self.at;
        let len = u32_at(b, at) as usize;
        if len < NLMSG_HDRLEN || len > b.len() - at {
            self.failed = true;
            return Some(Err(Error::Malformed {
                context: "netlink message header".into(),
                reason: format!(
                    "message length {len} at offset {at} of a {}-byte buffer",
                    b.len()
                ),
            }));
        }
        self.at = (at + align4(len)).min(b.len());
        Some(Ok(Message {
            ty: u16_at(b, at + 4),
            flags: u16_at(b, at + 6),
            seq: u32_at(b, at + 8),
            port: u32_at(b, at + 12),
            payload: &b[at + NLMSG_HDRLEN..at + len],
        }))
    }
}

/// The messages of a received buffer. A length that does not fit the buffer
/// yields one [`Error::Malformed`] and ends the iteration.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages {
        buf,
        at: 0,
        failed: false,
    }
}

/// One attribute: its number (flags masked off), whether it was flagged
/// nested, and its payload (padding excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr<'a> {
    /// Attribute number without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`.
    pub ty: u16,
    /// Whether `NLA_F_NESTED` was set.
    pub nested: bool,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    fn short(&self, want: usize) -> Error {
        Error::Malformed {
            context: format!("attribute {}", self.ty),
            reason: format!("payload of {} bytes, {want} expected", self.payload.len()),
        }
    }

    /// The payload as a host-order `u8`.
    pub fn u8(&self) -> Result<u8> {
        self.payload.first().copied().ok_or_else(|| self.short(1))
    }

    /// The payload as a host-order `u16`.
    pub fn u16(&self) -> Result<u16> {
        let b: [u8; 2] = self
            .payload
            .get(..2)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.short(2))?;
        Ok(u16::from_ne_bytes(b))
    }

    /// The payload as a host-order `u32`.
    pub fn u32(&self) -> Result<u32> {
        let b: [u8; 4] = self
            .payload
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| self.short(4))?;
        Ok(u32::from_ne_bytes(b))
    }

    /// The payload as a network-order `u32`.
    pub fn be32(&self) -> Result<u32> {
        self.u32().map(u32::from_be)
    }

    /// The payload as a string, up to its NUL.
    pub fn str(&self) -> Result<&'a str> {
        let end = self
            .payload
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end]).map_err(|e| Error::Malformed {
            context: format!("attribute {}", self.ty),
            reason: format!("string is not UTF-8: {e}"),
        })
    }

    /// The attributes nested in this one.
    pub fn nested_attrs(&self) -> Attrs<'a> {
        attributes(self.payload)
    }
}

/// Iterator over an attribute area (see [`attributes`]).
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.buf;
        if self.failed || self.at + NLA_HDRLEN > b.len() {
            return None;
        }
        let at = self.at;
        let len = u16_at(b, at) as usize;
        let raw = u16_at(b, at + 2);
        if len < NLA_HDRLEN || len > b.len() - at {
            self.failed = true;
            return Some(Err(Error::Malformed {
                context: format!("attribute {}", raw & NLA_TYPE_MASK),
                reason: format!("length {len} at offset {at} of a {}-byte area", b.len()),
            }));
        }
        self.at = (at + align4(len)).min(b.len());
        Some(Ok(Attr {
            ty: raw & NLA_TYPE_MASK,
            nested: raw & NLA_F_NESTED != 0,
            payload: &b[at + NLA_HDRLEN..at + len],
        }))
    }
}

/// The attributes of an attribute area (a message payload after its family
/// header, or a nested attribute's payload). A length that does not fit
/// yields one [`Error::Malformed`] and ends the iteration.
pub fn attributes(buf: &[u8]) -> Attrs<'_> {
    Attrs {
        buf,
        at: 0,
        failed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::*;

    #[test]
    fn message_with_nested_attributes_round_trips() {
        let mut w = Writer::new();
        let m = w.begin_message(RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK, 42);
        w.family_header(&[2, 0, 0]); // padded to 4
        w.attr_u32(6, 99);
        w.attr_str(3, "eth0");
        let n = w.begin_nested(9);
        w.attr_u8(1, 7);
        w.attr_be32(2, 0x0102_0304);
        w.end_nested(n);
        w.end_message(m);
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let msgs: Vec<_> = messages(&bytes).collect::<Result<_>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let msg = msgs[0];
        assert_eq!((msg.ty, msg.flags, msg.seq), (RTM_NEWRULE, 5, 42));
        assert_eq!(&msg.payload[..4], &[2, 0, 0, 0]);
        let attrs: Vec<_> = attributes(&msg.payload[4..])
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(attrs.len(), 3);
        assert_eq!((attrs[0].ty, attrs[0].u32().unwrap()), (6, 99));
        assert_eq!(attrs[1].str().unwrap(), "eth0");
        assert_eq!(attrs[1].payload, b"eth0\0");
        assert!(attrs[2].nested && attrs[2].ty == 9);
        let inner: Vec<_> = attrs[2].nested_attrs().collect::<Result<_>>().unwrap();
        assert_eq!(inner[0].u8().unwrap(), 7);
        assert_eq!(inner[1].be32().unwrap(), 0x0102_0304);
        // Header length of the nest covers both inner attributes, padding included.
        assert_eq!(attrs[2].payload.len(), attr_size(1) + attr_size(4));
    }

    #[test]
    fn lengths_that_do_not_fit_are_errors_not_panics() {
        let mut w = Writer::new();
        let m = w.begin_message(NLMSG_NOOP, 0, 1);
        w.end_message(m);
        let mut bytes = w.finish().unwrap();
        bytes[0] = 200;
        let mut it = messages(&bytes);
        let err = it.next().unwrap().unwrap_err().to_string();
        assert!(err.contains("message length 200"), "{err}");
        assert!(it.next().is_none());
        let bad_attr = [40u8, 0, 1, 0, 0, 0, 0, 0];
        assert!(attributes(&bad_attr).next().unwrap().is_err());
        // Truncated trailing bytes shorter than a header are ignored.
        assert_eq!(attributes(&[1, 2]).count(), 0);
        let a = Attr {
            ty: 3,
            nested: false,
            payload: &[1],
        };
        assert!(a.u32().unwrap_err().to_string().contains("attribute 3"));
    }

    #[test]
    fn nul_bytes_are_found_anywhere() {
        for len in 0..40 {
            let clean = vec![b'x'; len];
            assert!(!has_nul(&clean), "{len}");
            for at in 0..len {
                let mut b = clean.clone();
                b[at] = 0;
                assert!(has_nul(&b), "{len} {at}");
            }
        }
        // High bytes (UTF-8) next to zeros are not confused for them.
        assert!(!has_nul("ééééé".as_bytes()));
    }

    #[test]
    fn oversized_and_nul_inputs_are_refused_with_the_rule() {
        let mut w = Writer::new();
        w.attr(1, &vec![0u8; 70_000]);
        let e = w.finish().unwrap_err().to_string();
        assert!(
            e.contains("70000 bytes does not fit netlink's 16-bit length"),
            "{e}"
        );

        let mut w = Writer::new();
        let n = w.begin_nested(1);
        for _ in 0..20 {
            w.attr(2, &[0u8; 4000]);
        }
        w.end_nested(n);
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("a nested attribute of"), "{e}");

        let mut w = Writer::new();
        w.attr_str(1, "a\0b");
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains(r#"name "a\0b" holds a NUL byte"#), "{e}");
    }
}
