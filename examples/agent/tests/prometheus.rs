//! Operating the agent as a Calico user does (root): a real Prometheus
//! scrapes two agents, each in its own node namespace, and every query of
//! the repository's Grafana dashboard returns data through Prometheus's HTTP
//! API; and the health endpoints follow convergence and an etcd outage.
//! Every namespace and process is removed, also when a test fails.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calinet_agent::prometheus::{self, Target, http_get, query_path};
use testlab::{Feature, Lab, Netns};

const AGENT: &str = env!("CARGO_BIN_EXE_calinet-agent");
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/calinet-agent.json");
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An agent process in a node namespace, killed and reaped on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(ns: &Netns, datastore: &[String], node: &str, dir: &Path) -> Agent {
        let log = dir.join(format!("agent-{node}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), AGENT])
            .args(datastore)
            .args(["run", "--node", node, "--poll-ms", "200"])
            // Full resyncs every few seconds, so resync metrics move while
            // the test watches.
            .args(["--resync-secs", "3"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request from inside `ns`: status and body.
fn request(ns: &Netns, port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let stream = ns
        .tcp_stream(LOCALHOST, port, Duration::from_secs(2))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if method == "GET" {
        return http_get(stream, "localhost", path);
    }
    raw(
        stream,
        &format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"),
    )
}

fn raw(mut stream: TcpStream, req: &str) -> std::io::Result<(u16, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(req.as_bytes())?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

fn eventually(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let t0 = Instant::now();
    while !ok() {
        if t0.elapsed() > timeout {
            panic!("{what}: not within {timeout:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every `targets[].expr` of the dashboard, panels in rows included.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
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
    out
}

/// The result of an instant query: (labels, value) per series.
fn query(prom: &Netns, port: u16, expr: &str) -> Result<Vec<(serde_json::Value, String)>, String> {
    let (status, body) =
        request(prom, port, "GET", &query_path(expr)).map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("HTTP {status}: {body}"));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    let result = v["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("no result: {body}"))?;
    Ok(result
        .iter()
        .map(|r| {
            (
                r["metric"].clone(),
                r["value"][1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// Non-empty, with at least one finite value (a quantile over a window
/// without observations is NaN: no data to look at).
fn has_data(r: &[(serde_json::Value, String)]) -> bool {
    r.iter()
        .any(|(_, v)| v.parse::<f64>().is_ok_and(f64::is_finite))
}

const CLUSTER: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: default-ipv4-ippool}
spec: {cidr: 172.16.0.0/16, blockSize: 26, natOutgoing: true}
";

fn pod(name: &str, node: &str, netns: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{app: web}}\n  annotations:\n    calinet.io/netns: /run/netns/{netns}\nspec:\n  nodeName: {node}\n  containers:\n  - name: web\n    ports: [{{name: http, containerPort: 80}}]\n"
    )
}

const POLICY: &str = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web-from-web}
spec:
  selector: app == 'web'
  ingress:
  - action: Allow
    source: {selector: app == 'web'}
";

fn apply(datastore: &[String], dir: &Path, name: &str, yaml: &str, ns: Option<&Netns>) {
    let f = dir.join(name);
    std::fs::write(&f, yaml).unwrap();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), AGENT]);
            c
        }
        None => Command::new(AGENT),
    };
    let out = cmd
        .args(datastore)
        .arg("apply")
        .arg("-f")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apply {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    testlab::require_root!();
    testlab::require!(Feature::Nftables);
    if !Path::new(prometheus::DEFAULT_BINARY).exists() {
        testlab::skip!("/usr/bin/prometheus missing (Debian package prometheus)");
    }
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 20,
        "dashboard has {} queries",
        queries.len()
    );

    let lab = Lab::new("agent_prometheus").unwrap();
    let seg = lab.segment("198.51.100.0/24").unwrap();
    let nodes = [
        lab.node("node-a", &seg, "198.51.100.10".parse().unwrap())
            .unwrap(),
        lab.node("node-b", &seg, "198.51.100.11".parse().unwrap())
            .unwrap(),
    ];
    let prom_ns = lab
        .node("prom", &seg, "198.51.100.20".parse().unwrap())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let datastore = vec![
        "--datastore".to_owned(),
        dir.path().join("ds.db").to_string_lossy().into_owned(),
    ];
    let mut yaml = CLUSTER.to_owned();
    for n in &nodes {
        let sandbox = lab.pod(&format!("pod-{}", n.name)).unwrap();
        yaml.push_str(&pod(&format!("web-{}", n.name), &n.name, sandbox.name()));
    }
    apply(&datastore, dir.path(), "cluster.yaml", &yaml, None);
    let agents: Vec<Agent> = nodes
        .iter()
        .map(|n| Agent::start(n, &datastore, &n.name, dir.path()))
        .collect();
    let logs = || {
        agents
            .iter()
            .map(|a| format!("--- {}\n{}", a.log.display(), a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let targets = nodes
        .iter()
        .map(|n| Target {
            node: n.name.clone(),
            addr: SocketAddr::new(IpAddr::V4(n.address()), 9091),
        })
        .collect();
    let port = 9090;
    let opts = prometheus::Options::new(
        targets,
        SocketAddr::new(LOCALHOST, port),
        dir.path().join("prometheus"),
    )
    .netns(prom_ns.name());
    let mut server = prometheus::launch(&opts).unwrap();
    server
        .wait_ready(Duration::from_secs(60), || {
            prom_ns
                .tcp_stream(LOCALHOST, port, Duration::from_secs(2))
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .unwrap();
    let server_log = server.log().to_path_buf();
    let plog = || std::fs::read_to_string(&server_log).unwrap_or_default();
    assert!(server.is_running());
    eventually(
        "both agents scraped (up == 1)",
        Duration::from_secs(60),
        || query(&prom_ns, port, "up{job=\"calinet-agent\"} == 1").is_ok_and(|r| r.len() == 2),
        || format!("{}\n{}", plog(), logs()),
    );
    // A change while Prometheus watches: every agent reconciles (so the
    // timing histograms have observations inside the query windows) and
    // the policy becomes active on both nodes.
    apply(&datastore, dir.path(), "policy.yaml", POLICY, None);

    let failing: std::cell::RefCell<Vec<String>> = Default::default();
    eventually(
        "every dashboard query returns data",
        Duration::from_secs(90),
        || {
            *failing.borrow_mut() = queries
                .iter()
                .filter_map(|(title, expr)| match query(&prom_ns, port, expr) {
                    Ok(r) if has_data(&r) => None,
                    Ok(r) => Some(format!("{title}: {expr} -> {r:?}")),
                    Err(e) => Some(format!("{title}: {expr} -> {e}")),
                })
                .collect();
            failing.borrow().is_empty()
        },
        || {
            format!(
                "still without data:\n{}\n{}",
                failing.borrow().join("\n"),
                logs()
            )
        },
    );
    println!("{} dashboard queries returned data", queries.len());

    // The values mean what the README says.
    let by_node = |expr: &str| -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = query(&prom_ns, port, expr)
            .unwrap()
            .into_iter()
            .map(|(m, v)| {
                (
                    m["node"].as_str().unwrap_or("").to_owned(),
                    v.parse().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let both = |x: f64| vec![("node-a".to_owned(), x), ("node-b".to_owned(), x)];
    let expected = [
        ("felix_cluster_num_hosts", 2.0),
        ("felix_cluster_num_workload_endpoints", 2.0),
        ("felix_cluster_num_policies", 1.0),
        ("felix_active_local_endpoints", 1.0),
        ("felix_active_local_policies", 1.0),
        ("felix_active_local_selectors", 1.0),
        ("ipam_blocks_per_node", 1.0),
        // One pod address per node (no tunnel address without VXLAN/IPIP).
        (
            "ipam_allocations_in_use{ippool=\"default-ipv4-ippool\"}",
            1.0,
        ),
        (
            "max by (node) (ipam_ippool_size{ippool=\"default-ipv4-ippool\"})",
            65536.0,
        ),
    ];
    // Scrapes lag the agents by up to a scrape interval.
    let wrong = || -> Vec<String> {
        expected
            .iter()
            .filter_map(|(expr, x)| {
                let got = by_node(expr);
                (got != both(*x)).then(|| format!("{expr}: {got:?}, expected {x} on both nodes"))
            })
            .collect()
    };
    eventually(
        "the Felix and IPAM values",
        Duration::from_secs(20),
        || wrong().is_empty(),
        || wrong().join("\n"),
    );
    for (node, n) in by_node("felix_resyncs_started") {
        assert!(n >= 1.0, "{node}: {n} resyncs");
    }
    for (node, rss) in by_node("process_resident_memory_bytes") {
        assert!(rss > 1e6, "{node}: RSS {rss}");
    }
}

#[test]
fn health_follows_convergence_and_an_etcd_outage() {
    testlab::require_root!();
    testlab::require!(Feature::Etcd);
    testlab::require!(Feature::Nftables);
    let lab = Lab::new("agent_health").unwrap();
    let seg = lab.segment("203.0.113.0/24").unwrap();
    let node = lab
        .node("node-h", &seg, "203.0.113.10".parse().unwrap())
        .unwrap();
    let etcd = lab.etcd_in(&node).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let datastore = vec!["--etcd-endpoints".to_owned(), etcd.endpoint()];
    apply(&datastore, dir.path(), "cluster.yaml", CLUSTER, Some(&node));

    // Started while the datastore is down: alive, never converged, not ready.
    etcd.stop();
    let agent = Agent::start(&node, &datastore, "node-h", dir.path());
    let health = 9099;
    eventually(
        "health server up",
        Duration::from_secs(20),
        || request(&node, health, "GET", "/liveness").is_ok(),
        || agent.log(),
    );
    for _ in 0..4 {
        assert_eq!(request(&node, health, "GET", "/liveness").unwrap().0, 200);
        let (status, body) = request(&node, health, "GET", "/readiness").unwrap();
        assert_eq!(
            status,
            503,
            "ready without a datastore: {body}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(request(&node, health, "GET", "/metrics").unwrap().0, 404);
    assert_eq!(request(&node, health, "GET", "/").unwrap().0, 404);
    let (status, text) = request(&node, health, "POST", "/readiness").unwrap();
    assert_eq!(status, 405, "{text}");
    assert!(
        text.contains("allow: GET, HEAD") || text.contains("Allow: GET, HEAD"),
        "{text}"
    );
    assert_eq!(request(&node, health, "HEAD", "/liveness").unwrap().0, 200);
    // The metrics port answers only /metrics, and only GET/HEAD.
    let (status, text) = request(&node, 9091, "GET", "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("felix_resync_state 1"), "{text}");
    assert_eq!(request(&node, 9091, "GET", "/readiness").unwrap().0, 404);
    assert_eq!(request(&node, 9091, "PUT", "/metrics").unwrap().0, 405);

    let ready = |want: u16| {
        let node = &node;
        move || request(node, health, "GET", "/readiness").is_ok_and(|(s, _)| s == want)
    };
    etcd.start().unwrap();
    eventually(
        "ready once converged",
        Duration::from_secs(60),
        ready(200),
        || agent.log(),
    );
    etcd.stop();
    eventually(
        "not ready while etcd is down",
        Duration::from_secs(60),
        ready(503),
        || agent.log(),
    );
    assert_eq!(request(&node, health, "GET", "/liveness").unwrap().0, 200);
    etcd.start().unwrap();
    eventually(
        "ready again after etcd is back",
        Duration::from_secs(60),
        ready(200),
        || agent.log(),
    );
    let metrics = request(&node, 9091, "GET", "/metrics").unwrap().1;
    // Both outages were datastore errors, not failed dataplane updates.
    let sample = |name| calinet_agent::metrics::sample(&metrics, name);
    assert!(
        sample("calinet_errors_total{kind=\"datastore\"}").is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    assert_eq!(
        sample("felix_int_dataplane_failures"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(sample("felix_resync_state"), Some(3.0), "{metrics}");
}
