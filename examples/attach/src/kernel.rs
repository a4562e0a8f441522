//! The real kernel edge: calinet-route's workload setup, check and teardown,
//! run on the plumber's own single-threaded tokio runtime, over one netlink
//! connection in the namespace the plumber was created in (the host's).

use std::path::Path;

use calinet_route::nl::Conn;
use calinet_route::{IfName, MacAddr, Netns, RouteProtocol, WorkloadSpec, workload};

use crate::core::Plumber;
use crate::error::{Error, Result};
use crate::request::Plumbed;

/// Plumbs workloads from the host's namespace. Host routes carry
/// `protocol` (Calico's 80 by default), so whoever reconciles routes of that
/// protocol owns them.
#[derive(Debug)]
pub struct KernelPlumber {
    rt: tokio::runtime::Runtime,
    host_ns: Netns,
    conn: Option<Conn>,
    protocol: RouteProtocol,
}

fn plumb_err(what: String) -> impl FnOnce(calinet_route::Error) -> Error {
    move |source| Error::Plumbing { what, source }
}

impl KernelPlumber {
    /// A plumber in the calling thread's namespace, host routes with
    /// protocol 80.
    pub fn new() -> Result<KernelPlumber> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Plumbing {
                what: "tokio runtime".into(),
                source: calinet_route::Error::Transport {
                    context: "starting the runtime".into(),
                    source,
                },
            })?;
        let host_ns = Netns::current()
            .map_err(calinet_route::Error::from)
            .map_err(plumb_err("opening the host namespace".into()))?;
        Ok(KernelPlumber {
            rt,
            host_ns,
            conn: None,
            protocol: RouteProtocol::CALICO,
        })
    }

    /// Sets the protocol of the host routes.
    pub fn protocol(mut self, protocol: RouteProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Runs `f` with the (lazily opened, then reused) host connection.
    fn with_conn<T>(
        &mut self,
        what: String,
        f: impl AsyncFnOnce(&mut Conn, RouteProtocol) -> calinet_route::Result<T>,
    ) -> Result<T> {
        let KernelPlumber {
            rt,
            host_ns,
            conn,
            protocol,
        } = self;
        let protocol = *protocol;
        rt.block_on(async {
            if conn.is_none() {
                *conn = Some(Conn::open(host_ns).await?);
            }
            let c = conn.as_mut().expect("opened above");
            let out = f(c, protocol).await;
            if out.is_err() {
                // A failed request may leave replies unread: start afresh.
                *conn = None;
            }
            out
        })
        .map_err(plumb_err(what))
    }

    fn writes(&self) -> u64 {
        self.conn.as_ref().map_or(0, |c| c.stats().writes)
    }
}

impl Plumber for KernelPlumber {
    fn netns_exists(&mut self, path: &Path) -> Result<()> {
        match std::fs::metadata(path) {
            // Entering it and coming back proves it is a network namespace:
            // setns(2) refuses a regular file or a directory with EINVAL.
            Ok(_) => {
                Netns::open(path)
                    .and_then(|ns| ns.run(|| ()))
                    .map_err(|e| Error::NetnsUnusable {
                        path: path.to_path_buf(),
                        source: match calinet_route::Error::from(e) {
                            calinet_route::Error::Netns { source, .. } => source,
                            other => std::io::Error::other(other.to_string()),
                        },
                    })
            }
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NetnsMissing {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(source) => Err(Error::NetnsUnusable {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn interface_free(&mut self, netns: &Path, pod: &IfName, owner: &str) -> Result<()> {
        let what = format!("{}:{pod}", netns.display());
        let ns = Netns::open(netns)
            .map_err(calinet_route::Error::from)
            .map_err(plumb_err(what.clone()))?;
        let found = self.with_conn(what.clone(), async |c, _| {
            workload::pod_interface_owner(c, &ns, pod).await
        })?;
        match found {
            workload::PodInterface::Owned(other) if other != owner => Err(Error::Plumbing {
                what,
                source: calinet_route::Error::InterfaceInUse {
                    netns: ns.to_string(),
                    name: pod.to_string(),
                    owner: other,
                },
            }),
            _ => Ok(()),
        }
    }

    fn setup(&mut self, spec: &WorkloadSpec, owner: Option<&str>) -> Result<Plumbed> {
        let what = format!(
            "{} <-> {}:{}",
            spec.host_ifname,
            spec.pod_netns.display(),
            spec.pod_ifname
        );
        let before = self.writes();
        let report = self.with_conn(what, async |c, protocol| {
            workload::setup_owned_workload(c, spec, protocol, owner).await
        })?;
        // The pod side is written over its own connection: one more write.
        let writes = self.writes().saturating_sub(before) + u64::from(report.changed);
        Ok(Plumbed {
            changed: report.changed,
            writes,
            host_mac: Some(MacAddr::WORKLOAD_HOST),
            // setup_workload created the pod side with this MAC, or read it
            // when it found the workload unchanged.
            pod_mac: report.pod_mac,
            host_link_local: report.host_link_local,
        })
    }

    fn check(&mut self, spec: &WorkloadSpec) -> Result<Vec<String>> {
        let what = format!("check of {}", spec.host_ifname);
        self.with_conn(what, async |c, protocol| {
            workload::check_workload(c, spec, protocol).await
        })
        .map(|d| d.iter().map(ToString::to_string).collect())
    }

    fn teardown(
        &mut self,
        host: &IfName,
        netns: Option<&Path>,
        pod: &IfName,
        owner: Option<&str>,
    ) -> Result<bool> {
        let what = format!("teardown of {host}");
        self.with_conn(what, async |c, _| match owner {
            Some(o) => workload::teardown_owned_workload(c, host, netns, pod, o).await,
            None => workload::teardown_workload(c, host, netns, pod).await,
        })
        .map(|r| r.host_link_deleted || r.pod_link_deleted)
    }
}
