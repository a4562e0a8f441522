//! Kernel answers: `NLMSG_ERROR` parsing, the errno of a rejected request
//! ([`Nack`]), and [`Acks`], which matches the answers to a batch of requests
//! back to the request each one is about, by sequence number.
#![forbid(unsafe_code)]

use crate::consts::{NLMSG_ERROR, NLMSG_HDRLEN, NLMSGERR_ATTR_MSG};
use crate::error::{Error, Result};
use crate::message::{align4, attributes, messages};

/// `NLM_F_CAPPED` on an `NLMSG_ERROR`: only the request's header is echoed.
const NLM_F_CAPPED: u16 = 0x100;

/// The kernel's rejection of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// Positive errno.
    pub errno: i32,
    /// The extended-ack message, if the kernel gave one.
    pub message: Option<String>,
}

impl Nack {
    /// A rejection with `errno` (positive) and an optional kernel message.
    pub fn new(errno: i32, message: Option<String>) -> Self {
        Nack { errno, message }
    }

    /// `strerror` plus the kernel's extended message.
    pub fn describe(&self) -> String {
        let base = std::io::Error::from_raw_os_error(self.errno).to_string();
        match &self.message {
            Some(m) => format!("{base}: {m}"),
            None => base,
        }
    }

    /// The error for this rejection of `request` (described for a person), as
    /// an [`Error::Kernel`] or any error type that converts from [`Error`].
    pub fn into_error<E: From<Error>>(self, request: impl Into<String>) -> E {
        E::from(Error::Kernel {
            request: request.into(),
            errno: self.errno,
            message: self.describe(),
        })
    }
}

/// A parsed `NLMSG_ERROR` payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// Positive errno; 0 is an acknowledgement.
    pub errno: i32,
    /// Type of the request it answers (from the echoed header).
    pub request_type: u16,
    /// Sequence number of the request it answers (from the echoed header).
    pub request_seq: u32,
    /// The extended-ack message (`NLMSGERR_ATTR_MSG`), if any.
    pub message: Option<String>,
}

impl ErrorMessage {
    /// The rejection, or `None` for an acknowledgement.
    pub fn nack(&self) -> Option<Nack> {
        (self.errno != 0).then(|| Nack::new(self.errno, self.message.clone()))
    }
}

/// Parses the payload of an `NLMSG_ERROR` message whose header had `flags`:
/// the error code, the echoed request header (the whole request unless
/// `NLM_F_CAPPED`), then extended-ack attributes.
pub fn parse_error(flags: u16, payload: &[u8]) -> Result<ErrorMessage> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return Err(Error::Malformed {
            context: "NLMSG_ERROR".into(),
            reason: format!(
                "{} bytes, at least {} expected",
                payload.len(),
                4 + NLMSG_HDRLEN
            ),
        });
    }
    let code = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let orig_len = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
    let request_type = u16::from_ne_bytes([payload[8], payload[9]]);
    let request_seq = u32::from_ne_bytes([payload[12], payload[13], payload[14], payload[15]]);
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        orig_len.max(NLMSG_HDRLEN)
    };
    let mut message = None;
    if let Some(tlvs) = payload.get(4 + align4(echoed)..) {
        // The TLVs are advisory: a malformed one does not hide the errno.
        for a in attributes(tlvs).map_while(|a| a.ok()) {
            if a.ty == NLMSGERR_ATTR_MSG {
                message = a.str().ok().map(str::to_owned);
            }
        }
    }
    Ok(ErrorMessage {
        errno: code.saturating_neg(),
        request_type,
        request_seq,
        message,
    })
}

/// Matches the answers to a batch of requests with consecutive sequence
/// numbers `first, first + 1, ...` (wrapping) back to their index.
///
/// A batch is complete when the acknowledgement of its closing message
/// arrives ([`Acks::until`]: an `NLMSG_NOOP` or nfnetlink batch end sent with
/// `NLM_F_ACK`, which the kernel answers after every request before it), or,
/// without one, when every request was answered (each sent with `NLM_F_ACK`).
///
/// ```
/// use calinet_netlink::{Acks, Writer, consts::*};
///
/// // The kernel's answer to request 2 of a batch of three (seq 10, 11, 12)
/// // closed by a NOOP with seq 13: ENODEV for seq 12, then the NOOP's ack.
/// let mut answer = Writer::new();
/// for (seq, code) in [(12u32, -libc::ENODEV), (13, 0)] {
///     let m = answer.begin_message(NLMSG_ERROR, 0x100, seq); // capped
///     answer.family_header(&code.to_ne_bytes());
///     let echoed = answer.begin_message(RTM_NEWRULE, NLM_F_REQUEST, seq);
///     answer.end_message(echoed);
///     answer.end_message(m);
/// }
/// let mut acks = Acks::new(10, 3).until(13);
/// acks.feed(answer.bytes()).unwrap();
/// assert!(acks.is_complete());
/// assert_eq!(acks.results()[2].as_ref().unwrap().errno, libc::ENODEV);
/// assert!(acks.results()[0].is_none() && acks.results()[1].is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Acks {
    first: u32,
    results: Vec<Option<Nack>>,
    answered: Vec<bool>,
    unanswered: usize,
    until: Option<u32>,
    closing: Option<Nack>,
    complete: bool,
    failures: usize,
}

impl Acks {
    /// Expects answers for `count` requests numbered from `first`.
    pub fn new(first: u32, count: usize) -> Self {
        Acks {
            first,
            results: vec![None; count],
            answered: vec![false; count],
            unanswered: count,
            until: None,
            closing: None,
            complete: count == 0,
            failures: 0,
        }
    }

    /// Completes the batch when the message numbered `seq` is acknowledged
    /// (its own rejection is kept in [`Acks::closing`]).
    pub fn until(mut self, seq: u32) -> Self {
        self.until = Some(seq);
        self.complete = false;
        self
    }

    /// Takes in one received datagram. Messages of other sequence numbers
    /// (leftovers of earlier requests) are ignored.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<()> {
        for msg in messages(datagram) {
            let msg = msg?;
            if msg.ty != NLMSG_ERROR {
                continue;
            }
            let e = parse_error(msg.flags, msg.payload)?;
            // The outer header carries the request's sequence number; it is
            // the same as the echoed one for rtnetlink, nfnetlink and genl.
            let seq = msg.seq;
            if Some(seq) == self.until {
                self.closing = e.nack();
                self.complete = true;
                continue;
            }
            let idx = seq.wrapping_sub(self.first) as usize;
            let Some(slot) = self.results.get_mut(idx) else {
                continue;
            };
            if let Some(n) = e.nack() {
                if slot.is_none() {
                    self.failures += 1;
                }
                *slot = Some(n);
            }
            if !self.answered[idx] {
                self.answered[idx] = true;
                self.unanswered -= 1;
            }
            if self.until.is_none() && self.unanswered == 0 {
                self.complete = true;
            }
        }
        Ok(())
    }

    /// Whether every answer the batch will get has arrived.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// How many requests were rejected so far.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Per request, in order: `None` when accepted (or not answered), else the
    /// rejection.
    pub fn results(&self) -> &[Option<Nack>] {
        &self.results
    }

    /// The per-request results.
    pub fn into_results(self) -> Vec<Option<Nack>> {
        self.results
    }

    /// The first rejected request: its index and the rejection.
    pub fn first_failure(&self) -> Option<(usize, &Nack)> {
        self.results
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().map(|n| (i, n)))
    }

    /// The rejection of the closing message, if it was rejected.
    pub fn closing(&self) -> Option<&Nack> {
        self.closing.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::*;
    use crate::message::Writer;

    /// An `NLMSG_ERROR` as the kernel sends it with `NETLINK_CAP_ACK` and
    /// `NETLINK_EXT_ACK`: code, the request header, then `NLMSGERR_ATTR_MSG`.
    fn error(w: &mut Writer, seq: u32, errno: i32, text: Option<&str>) {
        let m = w.begin_message(
            NLMSG_ERROR,
            NLM_F_CAPPED | if text.is_some() { 0x200 } else { 0 },
            seq,
        );
        w.family_header(&(-errno).to_ne_bytes());
        let echoed = w.begin_message(RTM_NEWRULE, NLM_F_REQUEST, seq);
        w.bytes_mut()[echoed.offset()..echoed.offset() + 4].copy_from_slice(&60u32.to_ne_bytes());
        if let Some(t) = text {
            w.attr_str(NLMSGERR_ATTR_MSG, t);
        }
        w.end_message(m);
    }

    #[test]
    fn parses_a_capped_error_with_extack() {
        let mut w = Writer::new();
        error(&mut w, 7, libc::ENODEV, Some("no such device"));
        let bytes = w.finish().unwrap();
        let msg = messages(&bytes).next().unwrap().unwrap();
        let e = parse_error(msg.flags, msg.payload).unwrap();
        assert_eq!(
            (e.errno, e.request_seq, e.request_type),
            (libc::ENODEV, 7, RTM_NEWRULE)
        );
        assert_eq!(e.message.as_deref(), Some("no such device"));
        let nack = e.nack().unwrap();
        assert_eq!(
            nack.describe(),
            "No such device (os error 19): no such device"
        );
        let err: Error = nack.into_error("rule add 99: from all lookup 1");
        assert_eq!(err.errno(), Some(libc::ENODEV));
        assert!(
            err.to_string()
                .starts_with("netlink request rule add 99: from all lookup 1 failed"),
            "{err}"
        );
    }

    #[test]
    fn uncapped_error_skips_the_whole_echoed_request() {
        // Without CAP_ACK the kernel echoes the full request (here 24 bytes:
        // header + one u32 attribute) before the TLVs.
        let mut w = Writer::new();
        let m = w.begin_message(NLMSG_ERROR, 0x200, 3);
        w.family_header(&(-libc::EEXIST).to_ne_bytes());
        let r = w.begin_message(RTM_NEWRULE, NLM_F_REQUEST, 3);
        w.attr_u32(NLMSGERR_ATTR_MSG, 0x4141_4141); // looks like a TLV: must be skipped
        w.end_message(r);
        w.attr_str(NLMSGERR_ATTR_MSG, "File exists");
        w.end_message(m);
        let bytes = w.finish().unwrap();
        let msg = messages(&bytes).next().unwrap().unwrap();
        let e = parse_error(msg.flags, msg.payload).unwrap();
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(e.message.as_deref(), Some("File exists"));
        assert!(parse_error(0, &[0; 8]).is_err());
    }

    #[test]
    fn errors_go_to_the_request_they_name_across_datagrams() {
        let mut acks = Acks::new(u32::MAX - 1, 4).until(3); // wraps: MAX-1, MAX, 0, 1; noop 2..
        let mut a = Writer::new();
        error(&mut a, 0, libc::EEXIST, None); // request 2
        error(&mut a, 77, libc::EPERM, None); // someone else's: ignored
        acks.feed(a.bytes()).unwrap();
        assert!(!acks.is_complete());
        let mut b = Writer::new();
        error(&mut b, u32::MAX - 1, libc::ENOENT, Some("gone")); // request 0
        error(&mut b, 3, 0, None); // the closing ack
        acks.feed(b.bytes()).unwrap();
        assert!(acks.is_complete());
        assert_eq!(acks.failures(), 2);
        let r = acks.results();
        assert_eq!(r[0], Some(Nack::new(libc::ENOENT, Some("gone".into()))));
        assert_eq!(r[1], None);
        assert_eq!(r[2].as_ref().map(|n| n.errno), Some(libc::EEXIST));
        assert_eq!(r[3], None);
        assert_eq!(acks.first_failure().map(|(i, _)| i), Some(0));
        assert!(acks.closing().is_none());
    }

    #[test]
    fn without_a_closing_message_every_request_must_be_answered() {
        let mut acks = Acks::new(5, 2);
        let mut w = Writer::new();
        error(&mut w, 5, 0, None);
        acks.feed(w.bytes()).unwrap();
        assert!(!acks.is_complete());
        let mut w = Writer::new();
        error(&mut w, 6, libc::EINVAL, None);
        acks.feed(w.bytes()).unwrap();
        assert!(acks.is_complete());
        assert_eq!(
            acks.into_results(),
            vec![None, Some(Nack::new(libc::EINVAL, None))]
        );
        assert!(Acks::new(1, 0).is_complete());
    }
}
