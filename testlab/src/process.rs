//! Helper processes (wireguard-go, etcd) that are always stopped: when their
//! handle is dropped, and when their [`Lab`](crate::Lab) is.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::Netns;
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

/// `N` distinct free TCP ports on `127.0.0.1`, of the root namespace or of
/// `netns`. The listeners are held until all are bound, so the ports differ.
fn free_loopback_ports<const N: usize>(netns: Option<&Netns>) -> Result<[u16; N]> {
    let bind = || -> std::io::Result<[u16; N]> {
        let listeners = (0..N)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut ports = [0; N];
        for (port, listener) in ports.iter_mut().zip(&listeners) {
            *port = listener.local_addr()?.port();
        }
        Ok(ports)
    };
    let (ports, place) = match netns {
        None => (bind(), PathBuf::from("127.0.0.1")),
        Some(ns) => (ns.enter(bind)?, ns.path()),
    };
    ports.map_err(|source| Error::Io {
        what: "bind free loopback ports in",
        path: place,
        source,
    })
}

/// An etcd server on loopback with a temporary data directory (removed on
/// drop): the root namespace's loopback ([`Lab::etcd`](crate::Lab::etcd)), or
/// a lab namespace's ([`Lab::etcd_in`](crate::Lab::etcd_in)), where only
/// processes in that namespace reach it. [`Etcd::stop`] and [`Etcd::start`]
/// keep the data, for fault tests.
#[derive(Debug)]
pub struct Etcd {
    process: Mutex<Option<Process>>,
    slot: Shared,
    data: tempfile::TempDir,
    netns: Option<Netns>,
    client_port: u16,
    peer_port: u16,
}

const ETCD_READY: Duration = Duration::from_secs(20);

impl Etcd {
    /// A new server listening on the loopback of `netns` (the root namespace
    /// when `None`), started and healthy.
    pub(crate) fn start_new(netns: Option<Netns>) -> Result<Self> {
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
        let [client_port, peer_port] = free_loopback_ports(netns.as_ref())?;
        let etcd = Self {
            process: Mutex::new(None),
            slot: Arc::new(Mutex::new(None)),
            data,
            netns,
            client_port,
            peer_port,
        };
        etcd.start()?;
        Ok(etcd)
    }

    /// The client URL, `http://127.0.0.1:<port>`, valid in the server's
    /// namespace ([`Etcd::netns`]).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address (in the server's namespace).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The namespace the server listens in; `None` for the root namespace.
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The data directory (removed when this handle is dropped).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(Process::pid)
    }

    /// Where the server is, for messages: `http://127.0.0.1:<port>` plus the
    /// namespace when it is not the root one.
    fn place(&self) -> String {
        match &self.netns {
            None => self.endpoint(),
            Some(ns) => format!("{} in netns {}", self.endpoint(), ns.name()),
        }
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
        let etcd_args = [
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
        ];
        let process = match &self.netns {
            None => Process::spawn_in(self.slot.clone(), "etcd", &etcd_args, &[])?,
            Some(ns) => {
                // `ip netns exec` execs etcd in place: same pid, same group.
                let mut argv = vec!["netns", "exec", ns.name(), "etcd"];
                argv.extend_from_slice(&etcd_args);
                Process::spawn_in(self.slot.clone(), "ip", &argv, &[])?
            }
        };
        let place = self.place();
        wait_for(
            &format!("etcd at {place} to be healthy"),
            ETCD_READY,
            || {
                if !process.is_running() {
                    return Err(Error::Invalid(format!(
                        "etcd at {place} exited during start-up (data dir {data_dir})"
                    )));
                }
                Ok(self.is_healthy())
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

    /// Whether the server answers its health check now (asked from its
    /// namespace).
    pub fn is_healthy(&self) -> bool {
        let addr = self.client_addr();
        match &self.netns {
            None => healthy(addr),
            // A namespace already deleted (lab torn down) is not healthy.
            Some(ns) => ns.enter(move || healthy(addr)).unwrap_or(false),
        }
    }

    /// Runs `etcdctl --endpoints <endpoint> <args>` from the server's
    /// namespace; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let endpoint = self.endpoint();
        let mut argv = vec!["etcdctl", "--endpoints", &endpoint];
        argv.extend_from_slice(args);
        match &self.netns {
            None => cmd::run(argv[0], &argv[1..]),
            Some(ns) => ns.run(&argv),
        }
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
