//! `--prometheus`: a real Prometheus server in the router's namespace scraping
//! every node's agent, and the agent's Grafana dashboard checked against it:
//! every query of `examples/agent/dashboards/calinet-agent.json` asked through
//! Prometheus's HTTP API.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use calinet_agent::prometheus::{self as prom, Options, Server, Target};

use crate::error::{Error, Result};
use crate::state::LabState;

/// Prometheus's port, on the router's first address.
pub const PORT: u16 = 9090;

/// The agent's default metrics port (Felix's).
const METRICS_PORT: u16 = 9091;

/// The repository's dashboard.
const DASHBOARD: &str = include_str!("../../agent/dashboards/calinet-agent.json");

/// Where Prometheus listens: the router's address on the first segment,
/// reachable from every node (and from the router's namespace itself).
pub fn listen(state: &LabState) -> Result<SocketAddr> {
    let first = state
        .nodes
        .first()
        .ok_or_else(|| Error::Lab("the lab has no nodes".into()))?;
    Ok(SocketAddr::new(
        IpAddr::V4(crate::bgp::router_addr(first)),
        PORT,
    ))
}

/// Starts Prometheus in the router's namespace, scraping every agent each
/// second, and waits until it is ready.
pub fn start(state: &LabState) -> Result<Server> {
    let targets = state
        .nodes
        .iter()
        .map(|n| Target {
            node: n.name.clone(),
            addr: SocketAddr::new(IpAddr::V4(n.addr), METRICS_PORT),
        })
        .collect();
    let addr = listen(state)?;
    let mut server = prom::launch(
        &Options::new(targets, addr, state.state_dir.join("prometheus")).netns(&state.router),
    )?;
    server.wait_ready(Duration::from_secs(60), || connect(state, addr))?;
    Ok(server)
}

fn connect(state: &LabState, addr: SocketAddr) -> std::io::Result<TcpStream> {
    testlab::Netns::existing(&state.router)
        .and_then(|ns| ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2))))
        .map_err(std::io::Error::other)?
}

/// Every `targets[].expr` of the dashboard with its panel's title, panels in
/// rows included.
pub fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD)
        .map_err(|e| Error::Lab(format!("the dashboard JSON does not parse: {e}")))?;
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    Ok(out)
}

/// How many series of an instant query have a finite value (a quantile over
/// a window without observations is NaN: no data to look at).
fn series_with_data(state: &LabState, addr: SocketAddr, expr: &str) -> Result<usize> {
    let stream = connect(state, addr).map_err(|e| Error::Lab(format!("Prometheus {addr}: {e}")))?;
    let (status, body) = prom::http_get(stream, "localhost", &prom::query_path(expr))
        .map_err(|e| Error::Lab(format!("Prometheus {addr}: {e}")))?;
    if status != 200 {
        return Err(Error::Lab(format!("query {expr}: HTTP {status}: {body}")));
    }
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| Error::Lab(format!("query {expr}: {e}: {body}")))?;
    Ok(v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
        .count())
}

/// Asks every dashboard query until all return data or `timeout` passes;
/// returns the report and whether every query was answered.
pub fn dashboard_report(state: &LabState, timeout: Duration) -> Result<(String, bool)> {
    let addr = listen(state)?;
    let queries = dashboard_queries()?;
    let start = Instant::now();
    loop {
        let mut counts = Vec::with_capacity(queries.len());
        for (_, expr) in &queries {
            counts.push(series_with_data(state, addr, expr)?);
        }
        let all = counts.iter().all(|&n| n > 0);
        if all || start.elapsed() > timeout {
            let mut text = format!(
                "\nPrometheus http://{addr} (in the router's namespace {}; from a node: \
                 ip netns exec <node> curl http://{addr}/graph), scraping {} agents on port {METRICS_PORT}\n\
                 dashboard examples/agent/dashboards/calinet-agent.json: {} of {} queries answered\n",
                state.router,
                state.nodes.len(),
                counts.iter().filter(|&&n| n > 0).count(),
                queries.len()
            );
            for ((title, expr), n) in queries.iter().zip(&counts) {
                let mark = if *n > 0 { "ok  " } else { "NONE" };
                text.push_str(&format!("  {mark} {n:>2} series  {title}: {expr}\n"));
            }
            return Ok((text, all));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
