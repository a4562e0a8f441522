//! Explicit network namespaces: [`Netns`], defined in `calinet-netlink` (the
//! workspace's one place for namespace entry) and re-exported here so that
//! `calinet_route::Netns` keeps its path.
//!
//! Every kernel operation of this crate names the namespace it works in with a
//! [`Netns`]. Work that must run *inside* a namespace (creating a netlink socket,
//! writing `/proc/sys`) is a synchronous closure that [`Netns::run`] runs on the
//! calling thread between two `setns` calls.

pub use calinet_netlink::Netns;
