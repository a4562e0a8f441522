//! The lab's processes: one `calinet-agent run` per node and the optional
//! etcd, started detached inside their namespaces through the test lab's
//! process helpers, found again by pid (recorded in the state file) and
//! stopped by pid.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testlab::{DetachedCommand, Netns};

use crate::error::{Error, Result};
use crate::state::{LabAgent, LabEtcd, LabNode, LabState};

/// The `calinet-agent` binary next to this executable (cargo builds both
/// into `target/<profile>/`).
pub fn agent_beside_self() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "find this executable",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let agent = exe.with_file_name("calinet-agent");
    if agent.is_file() {
        Ok(agent)
    } else {
        Err(Error::Usage(format!(
            "the agent binary {} is missing: the lab runs it on every node; \
             build it with cargo build -p calinet-agent",
            agent.display()
        )))
    }
}

/// While this file exists, the agent of `node` sees a datastore outage.
pub fn fault_file(state: &LabState, node: &str) -> PathBuf {
    state.state_dir.join(format!("datastore-outage-{node}"))
}

/// A WireGuard device name unique on the machine: `wg<lab id>n<i>`, the lab id
/// being the digits of the router namespace's name (the lab's pid).
pub fn wg_ifname(state: &LabState, node: &LabNode) -> String {
    let i = state
        .nodes
        .iter()
        .position(|n| n.name == node.name)
        .unwrap_or(0);
    let id: String = state
        .router
        .chars()
        .filter(char::is_ascii_digit)
        .take(9)
        .collect();
    format!("wg{id}n{i}")
}

/// `--datastore FILE` or `--etcd-endpoints URL`.
fn datastore_args(state: &LabState) -> Vec<OsString> {
    match &state.etcd {
        Some(e) => vec!["--etcd-endpoints".into(), e.endpoint.clone().into()],
        None => vec!["--datastore".into(), state.datastore.as_os_str().to_owned()],
    }
}

/// Starts `calinet-agent run` for `node` in its namespace; its log is
/// appended to, so a restarted agent's log follows its predecessor's.
pub fn spawn_agent(state: &LabState, node: &LabNode) -> Result<LabAgent> {
    let log = state.state_dir.join(format!("agent-{}.log", node.name));
    let child = DetachedCommand::new(&state.agent_bin, &log)
        .in_netns(&Netns::existing(&node.netns)?)
        .args(datastore_args(state))
        .args(["run", "--node", &node.name, "--poll-ms", "300"])
        // Frequent full resyncs, so the lab exercises them (Calico: 90 s).
        .args(["--resync-secs", "8"])
        // wireguard-go's control sockets share /var/run/wireguard machine-wide.
        .args(["--wireguard-ifname", &wg_ifname(state, node)])
        .arg("--bgp-runtime-dir")
        .arg(crate::bgp::node_bird_dir(state, &node.name))
        .arg("--datastore-fault-file")
        .arg(fault_file(state, &node.name))
        .spawn()?;
    Ok(LabAgent {
        node: node.name.clone(),
        pid: child.pid(),
        log,
    })
}

/// Whether `pid` is a live process whose command line mentions `program`
/// (a recorded pid may since belong to someone else).
pub fn is_running(pid: u32, program: &str) -> bool {
    testlab::is_alive(pid) && testlab::cmdline(pid).iter().any(|w| w.contains(program))
}

/// Stops an agent (SIGTERM, SIGKILL after 5 s) if the pid is still an agent.
pub fn stop_agent(agent: &LabAgent) {
    if is_running(agent.pid, "calinet-agent") {
        testlab::stop_pid(agent.pid, false, Duration::from_secs(5));
    }
}

/// Stops the `wireguard-go -f <ifname>` an agent started (it outlives agent
/// restarts like a kernel device would). Found by its exact command line.
pub fn stop_wireguard_go(ifname: &str) {
    for pid in testlab::pids_with_cmdline(&["wireguard-go", "-f", ifname]) {
        testlab::stop_pid(pid, false, Duration::from_secs(3));
    }
}

/// The lab's router address on the first segment: etcd listens there.
fn etcd_endpoint() -> String {
    let router = testlab::seed::LAN1.hosts().next().expect("a /24 has hosts");
    format!("http://{router}:2379")
}

/// Starts etcd in the router namespace (data kept in `data_dir`) and waits
/// until it answers.
pub fn spawn_etcd(state: &LabState, data_dir: &Path) -> Result<LabEtcd> {
    if !testlab::cmd::have("etcd") {
        return Err(Error::Usage(
            "--etcd: etcd is not installed (Debian: etcd-server)".into(),
        ));
    }
    let endpoint = etcd_endpoint();
    let log = state.state_dir.join("etcd.log");
    let child = DetachedCommand::new("etcd", &log)
        .in_netns(&Netns::existing(&state.router)?)
        .args(["--name", "calinet-lab", "--data-dir"])
        .arg(data_dir)
        .args(["--listen-client-urls", &endpoint])
        .args(["--advertise-client-urls", &endpoint])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "calinet-lab=http://127.0.0.1:2380"])
        .spawn()?;
    let etcd = LabEtcd {
        pid: child.pid(),
        endpoint,
        data_dir: data_dir.to_path_buf(),
    };
    let mut probe = state.clone();
    probe.etcd = Some(etcd.clone());
    let store = crate::store::open(&probe)?;
    let t0 = Instant::now();
    while store.list("/calico/").is_err() {
        if t0.elapsed() > Duration::from_secs(20) {
            stop_etcd(&etcd);
            return Err(Error::Lab(format!(
                "etcd in {} did not answer within 20 s (log {})",
                state.router,
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(etcd)
}

/// Stops the lab's etcd (its whole session: SIGTERM, SIGKILL after 10 s).
pub fn stop_etcd(etcd: &LabEtcd) {
    testlab::stop_pid(etcd.pid, true, Duration::from_secs(10));
}

/// Reads the metrics of the agent in namespace `netns` (its default port on
/// that namespace's loopback).
pub fn agent_metrics(netns: &str) -> Result<String> {
    let ns = Netns::existing(netns)?;
    let path = ns.path();
    ns.enter(|| -> std::io::Result<String> {
        let addr =
            std::net::SocketAddr::from(([127, 0, 0, 1], calinet_agent::metrics::DEFAULT_PORT));
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or(out))
    })?
    .map_err(|source| Error::Io {
        what: "read metrics of the agent in",
        path,
        source,
    })
}
