//! The netlink transport: one `NETLINK_ROUTE` socket bound to one namespace, with
//! consistent dumps and pipelined batches of writes.
//!
//! The socket, the framing constants, `NLMSG_ERROR` parsing, the matching of
//! answers to requests ([`calinet_netlink::Acks`]) and the rejection type
//! ([`Nack`]) come from `calinet-netlink`; this module adds the tokio reactor,
//! dump retries and `netlink-packet-route` message encoding.
//!
//! Messages are built and parsed with `netlink-packet-route`; the socket is driven
//! here rather than through `rtnetlink::Handle` because the reconciler needs three
//! things that handle hides: the `NLM_F_DUMP_INTR` flag of dump messages, the
//! `ENOBUFS` overrun of the socket, and many writes per `send` with errors matched
//! back to their request by sequence number.
//!
//! Writes are sent without `NLM_F_ACK`: the kernel then answers only the requests
//! that fail. Each batch ends with an acknowledged `NLMSG_NOOP`, so once its ack
//! arrives every error of the batch has arrived too (rtnetlink processes a datagram's
//! messages in order).

use calinet_netlink::consts::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_HDRLEN as HDR, NLMSG_NOOP, NLMSG_OVERRUN,
};
use calinet_netlink::{Acks, Protocol, Socket, align4, messages, parse_error};
use netlink_packet_core::{NetlinkSerializable, ParseableParametrized};
use netlink_packet_route::RouteNetlinkMessage;
use tokio::io::unix::AsyncFd;

pub use calinet_netlink::Nack;

use crate::error::{Error, Result};
use crate::netns::Netns;

/// How many times a dump is retried when interrupted or overrun.
pub const DUMP_ATTEMPTS: u32 = 10;
/// Upper bound on the bytes of one `send` (several hundred route messages).
const BATCH_BYTES: usize = 60 * 1024;
const RX_BUF: usize = 1 << 20;

/// Counters of what a connection did (the zero-writes checks read these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Write requests sent (adds, replacements, deletions, link changes...).
    pub writes: u64,
    /// Completed dumps.
    pub dumps: u64,
    /// Dumps restarted because of `NLM_F_DUMP_INTR` or an overrun.
    pub redumps: u64,
    /// `send` calls that carried writes.
    pub sends: u64,
}

/// One netlink socket inside one namespace.
#[derive(Debug)]
pub struct Conn {
    netns: Netns,
    fd: AsyncFd<Socket>,
    seq: u32,
    rx: Vec<u8>,
    stats: Stats,
}

#[derive(Debug)]
enum DumpOutcome {
    Done(Vec<RouteNetlinkMessage>),
    Interrupted,
    Overrun,
}

fn open_socket(netns: &Netns) -> Result<Socket> {
    let s = Socket::open_in(netns, Protocol::Route)?;
    s.set_nonblocking(true)?;
    // Errors carry only the failing request's header, plus a message.
    s.set_cap_ack(true)?;
    s.set_ext_ack(true)?;
    // Large buffers so that a big dump or many errors do not overrun.
    s.set_buffers(8 << 20, 4 << 20)?;
    Ok(s)
}

/// Parses an `NLMSG_ERROR` payload: (errno, ext-ack msg); a short one is no
/// answer at all.
fn error_of(flags: u16, payload: &[u8]) -> (i32, Option<String>) {
    parse_error(flags, payload)
        .map(|e| (e.errno, e.message))
        .unwrap_or((0, None))
}

/// Why one datagram of a dump could not be used.
#[derive(Debug)]
enum ScanError {
    BadLength(String),
    Decode(String),
    Kernel(Nack),
}

impl ScanError {
    fn context(self, what: &str, netns: &Netns) -> Error {
        match self {
            ScanError::BadLength(message) => Error::Decode {
                context: format!("dump of {what} in netns {netns}"),
                message,
            },
            ScanError::Decode(message) => Error::Decode {
                context: format!("dump of {what} in netns {netns}"),
                message,
            },
            ScanError::Kernel(n) => Error::Netlink {
                request: format!("dump {what} in netns {netns}"),
                errno: n.errno,
                message: n.describe(),
            },
        }
    }
}

/// Processes one received datagram of the dump with sequence `seq`: collects its
/// messages into `out`, and returns the outcome once the dump ends. A message
/// flagged `NLM_F_DUMP_INTR` (the kernel's table changed during the dump) makes the
/// whole dump [`DumpOutcome::Interrupted`]: its snapshot is discarded, never used.
fn scan_dump(
    buf: &[u8],
    seq: u32,
    interrupted: &mut bool,
    out: &mut Vec<RouteNetlinkMessage>,
) -> std::result::Result<Option<DumpOutcome>, ScanError> {
    for msg in messages(buf) {
        let msg = msg.map_err(|e| ScanError::BadLength(e.to_string()))?;
        let (kind, flags, payload) = (msg.ty, msg.flags, msg.payload);
        if msg.seq != seq {
            // Leftovers of an earlier request; not part of this dump.
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        match kind {
            NLMSG_DONE => {
                return Ok(Some(if *interrupted {
                    DumpOutcome::Interrupted
                } else {
                    DumpOutcome::Done(std::mem::take(out))
                }));
            }
            NLMSG_ERROR => {
                let (errno, message) = error_of(flags, payload);
                if errno == libc::EINTR || errno == libc::EBUSY {
                    // Some dumps report an inconsistent snapshot as EINTR.
                    return Ok(Some(DumpOutcome::Interrupted));
                }
                return Err(ScanError::Kernel(Nack { errno, message }));
            }
            NLMSG_OVERRUN => return Ok(Some(DumpOutcome::Overrun)),
            NLMSG_NOOP => {}
            _ => {
                if *interrupted {
                    continue;
                }
                let msg = RouteNetlinkMessage::parse_with_param(payload, kind)
                    .map_err(|e| ScanError::Decode(e.to_string()))?;
                out.push(msg);
            }
        }
    }
    Ok(None)
}

/// Registers an owned netlink socket with tokio's reactor.
///
/// `AsyncFd::new` is deprecated from tokio 1.53.3 on because a type that only
/// borrows its fd could close it while registered; `Socket` owns its fd, and the
/// AsyncFd owns the `Socket`, so the fd stays open and unchanged for the whole
/// registration. Its replacement, `AsyncFd::register`, exists only from 1.53.3,
/// and downstream projects on tokio's 1.47 LTS must still be able to use this
/// crate (scripts/downstream-check.sh builds it with tokio 1.41.1).
#[allow(deprecated)]
fn register(sock: Socket) -> std::io::Result<AsyncFd<Socket>> {
    AsyncFd::new(sock)
}

impl Conn {
    /// Opens a socket inside `netns`. Must be called inside a tokio runtime.
    pub async fn open(netns: &Netns) -> Result<Self> {
        let sock = open_socket(netns)?;
        let fd = register(sock).map_err(|e| Error::Transport {
            context: format!("registering netlink socket of netns {netns} with tokio"),
            source: e,
        })?;
        Ok(Conn {
            netns: netns.clone(),
            fd,
            seq: 1,
            rx: vec![0; RX_BUF],
            stats: Stats::default(),
        })
    }

    /// The namespace this connection works in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Replaces the socket with a fresh one (after an overrun nothing queued on the
    /// old one can be trusted).
    async fn reopen(&mut self) -> Result<()> {
        let fresh = Conn::open(&self.netns).await?;
        self.fd = fresh.fd;
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        // Contiguous (also across wrap-around): batch results are indexed by
        // `seq - base`.
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn encode(out: &mut Vec<u8>, msg: &RouteNetlinkMessage, flags: u16, seq: u32) {
        let body = msg.buffer_len();
        let len = HDR + body;
        let start = out.len();
        out.resize(start + align4(len), 0);
        let b = &mut out[start..];
        b[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        b[4..6].copy_from_slice(&msg.message_type().to_ne_bytes());
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
        b[12..16].copy_from_slice(&0u32.to_ne_bytes());
        msg.serialize(&mut b[HDR..len]);
    }

    fn encode_noop(out: &mut Vec<u8>, seq: u32) {
        let start = out.len();
        out.resize(start + HDR, 0);
        let b = &mut out[start..];
        b[0..4].copy_from_slice(&(HDR as u32).to_ne_bytes());
        b[4..6].copy_from_slice(&NLMSG_NOOP.to_ne_bytes());
        b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    async fn send_all(&self, buf: &[u8], context: &str) -> Result<()> {
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|source| Error::Transport {
                    context: context.to_string(),
                    source,
                })?;
            match guard.try_io(|inner| inner.get_ref().send(buf)) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(source)) => {
                    return Err(Error::Transport {
                        context: context.to_string(),
                        source,
                    });
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram into `self.rx`, returning its length.
    async fn recv(&mut self) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let rx = &mut self.rx;
            match guard.try_io(|inner| inner.get_ref().recv(rx, false)) {
                Ok(res) => return res,
                Err(_would_block) => continue,
            }
        }
    }

    /// Dumps with `request` (sent with `NLM_F_DUMP`), restarting on an interrupted
    /// dump or a socket overrun until a consistent snapshot is read.
    pub async fn dump(
        &mut self,
        request: &RouteNetlinkMessage,
        what: &'static str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        for attempt in 1..=DUMP_ATTEMPTS {
            match self.dump_once(request, what).await? {
                DumpOutcome::Done(v) => {
                    self.stats.dumps += 1;
                    return Ok(v);
                }
                DumpOutcome::Interrupted => {
                    self.stats.redumps += 1;
                }
                DumpOutcome::Overrun => {
                    self.stats.redumps += 1;
                    self.reopen().await?;
                }
            }
            if attempt == DUMP_ATTEMPTS {
                break;
            }
        }
        Err(Error::DumpInconsistent {
            what,
            attempts: DUMP_ATTEMPTS,
        })
    }

    async fn dump_once(
        &mut self,
        request: &RouteNetlinkMessage,
        what: &'static str,
    ) -> Result<DumpOutcome> {
        let seq = self.next_seq();
        let mut buf = Vec::with_capacity(64);
        Conn::encode(&mut buf, request, NLM_F_REQUEST | NLM_F_DUMP, seq);
        self.send_all(
            &buf,
            &format!("sending dump of {what} in netns {}", self.netns),
        )
        .await?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = match self.recv().await {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(DumpOutcome::Overrun);
                }
                Err(source) => {
                    return Err(Error::Transport {
                        context: format!("receiving dump of {what} in netns {}", self.netns),
                        source,
                    });
                }
            };
            let netns = &self.netns;
            if let Some(outcome) = scan_dump(&self.rx[..n], seq, &mut interrupted, &mut out)
                .map_err(|e| e.context(what, netns))?
            {
                return Ok(outcome);
            }
        }
    }

    /// One acknowledged request (a `GET` of one object, or a single write whose
    /// outcome the caller waits for). Returns the replies (for a `GET`), or the
    /// kernel's rejection as `Err(Nack)`.
    pub async fn request(
        &mut self,
        msg: &RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<std::result::Result<Vec<RouteNetlinkMessage>, Nack>> {
        let seq = self.next_seq();
        let mut buf = Vec::with_capacity(256);
        Conn::encode(&mut buf, msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq);
        self.send_all(&buf, &format!("sending {what} in netns {}", self.netns))
            .await?;
        let is_write = !matches!(
            msg,
            RouteNetlinkMessage::GetLink(_)
                | RouteNetlinkMessage::GetAddress(_)
                | RouteNetlinkMessage::GetRoute(_)
                | RouteNetlinkMessage::GetNeighbour(_)
        );
        if is_write {
            self.stats.writes += 1;
        }
        let mut replies = Vec::new();
        loop {
            let n = self.recv().await.map_err(|source| Error::Transport {
                context: format!("receiving reply to {what} in netns {}", self.netns),
                source,
            })?;
            for msg in messages(&self.rx[..n]) {
                let Ok(msg) = msg else { break };
                let (kind, payload) = (msg.ty, msg.payload);
                if msg.seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_ERROR => {
                        let (errno, message) = error_of(msg.flags, payload);
                        return Ok(if errno == 0 {
                            Ok(replies)
                        } else {
                            Err(Nack { errno, message })
                        });
                    }
                    NLMSG_DONE | NLMSG_NOOP => {}
                    _ => {
                        let m =
                            RouteNetlinkMessage::parse_with_param(payload, kind).map_err(|e| {
                                Error::Decode {
                                    context: format!("reply to {what} in netns {}", self.netns),
                                    message: e.to_string(),
                                }
                            })?;
                        replies.push(m);
                    }
                }
            }
        }
    }

    /// Sends `requests` (each with its own `NLM_F_*` operation flags; `NLM_F_REQUEST`
    /// is added) pipelined: many per `send`, no per-request round trip. Returns, per
    /// request, `None` when the kernel accepted it or the rejection.
    pub async fn execute(
        &mut self,
        requests: &[(RouteNetlinkMessage, u16)],
        what: &str,
    ) -> Result<Vec<Option<Nack>>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        // Sequence numbers are contiguous: requests base.., then the NOOP.
        let base = self.seq.wrapping_add(1);
        let noop = base.wrapping_add(requests.len() as u32);
        let mut acks = Acks::new(base, requests.len()).until(noop);
        let mut buf = Vec::with_capacity(BATCH_BYTES + 1024);
        let mut i = 0;
        while i < requests.len() {
            buf.clear();
            while i < requests.len() && buf.len() < BATCH_BYTES {
                let seq = self.next_seq();
                let (msg, flags) = &requests[i];
                Conn::encode(&mut buf, msg, NLM_F_REQUEST | flags, seq);
                i += 1;
            }
            let last = i == requests.len();
            if last {
                let s = self.next_seq();
                debug_assert_eq!(s, noop);
                Conn::encode_noop(&mut buf, s);
            }
            self.send_all(&buf, &format!("sending {what} in netns {}", self.netns))
                .await?;
            self.stats.sends += 1;
            // The kernel handled the datagram during send(); collect what failed so
            // far without waiting (keeps the receive queue short).
            if let Err(e) = self.collect(&mut acks, last, what).await {
                // After an overrun, acks of this batch are lost: the outcome of
                // its requests is unknown. Start the next batch on a clean socket;
                // the caller re-dumps and re-plans.
                if let Error::Transport { source, .. } = &e
                    && source.raw_os_error() == Some(libc::ENOBUFS)
                {
                    self.reopen().await?;
                }
                self.stats.writes += i as u64;
                return Err(e);
            }
        }
        self.stats.writes += requests.len() as u64;
        Ok(acks.into_results())
    }

    /// Reads answers into `acks`. When `wait`, until the closing NOOP's ack;
    /// otherwise drains only what is queued.
    async fn collect(&mut self, acks: &mut Acks, wait: bool, what: &str) -> Result<()> {
        loop {
            let n = if wait {
                self.recv().await
            } else {
                match self.fd.get_ref().recv(&mut self.rx, false) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    other => other,
                }
            };
            let n = n.map_err(|source| Error::Transport {
                context: format!("receiving results of {what} in netns {}", self.netns),
                source,
            })?;
            acks.feed(&self.rx[..n]).map_err(|e| Error::Decode {
                context: format!("results of {what} in netns {}", self.netns),
                message: e.to_string(),
            })?;
            if acks.is_complete() {
                return Ok(());
            }
        }
    }
}

/// What a [`LinkEvents`] socket saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// Links were created, deleted or changed (their names, where known).
    Changed(Vec<String>),
    /// Notifications were lost (socket overrun): assume anything changed.
    Overrun,
}

/// Link notifications (`RTNLGRP_LINK`) of one namespace, so that pending routes are
/// retried as soon as their interface appears or comes up, rather than on a timer.
#[derive(Debug)]
pub struct LinkEvents {
    netns: Netns,
    fd: AsyncFd<Socket>,
    rx: Vec<u8>,
}

impl LinkEvents {
    /// Subscribes inside `netns`. Call inside a tokio runtime.
    pub async fn open(netns: &Netns) -> Result<Self> {
        // RTMGRP_LINK = 1
        let sock = netns.run(|| Socket::open_groups(Protocol::Route, 1))??;
        sock.set_nonblocking(true)?;
        let fd = register(sock).map_err(|e| Error::Transport {
            context: format!("registering link-event socket of netns {netns} with tokio"),
            source: e,
        })?;
        Ok(LinkEvents {
            netns: netns.clone(),
            fd,
            rx: vec![0; 64 * 1024],
        })
    }

    /// Waits for the next batch of link notifications.
    pub async fn next(&mut self) -> Result<LinkEvent> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| Error::Transport {
                    context: format!("waiting for link events in netns {}", self.netns),
                    source,
                })?;
            let rx = &mut self.rx;
            let res = guard.try_io(|inner| inner.get_ref().recv(rx, false));
            let n = match res {
                Err(_would_block) => continue,
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Ok(LinkEvent::Overrun);
                }
                Ok(Err(source)) => {
                    return Err(Error::Transport {
                        context: format!("receiving link events in netns {}", self.netns),
                        source,
                    });
                }
                Ok(Ok(n)) => n,
            };
            let mut names = Vec::new();
            for msg in messages(&self.rx[..n]) {
                let Ok(msg) = msg else { break };
                if let Ok(RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l)) =
                    RouteNetlinkMessage::parse_with_param(msg.payload, msg.ty)
                {
                    for a in &l.attributes {
                        if let netlink_packet_route::link::LinkAttribute::IfName(name) = a {
                            names.push(name.clone());
                        }
                    }
                }
            }
            return Ok(LinkEvent::Changed(names));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((HDR + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn route_msg(seq: u32, flags: u16) -> Vec<u8> {
        use netlink_packet_route::route::RouteMessage;
        let msg = RouteNetlinkMessage::NewRoute(RouteMessage::default());
        let mut body = vec![0; msg.buffer_len()];
        msg.serialize(&mut body);
        frame(msg.message_type(), NLM_F_MULTI | flags, seq, &body)
    }

    const NLM_F_MULTI: u16 = 2;

    #[test]
    fn dump_collects_until_done_and_ignores_other_sequences() {
        let mut dg = route_msg(7, 0);
        dg.extend(route_msg(6, 0)); // an earlier request's leftover
        dg.extend(route_msg(7, 0));
        let (mut intr, mut out) = (false, Vec::new());
        assert!(scan_dump(&dg, 7, &mut intr, &mut out).unwrap().is_none());
        let done = frame(NLMSG_DONE, NLM_F_MULTI, 7, &0i32.to_ne_bytes());
        match scan_dump(&done, 7, &mut intr, &mut out).unwrap() {
            Some(DumpOutcome::Done(v)) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn interrupted_dump_is_discarded() {
        let mut dg = route_msg(9, 0);
        dg.extend(route_msg(9, NLM_F_DUMP_INTR));
        dg.extend(frame(
            NLMSG_DONE,
            NLM_F_MULTI | NLM_F_DUMP_INTR,
            9,
            &0i32.to_ne_bytes(),
        ));
        let (mut intr, mut out) = (false, Vec::new());
        assert!(matches!(
            scan_dump(&dg, 9, &mut intr, &mut out).unwrap(),
            Some(DumpOutcome::Interrupted)
        ));
        let overrun = frame(NLMSG_OVERRUN, 0, 9, &[]);
        let (mut intr, mut out) = (false, Vec::new());
        assert!(matches!(
            scan_dump(&overrun, 9, &mut intr, &mut out).unwrap(),
            Some(DumpOutcome::Overrun)
        ));
        // A header claiming more bytes than the datagram holds.
        let mut short = frame(NLMSG_DONE, 0, 9, &0i32.to_ne_bytes());
        short[0] = 200;
        assert!(scan_dump(&short, 9, &mut false, &mut Vec::new()).is_err());
    }

    #[test]
    fn parses_capped_error_with_extack() {
        // NLMSG_ERROR payload as the kernel sends it with CAP_ACK + EXT_ACK:
        // error -19 (ENODEV), the request header (len 60, seq 7), then
        // NLMSGERR_ATTR_MSG "no such device".
        let mut p = Vec::new();
        p.extend_from_slice(&(-19i32).to_ne_bytes());
        p.extend_from_slice(&60u32.to_ne_bytes());
        p.extend_from_slice(&24u16.to_ne_bytes());
        p.extend_from_slice(&0x0501u16.to_ne_bytes());
        p.extend_from_slice(&7u32.to_ne_bytes());
        p.extend_from_slice(&0u32.to_ne_bytes());
        let msg = b"no such device\0";
        p.extend_from_slice(&((4 + msg.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&1u16.to_ne_bytes());
        p.extend_from_slice(msg);
        while p.len() % 4 != 0 {
            p.push(0);
        }
        let e = parse_error(0x100, &p).unwrap();
        assert_eq!((e.errno, e.request_seq), (19, 7));
        assert_eq!(e.message.as_deref(), Some("no such device"));
        let nack = Nack::new(e.errno, e.message);
        assert!(
            nack.describe().contains("No such device"),
            "{}",
            nack.describe()
        );
    }
}
