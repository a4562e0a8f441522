//! Kernel plumbing for calinet: network namespace entry, netlink sockets,
//! message and attribute framing, batched sends whose answers are matched back
//! to their request, and errno mapping, written once for `calinet-route`,
//! `calinet-wg` and `calinet-policy`.
//!
//! # Example: build a message and read it back (no kernel needed)
//!
//! ```
//! use calinet_netlink::{Writer, attributes, consts::*, messages};
//!
//! // `ip rule add not fwmark 0x100000/0x100000 lookup 1 priority 99`, as a message.
//! let mut w = Writer::new();
//! let m = w.begin_message(RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, 1);
//! w.family_header(&[libc::AF_INET as u8, 0, 0, 0, 1, 0, 0, 1, 2, 0, 0, 0]); // fib_rule_hdr
//! w.attr_u32(6, 99); // FRA_PRIORITY
//! w.attr_u32(10, 0x10_0000); // FRA_FWMARK
//! w.attr_u32(16, 0x10_0000); // FRA_FWMASK
//! w.end_message(m);
//! let bytes = w.finish()?;
//!
//! let msg = messages(&bytes).next().unwrap()?;
//! assert_eq!((msg.ty, msg.seq), (RTM_NEWRULE, 1));
//! let attrs: Vec<_> = attributes(&msg.payload[12..]).collect::<Result<_, _>>()?;
//! assert_eq!(attrs[0].u32()?, 99);
//! assert_eq!(attrs[1].u32()?, 0x10_0000);
//! # Ok::<(), calinet_netlink::Error>(())
//! ```
//!
//! # Example: a request in a namespace (needs root)
//!
//! ```no_run
//! use calinet_netlink::{Acks, Netns, Protocol, Socket, Writer, consts::*};
//!
//! let node = Netns::named("node1")?;
//! let sock = Socket::open_in(&node, Protocol::Route)?;
//! sock.set_cap_ack(true)?;
//! let mut w = Writer::new();
//! let m = w.begin_message(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, 1);
//! w.end_message(m);
//! let mut acks = Acks::new(1, 1);
//! sock.transact(&w.finish()?, &mut acks, &mut [0; 8192], "noop")?;
//! assert!(acks.is_complete() && acks.failures() == 0);
//! # Ok::<(), calinet_netlink::Error>(())
//! ```
//!
//! # Layers
//!
//! - [`message`]: [`Writer`] (headers, TLV attributes with alignment, nested
//!   attributes, lengths patched on close, oversized attributes refused) and
//!   the checked readers [`messages`] / [`attributes`]. Pure.
//! - [`ack`]: `NLMSG_ERROR` parsing ([`parse_error`], extended-ack text),
//!   [`Nack`] (errno + kernel message) and [`Acks`], which matches the answers
//!   to a batch back to the request each names. Pure.
//! - [`nfnl`] (batch begin/end, `nfgenmsg`) and [`genl`] (family header, family
//!   lookup) framing. Pure.
//! - [`Socket`]: `NETLINK_ROUTE` / `NETLINK_NETFILTER` / `NETLINK_GENERIC`,
//!   options (ext-ack, cap-ack, buffers, timeouts), blocking
//!   [`Socket::transact`] and [`Socket::dump`]; async callers register its fd
//!   with their reactor.
//! - [`Netns`]: an open namespace, [`Netns::run`] (run a closure on this
//!   thread inside it), sysctls, and starting a child process inside it.
//! - [`Error`]: one `thiserror` enum; a rejected request is
//!   [`Error::Kernel`] naming the request and errno.
//!
//! Only `socket` and `netns` use `unsafe` (system calls), each block with its
//! `SAFETY` comment; every other module forbids it.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod ack;
pub mod consts;
mod error;
pub mod genl;
pub mod message;
mod netns;
pub mod nfnl;
mod socket;

pub use ack::{Acks, ErrorMessage, Nack, parse_error};
pub use error::{Error, Result};
pub use message::{
    Attr, Attrs, Mark, Message, Messages, Writer, align4, attr_size, attributes, messages,
};
pub use netns::Netns;
pub use socket::{DumpEnd, Protocol, Socket};
