//! Userspace WireGuard (wireguard-go, boringtun) through its control socket.
//!
//! The protocol is the cross-platform UAPI: a `set=1` or `get=1` request of
//! `key=value` lines ended by an empty line, answered by `errno=N` (and, for
//! `get`, the device's lines first).
//!
//! Implemented here rather than through `wireguard-control` 2.0.0 because that
//! crate's userspace backend fixes the socket directory to `/var/run/wireguard`,
//! always rewrites the whole peer (no `update_only`, so a delta could resurrect a
//! peer removed concurrently), has no way to report what an operation cost, and
//! its `Key` prints the private key in `Debug`. [`UapiBackend`] is blocking
//! (one short round trip per operation, with timeouts); with the `tokio`
//! feature, `AsyncUapiBackend` does the same on tokio's Unix sockets.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::backend::{ApplyReport, Backend};
use crate::delta::DeviceDelta;
use crate::error::{Error, Result};
use crate::key::{PresharedKey, PrivateKey, PublicKey};
use crate::model::{IfName, ObservedDevice, PeerConfig};

/// Where wireguard-go and boringtun put their sockets by default.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/wireguard";

/// The userspace backend.
#[derive(Debug, Clone)]
pub struct UapiBackend {
    socket_dir: PathBuf,
    timeout: Duration,
}

impl Default for UapiBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl UapiBackend {
    /// Sockets in [`DEFAULT_SOCKET_DIR`].
    pub fn new() -> Self {
        Self::with_socket_dir(DEFAULT_SOCKET_DIR)
    }
    /// Sockets in `dir` (e.g. a per-node directory in tests or a container).
    pub fn with_socket_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            socket_dir: dir.into(),
            timeout: Duration::from_secs(10),
        }
    }
    /// The socket of `ifname`.
    pub fn socket_path(&self, ifname: &IfName) -> PathBuf {
        self.socket_dir.join(format!("{ifname}.sock"))
    }

    fn connect(&self, ifname: &IfName) -> Result<(UnixStream, PathBuf)> {
        let path = self.socket_path(ifname);
        let io = |op| {
            let (ifname, socket) = (ifname.to_string(), path.clone());
            move |source| Error::UapiIo {
                ifname,
                socket,
                op,
                source,
            }
        };
        let stream = UnixStream::connect(&path).map_err(io("connect"))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io("set timeout"))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(io("set timeout"))?;
        Ok((stream, path))
    }

    /// Send one raw `set` request body (without the `set=1` line) and check the errno.
    fn set_raw(&self, ifname: &IfName, body: &str) -> Result<usize> {
        let (mut stream, path) = self.connect(ifname)?;
        let io = |op| {
            let (ifname, socket) = (ifname.to_string(), path.clone());
            move |source| Error::UapiIo {
                ifname,
                socket,
                op,
                source,
            }
        };
        let mut request = Zeroizing::new(String::with_capacity(body.len() + 8));
        request.push_str("set=1\n");
        request.push_str(body);
        request.push('\n');
        stream
            .write_all(request.as_bytes())
            .map_err(io("write set request"))?;
        let reply = read_reply(&mut BufReader::new(&stream)).map_err(io("read set reply"))?;
        let errno = reply_errno(ifname, &reply)?;
        if errno != 0 {
            return Err(Error::UapiErrno {
                ifname: ifname.to_string(),
                op: "set",
                errno,
            });
        }
        Ok(request.len())
    }
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "control socket closed before the empty line ending the reply",
            ));
        }
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line.to_owned());
    }
}

fn reply_errno(ifname: &IfName, lines: &[String]) -> Result<i32> {
    let last = lines.last().map(String::as_str).unwrap_or("");
    last.strip_prefix("errno=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::UapiProtocol {
            ifname: ifname.to_string(),
            line: last.to_owned(),
            reason: "reply must end with errno=<n>",
        })
}

/// The body of a `set=1` request for `delta` (without `set=1` and the final
/// empty line). Contains secrets when the delta does; the caller zeroes it.
pub fn encode_set(delta: &DeviceDelta) -> Zeroizing<String> {
    use std::fmt::Write as _;
    let mut out = Zeroizing::new(String::new());
    let s: &mut String = &mut out;
    if let Some(k) = &delta.private_key {
        let hex = Zeroizing::new(k.expose_hex());
        let _ = writeln!(s, "private_key={}", hex.as_str());
    }
    if let Some(p) = delta.listen_port {
        let _ = writeln!(s, "listen_port={p}");
    }
    if let Some(m) = delta.fwmark {
        let _ = writeln!(s, "fwmark={m}");
    }
    for p in &delta.peers {
        let _ = writeln!(s, "public_key={}", p.public_key.to_hex());
        if p.remove {
            s.push_str("remove=true\n");
            continue;
        }
        // Must follow public_key directly: it decides whether the entry may create.
        if p.update_only {
            s.push_str("update_only=true\n");
        }
        if let Some(psk) = &p.preshared_key {
            let hex = Zeroizing::new(psk.expose_hex());
            let _ = writeln!(s, "preshared_key={}", hex.as_str());
        }
        if let Some(ep) = p.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        if let Some(ka) = p.persistent_keepalive {
            let _ = writeln!(s, "persistent_keepalive_interval={ka}");
        }
        if p.replace_allowed_ips {
            s.push_str("replace_allowed_ips=true\n");
        }
        for n in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={n}");
        }
    }
    out
}

/// Parse the lines of a `get=1` reply (errno line included).
pub fn parse_get(ifname: &IfName, lines: &[String]) -> Result<ObservedDevice> {
    let errno = reply_errno(ifname, lines)?;
    if errno != 0 {
        return Err(Error::UapiErrno {
            ifname: ifname.to_string(),
            op: "get",
            errno,
        });
    }
    let mut dev = ObservedDevice::default();
    for line in &lines[..lines.len() - 1] {
        let bad = |reason| {
            // Never echo key material.
            let shown = match line.split_once('=') {
                Some((k, _)) if k.ends_with("_key") => format!("{k}=<redacted>"),
                _ => line.clone(),
            };
            Error::UapiProtocol {
                ifname: ifname.to_string(),
                line: shown,
                reason,
            }
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected key=value"))?;
        let peer = dev.peers.last_mut();
        match (key, peer) {
            ("private_key", _) => {
                let k = PrivateKey::from_hex(value).map_err(|_| bad("bad private key"))?;
                dev.public_key = Some(k.public_key());
            }
            ("listen_port", _) => dev.listen_port = value.parse().map_err(|_| bad("bad port"))?,
            ("fwmark", _) => dev.fwmark = value.parse().map_err(|_| bad("bad fwmark"))?,
            ("public_key", _) => dev.peers.push(PeerConfig {
                public_key: PublicKey::from_hex(value).map_err(|_| bad("bad public key"))?,
                preshared_key: None,
                endpoint: None,
                allowed_ips: Vec::new(),
                persistent_keepalive: None,
            }),
            ("preshared_key", Some(p)) => {
                let k = PresharedKey::from_hex(value).map_err(|_| bad("bad pre-shared key"))?;
                p.preshared_key = (!k.is_zero()).then_some(k);
            }
            ("endpoint", Some(p)) => {
                p.endpoint = Some(value.parse().map_err(|_| bad("bad endpoint"))?)
            }
            ("persistent_keepalive_interval", Some(p)) => {
                let ka: u16 = value.parse().map_err(|_| bad("bad keepalive"))?;
                p.persistent_keepalive = (ka != 0).then_some(ka);
            }
            ("allowed_ip", Some(p)) => p
                .allowed_ips
                .push(value.parse().map_err(|_| bad("bad allowed ip"))?),
            (
                "protocol_version"
                | "last_handshake_time_sec"
                | "last_handshake_time_nsec"
                | "tx_bytes"
                | "rx_bytes",
                Some(_),
            ) => {}
            (_, None) if key != "errno" => return Err(bad("peer attribute before any public_key")),
            _ => {}
        }
    }
    Ok(dev)
}

impl Backend for UapiBackend {
    fn read(&mut self, ifname: &IfName) -> Result<ObservedDevice> {
        let (mut stream, path) = self.connect(ifname)?;
        let io = |op| {
            let (ifname, socket) = (ifname.to_string(), path.clone());
            move |source| Error::UapiIo {
                ifname,
                socket,
                op,
                source,
            }
        };
        stream
            .write_all(b"get=1\n\n")
            .map_err(io("write get request"))?;
        let mut lines = read_reply(&mut BufReader::new(&stream)).map_err(io("read get reply"))?;
        let parsed = parse_get(ifname, &lines);
        for l in &mut lines {
            zeroize::Zeroize::zeroize(l);
        }
        parsed
    }

    /// One `set` round trip for the whole delta: the stream protocol has no
    /// message size limit, so nothing is split.
    fn apply(&mut self, ifname: &IfName, delta: &DeviceDelta) -> Result<ApplyReport> {
        if delta.is_empty() {
            return Ok(ApplyReport::default());
        }
        let body = encode_set(delta);
        let bytes = self.set_raw(ifname, &body)?;
        Ok(ApplyReport {
            operations: 1,
            peer_entries: delta.peers.len(),
            allowed_ips: delta.allowed_ip_count(),
            bytes,
        })
    }
}

#[cfg(feature = "tokio")]
pub use self::with_tokio::{AsyncUapiBackend, sync_async};

#[cfg(feature = "tokio")]
mod with_tokio {
    use std::path::PathBuf;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixStream;
    use zeroize::Zeroizing;

    use super::{DEFAULT_SOCKET_DIR, encode_set, parse_get, reply_errno};
    use crate::backend::ApplyReport;
    use crate::delta::{DeviceDelta, plan_delta};
    use crate::error::{Error, Result};
    use crate::model::{DeviceConfig, IfName, ObservedDevice};

    /// The userspace backend on tokio: same protocol and encoding as
    /// [`super::UapiBackend`], for agents that run on an async runtime.
    #[derive(Debug, Clone)]
    pub struct AsyncUapiBackend {
        socket_dir: PathBuf,
        timeout: Duration,
    }

    impl Default for AsyncUapiBackend {
        fn default() -> Self {
            Self::with_socket_dir(DEFAULT_SOCKET_DIR)
        }
    }

    impl AsyncUapiBackend {
        /// Sockets in `dir`.
        pub fn with_socket_dir(dir: impl Into<PathBuf>) -> Self {
            Self {
                socket_dir: dir.into(),
                timeout: Duration::from_secs(10),
            }
        }

        /// The socket of `ifname`.
        pub fn socket_path(&self, ifname: &IfName) -> PathBuf {
            self.socket_dir.join(format!("{ifname}.sock"))
        }

        async fn round_trip(
            &self,
            ifname: &IfName,
            op: &'static str,
            request: &[u8],
        ) -> Result<Vec<String>> {
            let socket = self.socket_path(ifname);
            let io = |what: &'static str| {
                let (ifname, socket) = (ifname.to_string(), socket.clone());
                move |source| Error::UapiIo {
                    ifname,
                    socket,
                    op: what,
                    source,
                }
            };
            let work = async {
                let mut stream = UnixStream::connect(&socket).await.map_err(io("connect"))?;
                stream.write_all(request).await.map_err(io(op))?;
                let mut reader = BufReader::new(stream);
                let mut lines = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader
                        .read_line(&mut line)
                        .await
                        .map_err(io("read reply"))?
                        == 0
                    {
                        return Err(io("read reply")(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "control socket closed before the empty line ending the reply",
                        )));
                    }
                    let line = line.trim_end_matches('\n');
                    if line.is_empty() {
                        return Ok(lines);
                    }
                    lines.push(line.to_owned());
                }
            };
            tokio::time::timeout(self.timeout, work)
                .await
                .map_err(|_| io("wait for reply")(std::io::ErrorKind::TimedOut.into()))?
        }

        /// Read the device.
        pub async fn read(&self, ifname: &IfName) -> Result<ObservedDevice> {
            let mut lines = self
                .round_trip(ifname, "write get request", b"get=1\n\n")
                .await?;
            let parsed = parse_get(ifname, &lines);
            for l in &mut lines {
                zeroize::Zeroize::zeroize(l);
            }
            parsed
        }

        /// Apply `delta` in one `set` round trip.
        pub async fn apply(&self, ifname: &IfName, delta: &DeviceDelta) -> Result<ApplyReport> {
            if delta.is_empty() {
                return Ok(ApplyReport::default());
            }
            let body = encode_set(delta);
            let mut request = Zeroizing::new(String::with_capacity(body.len() + 8));
            request.push_str("set=1\n");
            request.push_str(&body);
            request.push('\n');
            let reply = self
                .round_trip(ifname, "write set request", request.as_bytes())
                .await?;
            match reply_errno(ifname, &reply)? {
                0 => Ok(ApplyReport {
                    operations: 1,
                    peer_entries: delta.peers.len(),
                    allowed_ips: delta.allowed_ip_count(),
                    bytes: request.len(),
                }),
                errno => Err(Error::UapiErrno {
                    ifname: ifname.to_string(),
                    op: "set",
                    errno,
                }),
            }
        }
    }

    /// [`crate::backend::sync`] on the async backend.
    pub async fn sync_async(
        backend: &AsyncUapiBackend,
        ifname: &IfName,
        desired: &DeviceConfig,
    ) -> Result<(DeviceDelta, ApplyReport)> {
        let observed = backend.read(ifname).await?;
        let delta = plan_delta(desired, &observed);
        let report = backend.apply(ifname, &delta).await?;
        Ok((delta, report))
    }
}

/// Whether a control socket for `ifname` exists in `dir`.
pub fn socket_exists(dir: &Path, ifname: &IfName) -> bool {
    dir.join(format!("{ifname}.sock")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::PeerUpdate;

    fn ifname() -> IfName {
        "wg-test".parse().unwrap()
    }

    #[test]
    fn set_encoding_follows_the_protocol() {
        let create = PeerConfig {
            public_key: PublicKey::from_bytes([1; 32]),
            preshared_key: Some(PresharedKey::from_bytes([2; 32])),
            endpoint: Some("[2001:db8::1]:51821".parse().unwrap()),
            allowed_ips: vec![
                "10.0.0.0/24".parse().unwrap(),
                "fd00::1/128".parse().unwrap(),
            ],
            persistent_keepalive: Some(25),
        };
        let mut update = PeerUpdate::touch(PublicKey::from_bytes([3; 32]));
        update.replace_allowed_ips = true;
        update.allowed_ips = vec!["10.1.0.0/16".parse().unwrap()];
        let delta = DeviceDelta {
            private_key: None,
            listen_port: Some(51820),
            fwmark: Some(0x100000),
            peers: vec![
                PeerUpdate::remove(PublicKey::from_bytes([4; 32])),
                PeerUpdate::create(&create),
                update,
            ],
        };
        let text = encode_set(&delta);
        let h = |b: u8| hex::encode([b; 32]);
        let expected = format!(
            "listen_port=51820\nfwmark=1048576\n\
             public_key={}\nremove=true\n\
             public_key={}\npreshared_key={}\nendpoint=[2001:db8::1]:51821\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.0.0/24\nallowed_ip=fd00::1/128\n\
             public_key={}\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=10.1.0.0/16\n",
            h(4),
            h(1),
            h(2),
            h(3)
        );
        assert_eq!(text.as_str(), expected);
    }

    #[test]
    fn get_reply_parses_and_hides_the_private_key() {
        let private = PrivateKey::from_bytes([8; 32]);
        let lines: Vec<String> = format!(
            "private_key={}\nlisten_port=51820\nfwmark=1048576\npublic_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.1:51820\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\nallowed_ip=10.0.0.0/24\nallowed_ip=10.0.1.5/32\nerrno=0",
            private.expose_hex(),
            hex::encode([1; 32]),
            hex::encode([0; 32])
        )
        .lines()
        .map(str::to_owned)
        .collect();
        let dev = parse_get(&ifname(), &lines).unwrap();
        assert_eq!(dev.public_key, Some(private.public_key()));
        assert_eq!(dev.listen_port, 51820);
        assert_eq!(dev.fwmark, 0x100000);
        assert_eq!(dev.peers.len(), 1);
        let p = &dev.peers[0];
        assert_eq!(p.preshared_key, None);
        assert_eq!(p.persistent_keepalive, None);
        assert_eq!(p.allowed_ips.len(), 2);
    }

    #[test]
    fn get_errors_are_reported() {
        let lines = vec!["errno=19".to_owned()];
        assert!(matches!(
            parse_get(&ifname(), &lines),
            Err(Error::UapiErrno { errno: 19, .. })
        ));
        let lines = vec!["private_key=zz".to_owned(), "errno=0".to_owned()];
        let err = parse_get(&ifname(), &lines).unwrap_err();
        assert!(err.to_string().contains("private_key=<redacted>"), "{err}");
        let lines = vec!["garbage".to_owned()];
        assert!(matches!(
            parse_get(&ifname(), &lines),
            Err(Error::UapiProtocol { .. })
        ));
    }

    #[test]
    fn missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = UapiBackend::with_socket_dir(dir.path());
        let err = b.read(&ifname()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("wg-test.sock") && msg.contains("connect"),
            "{msg}"
        );
    }
}
