//! What a caller asks for (a [`Request`]) and what it gets back
//! ([`Allocation`], [`Attached`]). Values only: no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use calinet_ipam::{Attributes, HandleId, NodeName};
use calinet_route::{IfName, MacAddr, WorkloadSpec};
use ipnet::IpNet;

use crate::error::{Error, Result};

/// A pool to allocate from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolRef {
    /// A CIDR: the pool with this CIDR, created if the datastore has none.
    Cidr(IpNet),
    /// The name of an existing IPPool.
    Name(String),
}

/// One address family's part of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FamilyRequest {
    /// Pools to allocate from (empty: any enabled pool of the family that
    /// selects the node).
    pub pools: Vec<PoolRef>,
    /// Block size of pools created for [`PoolRef::Cidr`] entries.
    pub block_size: Option<u8>,
}

impl FamilyRequest {
    /// Any pool of the family.
    pub fn any() -> Self {
        FamilyRequest::default()
    }

    /// These pools, with `block_size` for the ones created from a CIDR.
    pub fn from_pools(pools: Vec<PoolRef>, block_size: Option<u8>) -> Self {
        FamilyRequest { pools, block_size }
    }
}

/// Kubernetes namespace and name of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Where a pod's attachment lives: its handle and its interfaces. What
/// [`crate::release`] needs (no node, no addresses wanted).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// The IPAM handle holding the pod's addresses.
    pub handle: HandleId,
    /// Host-side veth name.
    pub host_ifname: IfName,
    /// Interface name inside the pod.
    pub pod_ifname: IfName,
    /// The pod's network namespace, when known.
    pub netns: Option<PathBuf>,
    /// Who the interfaces belong to (recorded on the host side as its alias):
    /// release removes only interfaces recording this owner. `None` removes
    /// them by name.
    pub owner: Option<String>,
}

impl Endpoint {
    /// An endpoint with pod interface `eth0`, no owner.
    pub fn new(handle: HandleId, host_ifname: IfName, netns: Option<PathBuf>) -> Self {
        Endpoint {
            handle,
            host_ifname,
            pod_ifname: IfName::new("eth0").expect("eth0 is a valid interface name"),
            netns,
            owner: None,
        }
    }

    /// Sets the owner (see [`Endpoint::owner`]).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets the interface name inside the pod.
    pub fn pod_ifname(mut self, name: IfName) -> Self {
        self.pod_ifname = name;
        self
    }

    /// The workload spec for these addresses (the first IPv4 and the first
    /// IPv6 one) with veth MTU `mtu`.
    pub fn workload_spec(&self, mtu: u32, nets: &[IpNet]) -> Result<WorkloadSpec> {
        let netns = self.netns.as_deref().ok_or_else(|| Error::InvalidRequest {
            field: "netns",
            value: String::new(),
            rule: "plumbing a workload needs the pod's network namespace".into(),
        })?;
        let mut spec = WorkloadSpec::new(self.host_ifname.clone(), netns, mtu)
            .pod_ifname(self.pod_ifname.clone());
        if let Some(v4) = first_v4(nets) {
            spec = spec.ipv4(v4);
        }
        if let Some(v6) = first_v6(nets) {
            spec = spec.ipv6(v6);
        }
        if spec.ipv4.is_none() && spec.ipv6.is_none() {
            return Err(Error::InvalidRequest {
                field: "addresses",
                value: format!("{nets:?}"),
                rule: "a workload needs an IPv4 or an IPv6 address".into(),
            });
        }
        Ok(spec)
    }
}

/// One pod attachment: who the pod is, where its interfaces go, and what
/// addresses it wants. Built with [`Request::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Request {
    /// The IPAM handle holding the pod's addresses.
    pub handle: HandleId,
    /// The node the pod runs on (allocations are made for it).
    pub node: NodeName,
    /// The node's labels (for pools' node selectors).
    pub node_labels: BTreeMap<String, String>,
    /// The Kubernetes pod, when there is one.
    pub pod: Option<PodRef>,
    /// The container (sandbox) id, when there is one.
    pub container_id: Option<String>,
    /// Host-side veth name.
    pub host_ifname: IfName,
    /// Interface name inside the pod.
    pub pod_ifname: IfName,
    /// The pod's network namespace; ADD needs it, release works without.
    pub netns: Option<PathBuf>,
    /// IPv4: one address when `Some`.
    pub ipv4: Option<FamilyRequest>,
    /// IPv6: one address when `Some`.
    pub ipv6: Option<FamilyRequest>,
    /// MTU of both veth ends.
    pub mtu: u32,
    /// Who the interfaces belong to: recorded on the host side (its alias),
    /// checked before an ADD (another owner's interface is an error) and by
    /// release. The CNI plugin uses the container id.
    pub owner: Option<String>,
}

impl Request {
    /// A request for one IPv4 address from any pool, pod interface `eth0`.
    pub fn new(
        handle: HandleId,
        node: NodeName,
        host_ifname: IfName,
        netns: Option<PathBuf>,
        mtu: u32,
    ) -> Self {
        Request {
            handle,
            node,
            node_labels: BTreeMap::new(),
            pod: None,
            container_id: None,
            host_ifname,
            pod_ifname: IfName::new("eth0").expect("eth0 is a valid interface name"),
            netns,
            ipv4: Some(FamilyRequest::any()),
            ipv6: None,
            mtu,
            owner: None,
        }
    }

    /// Sets the owner (see [`Request::owner`]).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets the Kubernetes pod.
    pub fn pod(mut self, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        self.pod = Some(PodRef {
            namespace: namespace.into(),
            name: name.into(),
        });
        self
    }

    /// Sets the container id.
    pub fn container_id(mut self, id: impl Into<String>) -> Self {
        self.container_id = Some(id.into());
        self
    }

    /// Sets the interface name inside the pod.
    pub fn pod_ifname(mut self, name: IfName) -> Self {
        self.pod_ifname = name;
        self
    }

    /// Sets the node's labels.
    pub fn node_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.node_labels = labels;
        self
    }

    /// Sets what IPv4 address is wanted (`None`: none).
    pub fn ipv4(mut self, family: Option<FamilyRequest>) -> Self {
        self.ipv4 = family;
        self
    }

    /// Sets what IPv6 address is wanted (`None`: none).
    pub fn ipv6(mut self, family: Option<FamilyRequest>) -> Self {
        self.ipv6 = family;
        self
    }

    /// The request's handle and interfaces.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            handle: self.handle.clone(),
            host_ifname: self.host_ifname.clone(),
            pod_ifname: self.pod_ifname.clone(),
            netns: self.netns.clone(),
            owner: self.owner.clone(),
        }
    }

    /// The namespace path, or an error naming the field when there is none.
    pub fn netns_path(&self) -> Result<&Path> {
        self.netns.as_deref().ok_or_else(|| Error::InvalidRequest {
            field: "netns",
            value: String::new(),
            rule: "an ADD needs the pod's network namespace".into(),
        })
    }

    /// The owner attributes stored with the allocation: Calico's `node`,
    /// `namespace` and `pod`, plus `containerID` when known.
    pub fn attributes(&self) -> Attributes {
        let mut a = Attributes::new();
        a.insert("node".into(), self.node.to_string());
        if let Some(id) = &self.container_id {
            a.insert("containerID".into(), id.clone());
        }
        if let Some(p) = &self.pod {
            a.insert("namespace".into(), p.namespace.clone());
            a.insert("pod".into(), p.name.clone());
        }
        a
    }

    /// What the request asks of the address manager.
    pub fn assign_params(&self) -> AssignParams {
        AssignParams {
            handle: self.handle.clone(),
            node: self.node.clone(),
            node_labels: self.node_labels.clone(),
            ipv4: self.ipv4.clone(),
            ipv6: self.ipv6.clone(),
            attributes: self.attributes(),
        }
    }

    /// The workload spec for these addresses (the first IPv4 and the first
    /// IPv6 one).
    pub fn workload_spec(&self, nets: &[IpNet]) -> Result<WorkloadSpec> {
        self.endpoint().workload_spec(self.mtu, nets)
    }
}

fn first_v4(nets: &[IpNet]) -> Option<Ipv4Addr> {
    nets.iter().find_map(|n| match n.addr() {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    })
}

fn first_v6(nets: &[IpNet]) -> Option<Ipv6Addr> {
    nets.iter().find_map(|n| match n.addr() {
        IpAddr::V6(v) => Some(v),
        IpAddr::V4(_) => None,
    })
}

/// What an address request asks of the IPAM edge.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AssignParams {
    /// The handle.
    pub handle: HandleId,
    /// The node asking.
    pub node: NodeName,
    /// The node's labels (pool node selectors).
    pub node_labels: BTreeMap<String, String>,
    /// One IPv4 address from these pools, when `Some`.
    pub ipv4: Option<FamilyRequest>,
    /// One IPv6 address from these pools, when `Some`.
    pub ipv6: Option<FamilyRequest>,
    /// Owner attributes stored with the allocation.
    pub attributes: Attributes,
}

/// The addresses a handle holds after [`crate::allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The addresses with their block's prefix length, IPv4 first.
    pub nets: Vec<IpNet>,
    /// Whether this call assigned them (false: the handle already held them,
    /// a retried ADD).
    pub fresh: bool,
}

impl Allocation {
    /// The addresses without prefix.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.nets.iter().map(IpNet::addr).collect()
    }
}

/// What the kernel edge reports after plumbing a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Plumbed {
    /// Whether anything was written (false: the workload was already as
    /// specified).
    pub changed: bool,
    /// Netlink write requests made (host side, plus one for the pod side).
    pub writes: u64,
    /// The host side's MAC.
    pub host_mac: Option<MacAddr>,
    /// The pod side's MAC.
    pub pod_mac: Option<MacAddr>,
    /// The host side's IPv6 link-local address (the pod's IPv6 gateway).
    pub host_link_local: Option<IpAddr>,
}

impl Plumbed {
    /// A report of a setup that wrote (`changed`) or did not.
    pub fn new(changed: bool) -> Self {
        Plumbed {
            changed,
            ..Plumbed::default()
        }
    }
}

/// A pod attached by [`crate::add`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Its addresses.
    pub allocation: Allocation,
    /// What was plumbed.
    pub spec: WorkloadSpec,
    /// What the kernel edge reported.
    pub plumbed: Plumbed,
}
