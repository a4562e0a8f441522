//! Helper processes (wireguard-go, etcd) that are always stopped: when their
//! handle is dropped, and when their [`Lab`](crate::Lab) is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Result, cmd};

type Shared = Arc<Mutex<Option<Child>>>;

/// A running helper process in its own process group. Stopped on drop.
#[derive(Debug)]
pub struct Process {
    child: Shared,
    command: String,
    pid: u32,
}

impl Process {
    pub(crate) fn spawn(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_in(Arc::new(Mutex::new(None)), program, args, env)
    }

    /// Spawns into `slot`, which others (a lab's teardown) may also hold.
    fn spawn_in(slot: Shared, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let command = cmd::render(program, args);
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group, so stopping it also stops anything it forked.
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        let pid = child.id();
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(Self {
            child: slot,
            command,
            pid,
        })
    }

    pub(crate) fn shared(&self) -> Shared {
        self.child.clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Whether it is still running.
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops it (SIGTERM, then SIGKILL after two seconds) and waits for it.
    pub fn stop(&self) {
        kill_shared(&self.child);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        kill_shared(&self.child);
    }
}

pub(crate) fn kill_shared(shared: &Shared) {
    let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut child) = guard.take() else {
        return;
    };
    let group = -(child.id() as i32);
    // SAFETY: signalling the process group we created.
    unsafe { libc::kill(group, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            // Reap stragglers of the group too.
            // SAFETY: as above.
            unsafe { libc::kill(group, libc::SIGKILL) };
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(group, libc::SIGKILL) };
    let _ = child.wait();
}

/// Polls `ready` every 20 ms until it says yes, or fails after `timeout`.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if ready()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        what: "bind a free port on",
        path: "127.0.0.1".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "read the free port of",
            path: "127.0.0.1".into(),
            source,
        })
}

/// An etcd server on loopback with a temporary data directory (removed on
/// drop). [`Etcd::stop`] and [`Etcd::start`] keep the data, for fault tests.
#[derive(Debug)]
pub struct Etcd {
    process: Mutex<Option<Process>>,
    slot: Shared,
    data: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

const ETCD_READY: Duration = Duration::from_secs(20);

impl Etcd {
    pub(crate) fn start_new() -> Result<Self> {
        if !cmd::have("etcd") {
            return Err(Error::Invalid("etcd is not installed".into()));
        }
        let data = tempfile::Builder::new()
            .prefix("calinet-etcd-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "create a data directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let etcd = Self {
            process: Mutex::new(None),
            slot: Arc::new(Mutex::new(None)),
            data,
            client_port: free_loopback_port()?,
            peer_port: free_loopback_port()?,
        };
        etcd.start()?;
        Ok(etcd)
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// (Re)starts the server on the same ports and data; returns once healthy.
    pub fn start(&self) -> Result<()> {
        let mut guard = self.process.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(Process::is_running) {
            return Ok(());
        }
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let cluster = format!("calinet-test={peer}");
        let data_dir = self.data.path().to_string_lossy().into_owned();
        let process = Process::spawn_in(
            self.slot.clone(),
            "etcd",
            &[
                "--name",
                "calinet-test",
                "--data-dir",
                &data_dir,
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &cluster,
            ],
            &[],
        )?;
        let addr = self.client_addr();
        wait_for(
            &format!("etcd at {client} to be healthy"),
            ETCD_READY,
            || {
                if !process.is_running() {
                    return Err(Error::Invalid(format!(
                        "etcd at {client} exited during start-up (data dir {data_dir})"
                    )));
                }
                Ok(healthy(addr))
            },
        )?;
        *guard = Some(process);
        Ok(())
    }

    /// Stops the server (SIGTERM), keeping its data for [`Etcd::start`].
    pub fn stop(&self) {
        if let Some(process) = self
            .process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            process.stop();
        }
    }

    /// Whether the server answers its health check now.
    pub fn is_healthy(&self) -> bool {
        healthy(self.client_addr())
    }

    pub(crate) fn shared(&self) -> Shared {
        self.slot.clone()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// etcd's `/health` endpoint says `"health":"true"` once it serves requests.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
