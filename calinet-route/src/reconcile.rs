//! The reconciler: observe -> plan -> apply, over any [`Backend`].

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use crate::backend::{Backend, EntryOp, RouteOp};
use crate::error::{Error, Result};
use crate::kernel::LinkIndex;
use crate::nl::Nack;
use crate::plan::{Plan, plan_fdb, plan_neighbours, plan_routes};
use crate::spec::{FdbSpec, IfName, NeighbourSpec, Ownership, RouteKey, RouteSpec};

/// Why a desired entry was not written yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PendingReason {
    /// Its device does not exist.
    DeviceMissing,
    /// Its device is administratively down (the kernel refuses routes through it).
    DeviceDown,
}

/// A desired route held back until its device exists and is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending<T> {
    /// The entry.
    pub entry: T,
    /// Why it waits.
    pub reason: PendingReason,
}

/// What one reconcile did.
#[derive(Debug)]
pub struct Report<T> {
    /// The plan that was computed (before pending entries were held back).
    pub plan: Plan<T>,
    /// Entries held back because their device is missing or down.
    pub pending: Vec<Pending<T>>,
    /// Writes the kernel rejected for other reasons, with errno and request.
    pub failures: Vec<Error>,
    /// Write requests issued by this reconcile.
    pub writes: u64,
}

impl<T> Report<T> {
    /// Ok when no write failed (pending entries are not failures).
    pub fn into_result(self) -> Result<Self> {
        if let Some(first) = self.failures.into_iter().next() {
            return Err(first);
        }
        Ok(Report {
            failures: Vec::new(),
            ..self
        })
    }

    /// Whether the kernel now matches the desired state (nothing pending or failed).
    pub fn converged(&self) -> bool {
        self.pending.is_empty() && self.failures.is_empty()
    }
}

/// Route, neighbour and FDB reconciler for one namespace.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use calinet_route::{MemoryBackend, Ownership, Reconciler, RouteSpec};
/// let mut kernel = MemoryBackend::new();
/// kernel.add_link("cali1", true);
/// let mut rec = Reconciler::new(kernel, Ownership::default().interface_prefix("cali"));
/// let desired = vec![
///     RouteSpec::workload("172.16.101.5".parse().unwrap(), "cali1".parse().unwrap()),
///     RouteSpec::blackhole("172.16.101.0/26".parse().unwrap()),
/// ];
/// let first = rec.reconcile_routes(&desired).await.unwrap();
/// assert_eq!(first.writes, 2);
/// let again = rec.reconcile_routes(&desired).await.unwrap();
/// assert_eq!(again.writes, 0); // converged: no writes at all
/// # });
/// ```
#[derive(Debug)]
pub struct Reconciler<B> {
    backend: B,
    ownership: Ownership,
    last_desired: Vec<RouteSpec>,
    pending: Vec<Pending<RouteSpec>>,
}

fn is_device_errno(errno: i32) -> Option<PendingReason> {
    match errno {
        libc::ENODEV => Some(PendingReason::DeviceMissing),
        libc::ENETDOWN => Some(PendingReason::DeviceDown),
        _ => None,
    }
}

fn device_state(links: &LinkIndex, dev: Option<&IfName>) -> Option<PendingReason> {
    let dev = dev?;
    match links.by_name(dev) {
        None => Some(PendingReason::DeviceMissing),
        Some(l) if !l.up => Some(PendingReason::DeviceDown),
        Some(_) => None,
    }
}

impl<B: Backend> Reconciler<B> {
    /// A reconciler that owns routes according to `ownership`.
    pub fn new(backend: B, ownership: Ownership) -> Self {
        Reconciler {
            backend,
            ownership,
            last_desired: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// The backend (e.g. to read its counters).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The ownership rules.
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// Routes held back by the last reconcile.
    pub fn pending(&self) -> &[Pending<RouteSpec>] {
        &self.pending
    }

    /// Dumps links and routes, plans against `desired`, and applies the plan.
    ///
    /// Bad input (an invalid or unowned desired route, conflicting keys) is rejected
    /// before anything is written. Routes whose device is missing or down are held
    /// back in [`Report::pending`] and retried by [`Reconciler::retry_pending`] or the
    /// next reconcile.
    pub async fn reconcile_routes(&mut self, desired: &[RouteSpec]) -> Result<Report<RouteSpec>> {
        let before = self.backend.writes();
        let links = self.backend.links().await?;
        let observed = self.backend.routes(&links).await?;
        let plan = plan_routes(desired, &observed, &self.ownership)?;
        self.last_desired = desired.to_vec();
        let shared: HashSet<RouteKey> = plan.foreign_conflicts.iter().map(|r| r.key()).collect();

        let mut pending = Vec::new();
        let mut ops = Vec::with_capacity(plan.writes());
        for r in &plan.replacements {
            if let Some(reason) = device_state(&links, r.desired.device.as_ref()) {
                pending.push(Pending {
                    entry: r.desired.clone(),
                    reason,
                });
                // The stale one must still go.
                ops.push(RouteOp::Delete(r.observed.clone()));
            } else if shared.contains(&r.desired.key()) {
                // NLM_F_REPLACE could hit the foreign route with the same key.
                ops.push(RouteOp::Delete(r.observed.clone()));
                ops.push(RouteOp::Add {
                    route: r.desired.clone(),
                    exclusive: false,
                });
            } else {
                ops.push(RouteOp::Replace(r.desired.clone()));
            }
        }
        for a in &plan.adds {
            if let Some(reason) = device_state(&links, a.device.as_ref()) {
                pending.push(Pending {
                    entry: a.clone(),
                    reason,
                });
            } else {
                ops.push(RouteOp::Add {
                    route: a.clone(),
                    exclusive: !shared.contains(&a.key()),
                });
            }
        }
        for d in &plan.deletions {
            ops.push(RouteOp::Delete(d.clone()));
        }
        let outcomes = self.backend.apply_routes(&ops, &links).await?;
        let mut failures = Vec::new();
        for (op, outcome) in ops.iter().zip(outcomes) {
            let Some(nack) = outcome else { continue };
            match (op, is_device_errno(nack.errno)) {
                // Device vanished between dump and write: wait for it.
                (RouteOp::Add { route, .. } | RouteOp::Replace(route), Some(reason)) => {
                    pending.push(Pending {
                        entry: route.clone(),
                        reason,
                    });
                }
                // Already gone (the kernel flushed it with its device): fine.
                (RouteOp::Delete(_), _) if nack.errno == libc::ESRCH => {}
                _ => failures.push(nack.into_error(op.to_string())),
            }
        }
        for p in &pending {
            tracing::info!(route = %p.entry, reason = ?p.reason, "route left pending until its device is up");
        }
        for f in &failures {
            tracing::warn!(error = %f, "kernel rejected a route write");
        }
        self.pending = pending.clone();
        Ok(Report {
            plan,
            pending,
            failures,
            writes: self.backend.writes() - before,
        })
    }

    /// Cheap check after link changes: dumps only links, and if a pending route's
    /// device now exists and is up, reconciles the last desired routes again.
    /// Returns `None` when nothing became ready.
    pub async fn retry_pending(&mut self) -> Result<Option<Report<RouteSpec>>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let links = self.backend.links().await?;
        let ready = self
            .pending
            .iter()
            .any(|p| device_state(&links, p.entry.device.as_ref()).is_none());
        if !ready {
            return Ok(None);
        }
        let desired = std::mem::take(&mut self.last_desired);
        let report = self.reconcile_routes(&desired).await;
        if report.is_err() {
            self.last_desired = desired;
        }
        report.map(Some)
    }

    /// Reconciles permanent neighbour and FDB entries on `devices` (e.g.
    /// `vxlan.calico`): entries there that are not desired are deleted.
    pub async fn reconcile_neighbours(
        &mut self,
        neighbours: &[NeighbourSpec],
        fdb: &[FdbSpec],
        devices: &BTreeSet<IfName>,
    ) -> Result<(Report<NeighbourSpec>, Report<FdbSpec>)> {
        let before = self.backend.writes();
        let links = self.backend.links().await?;
        let nplan = plan_neighbours(neighbours, &self.backend.neighbours(&links).await?, devices)?;
        let fplan = plan_fdb(fdb, &self.backend.fdb(&links).await?, devices)?;

        // FDB first: a neighbour entry without its FDB entry would send to nowhere.
        let (fops, fpending) = entry_ops(&fplan, &links, |e: &FdbSpec| &e.device);
        let fout = self.backend.apply_fdb(&fops, &links).await?;
        let fwrites = self.backend.writes() - before;
        let (nops, npending) = entry_ops(&nplan, &links, |e: &NeighbourSpec| &e.device);
        let nout = self.backend.apply_neighbours(&nops, &links).await?;
        let nwrites = self.backend.writes() - before - fwrites;
        let freport = Report {
            failures: entry_failures(&fops, fout),
            plan: fplan,
            pending: fpending,
            writes: fwrites,
        };
        let nreport = Report {
            failures: entry_failures(&nops, nout),
            plan: nplan,
            pending: npending,
            writes: nwrites,
        };
        Ok((nreport, freport))
    }
}

fn entry_ops<T: Clone>(
    plan: &Plan<T>,
    links: &LinkIndex,
    device: impl Fn(&T) -> &IfName,
) -> (Vec<EntryOp<T>>, Vec<Pending<T>>) {
    let mut ops = Vec::new();
    let mut pending = Vec::new();
    let wanted = plan
        .replacements
        .iter()
        .map(|r| &r.desired)
        .chain(plan.adds.iter());
    for e in wanted {
        match device_state(links, Some(device(e))) {
            None | Some(PendingReason::DeviceDown) => ops.push(EntryOp::Set(e.clone())),
            Some(reason) => pending.push(Pending {
                entry: e.clone(),
                reason,
            }),
        }
    }
    for d in &plan.deletions {
        ops.push(EntryOp::Delete(d.clone()));
    }
    (ops, pending)
}

fn entry_failures<T>(ops: &[EntryOp<T>], outcomes: Vec<Option<Nack>>) -> Vec<Error>
where
    EntryOp<T>: std::fmt::Display,
{
    ops.iter()
        .zip(outcomes)
        .filter_map(|(op, o)| {
            let n = o?;
            if matches!(op, EntryOp::Delete(_))
                && (n.errno == libc::ENOENT || n.errno == libc::ESRCH)
            {
                return None;
            }
            Some(n.into_error(op.to_string()))
        })
        .collect()
}

/// The caller's resync clock: a full reconcile every `interval` (Calico: 90 s), with
/// time passed in, never read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncTimer {
    interval: Duration,
    last: Option<Instant>,
}

impl ResyncTimer {
    /// Calico's default interval.
    pub const CALICO_INTERVAL: Duration = Duration::from_secs(90);

    /// A timer that is due immediately.
    pub fn new(interval: Duration) -> Self {
        ResyncTimer {
            interval,
            last: None,
        }
    }

    /// Whether a full resync is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval)
    }

    /// Records a completed resync at `now`.
    pub fn done(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// When the next resync is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.last.map(|l| l + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;
    use crate::plan::{ObservedFdb, ObservedNeighbour};
    use crate::spec::{MacAddr, RouteProtocol, RouteScope};

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn dev(s: &str) -> IfName {
        s.parse().unwrap()
    }

    fn own() -> Ownership {
        Ownership::default().interface_prefix("cali")
    }

    /// A tiny tracing layer that keeps every event as `LEVEL field=value...`.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Fields(String);
            impl tracing::field::Visit for Fields {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!(" {}={v:?}", f.name()));
                }
            }
            let mut fields = Fields(event.metadata().level().to_string());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }

    /// Runs `f` with `Captured` as this thread's subscriber; returns the events.
    fn capture(f: impl FnOnce()) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt;
        let cap = Captured::default();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(cap.clone()), f);
        cap.0.lock().unwrap().clone()
    }

    #[test]
    fn a_pending_route_is_logged_with_its_reason() {
        let events = capture(|| {
            block_on(async {
                let mut rec = Reconciler::new(MemoryBackend::new(), own());
                let a = RouteSpec::workload("10.0.0.1".parse().unwrap(), dev("cali1"));
                rec.reconcile_routes(&[a]).await.unwrap();
            })
        });
        assert_eq!(
            events,
            vec![
                "INFO message=route left pending until its device is up \
                 route=10.0.0.1/32 dev cali1 proto 80 scope link reason=DeviceMissing"
                    .to_string()
            ]
        );
    }

    #[test]
    fn converged_reconcile_writes_nothing() {
        block_on(async {
            let mut k = MemoryBackend::new();
            k.add_link("cali1", true);
            k.add_link("eth0", true);
            let mut rec = Reconciler::new(k, own());
            let desired = vec![
                RouteSpec::workload("10.0.0.1".parse().unwrap(), dev("cali1")),
                RouteSpec::workload("fd00::1".parse().unwrap(), dev("cali1")),
                RouteSpec::blackhole("10.0.0.0/26".parse().unwrap()),
                RouteSpec::via(
                    "10.0.1.0/26".parse().unwrap(),
                    "198.51.100.2".parse().unwrap(),
                )
                .device(dev("eth0"))
                .onlink(),
            ];
            let r = rec.reconcile_routes(&desired).await.unwrap();
            assert_eq!(r.writes, 4);
            assert!(r.converged());
            let r = rec.reconcile_routes(&desired).await.unwrap();
            assert_eq!(r.writes, 0);
            assert!(r.plan.is_empty());
        });
    }

    #[test]
    fn in_place_change_is_repaired_with_one_write() {
        block_on(async {
            let mut k = MemoryBackend::new();
            k.add_link("eth0", true);
            k.add_link("eth1", true);
            let mut rec = Reconciler::new(k, own());
            let want = RouteSpec::via(
                "10.0.1.0/26".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
            )
            .device(dev("eth0"))
            .onlink();
            rec.reconcile_routes(std::slice::from_ref(&want))
                .await
                .unwrap();
            // Someone runs `ip route change ... dev eth1` keeping our protocol.
            rec.backend_mut().routes[0].device = Some(dev("eth1"));
            let log_before = rec.backend().log.len();
            let r = rec
                .reconcile_routes(std::slice::from_ref(&want))
                .await
                .unwrap();
            assert_eq!(r.writes, 1);
            assert_eq!(
                rec.backend().log[log_before..],
                [format!("route replace {want}")]
            );
            assert_eq!(rec.backend().routes, vec![want]);
        });
    }

    #[test]
    fn missing_or_down_device_is_pending_then_retried() {
        block_on(async {
            let mut k = MemoryBackend::new();
            k.add_link("cali2", false);
            let mut rec = Reconciler::new(k, own());
            let a = RouteSpec::workload("10.0.0.1".parse().unwrap(), dev("cali1"));
            let b = RouteSpec::workload("10.0.0.2".parse().unwrap(), dev("cali2"));
            let r = rec.reconcile_routes(&[a.clone(), b.clone()]).await.unwrap();
            assert_eq!(
                r.writes, 0,
                "nothing may be sent for devices known to be missing"
            );
            assert_eq!(
                r.pending.iter().map(|p| p.reason).collect::<Vec<_>>(),
                vec![PendingReason::DeviceMissing, PendingReason::DeviceDown]
            );
            assert!(rec.retry_pending().await.unwrap().is_none());
            rec.backend_mut().add_link("cali1", true);
            let r = rec.retry_pending().await.unwrap().expect("cali1 appeared");
            assert_eq!(r.writes, 1);
            assert_eq!(r.pending.len(), 1);
            rec.backend_mut().set_link_up("cali2", true);
            let r = rec.retry_pending().await.unwrap().expect("cali2 came up");
            assert!(r.converged());
            assert_eq!(rec.backend().routes.len(), 2);
            // Down flushes (like IPv4 in the kernel); the next reconcile restores it.
            rec.backend_mut().set_link_up("cali2", false);
            rec.backend_mut().set_link_up("cali2", true);
            assert_eq!(rec.backend().routes.len(), 1);
            let r = rec.reconcile_routes(&[a, b]).await.unwrap();
            assert_eq!(r.writes, 1);
        });
    }

    #[test]
    fn device_vanishing_between_dump_and_write_is_pending_not_failure() {
        block_on(async {
            let mut k = MemoryBackend::new();
            k.add_link("cali1", true);
            let a = RouteSpec::workload("10.0.0.1".parse().unwrap(), dev("cali1"));
            k.fail.insert(
                RouteOp::Add {
                    route: a.clone(),
                    exclusive: true,
                }
                .to_string(),
                libc::ENODEV,
            );
            let mut rec = Reconciler::new(k, own());
            let r = rec.reconcile_routes(&[a]).await.unwrap();
            assert!(r.failures.is_empty());
            assert_eq!(r.pending[0].reason, PendingReason::DeviceMissing);
        });
    }

    #[test]
    fn kernel_rejection_carries_errno_and_request() {
        block_on(async {
            let mut k = MemoryBackend::new();
            let a = RouteSpec::blackhole("10.0.0.0/26".parse().unwrap());
            let text = RouteOp::Add {
                route: a.clone(),
                exclusive: true,
            }
            .to_string();
            k.fail.insert(text.clone(), libc::EINVAL);
            let mut rec = Reconciler::new(k, own());
            let r = rec.reconcile_routes(&[a]).await.unwrap();
            let err = r.into_result().unwrap_err();
            assert_eq!(err.errno(), Some(libc::EINVAL));
            assert!(err.to_string().contains(&text), "{err}");
        });
    }

    #[test]
    fn invalid_desired_state_writes_nothing() {
        block_on(async {
            let mut k = MemoryBackend::new();
            k.add_link("cali1", true);
            let mut rec = Reconciler::new(k, own());
            let good = RouteSpec::workload("10.0.0.1".parse().unwrap(), dev("cali1"));
            let bad =
                RouteSpec::blackhole("10.0.0.0/26".parse().unwrap()).protocol(RouteProtocol::BOOT);
            assert!(rec.reconcile_routes(&[good, bad]).await.is_err());
            assert!(rec.backend().log.is_empty());
        });
    }

    #[test]
    fn foreign_same_key_route_is_kept_and_ours_added_beside_it() {
        block_on(async {
            let mut k = MemoryBackend::new();
            let foreign =
                RouteSpec::blackhole("10.0.0.0/26".parse().unwrap()).protocol(RouteProtocol::BIRD);
            k.routes.push(foreign.clone());
            let mut rec = Reconciler::new(k, own());
            let ours = RouteSpec::blackhole("10.0.0.0/26".parse().unwrap());
            let r = rec
                .reconcile_routes(std::slice::from_ref(&ours))
                .await
                .unwrap();
            assert_eq!(r.writes, 1);
            assert!(rec.backend().log[0].starts_with("route prepend"));
            assert!(rec.backend().routes.contains(&foreign));
            // Ours changes type: delete exactly ours, add beside the foreign one.
            let ours2 = RouteSpec::unreachable("10.0.0.0/26".parse().unwrap());
            let r = rec
                .reconcile_routes(std::slice::from_ref(&ours2))
                .await
                .unwrap();
            assert_eq!(r.writes, 2);
            assert!(rec.backend().routes.contains(&foreign));
            assert!(rec.backend().routes.contains(&ours2));
            assert_eq!(rec.backend().routes.len(), 2);
            assert_eq!(rec.reconcile_routes(&[ours2]).await.unwrap().writes, 0);
        });
    }

    #[test]
    fn ipv6_route_compares_equal_after_kernel_normalisation() {
        block_on(async {
            let mut k = MemoryBackend::new();
            k.add_link("cali1", true);
            let mut rec = Reconciler::new(k, own());
            let r6 = RouteSpec::workload("fd00::5".parse().unwrap(), dev("cali1"));
            assert_eq!(r6.scope, RouteScope::Link);
            rec.reconcile_routes(std::slice::from_ref(&r6))
                .await
                .unwrap();
            assert_eq!(rec.backend().routes[0].metric, 1024);
            assert_eq!(rec.reconcile_routes(&[r6]).await.unwrap().writes, 0);
        });
    }

    #[test]
    fn neighbours_and_fdb_reconcile() {
        block_on(async {
            let mut k = MemoryBackend::new();
            k.add_link("vxlan.calico", true);
            let vx = dev("vxlan.calico");
            let mac: MacAddr = "66:11:22:33:44:55".parse().unwrap();
            let stale = NeighbourSpec::new(vx.clone(), "10.0.9.0".parse().unwrap(), mac);
            k.neighbours.push(ObservedNeighbour {
                spec: stale,
                permanent: true,
                incomplete: false,
            });
            k.fdb.push(ObservedFdb {
                spec: FdbSpec::new(vx.clone(), mac, "198.51.100.99".parse().unwrap()),
                permanent: true,
                is_self: true,
            });
            let mut rec = Reconciler::new(k, own());
            let devices = BTreeSet::from([vx.clone()]);
            let n = NeighbourSpec::new(vx.clone(), "10.0.1.0".parse().unwrap(), mac);
            let f = FdbSpec::new(vx.clone(), mac, "198.51.100.11".parse().unwrap());
            let (nr, fr) = rec
                .reconcile_neighbours(std::slice::from_ref(&n), std::slice::from_ref(&f), &devices)
                .await
                .unwrap();
            assert_eq!((nr.writes, fr.writes), (2, 1));
            assert_eq!(fr.plan.replacements.len(), 1);
            let (nr, fr) = rec
                .reconcile_neighbours(&[n], &[f], &devices)
                .await
                .unwrap();
            assert_eq!((nr.writes, fr.writes), (0, 0));
        });
    }

    #[test]
    fn resync_timer_uses_the_callers_clock() {
        let t0 = Instant::now();
        let mut t = ResyncTimer::new(ResyncTimer::CALICO_INTERVAL);
        assert!(t.due(t0));
        t.done(t0);
        assert!(!t.due(t0 + Duration::from_secs(89)));
        assert!(t.due(t0 + Duration::from_secs(90)));
        assert_eq!(t.next_due(), Some(t0 + Duration::from_secs(90)));
    }
}
