//! Explicit network namespaces.
//!
//! Every kernel operation of calinet names the namespace it works in with a
//! [`Netns`]. Work that must run *inside* a namespace (creating a netlink socket,
//! writing `/proc/sys`) is a synchronous closure that [`Netns::run`] runs on the
//! calling thread between two `setns` calls, so the thread is back in its own
//! namespace when `run` returns. This module holds the only `setns` calls of the
//! workspace.
#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// An open network namespace: a file descriptor on `/run/netns/NAME`,
/// `/proc/PID/ns/net` or similar, plus its path for messages.
#[derive(Clone)]
pub struct Netns {
    file: Arc<File>,
    path: PathBuf,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netns({})", self.path.display())
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

/// Moves the calling thread into the namespace open as `fd`.
fn setns(fd: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on a valid, open namespace descriptor with CLONE_NEWNET;
    // it changes only the calling thread's namespace.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Netns {
    /// Opens the namespace file at `path` (e.g. `/run/netns/pod1`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::Netns {
            path: path.clone(),
            source,
        })?;
        Ok(Netns {
            file: Arc::new(file),
            path,
        })
    }

    /// Opens `/run/netns/NAME` (what `ip netns add NAME` creates).
    pub fn named(name: &str) -> Result<Self> {
        Netns::open(Path::new("/run/netns").join(name))
    }

    /// The namespace of the calling thread (`/proc/thread-self/ns/net`), taken
    /// explicitly so that later work is pinned to it even if threads move.
    pub fn current() -> Result<Self> {
        Netns::open(THREAD_NETNS)
    }

    /// Wraps an already open namespace file.
    pub fn from_file(file: File, path: impl Into<PathBuf>) -> Self {
        Netns {
            file: Arc::new(file),
            path: path.into(),
        }
    }

    /// The open namespace file (e.g. to hand its fd to `IFLA_NET_NS_FD`).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the calling thread is already in this namespace: same
    /// `(st_dev, st_ino)` as `/proc/thread-self/ns/net` (how the kernel identifies a
    /// namespace). `false` when either cannot be read, so that the caller takes the
    /// safe path.
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (self.file.metadata(), std::fs::metadata(THREAD_NETNS)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Runs `f` inside this namespace and returns its result. Sockets created by `f`
    /// stay bound to this namespace after it returns.
    ///
    /// `f` runs on the calling thread: it enters this namespace, runs `f`, and
    /// returns to the namespace it came from before `run` returns (also when `f`
    /// panics), so the caller's thread ends where it started. `f` is synchronous,
    /// so nothing else can run on the thread meanwhile. Two `setns` calls cost
    /// about 10 µs, a thread spawn + join 0.05-10 ms in the VMs we test on. When
    /// the thread is already in this namespace, `f` just runs.
    ///
    /// If the thread cannot get back to its namespace (which the kernel refuses
    /// only when the namespace's privileges were dropped meanwhile), the process
    /// aborts: a thread silently left in another namespace would put every later
    /// socket it opens in the wrong place.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        if self.is_current() {
            return Ok(f());
        }
        let home = File::open(THREAD_NETNS).map_err(|source| Error::Netns {
            path: PathBuf::from(THREAD_NETNS),
            source,
        })?;
        setns(&self.file).map_err(|source| Error::Netns {
            path: self.path.clone(),
            source,
        })?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        if let Err(e) = setns(&home) {
            eprintln!(
                "calinet-netlink: cannot return to the original network namespace after entering {}: {e}; aborting",
                self.path.display()
            );
            std::process::abort();
        }
        match out {
            Ok(v) => Ok(v),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Moves the calling thread into this namespace for good. Only for a
    /// thread that the caller spawned for this purpose and that ends in the
    /// namespace (a test helper's worker); everything else uses [`Netns::run`].
    pub fn enter_thread(&self) -> Result<()> {
        setns(&self.file).map_err(|source| Error::Netns {
            path: self.path.clone(),
            source,
        })
    }

    /// Makes `cmd`'s child process start inside this namespace (a `setns`
    /// between fork and exec); the parent is not moved. The namespace file
    /// stays open in `cmd` until it is dropped.
    pub fn spawn_inside(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let file = Arc::clone(&self.file);
        // SAFETY: the hook runs in the child between fork and exec and makes
        // only the async-signal-safe setns(2) call on a descriptor that the
        // Arc captured by the hook keeps open; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Writes `value` to `/proc/sys/<key>` (key with `/` separators, e.g.
    /// `net/ipv4/conf/cali123/proxy_arp`) inside this namespace.
    pub fn write_sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.write_sysctls(&[(key.to_string(), value.to_string())])
    }

    /// Writes several sysctls in one namespace switch.
    pub fn write_sysctls(&self, entries: &[(String, String)]) -> Result<()> {
        let netns = self.to_string();
        self.run(|| {
            for (key, value) in entries {
                let path = format!("/proc/sys/{key}");
                std::fs::write(&path, value).map_err(|source| Error::Sysctl {
                    path: path.clone(),
                    netns: netns.clone(),
                    source,
                })?;
            }
            Ok(())
        })?
    }

    /// Reads `/proc/sys/<key>` inside this namespace (trimmed).
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        let netns = self.to_string();
        self.run(|| {
            let path = format!("/proc/sys/{key}");
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .map_err(|source| Error::Sysctl {
                    path,
                    netns,
                    source,
                })
        })?
    }
}
