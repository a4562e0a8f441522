//! Kernel ABI numbers used by more than one calinet crate
//! (`linux/netlink.h`, `linux/rtnetlink.h`, `linux/fib_rules.h`,
//! `linux/netfilter/nfnetlink.h`, `linux/genetlink.h`). Values that only one
//! encoder uses stay beside that encoder.
#![forbid(unsafe_code)]

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;
/// Attribute type flag: the payload is a list of attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Attribute type flag: the payload is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// The bits of an attribute type that are its number.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// No-op message (acknowledged when `NLM_F_ACK` is set).
pub const NLMSG_NOOP: u16 = 1;
/// Error or acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// End of a multipart message.
pub const NLMSG_DONE: u16 = 3;
/// Data lost.
pub const NLMSG_OVERRUN: u16 = 4;

/// A request.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Part of a multipart message.
pub const NLM_F_MULTI: u16 = 0x2;
/// Acknowledge the request (success too).
pub const NLM_F_ACK: u16 = 0x4;
/// The dump was inconsistent (the table changed while it ran).
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// Dump everything (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// Replace an existing object.
pub const NLM_F_REPLACE: u16 = 0x100;
/// Do not touch an existing object.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create if missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// Add at the end of a list.
pub const NLM_F_APPEND: u16 = 0x800;

/// `NLMSGERR_ATTR_MSG`: the extended-ack text of an error.
pub const NLMSGERR_ATTR_MSG: u16 = 1;

/// `RTM_NEWRULE`.
pub const RTM_NEWRULE: u16 = 32;
/// `RTM_DELRULE`.
pub const RTM_DELRULE: u16 = 33;
/// `RTM_GETRULE`.
pub const RTM_GETRULE: u16 = 34;

/// `NFNL_MSG_BATCH_BEGIN`: opens an nfnetlink transaction.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`: commits it.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// The nf_tables subsystem of nfnetlink.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Size of `struct nfgenmsg`.
pub const NFGENMSG_LEN: usize = 4;

/// The generic netlink controller's family id.
pub const GENL_ID_CTRL: u16 = 0x10;
/// Size of `struct genlmsghdr`.
pub const GENL_HDRLEN: usize = 4;
/// `CTRL_CMD_GETFAMILY`.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_ATTR_FAMILY_ID`.
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME`.
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;
