//! Shared by the integration tests and the benchmark: executing a plugin the
//! way a container runtime does, and the CNI specification's JSON schema as
//! code.
#![allow(dead_code)] // each test binary uses a different part

pub mod schema;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use calinet_ipam::{HandleId, SqliteStore, report};
use serde_json::Value;

/// The full plugin binary.
pub const CALINET: &str = env!("CARGO_BIN_EXE_calinet");
/// The IPAM plugin binary.
pub const CALINET_IPAM: &str = env!("CARGO_BIN_EXE_calinet-ipam");
/// Where Debian's reference plugins live.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// One plugin invocation: environment and stdin, as a runtime sets them.
#[derive(Debug, Clone)]
pub struct Call {
    pub command: String,
    pub container: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    pub config: String,
}

/// What the plugin did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// User + system CPU time of the plugin and the children it waited for
    /// (from `RUSAGE_CHILDREN`; only meaningful when calls run one at a time).
    pub cpu: Duration,
}

fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid start.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Outcome {
    /// stdout as JSON (panics with the output when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} (stderr {:?})",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success; returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.status, 0,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts a spec error with `code`; checks the error schema; returns msg.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(self.status, 0, "expected error {code}, got {}", self.stdout);
        let v = self.json();
        schema::assert_valid(schema::error(&v), &v);
        assert_eq!(v["code"].as_u64(), Some(code), "{}", self.stdout);
        v["msg"].as_str().unwrap_or_default().to_owned()
    }
}

impl Call {
    /// An ADD/DEL/CHECK call with every variable set; CNI_PATH is the
    /// directory of our binaries plus the reference plugins.
    pub fn new(command: &str, container: &str, netns: &Path, config: &str) -> Call {
        Call {
            command: command.into(),
            container: Some(container.into()),
            netns: Some(netns.display().to_string()),
            ifname: Some("eth0".into()),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"
            )),
            path: Some(cni_path()),
            config: config.into(),
        }
    }

    /// The same call with another command.
    pub fn with_command(&self, command: &str) -> Call {
        Call {
            command: command.into(),
            ..self.clone()
        }
    }

    /// The same call with `prevResult` added to the configuration.
    pub fn with_prev_result(&self, prev: &Value) -> Call {
        let mut cfg: Value = serde_json::from_str(&self.config).expect("config is JSON");
        cfg["prevResult"] = prev.clone();
        Call {
            config: cfg.to_string(),
            ..self.clone()
        }
    }

    /// Executes `binary` with this call, in the network namespace `host` when
    /// given (the runtime's namespace: where host-side interfaces go).
    pub fn exec(&self, binary: &str, host: Option<&Path>) -> Outcome {
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", &self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in [
            ("CNI_CONTAINERID", &self.container),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.path),
        ] {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        if let Some(p) = host {
            calinet_netlink::Netns::open(p)
                .expect("open host netns")
                .spawn_inside(&mut cmd);
        }
        let cpu_before = children_cpu();
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin piped");
        // A program that exits without reading stdin (`/bin/true`, or a
        // plugin failing early) closes the pipe: its exit status tells.
        if let Err(e) = stdin.write_all(self.config.as_bytes())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            panic!("write config to {binary}: {e}");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("wait for plugin");
        let elapsed = start.elapsed();
        let cpu = children_cpu().saturating_sub(cpu_before);
        Outcome {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            elapsed,
            cpu,
        }
    }
}

/// The directory of our binaries, then the reference plugins.
pub fn cni_path() -> String {
    let dir = Path::new(CALINET_IPAM)
        .parent()
        .expect("binary has a directory");
    format!("{}:{REFERENCE_DIR}", dir.display())
}

/// A calinet network configuration (`cniVersion` 1.0.0) on the SQLite file
/// `db`, with `ipam_extra` appended inside the ipam section.
pub fn calinet_config(db: &Path, pool: &str, ipam_extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calinet","mtu":1400,
            "nodename":"node-1","datastore_path":"{}",
            "ipam":{{"type":"calinet-ipam","ipv4_pools":["{pool}"]{ipam_extra}}}}}"#,
        db.display()
    )
}

/// The handle of a container in the default network.
pub fn handle(container: &str) -> HandleId {
    format!("k8s-pod-network.{container}")
        .parse()
        .expect("valid handle")
}

/// `ipam check` of the SQLite file with `live` as the live handles.
pub fn ipam_check(db: &Path, live: &[&str]) -> report::CheckReport {
    let store = SqliteStore::open(db).expect("open datastore");
    let live: HashSet<HandleId> = live.iter().map(|c| handle(c)).collect();
    report::check(&store, Some(&live)).expect("ipam check")
}

/// Handles present in the SQLite file.
pub fn stored_handles(db: &Path) -> Vec<String> {
    let store = SqliteStore::open(db).expect("open datastore");
    report::dump(&store)
        .expect("dump")
        .handles
        .into_iter()
        .map(|h| h.handle_id)
        .collect()
}

/// A temp dir for a test's datastore.
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("ipam.db");
    (dir, db)
}

/// WorkloadEndpoints in the SQLite file, as JSON.
pub fn stored_weps(db: &Path) -> Vec<Value> {
    use calinet_ipam::Store as _;
    let store = SqliteStore::open(db).expect("open datastore");
    store
        .list("/calico/resources/v3/projectcalico.org/workloadendpoints/")
        .expect("list WorkloadEndpoints")
        .into_iter()
        .map(|kv| serde_json::from_slice(&kv.value).expect("WorkloadEndpoint JSON"))
        .collect()
}
