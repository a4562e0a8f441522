//! Packet captures with `tcpdump`, started before a probe and stopped after it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::netns::Netns;
use crate::{Error, Result};

/// A running `tcpdump` (see [`Netns::capture`]). Killed when dropped.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    command: String,
}

/// What a capture saw: `tcpdump -nn` lines (encapsulated packets show the
/// outer packet on one line and the inner one on the next).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packets {
    /// The lines, in order.
    pub lines: Vec<String>,
}

impl Packets {
    /// Lines containing every one of `needles`.
    pub fn matching(&self, needles: &[&str]) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(String::as_str)
            .collect()
    }

    /// Whether any line contains every one of `needles`.
    pub fn any(&self, needles: &[&str]) -> bool {
        !self.matching(needles).is_empty()
    }

    /// Whether any line mentions `text` at all (e.g. a pod address that must
    /// never appear on the underlay).
    pub fn mentions(&self, text: &str) -> bool {
        self.lines.iter().any(|l| l.contains(text))
    }

    /// Number of captured lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

impl std::fmt::Display for Packets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Capture {
    pub(crate) fn start(ns: &Netns, interface: &str, filter: &str) -> Result<Self> {
        let args = [
            "netns",
            "exec",
            ns.name(),
            "tcpdump",
            "-i",
            interface,
            "-nn",
            "-l",
            "--immediate-mode",
            // Headers are all a test asserts on; a small snapshot and a large
            // buffer keep bursts of parallel probes from being dropped (with
            // the default 256 KiB snapshots a burst of ~8 frames filled it).
            "-s",
            "512",
            "-B",
            "8192",
            filter,
        ];
        let command = crate::cmd::render("ip", &args);
        let mut child = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        // tcpdump announces "listening on <if>" on stderr once the socket is
        // bound; packets sent before that would be missed.
        let stderr = child.stderr.take().expect("stderr is piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            let mut said = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = ready_tx.send(Err(said));
                        return;
                    }
                    Ok(_) if line.contains("listening on") => {
                        let _ = ready_tx.send(Ok(()));
                        // Keep draining so tcpdump never blocks on a full pipe.
                        let _ = std::io::copy(&mut reader, &mut std::io::sink());
                        return;
                    }
                    Ok(_) => said.push_str(&line),
                }
            }
        });
        let mut capture = Capture {
            child: Some(child),
            command: command.clone(),
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => Ok(capture),
            Ok(Err(stderr)) => {
                let status = capture.kill_and_wait();
                Err(Error::Command {
                    command,
                    status,
                    stderr: stderr.trim().to_owned(),
                })
            }
            Err(_) => {
                capture.kill_and_wait();
                Err(Error::Timeout {
                    what: format!("`{command}` to start listening"),
                    after: READY_TIMEOUT,
                })
            }
        }
    }

    /// Stops the capture (after a short grace period for packets in flight) and
    /// returns what it saw.
    pub fn stop(mut self) -> Result<Packets> {
        std::thread::sleep(Duration::from_millis(200));
        let mut child = self.child.take().expect("capture is running");
        // SIGINT makes tcpdump flush and exit cleanly.
        // SAFETY: kill on a child pid we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let mut out = String::new();
        let read = match child.stdout.take() {
            Some(mut stdout) => stdout.read_to_string(&mut out).map(|_| ()),
            None => Ok(()),
        };
        let _ = child.wait();
        read.map_err(|source| Error::Io {
            what: "read tcpdump output of",
            path: self.command.clone().into(),
            source,
        })?;
        Ok(Packets {
            lines: out.lines().map(str::to_owned).collect(),
        })
    }

    fn kill_and_wait(&mut self) -> String {
        match self.child.take() {
            Some(mut child) => {
                let _ = child.kill();
                child
                    .wait()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string())
            }
            None => "not running".to_owned(),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}
