//! A Prometheus server (Debian's `prometheus`) that scrapes agents: its
//! configuration, its launch (optionally inside a network namespace), and a
//! small client for its HTTP API. The lab and the tests use it to look at the
//! agents the way an operator does.
//!
//! ```
//! use calinet_agent::prometheus::{Target, config_yaml};
//!
//! let yaml = config_yaml(
//!     &[Target { node: "k8s-m".into(), addr: "198.51.100.10:9091".parse().unwrap() }],
//!     std::time::Duration::from_secs(1),
//! );
//! assert!(yaml.contains("'198.51.100.10:9091'"));
//! assert!(yaml.contains("node: 'k8s-m'"));
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};

/// Where Debian installs the server.
pub const DEFAULT_BINARY: &str = "/usr/bin/prometheus";

/// One agent to scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The node's name, attached to every series as label `node`.
    pub node: String,
    /// The agent's metrics address.
    pub addr: SocketAddr,
}

/// The scrape configuration: one job `calinet-agent`, each target labelled
/// with its node. `honor_labels` keeps the `node` label of the IPAM series
/// the agents export themselves.
pub fn config_yaml(targets: &[Target], interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    let mut s = format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  evaluation_interval: {secs}s\n\
         scrape_configs:\n  - job_name: calinet-agent\n    honor_labels: true\n    static_configs:\n"
    );
    for t in targets {
        s.push_str(&format!(
            "      - targets: ['{}']\n        labels:\n          node: '{}'\n",
            t.addr, t.node
        ));
    }
    s
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// The agents to scrape.
    pub targets: Vec<Target>,
    /// `--web.listen-address`.
    pub listen: SocketAddr,
    /// Config, TSDB and log go here.
    pub dir: PathBuf,
    /// Network namespace to run in (`ip netns exec`); `None`: this one.
    pub netns: Option<String>,
    /// Scrape interval.
    pub interval: Duration,
    /// The server binary.
    pub binary: PathBuf,
}

impl Options {
    /// Scraping `targets` every second, listening on `listen`, files in `dir`.
    pub fn new(targets: Vec<Target>, listen: SocketAddr, dir: impl Into<PathBuf>) -> Self {
        Options {
            targets,
            listen,
            dir: dir.into(),
            netns: None,
            interval: Duration::from_secs(1),
            binary: DEFAULT_BINARY.into(),
        }
    }

    /// Runs the server inside network namespace `name`.
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }
}

/// A running server; stopped (SIGKILL, then reaped) when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Writes the configuration and starts the server. It is up once
/// `GET /-/ready` answers 200 (see [`http_get`]).
pub fn launch(opts: &Options) -> Result<Server> {
    if !opts.binary.exists() {
        return Err(Error::Usage(format!(
            "{}: Prometheus is not installed (Debian package `prometheus`)",
            opts.binary.display()
        )));
    }
    std::fs::create_dir_all(&opts.dir).map_err(io("create", &opts.dir))?;
    let config = opts.dir.join("prometheus.yml");
    std::fs::write(&config, config_yaml(&opts.targets, opts.interval))
        .map_err(io("write", &config))?;
    let log = opts.dir.join("prometheus.log");
    let out = std::fs::File::create(&log).map_err(io("create", &log))?;
    let err = out.try_clone().map_err(io("open", &log))?;
    let mut cmd = match &opts.netns {
        Some(ns) => {
            // `ip netns exec` execs the server: the child's pid is the server's.
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&opts.binary);
            c
        }
        None => Command::new(&opts.binary),
    };
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            opts.dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={}", opts.listen))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let child = cmd.spawn().map_err(io("start", &opts.binary))?;
    Ok(Server {
        child,
        listen: opts.listen,
        log,
    })
}

impl Server {
    /// The HTTP address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `GET /-/ready` answers 200, connecting with `connect`
    /// (which reaches [`Server::listen`], e.g. from inside the server's
    /// namespace). Fails when the server exits or `timeout` passes, with the
    /// log's last lines.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut connect: impl FnMut() -> std::io::Result<TcpStream>,
    ) -> Result<()> {
        let start = std::time::Instant::now();
        loop {
            if let Ok((200, _)) = connect().and_then(|s| http_get(s, "localhost", "/-/ready")) {
                return Ok(());
            }
            let exited = !self.is_running();
            if exited || start.elapsed() > timeout {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(Error::Usage(format!(
                    "Prometheus on {} {} (log {}): {}",
                    self.listen,
                    if exited {
                        "exited"
                    } else {
                        "not ready in time"
                    },
                    self.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET path` over `stream` (HTTP/1.0, so the server closes when done):
/// the status code and the body.
pub fn http_get(mut stream: TcpStream, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("GET {path}: no HTTP status line in {head:?}"),
            )
        })?;
    Ok((status, body.to_owned()))
}

/// The path of an instant query for `expr`.
pub fn query_path(expr: &str) -> String {
    format!("/api/v1/query?query={}", url_encode(expr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            query_path("sum by (le) (rate(x_bucket{a=\"b\"}[1m]))"),
            "/api/v1/query?query=sum%20by%20%28le%29%20%28rate%28x_bucket%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}
