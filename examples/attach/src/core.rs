//! The behaviour: allocate, plumb, roll back, release, as functions over two
//! edges, an [`AddressManager`] (IPAM) and a [`Plumber`] (the kernel). No
//! environment, file, clock or socket here.

use std::net::IpAddr;
use std::path::Path;

use calinet_ipam::HandleId;
use calinet_route::{IfName, WorkloadSpec};
use ipnet::IpNet;

use crate::error::{Error, Result, Step};
use crate::request::{Allocation, AssignParams, Attached, Endpoint, Plumbed, Request};

/// The IPAM edge.
pub trait AddressManager {
    /// Addresses currently held by `handle`, each with its block's prefix
    /// length (empty when none).
    fn held(&mut self, handle: &HandleId) -> Result<Vec<IpNet>>;
    /// Assigns the requested addresses (all or nothing), each with its
    /// block's prefix length.
    fn assign(&mut self, params: &AssignParams) -> Result<Vec<IpNet>>;
    /// Releases everything `handle` holds and returns what it held; releasing
    /// a handle that holds nothing is not an error.
    fn release(&mut self, handle: &HandleId) -> Result<Vec<IpAddr>>;
}

/// The kernel edge.
pub trait Plumber {
    /// Ok when the path is a network namespace that can be entered
    /// ([`Error::NetnsMissing`] when it does not exist,
    /// [`Error::NetnsUnusable`] when it is something else).
    fn netns_exists(&mut self, path: &Path) -> Result<()>;
    /// Ok unless the namespace's interface `pod` is plumbed for an owner
    /// other than `owner` (then [`Error::Plumbing`] with calinet-route's
    /// `InterfaceInUse`).
    fn interface_free(&mut self, netns: &Path, pod: &IfName, owner: &str) -> Result<()>;
    /// Creates (or re-creates) the workload's veth, addresses and routes,
    /// recording `owner` on the host side; writes nothing when they are
    /// already as specified.
    fn setup(&mut self, spec: &WorkloadSpec, owner: Option<&str>) -> Result<Plumbed>;
    /// Differences between the kernel and `spec` (empty when equal).
    fn check(&mut self, spec: &WorkloadSpec) -> Result<Vec<String>>;
    /// Removes the workload's interfaces; tolerates their absence and a
    /// missing namespace. With an `owner`, only interfaces recording that
    /// owner are removed. Returns whether an interface was removed.
    fn teardown(
        &mut self,
        host: &IfName,
        netns: Option<&Path>,
        pod: &IfName,
        owner: Option<&str>,
    ) -> Result<bool>;
}

/// What an ADD will do, decided from the request and what the handle holds:
/// the pure part of [`add`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocationPlan {
    /// The handle already holds addresses (a retried ADD): use them.
    Reuse(Vec<IpNet>),
    /// Assign new ones with these parameters.
    Assign(AssignParams),
}

/// Decides how to get the request's addresses: a retry keeps what the handle
/// holds, so the same container always gets the same addresses.
pub fn plan_allocation(req: &Request, held: Vec<IpNet>) -> Result<AllocationPlan> {
    if !held.is_empty() {
        return Ok(AllocationPlan::Reuse(sorted(held)));
    }
    if req.ipv4.is_none() && req.ipv6.is_none() {
        return Err(Error::InvalidRequest {
            field: "ipv4/ipv6",
            value: "none".into(),
            rule: "at least one address family must be requested".into(),
        });
    }
    Ok(AllocationPlan::Assign(req.assign_params()))
}

fn sorted(mut nets: Vec<IpNet>) -> Vec<IpNet> {
    // IPv4 first, then IPv6: results list them in this order.
    nets.sort_by_key(|n| (n.addr().is_ipv6(), n.addr()));
    nets
}

/// The IPAM step alone: the addresses `req.handle` holds, else new ones.
pub fn allocate(ipam: &mut dyn AddressManager, req: &Request) -> Result<Allocation> {
    let held = ipam.held(&req.handle)?;
    match plan_allocation(req, held)? {
        AllocationPlan::Reuse(nets) => Ok(Allocation { nets, fresh: false }),
        AllocationPlan::Assign(params) => Ok(Allocation {
            nets: sorted(ipam.assign(&params)?),
            fresh: true,
        }),
    }
}

/// ADD: checks the namespace, allocates (or reuses what the handle holds),
/// plumbs. On a failure it undoes what this call did: the workload's host
/// interface (and with it its peer) is removed when plumbing failed, and addresses this call
/// assigned are released (addresses an earlier call assigned stay with the
/// handle). The error names the step ([`Error::AttachFailed`]), or
/// [`Error::RollbackFailed`] when undoing failed too.
pub fn add(
    ipam: &mut dyn AddressManager,
    plumber: &mut dyn Plumber,
    req: &Request,
) -> Result<Attached> {
    let fail = |step, source| Error::AttachFailed {
        handle: req.handle.clone(),
        step,
        source: Box::new(source),
    };
    // Before anything is allocated: an unknown namespace leaves nothing behind.
    let netns = req.netns_path().map_err(|e| fail(Step::CheckNetns, e))?;
    plumber
        .netns_exists(netns)
        .map_err(|e| fail(Step::CheckNetns, e))?;
    // Also before allocating: the interface must not be another container's.
    if let Some(owner) = &req.owner {
        plumber
            .interface_free(netns, &req.pod_ifname, owner)
            .map_err(|e| fail(Step::CheckNetns, e))?;
    }
    let allocation = allocate(ipam, req).map_err(|e| fail(Step::Allocate, e))?;
    let spec = match req.workload_spec(&allocation.nets) {
        Ok(s) => s,
        Err(e) => return Err(rollback(ipam, None, req, &allocation, Step::Spec, e)),
    };
    match plumber.setup(&spec, req.owner.as_deref()) {
        Ok(plumbed) => Ok(Attached {
            allocation,
            spec,
            plumbed,
        }),
        Err(e) => Err(rollback(
            ipam,
            Some(plumber),
            req,
            &allocation,
            Step::Plumb,
            e,
        )),
    }
}

/// Undoes a failed ADD: removes the interfaces (when plumbing was tried) and
/// releases a fresh allocation.
fn rollback(
    ipam: &mut dyn AddressManager,
    plumber: Option<&mut dyn Plumber>,
    req: &Request,
    allocation: &Allocation,
    step: Step,
    original: Error,
) -> Error {
    let mut failures = Vec::new();
    // The host side only (its peer goes with it): an interface in the pod's
    // namespace that the failed setup did not get to replace may not be ours.
    // With an owner, a host side recording another owner stays too.
    if let Some(p) = plumber
        && let Err(e) = p.teardown(
            &req.host_ifname,
            None,
            &req.pod_ifname,
            req.owner.as_deref(),
        )
    {
        failures.push(e);
    }
    if allocation.fresh
        && let Err(e) = ipam.release(&req.handle)
    {
        failures.push(e);
    }
    let handle = req.handle.clone();
    let source = Box::new(original);
    if failures.is_empty() {
        Error::AttachFailed {
            handle,
            step,
            source,
        }
    } else {
        Error::RollbackFailed {
            handle,
            step,
            source,
            rollback: failures,
        }
    }
}

/// What [`release`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Released {
    /// An interface was removed.
    pub interface_removed: bool,
    /// The addresses the handle held.
    pub addresses: Vec<IpAddr>,
}

impl Released {
    /// Only addresses were released (no interface to remove).
    pub fn addresses(addresses: Vec<IpAddr>) -> Self {
        Released {
            interface_removed: false,
            addresses,
        }
    }
}

/// DEL: removes the interfaces (with a plumber) and releases everything the
/// handle holds. Idempotent: succeeds when either is already gone, and
/// without a namespace. With an owner ([`Endpoint::owner`]) only interfaces
/// recording that owner are removed: another container's (a pod re-created
/// under the same name, an unknown container id) are left alone while this
/// handle's addresses are still released. Interfaces go first, so an address is never free
/// while still configured; when their removal fails nothing is released.
pub fn release(
    ipam: &mut dyn AddressManager,
    plumber: Option<&mut dyn Plumber>,
    ep: &Endpoint,
) -> Result<Released> {
    let mut out = Released::default();
    if let Some(p) = plumber {
        out.interface_removed = p.teardown(
            &ep.host_ifname,
            ep.netns.as_deref(),
            &ep.pod_ifname,
            ep.owner.as_deref(),
        )?;
    }
    out.addresses = ipam.release(&ep.handle)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::chain;
    use crate::fake::RecordingPlumber;
    use crate::ipam::IpamAddresses;
    use crate::request::{FamilyRequest, PoolRef};
    use calinet_ipam::MemStore;

    fn v4_pool() -> Option<FamilyRequest> {
        Some(FamilyRequest::from_pools(
            vec![PoolRef::Cidr("172.16.0.0/24".parse().unwrap())],
            Some(30),
        ))
    }

    fn v6_pool() -> Option<FamilyRequest> {
        Some(FamilyRequest::from_pools(
            vec![PoolRef::Cidr("fd00:10::/120".parse().unwrap())],
            Some(126),
        ))
    }

    fn req(id: &str) -> Request {
        Request::new(
            format!("k8s-pod-network.{id}").parse().unwrap(),
            "node-1".parse().unwrap(),
            IfName::calico_workload("default", id),
            Some(format!("/run/netns/{id}").into()),
            1400,
        )
        .pod("default", id)
        .container_id(id)
        .ipv4(v4_pool())
    }

    fn mem() -> IpamAddresses<MemStore> {
        IpamAddresses::new(MemStore::new(), None)
    }

    fn held(ipam: &mut IpamAddresses<MemStore>, id: &str) -> Vec<IpNet> {
        ipam.held(&format!("k8s-pod-network.{id}").parse().unwrap())
            .unwrap()
    }

    #[test]
    fn a_retry_plans_reuse_and_a_first_add_plans_an_assignment() {
        let r = req("c1");
        let held: Vec<IpNet> = vec![
            "fd00:10::1/126".parse().unwrap(),
            "172.16.0.1/30".parse().unwrap(),
        ];
        assert_eq!(
            plan_allocation(&r, held).unwrap(),
            AllocationPlan::Reuse(vec![
                "172.16.0.1/30".parse().unwrap(),
                "fd00:10::1/126".parse().unwrap()
            ])
        );
        let AllocationPlan::Assign(p) = plan_allocation(&r, vec![]).unwrap() else {
            panic!("expected an assignment");
        };
        assert_eq!(p.attributes["namespace"], "default");
        assert_eq!(p.attributes["pod"], "c1");
        assert_eq!(p.attributes["containerID"], "c1");
        assert_eq!(p.attributes["node"], "node-1");
        let e = plan_allocation(&r.clone().ipv4(None), vec![]).unwrap_err();
        assert!(e.to_string().contains("at least one address family"), "{e}");
    }

    #[test]
    fn dual_stack_add_plumbs_both_and_a_retry_gets_the_same_addresses() {
        let mut ipam = mem();
        let mut p = RecordingPlumber::default();
        let r = req("c1").ipv6(v6_pool());
        let a = add(&mut ipam, &mut p, &r).unwrap();
        assert!(a.allocation.fresh);
        assert_eq!(a.allocation.nets.len(), 2);
        assert!(a.allocation.nets[0].addr().is_ipv4() && a.allocation.nets[1].addr().is_ipv6());
        assert_eq!(a.allocation.nets[0].prefix_len(), 30, "the block's prefix");
        assert!(a.spec.ipv4.is_some() && a.spec.ipv6.is_some());
        assert_eq!(a.spec.mtu, 1400);
        assert!(a.plumbed.changed && a.plumbed.host_link_local.is_some());
        let b = add(&mut ipam, &mut p, &r).unwrap();
        assert!(!b.allocation.fresh && !b.plumbed.changed);
        assert_eq!(
            a.allocation,
            Allocation {
                fresh: true,
                ..b.allocation.clone()
            }
        );
        assert_eq!(held(&mut ipam, "c1").len(), 2);
        assert_eq!(
            p.calls.iter().filter(|c| c.starts_with("setup")).count(),
            2,
            "{:?}",
            p.calls
        );
    }

    #[test]
    fn a_plumbing_failure_tears_down_releases_and_names_the_step() {
        let mut ipam = mem();
        let mut p = RecordingPlumber {
            fail_setup: true,
            ..Default::default()
        };
        let e = add(&mut ipam, &mut p, &req("c1")).unwrap_err();
        assert_eq!(e.step(), Some(Step::Plumb), "{e}");
        assert!(e.to_string().contains("step plumb"), "{e}");
        assert!(matches!(e.cause(), Error::Plumbing { .. }), "{e:?}");
        assert!(held(&mut ipam, "c1").is_empty());
        assert!(
            p.calls.iter().any(|c| c.starts_with("teardown")),
            "{:?}",
            p.calls
        );
    }

    #[test]
    fn a_failed_retry_keeps_the_addresses_an_earlier_add_assigned() {
        let mut ipam = mem();
        let mut p = RecordingPlumber::default();
        let first = add(&mut ipam, &mut p, &req("c1")).unwrap();
        p.fail_setup = true;
        let e = add(&mut ipam, &mut p, &req("c1")).unwrap_err();
        assert_eq!(e.step(), Some(Step::Plumb));
        assert_eq!(held(&mut ipam, "c1"), first.allocation.nets);
    }

    #[test]
    fn a_failed_rollback_reports_both_failures() {
        let mut ipam = mem();
        let mut p = RecordingPlumber {
            fail_setup: true,
            fail_teardown: true,
            ..Default::default()
        };
        let e = add(&mut ipam, &mut p, &req("c1")).unwrap_err();
        let Error::RollbackFailed { step, rollback, .. } = &e else {
            panic!("expected RollbackFailed, got {e:?}");
        };
        assert_eq!(*step, Step::Plumb);
        assert_eq!(rollback.len(), 1);
        assert!(e.to_string().contains("Device or resource busy"), "{e}");
        // The release part of the rollback still ran.
        assert!(held(&mut ipam, "c1").is_empty());
    }

    #[test]
    fn an_unknown_netns_allocates_nothing() {
        let mut ipam = mem();
        let mut p = RecordingPlumber {
            missing_netns: true,
            ..Default::default()
        };
        let e = add(&mut ipam, &mut p, &req("c1")).unwrap_err();
        assert_eq!(e.step(), Some(Step::CheckNetns));
        assert!(matches!(e.cause(), Error::NetnsMissing { .. }));
        assert!(held(&mut ipam, "c1").is_empty());
        assert_eq!(p.calls.len(), 1, "{:?}", p.calls);
    }

    #[test]
    fn exhaustion_fails_at_allocate_and_plumbs_nothing() {
        let mut ipam = mem();
        let mut p = RecordingPlumber::default();
        let one_block = |id: &str| {
            req(id).ipv4(Some(FamilyRequest::from_pools(
                vec![PoolRef::Cidr("172.16.0.0/30".parse().unwrap())],
                Some(30),
            )))
        };
        for i in 0..4 {
            add(&mut ipam, &mut p, &one_block(&format!("c{i}"))).unwrap();
        }
        let e = add(&mut ipam, &mut p, &one_block("c4")).unwrap_err();
        assert_eq!(e.step(), Some(Step::Allocate));
        assert!(
            matches!(
                e.cause(),
                Error::Ipam {
                    source: calinet_ipam::Error::Exhausted { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_datastore_failure());
        assert!(!p.calls.iter().any(|c| c.contains(one_block("c4").host_ifname.as_str())
            && c.starts_with("setup")));
    }

    #[test]
    fn an_unknown_pool_name_is_named() {
        let mut ipam = mem();
        let mut p = RecordingPlumber::default();
        let r = req("c1").ipv4(Some(FamilyRequest::from_pools(
            vec![PoolRef::Name("nope".into())],
            None,
        )));
        let e = add(&mut ipam, &mut p, &r).unwrap_err();
        assert!(
            chain(&e).contains("no IPPool named \"nope\""),
            "{}",
            chain(&e)
        );
    }

    #[test]
    fn release_is_idempotent_and_works_without_netns() {
        let mut ipam = mem();
        let mut p = RecordingPlumber::default();
        let a = add(&mut ipam, &mut p, &req("c1")).unwrap();
        let mut r = req("c1");
        r.netns = None;
        let first = release(&mut ipam, Some(&mut p), &r.endpoint()).unwrap();
        assert!(first.interface_removed);
        assert_eq!(first.addresses, a.allocation.addrs());
        let again = release(&mut ipam, Some(&mut p), &r.endpoint()).unwrap();
        assert_eq!(again, Released::default());
        assert!(held(&mut ipam, "c1").is_empty());
        assert!(p.calls.last().unwrap().ends_with("None"), "{:?}", p.calls);
    }

    #[test]
    fn an_owned_release_leaves_another_owners_interface_and_add_refuses_it() {
        let mut ipam = mem();
        let mut p = RecordingPlumber::default();
        // Two containers of one pod: the same host interface name.
        let a = req("c1").owner("ctr-a");
        let mut b = req("c1").owner("ctr-b");
        b.handle = "k8s-pod-network.ctr-b".parse().unwrap();
        b.netns = Some("/run/netns/other".into());
        add(&mut ipam, &mut p, &a).unwrap();
        add(&mut ipam, &mut p, &b).unwrap();
        let r = release(&mut ipam, Some(&mut p), &a.endpoint()).unwrap();
        assert!(!r.interface_removed, "B's interface is not A's to remove");
        assert_eq!(r.addresses.len(), 1, "A's address is released");
        assert_eq!(p.owners[&b.host_ifname], "ctr-b");
        assert_eq!(held(&mut ipam, "ctr-b").len(), 1);

        // Another container into B's namespace and interface: refused before
        // anything is allocated.
        let mut c = b.clone().owner("ctr-c");
        c.handle = "k8s-pod-network.ctr-c".parse().unwrap();
        let e = add(&mut ipam, &mut p, &c).unwrap_err();
        assert_eq!(e.step(), Some(Step::CheckNetns), "{e}");
        assert!(chain(&e).contains("ctr-b"), "{}", chain(&e));
        assert!(held(&mut ipam, "ctr-c").is_empty());
        assert!(
            release(&mut ipam, Some(&mut p), &b.endpoint())
                .unwrap()
                .interface_removed
        );
    }

    #[test]
    fn a_failed_teardown_releases_nothing() {
        let mut ipam = mem();
        let mut p = RecordingPlumber::default();
        add(&mut ipam, &mut p, &req("c1")).unwrap();
        p.fail_teardown = true;
        release(&mut ipam, Some(&mut p), &req("c1").endpoint()).unwrap_err();
        assert_eq!(held(&mut ipam, "c1").len(), 1);
    }
}
