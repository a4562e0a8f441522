//! Helper processes (wireguard-go, etcd) that are always stopped: when their
//! handle is dropped, and when their [`Lab`](crate::Lab) is.

use std::ffi::{OsStr, OsString};
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

/// A signal the lab sends to processes it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGINT` (tcpdump flushes and exits on it).
    Interrupt,
    /// `SIGTERM`: stop cleanly.
    Terminate,
    /// `SIGKILL`.
    Kill,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// A pid as `kill(2)` takes it, or `None` when it does not fit (no process has
/// such a pid, and a wrapped value would name a process group).
fn raw_pid(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|p| *p > 0)
}

/// Sends `sig` to process `pid`; whether it was delivered.
pub fn signal(pid: u32, sig: Signal) -> bool {
    let Some(pid) = raw_pid(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory effects; the caller names a process it started.
    unsafe { libc::kill(pid, sig.raw()) == 0 }
}

/// Sends `sig` to every process of the process group (or session leader's
/// group) `pgid`; whether it was delivered.
pub fn signal_group(pgid: u32, sig: Signal) -> bool {
    let Some(pgid) = raw_pid(pgid) else {
        return false;
    };
    // SAFETY: as in `signal`; a negative pid addresses the group.
    unsafe { libc::kill(-pgid, sig.raw()) == 0 }
}

/// Reaps `pid` if it is an exited child of this process; never blocks, and
/// does nothing for other processes.
pub fn reap(pid: u32) {
    let Some(pid) = raw_pid(pid) else {
        return;
    };
    let mut status = 0;
    // SAFETY: waitpid with WNOHANG writes only to `status`, which we own.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Whether `pid` is a live process (exists and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name in parentheses: `pid (comm) S ...`.
    match stat.rfind(')') {
        Some(end) => !stat[end + 1..].trim_start().starts_with('Z'),
        None => false,
    }
}

/// The command line of `pid`, one word per argument (empty when it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// Every live process whose command line is exactly `argv`.
pub fn pids_with_cmdline(argv: &[&str]) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| cmdline(*pid) == argv && is_alive(*pid))
        .collect()
}

/// Stops `pid` (its whole process group when `group`): SIGTERM, then SIGKILL
/// once `grace` has passed. Reaps it when it is a child of this process.
/// Returns whether it stopped within the grace period.
pub fn stop_pid(pid: u32, group: bool, grace: Duration) -> bool {
    let send = |sig| {
        if group {
            signal_group(pid, sig)
        } else {
            signal(pid, sig)
        }
    };
    send(Signal::Terminate);
    let deadline = Instant::now() + grace;
    loop {
        reap(pid);
        if !is_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    send(Signal::Kill);
    let deadline = Instant::now() + Duration::from_secs(2);
    while is_alive(pid) && Instant::now() < deadline {
        reap(pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A command to start *detached*: in a session of its own (so it outlives
/// the caller and a terminal's Ctrl-C does not reach it), stdin from
/// `/dev/null`, stdout and stderr appended to a log file, optionally inside a
/// namespace (`ip netns exec`, which execs the program in place, so the pid
/// is the program's), optionally recording its pid in a file. Unlike
/// [`Process`], nothing stops it on drop: stop it with [`stop_pid`].
#[derive(Debug, Clone)]
pub struct DetachedCommand {
    program: OsString,
    args: Vec<OsString>,
    netns: Option<Netns>,
    log: PathBuf,
    pid_file: Option<PathBuf>,
}

impl DetachedCommand {
    /// `program`, logging to `log` (created if missing, appended to).
    pub fn new(program: impl AsRef<OsStr>, log: impl Into<PathBuf>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            netns: None,
            log: log.into(),
            pid_file: None,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs it inside `netns`.
    pub fn in_netns(mut self, netns: &Netns) -> Self {
        self.netns = Some(netns.clone());
        self
    }

    /// Writes its pid (decimal, one line) to `path` once started.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// The command line, for messages.
    pub fn render(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns.name()].map(str::to_owned));
        }
        words.push(self.program.to_string_lossy().into_owned());
        words.extend(self.args.iter().map(|a| a.to_string_lossy().into_owned()));
        words.join(" ")
    }

    /// Starts it.
    pub fn spawn(&self) -> Result<DetachedChild> {
        let command = self.render();
        let open = |what| {
            let log = self.log.clone();
            move |source| Error::Io {
                what,
                path: log,
                source,
            }
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(open("open the log for appending"))?;
        let err = out.try_clone().map_err(open("duplicate the handle of"))?;
        let mut cmd = match &self.netns {
            None => Command::new(&self.program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name()]).arg(&self.program);
                c
            }
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of the
        // parent; it cannot fail in a freshly forked child (which is never a
        // group leader).
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        let pid = child.id();
        if let Some(path) = &self.pid_file
            && let Err(source) = std::fs::write(path, format!("{pid}\n"))
        {
            stop_pid(pid, true, Duration::from_secs(2));
            return Err(Error::Io {
                what: "write the pid file",
                path: path.clone(),
                source,
            });
        }
        Ok(DetachedChild {
            child,
            command,
            pid,
        })
    }
}

/// A process started by [`DetachedCommand::spawn`]. Dropping it leaves the
/// process running.
#[derive(Debug)]
pub struct DetachedChild {
    child: Child,
    command: String,
    pid: u32,
}

impl DetachedChild {
    /// Its pid, which is also its session and process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Its exit status once it has exited (reaps it); `None` while it runs.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// Reads a pid file written by [`DetachedCommand::pid_file`].
pub fn read_pid_file(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "read the pid file",
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| {
        Error::Invalid(format!(
            "pid file {}: {text:?} is not a pid",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_process_outlives_its_handle_and_stops_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let pid_file = dir.path().join("sleep.pid");
        // A duration no other process on the machine is likely to sleep for.
        let secs = format!("30.{}", std::process::id());
        let child = DetachedCommand::new("sh", &log)
            .args(["-c", &format!("echo started; exec sleep {secs}")])
            .pid_file(&pid_file)
            .spawn()
            .unwrap();
        let pid = child.pid();
        assert_eq!(
            child.command(),
            format!("sh -c echo started; exec sleep {secs}")
        );
        drop(child);
        assert_eq!(read_pid_file(&pid_file).unwrap(), pid);
        assert!(is_alive(pid), "dropping the handle leaves it running");
        // `sh` execs `sleep` in its own time (slow on a loaded machine).
        wait_for("sh to exec sleep", Duration::from_secs(10), || {
            Ok(cmdline(pid) == ["sleep", secs.as_str()])
        })
        .unwrap();
        // Its own session: its session id (field 6 of stat) is its pid.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        assert_eq!(fields[3], pid.to_string(), "session id of {stat}");
        assert_eq!(pids_with_cmdline(&["sleep", &secs]), [pid]);
        wait_for("the log line", Duration::from_secs(5), || {
            Ok(std::fs::read_to_string(&log).unwrap_or_default() == "started\n")
        })
        .unwrap();
        assert!(
            stop_pid(pid, true, Duration::from_secs(5)),
            "stops on SIGTERM"
        );
        assert!(!is_alive(pid));
        assert!(cmdline(pid).is_empty(), "reaped");
    }

    #[test]
    fn detached_spawn_names_a_missing_program() {
        let dir = tempfile::tempdir().unwrap();
        let err = DetachedCommand::new("/nonexistent/calinet-x", dir.path().join("log"))
            .spawn()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/calinet-x"), "{err}");
    }

    #[test]
    fn signals_to_impossible_pids_are_refused() {
        assert!(!signal(0, Signal::Terminate), "0 would be our own group");
        assert!(!signal_group(u32::MAX, Signal::Kill));
        assert!(!is_alive(u32::MAX));
    }
}
