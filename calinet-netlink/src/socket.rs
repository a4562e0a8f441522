//! A netlink socket (`NETLINK_ROUTE`, `NETLINK_NETFILTER`, `NETLINK_GENERIC`)
//! bound to the namespace of the thread that opened it, with blocking
//! request/acknowledge and dump helpers. Async users (calinet-route) take its
//! fd ([`AsRawFd`]) into their reactor and use the same framing and
//! [`Acks`].
#![allow(unsafe_code)]

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::ack::{Acks, parse_error};
use crate::consts::{NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN};
use crate::error::{Error, Result};
use crate::message::{Message, messages};
use crate::netns::Netns;

/// Which netlink family a socket speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// `NETLINK_ROUTE`: links, addresses, routes, neighbours, rules.
    Route,
    /// `NETLINK_NETFILTER`: nf_tables.
    Netfilter,
    /// `NETLINK_GENERIC`: WireGuard and other generic families.
    Generic,
}

impl Protocol {
    /// The `NETLINK_*` number.
    pub fn raw(self) -> i32 {
        match self {
            Protocol::Route => libc::NETLINK_ROUTE,
            Protocol::Netfilter => libc::NETLINK_NETFILTER,
            Protocol::Generic => libc::NETLINK_GENERIC,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Route => "NETLINK_ROUTE",
            Protocol::Netfilter => "NETLINK_NETFILTER",
            Protocol::Generic => "NETLINK_GENERIC",
        })
    }
}

/// How a dump ended (see [`Socket::dump`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DumpEnd {
    /// `NLMSG_DONE` arrived and no message was flagged `NLM_F_DUMP_INTR`.
    Consistent,
    /// The kernel's table changed during the dump (`NLM_F_DUMP_INTR`, or
    /// `EINTR`/`EBUSY`): what was read must be discarded and the dump redone.
    Interrupted,
    /// Messages were lost (`ENOBUFS` / `NLMSG_OVERRUN`): open a fresh socket
    /// and redo the dump.
    Overrun,
}

/// One netlink socket. Opened with `SOCK_CLOEXEC`, bound with a kernel-chosen
/// port id.
pub struct Socket {
    fd: OwnedFd,
    protocol: Protocol,
    place: String,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd.as_raw_fd())
            .field("protocol", &self.protocol)
            .field("netns", &self.place)
            .finish()
    }
}

fn sockaddr(groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value (the kernel's
    // address, no groups), the fields that matter are set below.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    a.nl_groups = groups;
    a
}

impl Socket {
    /// Opens a socket in the calling thread's namespace.
    pub fn open(protocol: Protocol) -> Result<Self> {
        Socket::open_groups(protocol, 0)
    }

    /// Opens a socket inside `netns` (the calling thread enters it for the
    /// duration, see [`Netns::run`]); the socket stays bound to `netns`.
    pub fn open_in(netns: &Netns, protocol: Protocol) -> Result<Self> {
        let mut s = netns.run(|| Socket::open(protocol))??;
        s.place = netns.to_string();
        Ok(s)
    }

    /// Opens a socket subscribed to multicast `groups` (e.g. `RTMGRP_LINK`)
    /// in the calling thread's namespace.
    pub fn open_groups(protocol: Protocol, groups: u32) -> Result<Self> {
        // SAFETY: plain socket(2); the descriptor is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol.raw(),
            )
        };
        if raw < 0 {
            return Err(Error::last_os(format!("socket(AF_NETLINK, {protocol})")));
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let addr = sockaddr(groups);
        // SAFETY: a valid socket and a sockaddr_nl of the stated size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::last_os(format!(
                "bind {protocol} socket to groups {groups:#x}"
            )));
        }
        Ok(Socket {
            fd,
            protocol,
            place: "the opening thread's netns".into(),
        })
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The namespace it was opened in, for messages.
    pub fn netns_label(&self) -> &str {
        &self.place
    }

    fn setsockopt<T>(&self, level: i32, opt: i32, value: &T) -> std::io::Result<()> {
        // SAFETY: a valid socket and a pointer to a live T of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (value as *const T).cast::<libc::c_void>(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn opt(&self, level: i32, opt: i32, name: &str, value: libc::c_int) -> Result<()> {
        self.setsockopt(level, opt, &value)
            .map_err(|source| Error::Socket {
                operation: format!("setsockopt {name} in {}", self.place),
                source,
            })
    }

    /// `NETLINK_EXT_ACK`: errors carry the kernel's explanation.
    pub fn set_ext_ack(&self, on: bool) -> Result<()> {
        self.opt(
            libc::SOL_NETLINK,
            libc::NETLINK_EXT_ACK,
            "NETLINK_EXT_ACK",
            on.into(),
        )
    }

    /// `NETLINK_CAP_ACK`: errors echo only the request's header, not the
    /// whole request (a rejected 60 KiB batch message stays a small answer).
    pub fn set_cap_ack(&self, on: bool) -> Result<()> {
        self.opt(
            libc::SOL_NETLINK,
            libc::NETLINK_CAP_ACK,
            "NETLINK_CAP_ACK",
            on.into(),
        )
    }

    /// Receive and send buffer sizes. The `FORCE` variants (which need
    /// `CAP_NET_ADMIN`) are tried first, the capped plain ones are the fallback.
    pub fn set_buffers(&self, receive: usize, send: usize) -> Result<()> {
        for (force, plain, size, name) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, receive, "SO_RCVBUF"),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, send, "SO_SNDBUF"),
        ] {
            let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
            if self.setsockopt(libc::SOL_SOCKET, force, &v).is_err() {
                self.opt(libc::SOL_SOCKET, plain, name, v)?;
            }
        }
        Ok(())
    }

    /// A receive timeout, so a request the kernel never answers cannot hang
    /// a blocking caller.
    pub fn set_recv_timeout(&self, timeout: Duration) -> Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
            tv_usec: timeout.subsec_micros().into(),
        };
        self.setsockopt(libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
            .map_err(|source| Error::Socket {
                operation: format!("setsockopt SO_RCVTIMEO in {}", self.place),
                source,
            })
    }

    /// `O_NONBLOCK` on or off.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: fcntl on a valid descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
            return Err(Error::last_os(format!(
                "fcntl O_NONBLOCK in {}",
                self.place
            )));
        }
        Ok(())
    }

    /// Sends `buf` as one datagram to the kernel. `WouldBlock` is returned as
    /// is (for non-blocking callers); a short send is an error.
    pub fn send(&self, buf: &[u8]) -> std::io::Result<()> {
        let addr = sockaddr(0);
        loop {
            // SAFETY: buf and addr are valid for reads of the stated lengths.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    0,
                    (&raw const addr).cast::<libc::sockaddr>(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != buf.len() {
                return Err(std::io::Error::other(format!(
                    "short send: {n} of {} bytes",
                    buf.len()
                )));
            }
            return Ok(());
        }
    }

    /// Receives one datagram into `buf` (waiting when `wait`, else
    /// `MSG_DONTWAIT`), returning its length. A datagram larger than `buf`
    /// is an error rather than silently cut.
    pub fn recv(&self, buf: &mut [u8], wait: bool) -> std::io::Result<usize> {
        let flags = libc::MSG_TRUNC | if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<libc::c_void>(),
                    buf.len(),
                    flags,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(std::io::Error::other(format!(
                    "netlink datagram of {n} bytes does not fit the {}-byte receive buffer",
                    buf.len()
                )));
            }
            return Ok(n);
        }
    }

    /// Sends `batch` (requests numbered as `acks` expects) and reads answers
    /// into `acks` until it is complete. The kernel handles a netlink write
    /// inside `send`, so once a rejection is in hand only what is already
    /// queued is read: a failed nfnetlink batch is never acknowledged.
    /// `what` names the batch in errors.
    pub fn transact(&self, batch: &[u8], acks: &mut Acks, rx: &mut [u8], what: &str) -> Result<()> {
        self.send(batch).map_err(|source| Error::Socket {
            operation: format!("send {what} in {}", self.place),
            source,
        })?;
        while !acks.is_complete() {
            let failed = acks.failures() > 0;
            let n = match self.recv(rx, !failed) {
                Ok(n) => n,
                Err(e) if failed && e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(source) => {
                    return Err(Error::Socket {
                        operation: format!("receive answers to {what} in {}", self.place),
                        source,
                    });
                }
            };
            acks.feed(&rx[..n])?;
        }
        Ok(())
    }

    /// Sends the dump request `request` (numbered `seq`, flagged
    /// `NLM_F_DUMP`) and hands each answer message to `each` until
    /// `NLMSG_DONE`. Messages of other sequence numbers are skipped. An
    /// interrupted or overrun dump is reported, not retried: the caller
    /// discards what `each` saw and dumps again.
    pub fn dump(
        &self,
        request: &[u8],
        seq: u32,
        rx: &mut [u8],
        what: &str,
        mut each: impl FnMut(Message<'_>) -> Result<()>,
    ) -> Result<DumpEnd> {
        self.send(request).map_err(|source| Error::Socket {
            operation: format!("send dump of {what} in {}", self.place),
            source,
        })?;
        let mut interrupted = false;
        loop {
            let n = match self.recv(rx, true) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(DumpEnd::Overrun),
                Err(source) => {
                    return Err(Error::Socket {
                        operation: format!("receive dump of {what} in {}", self.place),
                        source,
                    });
                }
            };
            for msg in messages(&rx[..n]) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.ty {
                    NLMSG_DONE => {
                        return Ok(if interrupted {
                            DumpEnd::Interrupted
                        } else {
                            DumpEnd::Consistent
                        });
                    }
                    NLMSG_ERROR => {
                        let e = parse_error(msg.flags, msg.payload)?;
                        match e.nack() {
                            None => {}
                            Some(n) if n.errno == libc::EINTR || n.errno == libc::EBUSY => {
                                return Ok(DumpEnd::Interrupted);
                            }
                            Some(n) => {
                                return Err(n.into_error(format!("dump {what} in {}", self.place)));
                            }
                        }
                    }
                    NLMSG_OVERRUN => return Ok(DumpEnd::Overrun),
                    NLMSG_NOOP => {}
                    _ if interrupted => {}
                    _ => each(msg)?,
                }
            }
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Socket> for OwnedFd {
    fn from(s: Socket) -> OwnedFd {
        s.fd
    }
}
