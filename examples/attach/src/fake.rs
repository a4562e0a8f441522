//! A recording, fault-injecting [`Plumber`] for unit tests of the core and of
//! its callers (the CNI plugin, the agent). For addresses, use
//! [`crate::IpamAddresses`] on calinet-ipam's `MemStore`: the real allocator,
//! in memory.

use std::collections::BTreeMap;
use std::path::Path;

use calinet_route::{IfName, MacAddr, WorkloadSpec};

use crate::core::Plumber;
use crate::error::{Error, Result};
use crate::request::Plumbed;

/// Records every call as a line (`setup cali123 Some(172.16.0.1) None`,
/// `teardown cali123 Some("/run/netns/x")`), keeps the set of workloads it
/// "plumbed", and fails where told to.
#[derive(Debug, Default)]
pub struct RecordingPlumber {
    /// One line per call, in order.
    pub calls: Vec<String>,
    /// Workloads currently plumbed, by host interface.
    pub plumbed: BTreeMap<IfName, WorkloadSpec>,
    /// The owner recorded on each plumbed host interface (when one was given).
    pub owners: BTreeMap<IfName, String>,
    /// Fail every `setup` (as an `EEXIST` from the kernel).
    pub fail_setup: bool,
    /// Fail every `teardown`.
    pub fail_teardown: bool,
    /// Report every namespace as missing.
    pub missing_netns: bool,
    /// What `check` reports.
    pub check_diffs: Vec<String>,
}

fn netlink(request: &str, errno: i32, message: &str) -> calinet_route::Error {
    calinet_route::Error::Netlink {
        request: request.into(),
        errno,
        message: message.into(),
    }
}

impl Plumber for RecordingPlumber {
    fn netns_exists(&mut self, path: &Path) -> Result<()> {
        self.calls.push(format!("netns_exists {}", path.display()));
        if self.missing_netns {
            return Err(Error::NetnsMissing {
                path: path.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(())
    }

    fn interface_free(&mut self, netns: &Path, pod: &IfName, owner: &str) -> Result<()> {
        self.calls
            .push(format!("interface_free {}:{pod} {owner}", netns.display()));
        let other = self
            .plumbed
            .iter()
            .filter(|(_, s)| s.pod_netns == netns && &s.pod_ifname == pod)
            .find_map(|(h, _)| self.owners.get(h).filter(|o| *o != owner));
        match other {
            Some(o) => Err(Error::Plumbing {
                what: format!("{}:{pod}", netns.display()),
                source: calinet_route::Error::InterfaceInUse {
                    netns: netns.display().to_string(),
                    name: pod.to_string(),
                    owner: o.clone(),
                },
            }),
            None => Ok(()),
        }
    }

    fn setup(&mut self, spec: &WorkloadSpec, owner: Option<&str>) -> Result<Plumbed> {
        self.calls.push(format!(
            "setup {} {:?} {:?}",
            spec.host_ifname, spec.ipv4, spec.ipv6
        ));
        if self.fail_setup {
            return Err(Error::Plumbing {
                what: spec.host_ifname.to_string(),
                source: netlink("link add", 17, "File exists"),
            });
        }
        let changed = self.plumbed.get(&spec.host_ifname) != Some(spec)
            || self.owners.get(&spec.host_ifname).map(String::as_str) != owner;
        self.plumbed.insert(spec.host_ifname.clone(), spec.clone());
        match owner {
            Some(o) => self.owners.insert(spec.host_ifname.clone(), o.to_owned()),
            None => self.owners.remove(&spec.host_ifname),
        };
        let mut p = Plumbed::new(changed);
        p.writes = u64::from(changed);
        p.host_mac = Some(MacAddr::WORKLOAD_HOST);
        p.pod_mac = Some(MacAddr([0x02, 0, 0, 0, 0, 0x01]));
        p.host_link_local = spec
            .ipv6
            .map(|_| "fe80::ecee:eeff:feee:eeee".parse().expect("valid"));
        Ok(p)
    }

    fn check(&mut self, spec: &WorkloadSpec) -> Result<Vec<String>> {
        self.calls.push(format!("check {}", spec.host_ifname));
        Ok(self.check_diffs.clone())
    }

    fn teardown(
        &mut self,
        host: &IfName,
        netns: Option<&Path>,
        _pod: &IfName,
        owner: Option<&str>,
    ) -> Result<bool> {
        self.calls.push(format!(
            "teardown {host} {:?}",
            netns.map(|p| p.display().to_string())
        ));
        if self.fail_teardown {
            return Err(Error::Plumbing {
                what: format!("teardown of {host}"),
                source: netlink("link del", 16, "Device or resource busy"),
            });
        }
        // With an owner, only a workload recording that owner goes.
        if let Some(o) = owner
            && self.owners.get(host).map(String::as_str) != Some(o)
        {
            return Ok(false);
        }
        self.owners.remove(host);
        Ok(self.plumbed.remove(host).is_some())
    }
}
