//! Prometheus metrics (prometheus-client) and the tiny HTTP server that serves
//! them (Felix serves its metrics on port 9091 too).

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Felix's metrics port.
pub const DEFAULT_PORT: u16 = 9091;

type Labels = Vec<(String, String)>;

/// Every metric the agent exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reconcile durations.
    pub reconcile_seconds: Histogram,
    /// Reconciles run.
    pub reconciles: Counter,
    /// Dataplane writes (netlink requests, WireGuard and nftables updates).
    pub dataplane_writes: Counter,
    /// Errors by kind (`datastore`, `ipam`, `dataplane`, `plan`).
    pub errors: Family<Labels, Counter>,
    /// Routes the agent owns.
    pub routes: Gauge,
    /// Workload endpoints on the node.
    pub endpoints: Gauge,
    /// VXLAN VTEP neighbours.
    pub vxlan_neighbours: Gauge,
    /// WireGuard peers.
    pub wireguard_peers: Gauge,
    /// nftables rules programmed (policy and NAT).
    pub policy_rules: Gauge,
    /// Addresses allocated on this node (pods and tunnel).
    pub ipam_addresses_in_use: Gauge,
    /// Blocks affine to this node.
    pub ipam_blocks: Gauge,
    /// 1 when the last reconcile left nothing pending.
    pub converged: Gauge,
    registry: Arc<Registry>,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("calinet");
        let m = MetricsParts::default();
        r.register(
            "reconcile_duration_seconds",
            "Time one reconcile (read, plan, apply) took",
            m.reconcile_seconds.clone(),
        );
        r.register("reconciles", "Reconciles run", m.reconciles.clone());
        r.register(
            "dataplane_writes",
            "Dataplane write requests (netlink, WireGuard, nftables)",
            m.dataplane_writes.clone(),
        );
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register("routes", "Routes owned by the agent", m.routes.clone());
        r.register(
            "workload_endpoints",
            "Workload endpoints on this node",
            m.endpoints.clone(),
        );
        r.register(
            "vxlan_neighbours",
            "VXLAN VTEP neighbours programmed",
            m.vxlan_neighbours.clone(),
        );
        r.register(
            "wireguard_peers",
            "WireGuard peers configured",
            m.wireguard_peers.clone(),
        );
        r.register(
            "policy_rules",
            "nftables rules programmed for policy and NAT",
            m.policy_rules.clone(),
        );
        r.register(
            "ipam_addresses_in_use",
            "Addresses allocated to this node (pods and tunnel)",
            m.ipam_addresses_in_use.clone(),
        );
        r.register(
            "ipam_blocks",
            "IPAM blocks affine to this node",
            m.ipam_blocks.clone(),
        );
        r.register(
            "converged",
            "1 when the last reconcile left nothing pending",
            m.converged.clone(),
        );
        Metrics {
            reconcile_seconds: m.reconcile_seconds,
            reconciles: m.reconciles,
            dataplane_writes: m.dataplane_writes,
            errors: m.errors,
            routes: m.routes,
            endpoints: m.endpoints,
            vxlan_neighbours: m.vxlan_neighbours,
            wireguard_peers: m.wireguard_peers,
            policy_rules: m.policy_rules,
            ipam_addresses_in_use: m.ipam_addresses_in_use,
            ipam_blocks: m.ipam_blocks,
            converged: m.converged,
            registry: Arc::new(r),
        }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Serves `GET /metrics` on `addr` until the task is dropped.
    pub async fn serve(self, addr: std::net::SocketAddr) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving Prometheus metrics");
        loop {
            let (mut sock, _) = listener.accept().await?;
            let m = self.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // One read is enough for a GET from Prometheus or curl.
                let _ = sock.read(&mut buf).await;
                let body = m.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

struct MetricsParts {
    reconcile_seconds: Histogram,
    reconciles: Counter,
    dataplane_writes: Counter,
    errors: Family<Labels, Counter>,
    routes: Gauge,
    endpoints: Gauge,
    vxlan_neighbours: Gauge,
    wireguard_peers: Gauge,
    policy_rules: Gauge,
    ipam_addresses_in_use: Gauge,
    ipam_blocks: Gauge,
    converged: Gauge,
}

impl Default for MetricsParts {
    fn default() -> Self {
        MetricsParts {
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconciles: Counter::default(),
            dataplane_writes: Counter::default(),
            errors: Family::default(),
            routes: Gauge::default(),
            endpoints: Gauge::default(),
            vxlan_neighbours: Gauge::default(),
            wireguard_peers: Gauge::default(),
            policy_rules: Gauge::default(),
            ipam_addresses_in_use: Gauge::default(),
            ipam_blocks: Gauge::default(),
            converged: Gauge::default(),
        }
    }
}

/// Reads one sample value from the text format (`name` without labels, or
/// with the exact label text, e.g. `calinet_errors_total{kind="datastore"}`).
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_reads_back() {
        let m = Metrics::new();
        m.dataplane_writes.inc_by(7);
        m.routes.set(12);
        m.error("datastore");
        let text = m.render();
        assert_eq!(sample(&text, "calinet_dataplane_writes_total"), Some(7.0));
        assert_eq!(sample(&text, "calinet_routes"), Some(12.0));
        assert_eq!(
            sample(&text, "calinet_errors_total{kind=\"datastore\"}"),
            Some(1.0)
        );
    }
}
