//! The agent's HTTP endpoints, served by hyper: `/metrics` on Felix's
//! metrics port (9091) and `/liveness` + `/readiness` on Felix's health
//! port (9099, host `localhost`).
//!
//! ```
//! use calinet_agent::http::{Endpoints, Health, respond};
//! use calinet_agent::metrics::Metrics;
//! use hyper::{Method, StatusCode};
//!
//! let health = Health::new(std::time::Duration::from_secs(90));
//! let ep = Endpoints::Health(health.clone());
//! assert_eq!(respond(&ep, &Method::GET, "/readiness").status(), StatusCode::SERVICE_UNAVAILABLE);
//! health.set_ready(true);
//! assert_eq!(respond(&ep, &Method::GET, "/readiness").status(), StatusCode::OK);
//! assert_eq!(respond(&ep, &Method::GET, "/liveness").status(), StatusCode::OK);
//! assert_eq!(respond(&ep, &Method::POST, "/liveness").status(), StatusCode::METHOD_NOT_ALLOWED);
//! let metrics = Endpoints::Metrics(Box::new(Metrics::new()));
//! assert_eq!(respond(&metrics, &Method::GET, "/nope").status(), StatusCode::NOT_FOUND);
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics::Metrics;

/// Felix's `HealthPort`.
pub const DEFAULT_HEALTH_PORT: u16 = 9099;
/// Felix's `HealthHost`.
pub const DEFAULT_HEALTH_HOST: &str = "localhost";
/// How long the main loop may go without reporting before `/liveness`
/// fails. The loop reports at least every poll interval or backoff wait
/// (10 s at most), plus the time one reconcile takes.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(90);

/// What `/liveness` and `/readiness` answer, shared by the main loop (which
/// reports) and the health server (which reads).
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the main loop's last report.
    last_beat_ns: AtomicU64,
    ready: AtomicBool,
    timeout: Duration,
}

impl Health {
    /// Live (as if the loop just reported) and not ready; `/liveness` fails
    /// once the loop has not reported for `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Health {
            inner: Arc::new(HealthInner {
                epoch: Instant::now(),
                last_beat_ns: AtomicU64::new(0),
                ready: AtomicBool::new(false),
                timeout,
            }),
        }
    }

    /// The main loop is running.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    /// The main loop ran at `now`.
    pub fn beat_at(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.inner.epoch).as_nanos() as u64;
        self.inner.last_beat_ns.fetch_max(ns, Ordering::SeqCst);
    }

    /// Ready: the datastore was read and the dataplane converged.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// What `/readiness` reports.
    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// What `/liveness` reports at `now`.
    pub fn live_at(&self, now: Instant) -> bool {
        let last =
            self.inner.epoch + Duration::from_nanos(self.inner.last_beat_ns.load(Ordering::SeqCst));
        now.saturating_duration_since(last) <= self.inner.timeout
    }

    /// What `/liveness` reports now.
    pub fn live(&self) -> bool {
        self.live_at(Instant::now())
    }
}

/// Which endpoints a server offers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Endpoints {
    /// `/metrics`.
    Metrics(Box<Metrics>),
    /// `/liveness` and `/readiness`.
    Health(Health),
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// The response to `method path`: 200 (or 503 for a failing probe) on a
/// known path with GET or HEAD, 405 with `Allow` for other methods, 404 for
/// other paths.
pub fn respond(ep: &Endpoints, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let known = match ep {
        Endpoints::Metrics(_) => path == "/metrics",
        Endpoints::Health(_) => path == "/liveness" || path == "/readiness",
    };
    if !known {
        return text(StatusCode::NOT_FOUND, PLAIN, format!("{path}: not found\n"));
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            format!("{method} {path}: only GET and HEAD are allowed\n"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match ep {
        Endpoints::Metrics(m) => text(StatusCode::OK, crate::metrics::CONTENT_TYPE, m.render()),
        Endpoints::Health(h) => {
            let (ok, what) = if path == "/liveness" {
                (h.live(), "live")
            } else {
                (h.ready(), "ready")
            };
            let (status, body) = if ok {
                (StatusCode::OK, format!("{what}\n"))
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, format!("not {what}\n"))
            };
            text(status, PLAIN, body)
        }
    }
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `ep` on `listener` (HTTP/1.1 and 1.0) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, ep: Endpoints) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let ep = ep.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = respond(&ep, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_when_the_loop_stops_reporting() {
        let h = Health::new(Duration::from_secs(10));
        let t0 = Instant::now();
        h.beat_at(t0);
        assert!(h.live_at(t0 + Duration::from_secs(10)));
        assert!(!h.live_at(t0 + Duration::from_secs(11)));
        h.beat_at(t0 + Duration::from_secs(11));
        assert!(h.live_at(t0 + Duration::from_secs(12)));
    }

    #[test]
    fn metrics_endpoint_serves_the_text_format() {
        let ep = Endpoints::Metrics(Box::default());
        let r = respond(&ep, &Method::GET, "/metrics");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            respond(&ep, &Method::HEAD, "/metrics").status(),
            StatusCode::OK
        );
        let post = respond(&ep, &Method::POST, "/metrics");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        assert_eq!(
            respond(&ep, &Method::GET, "/liveness").status(),
            StatusCode::NOT_FOUND
        );
    }
}
