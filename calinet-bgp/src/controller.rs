//! The BIRD controller: a small state machine over a [`Bird`] backend (the
//! thin I/O edge), so its logic is tested with a fake and the real process
//! in network namespaces.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control::{BirdRoute, ControlSocket, ProtocolStatus};
use crate::error::ControlError;
use crate::resources::{BgpPeer, Password, SecretKeyRef};

/// What the controller needs from a BIRD: the I/O edge.
pub trait Bird {
    /// Replaces the configuration file atomically.
    fn write_config(&mut self, text: &str) -> Result<(), ControlError>;
    /// Whether BIRD runs.
    fn is_running(&mut self) -> bool;
    /// Starts BIRD on the current file; `recover` asks it to treat the start
    /// as a graceful restart (keep kernel routes until peers re-sent theirs).
    fn start(&mut self, recover: bool) -> Result<(), ControlError>;
    /// Makes the running BIRD re-read its file (no restart).
    fn configure(&mut self) -> Result<(), ControlError>;
    /// `show protocols all`.
    fn protocols(&mut self) -> Result<Vec<ProtocolStatus>, ControlError>;
    /// `show route all`.
    fn routes(&mut self) -> Result<Vec<BirdRoute>, ControlError>;
    /// Shuts BIRD down cleanly.
    fn stop(&mut self) -> Result<(), ControlError>;
}

/// What [`Controller::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// BIRD runs this configuration already.
    Unchanged,
    /// BIRD re-read its configuration, without restarting.
    Reconfigured,
    /// BIRD was started for the first time.
    Started,
    /// BIRD had died and was started again (as a graceful restart).
    Restarted,
}

/// Keeps one BIRD running the latest configuration.
#[derive(Debug)]
pub struct Controller<B> {
    bird: B,
    applied: Option<String>,
    last_start: Option<Instant>,
    /// BIRD was found running before this controller ever started it.
    adopted: bool,
    backoff: Duration,
}

impl<B: Bird> Controller<B> {
    /// A controller of `bird`, restarting it at most once per second.
    pub fn new(bird: B) -> Self {
        Controller {
            bird,
            applied: None,
            last_start: None,
            adopted: false,
            backoff: Duration::from_secs(1),
        }
    }

    /// Sets the least time between two starts of BIRD.
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Makes BIRD run `config`: starts it (or restarts it if it died), or
    /// re-reads the configuration if it changed. A configuration BIRD rejects
    /// is taken back off the disk; the running one stays.
    pub fn apply(&mut self, config: &str, now: Instant) -> Result<Applied, ControlError> {
        if !self.bird.is_running() {
            if let Some(last) = self.last_start {
                let next = last + self.backoff;
                if now < next {
                    return Err(ControlError::Backoff { wait: next - now });
                }
            }
            // A BIRD that ran under this controller (started here, or adopted
            // from an earlier one) died: restart it in graceful-restart
            // recovery, so peers keep its routes meanwhile.
            let restart = self.last_start.is_some() || self.adopted;
            self.bird.write_config(config)?;
            self.last_start = Some(now);
            self.bird.start(restart)?;
            self.applied = Some(config.to_owned());
            return Ok(if restart {
                Applied::Restarted
            } else {
                Applied::Started
            });
        }
        if self.last_start.is_none() {
            self.adopted = true;
        }
        if self.applied.as_deref() == Some(config) {
            return Ok(Applied::Unchanged);
        }
        self.bird.write_config(config)?;
        if let Err(e) = self.bird.configure() {
            if let Some(previous) = &self.applied {
                // Best effort: the error that matters is BIRD's.
                let _ = self.bird.write_config(previous);
            }
            return Err(e);
        }
        self.applied = Some(config.to_owned());
        Ok(Applied::Reconfigured)
    }

    /// Restarts BIRD with the last configuration if it died.
    pub fn ensure_running(&mut self, now: Instant) -> Result<Applied, ControlError> {
        match self.applied.clone() {
            Some(config) => self.apply(&config, now),
            None => Ok(Applied::Unchanged),
        }
    }

    /// Session and protocol state.
    pub fn protocols(&mut self) -> Result<Vec<ProtocolStatus>, ControlError> {
        self.bird.protocols()
    }

    /// BIRD's routes.
    pub fn routes(&mut self) -> Result<Vec<BirdRoute>, ControlError> {
        self.bird.routes()
    }

    /// Stops BIRD cleanly; a later `apply` starts it again.
    pub fn stop(&mut self) -> Result<(), ControlError> {
        self.applied = None;
        self.last_start = None;
        self.adopted = false;
        self.bird.stop()
    }

    /// The configuration BIRD runs, as far as the controller knows.
    pub fn applied(&self) -> Option<&str> {
        self.applied.as_deref()
    }

    /// The backend.
    pub fn bird(&self) -> &B {
        &self.bird
    }

    /// The backend, mutably (tests kill the process through it).
    pub fn bird_mut(&mut self) -> &mut B {
        &mut self.bird
    }
}

/// A real `bird -f` process with its own configuration, control socket, pid
/// file and log under one runtime directory. The BIRD it started is killed
/// when dropped (unless [detached](BirdProcess::detach)); a BIRD already
/// answering on the socket is adopted instead of started twice.
#[derive(Debug)]
pub struct BirdProcess {
    program: String,
    dir: PathBuf,
    netns: Option<String>,
    child: Option<Child>,
    timeout: Duration,
}

impl BirdProcess {
    /// A BIRD using `dir` (created if missing) for `bird.conf`, `bird.ctl`,
    /// `bird.pid` and `bird.log`. It runs in the caller's network namespace.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        BirdProcess {
            program: "bird".into(),
            dir: dir.into(),
            netns: None,
            child: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Runs BIRD inside the named network namespace (`ip netns exec`).
    pub fn in_netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// Uses another `bird` binary.
    pub fn program(mut self, program: impl Into<String>) -> Self {
        self.program = program.into();
        self
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    /// The control socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// BIRD's stderr log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("bird.log")
    }

    /// The process id, while it runs (read from the pid file for an adopted
    /// BIRD).
    pub fn pid(&mut self) -> Option<u32> {
        if !self.is_running() {
            return None;
        }
        match &self.child {
            Some(child) => Some(child.id()),
            None => std::fs::read_to_string(self.dir.join("bird.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok()),
        }
    }

    /// Lets BIRD run on after this value is dropped (an agent handing over
    /// to its next instance, which adopts it through the socket).
    pub fn detach(&mut self) {
        self.child = None;
    }

    /// Kills BIRD with SIGKILL, as a crash would (no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Opens a control connection.
    pub fn connect(&self) -> Result<ControlSocket, ControlError> {
        ControlSocket::connect(&self.socket_path(), self.timeout)
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ControlError {
        let path = path.to_path_buf();
        move |source| ControlError::Io { what, path, source }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        text.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    }
}

impl Bird for BirdProcess {
    fn write_config(&mut self, text: &str) -> Result<(), ControlError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io("create runtime dir", &self.dir))?;
        let path = self.config_path();
        let tmp = self.dir.join("bird.conf.tmp");
        let mut f = File::create(&tmp).map_err(Self::io("create config", &tmp))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(Self::io("write config", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(Self::io("replace config", &path))
    }

    fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            // A BIRD left running by an earlier controller (an agent that
            // restarted) answers on the socket; it is adopted, not restarted.
            None => self.connect().is_ok(),
        }
    }

    fn start(&mut self, recover: bool) -> Result<(), ControlError> {
        self.kill();
        std::fs::create_dir_all(&self.dir).map_err(Self::io("create runtime dir", &self.dir))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(Self::io("open log", &self.log_path()))?;
        let conf = self.config_path();
        let sock = self.socket_path();
        let pid = self.dir.join("bird.pid");
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        argv.push(self.program.clone());
        argv.push("-f".into());
        for (flag, path) in [("-c", &conf), ("-s", &sock), ("-P", &pid)] {
            argv.push(flag.into());
            argv.push(path.display().to_string());
        }
        if recover {
            argv.push("-R".into());
        }
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ControlError::Spawn {
                program: argv.join(" "),
                source,
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + self.timeout;
        loop {
            if !self.is_running() {
                self.child = None;
                return Err(ControlError::NotReady {
                    config: conf,
                    detail: format!("exited: {}", self.log_tail()),
                });
            }
            // A stale socket from a killed BIRD refuses connections.
            if ControlSocket::connect(&sock, self.timeout).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(ControlError::NotReady {
                    config: conf,
                    detail: format!("no control socket after {:?}", self.timeout),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn configure(&mut self) -> Result<(), ControlError> {
        self.connect()?.configure().map(|_| ())
    }

    fn protocols(&mut self) -> Result<Vec<ProtocolStatus>, ControlError> {
        self.connect()?.protocols()
    }

    fn routes(&mut self) -> Result<Vec<BirdRoute>, ControlError> {
        self.connect()?.routes()
    }

    fn stop(&mut self) -> Result<(), ControlError> {
        if !self.is_running() {
            self.child = None;
            return Ok(());
        }
        if self.child.is_none() {
            // Adopted: only the control socket reaches it; it has stopped
            // when the socket no longer answers.
            self.connect().and_then(|mut c| c.down())?;
            let deadline = Instant::now() + self.timeout;
            while self.connect().is_ok() {
                if Instant::now() > deadline {
                    return Err(ControlError::StillRunning {
                        config: self.config_path(),
                        after: self.timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
        let result = self.connect().and_then(|mut c| c.down());
        let deadline = Instant::now() + self.timeout;
        while self.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        result
    }
}

impl Drop for BirdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads the passwords `peers` refer to from `dir/<secret name>/<key>` (the
/// layout of a mounted Kubernetes secret); a trailing newline is dropped.
pub fn read_secrets(
    dir: &Path,
    peers: &[BgpPeer],
) -> Result<BTreeMap<SecretKeyRef, Password>, ControlError> {
    let mut out = BTreeMap::new();
    for r in peers
        .iter()
        .filter_map(|p| p.spec.password.as_ref())
        .map(|p| &p.secret_key_ref)
    {
        let path = dir.join(&r.name).join(&r.key);
        let text =
            std::fs::read_to_string(&path).map_err(BirdProcess::io("read BGP password", &path))?;
        let secret = text.strip_suffix('\n').unwrap_or(&text);
        let password = Password::new(secret).map_err(|rule| ControlError::Io {
            what: "read BGP password",
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, rule),
        })?;
        out.insert(r.clone(), password);
    }
    Ok(out)
}
