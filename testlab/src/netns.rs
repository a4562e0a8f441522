//! A network namespace of the lab, and what tests do in it: run commands, read
//! kernel state as typed `ip -j` output, probe connectivity, capture packets.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::capture::Capture;
use crate::ipjson::{Addr, FdbEntry, Link, Neighbour, Route};
use crate::{Error, Result, cmd};

/// A named network namespace (`/run/netns/<name>`). Cheap to clone; the
/// [`Lab`](crate::Lab) that made it deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub(crate) fn new(name: String) -> Self {
        Self { name }
    }

    /// A namespace made earlier (by this process or another, e.g. a lab
    /// recorded in a state file), by its name; it must exist in `/run/netns`.
    pub fn existing(name: &str) -> Result<Self> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::Invalid(format!(
                "{name:?} is not a namespace name (no '/', not empty, no leading '.')"
            )));
        }
        let ns = Self::new(name.to_owned());
        let path = ns.path();
        std::fs::metadata(&path).map_err(|source| Error::Io {
            what: "find namespace",
            path,
            source,
        })?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, to hand to code under test.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Opens the namespace file.
    pub fn open(&self) -> Result<File> {
        let path = self.path();
        File::open(&path).map_err(|source| Error::Io {
            what: "open namespace",
            path,
            source,
        })
    }

    /// Runs `program args...` inside the namespace; returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Runs a command line given as words (`["ip", "-j", "route"]`) inside the
    /// namespace; returns stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::Invalid("empty command".into()))?;
        self.exec(program, args)
    }

    /// Runs `ip <args>` against this namespace (`ip -n <ns> ...`, no exec).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        cmd::run("ip", &full)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        self.exec("sysctl", &["-n", key])
            .map(|s| s.trim().to_owned())
    }

    fn json<T: DeserializeOwned>(&self, program: &str, args: &[&str]) -> Result<T> {
        let out = self.exec(program, args)?;
        // `ip -j` prints nothing at all (not `[]`) for an empty table on some versions.
        let text = if out.trim().is_empty() { "[]" } else { &out };
        serde_json::from_str(text).map_err(|source| Error::Json {
            command: format!("{program} {}", args.join(" ")),
            source,
        })
    }

    /// IPv4 routes of the main table (`ip -j -4 route show`).
    pub fn routes(&self) -> Result<Vec<Route>> {
        self.route_table("4", "main")
    }

    /// IPv6 routes of the main table.
    pub fn routes6(&self) -> Result<Vec<Route>> {
        self.route_table("6", "main")
    }

    /// Routes of one family (`"4"` or `"6"`) and table (`"main"`, `"1"`, `"all"`).
    pub fn route_table(&self, family: &str, table: &str) -> Result<Vec<Route>> {
        let family = format!("-{family}");
        self.json(
            "ip",
            &["-j", "-d", &family, "route", "show", "table", table],
        )
    }

    /// Links with details (`ip -j -d link show`).
    pub fn links(&self) -> Result<Vec<Link>> {
        self.json("ip", &["-j", "-d", "link", "show"])
    }

    /// One link by name, if present.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.ifname == name))
    }

    /// Every address, one entry per address (`ip -j addr show`, flattened).
    pub fn addrs(&self) -> Result<Vec<Addr>> {
        let per_link: Vec<crate::ipjson::AddrLink> = self.json("ip", &["-j", "addr", "show"])?;
        Ok(per_link
            .into_iter()
            .flat_map(|link| {
                let ifname = link.ifname;
                link.addr_info.into_iter().map(move |mut a| {
                    a.ifname.clone_from(&ifname);
                    a
                })
            })
            .collect())
    }

    /// Neighbour entries of both families (`ip -j neigh show`).
    pub fn neighbours(&self) -> Result<Vec<Neighbour>> {
        self.json("ip", &["-j", "neigh", "show"])
    }

    /// Bridge forwarding database (`bridge -j fdb show`).
    pub fn fdb(&self) -> Result<Vec<FdbEntry>> {
        self.json("bridge", &["-j", "fdb", "show"])
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its
    /// result. Sockets made inside stay in the namespace after `f` returns.
    pub fn enter<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let path = self.path();
        std::thread::spawn(move || {
            enter_current_thread(file, path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Starts a thread that enters this namespace and then runs `f`, for work
    /// that lives longer than one call (e.g. a client whose runtime threads,
    /// spawned from there, inherit the namespace). Returns once the thread
    /// is inside, or the error of entering.
    pub fn spawn<T, F>(&self, f: F) -> Result<NetnsThread<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let path = self.path();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || match enter_current_thread(file, path) {
            // `f` must not run in the wrong namespace.
            Err(e) => {
                let _ = entered_tx.send(Err(e));
                None
            }
            Ok(()) => {
                let _ = entered_tx.send(Ok(()));
                Some(f())
            }
        });
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(NetnsThread { handle }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Invalid(format!(
                "the thread entering {} died",
                self.name
            ))),
        }
    }

    /// Pings `addr` from inside the namespace until one reply arrives or
    /// `timeout` passes (probes every 200 ms, so one lost first packet, e.g.
    /// during neighbour resolution, does not fail the probe).
    pub fn ping(&self, addr: IpAddr, timeout: Duration) -> bool {
        let deadline = timeout.as_secs().max(1).to_string();
        self.exec(
            "ping",
            &[
                "-n",
                "-q",
                "-c",
                "1",
                "-i",
                "0.2",
                "-w",
                &deadline,
                &addr.to_string(),
            ],
        )
        .is_ok()
    }

    /// Opens a TCP connection to `addr:port` from inside the namespace.
    pub fn tcp_connect(&self, addr: IpAddr, port: u16, timeout: Duration) -> bool {
        self.tcp_stream(addr, port, timeout).is_ok()
    }

    /// A TCP connection made from inside the namespace, for tests that keep a
    /// connection open (e.g. across a policy update).
    pub fn tcp_stream(&self, addr: IpAddr, port: u16, timeout: Duration) -> Result<TcpStream> {
        let target = SocketAddr::new(addr, port);
        self.enter(move || TcpStream::connect_timeout(&target, timeout))?
            .map_err(|source| Error::Io {
                what: "TCP connect to",
                path: PathBuf::from(target.to_string()),
                source,
            })
    }

    /// Listens on `addr:port` inside the namespace. Accepted connections get
    /// every byte they send echoed back, so a test can check a connection is
    /// still alive. Stops when dropped.
    pub fn tcp_listen(&self, addr: IpAddr, port: u16) -> Result<TcpServer> {
        let bind = SocketAddr::new(addr, port);
        let listener = self
            .enter(move || TcpListener::bind(bind))?
            .map_err(|source| Error::Io {
                what: "listen on",
                path: PathBuf::from(bind.to_string()),
                source,
            })?;
        TcpServer::start(listener)
    }

    /// Starts `tcpdump` on `interface` in this namespace with a pcap `filter`;
    /// returns once it is listening.
    pub fn capture(&self, interface: &str, filter: &str) -> Result<Capture> {
        Capture::start(self, interface, filter)
    }
}

/// A thread running inside a namespace (see [`Netns::spawn`]).
#[derive(Debug)]
pub struct NetnsThread<T> {
    handle: JoinHandle<Option<T>>,
}

impl<T> NetnsThread<T> {
    /// Waits for the thread; `Err` carries its panic.
    pub fn join(self) -> std::thread::Result<T> {
        self.handle
            .join()
            .map(|v| v.expect("a thread handed out by Netns::spawn has entered its namespace"))
    }
}

/// Moves the calling thread into the namespace open as `file` (through
/// calinet-netlink, the workspace's one place for `setns`).
pub(crate) fn enter_current_thread(file: File, path: PathBuf) -> Result<()> {
    calinet_netlink::Netns::from_file(file, path.clone())
        .enter_thread()
        .map_err(|e| Error::Io {
            what: "setns into",
            path,
            source: match e {
                calinet_netlink::Error::Netns { source, .. } => source,
                other => std::io::Error::other(other.to_string()),
            },
        })
}

/// A TCP echo server running in a namespace (see [`Netns::tcp_listen`]).
#[derive(Debug)]
pub struct TcpServer {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    fn start(listener: TcpListener) -> Result<Self> {
        let local = listener.local_addr().map_err(|source| Error::Io {
            what: "local address of listener",
            path: PathBuf::new(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(|source| Error::Io {
            what: "set nonblocking",
            path: PathBuf::from(local.to_string()),
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            std::thread::spawn(move || accept_loop(listener, &stop, &accepted))
        };
        Ok(Self {
            local,
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool, accepted: &AtomicUsize) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                accepted.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || echo(stream));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn echo(mut stream: TcpStream) {
    use std::io::{Read, Write};
    let _ = stream.set_nonblocking(false);
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
