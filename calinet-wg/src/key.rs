//! Keys: the node's private key (kept in a 0600 file), public keys published on
//! nodes, and optional per-peer pre-shared keys.
//!
//! Secrets ([`PrivateKey`], [`PresharedKey`]) are zeroed on drop, print as
//! `<redacted>` in `Debug`, have no `Display`, and are only turned into text by
//! methods whose names say so (`expose_*`), which this crate calls only to write
//! the key file, the control socket and rendered configs the caller asked for.
//!
//! Curve25519 comes from `x25519-dalek` (pinned) rather than
//! `wireguard-control`'s `Key`: that type prints the private key in `Debug`,
//! is never zeroed, treats public and private keys as one type, and would pull
//! in a second generation of the netlink crates (netlink-packet-core 0.7 next
//! to the workspace's 0.9). Randomness is read from `/dev/urandom`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroize;

use crate::error::{Error, Result};

/// Length of every WireGuard key.
pub const KEY_LEN: usize = 32;

fn decode_base64(text: &str, what: &str) -> Result<[u8; KEY_LEN]> {
    let text = text.trim();
    let mut out = [0u8; KEY_LEN];
    // A 32-byte key is exactly 44 base64 characters ending in one '='.
    if text.len() != 44 || !text.ends_with('=') {
        return Err(Error::InvalidKey {
            what: what.to_owned(),
            reason: "must be 44 characters of base64 (32 bytes), as `wg genkey` prints",
        });
    }
    let mut decoded = STANDARD.decode(text).map_err(|_| Error::InvalidKey {
        what: what.to_owned(),
        reason: "not valid base64",
    })?;
    if decoded.len() != KEY_LEN {
        decoded.zeroize();
        return Err(Error::InvalidKey {
            what: what.to_owned(),
            reason: "does not decode to 32 bytes",
        });
    }
    out.copy_from_slice(&decoded);
    decoded.zeroize();
    Ok(out)
}

fn decode_hex(text: &str, what: &str) -> Result<[u8; KEY_LEN]> {
    let mut out = [0u8; KEY_LEN];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| Error::InvalidKey {
        what: what.to_owned(),
        reason: "must be 64 hex digits (32 bytes)",
    })?;
    Ok(out)
}

const RANDOM_SOURCE: &str = "/dev/urandom";

fn random_bytes() -> std::io::Result<[u8; KEY_LEN]> {
    let mut bytes = [0u8; KEY_LEN];
    // /dev/urandom never blocks once the pool is initialised at boot, which
    // is long before a node agent runs.
    File::open(RANDOM_SOURCE)?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// A Curve25519 public key, as published on a node (`wireguardPublicKey`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// From raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
    /// Raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
    /// Standard base64, as `wg` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    /// Parse standard base64.
    pub fn from_base64(text: &str) -> Result<Self> {
        decode_base64(text, "public key").map(Self)
    }
    /// Lower-case hex, as the control socket protocol wants it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parse hex (control socket protocol).
    pub fn from_hex(text: &str) -> Result<Self> {
        decode_hex(text, "public key (hex)").map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::from_base64(s)
    }
}

/// The node's Curve25519 private key. Zeroed on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// A new random, clamped private key.
    pub fn generate() -> Result<Self> {
        let bytes = random_bytes().map_err(|source| Error::Entropy {
            source_path: RANDOM_SOURCE,
            source,
        })?;
        Ok(Self::from_bytes(bytes))
    }
    /// From raw bytes; clamped as Curve25519 requires (as `wg genkey` does).
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self(bytes)
    }
    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::x25519(
            self.0,
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
    }
    /// Parse standard base64 (the format of `wg genkey` and the key file).
    pub fn from_base64(text: &str) -> Result<Self> {
        decode_base64(text, "private key").map(Self::from_bytes)
    }
    /// Parse hex (control socket protocol).
    pub fn from_hex(text: &str) -> Result<Self> {
        decode_hex(text, "private key (hex)").map(Self::from_bytes)
    }
    /// The secret as base64. Only for writing it where it belongs (key file,
    /// `wg setconf` input); never log the result.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    /// The secret as hex, for the control socket. Never log the result.
    pub fn expose_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The raw secret, for the kernel netlink message. Never log it.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// An optional symmetric pre-shared key for one peer pair (Flannel and
/// Cilium support this; Calico does not). Zeroed on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; KEY_LEN]);

impl PresharedKey {
    /// A new random pre-shared key.
    pub fn generate() -> Result<Self> {
        random_bytes().map(Self).map_err(|source| Error::Entropy {
            source_path: RANDOM_SOURCE,
            source,
        })
    }
    /// From raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
    /// Parse standard base64.
    pub fn from_base64(text: &str) -> Result<Self> {
        decode_base64(text, "pre-shared key").map(Self)
    }
    /// Parse hex (control socket protocol).
    pub fn from_hex(text: &str) -> Result<Self> {
        decode_hex(text, "pre-shared key (hex)").map(Self)
    }
    /// All-zero, which WireGuard treats as "no pre-shared key".
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; KEY_LEN]
    }
    /// The secret as base64; never log the result.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
    /// The secret as hex; never log the result.
    pub fn expose_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// The raw secret; never log it.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

/// Whether [`load_or_generate`] found a key or had to create one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyOrigin {
    /// The file existed and held a valid key.
    Loaded,
    /// There was no file; a new key was generated and persisted.
    Generated,
}

/// Load the private key from `path`.
///
/// Refuses a file that group or others can access (any of mode `0o077`), or
/// that is not a regular file; the error says so and names the file.
pub fn load(path: &Path) -> Result<PrivateKey> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| Error::KeyFileIo {
            path: path.to_owned(),
            op: "open",
            source,
        })?;
    let meta = file.metadata().map_err(|source| Error::KeyFileIo {
        path: path.to_owned(),
        op: "stat",
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(Error::KeyFileNotRegular {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyFileReadableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    let read = file.read_to_string(&mut text);
    let result = read
        .map_err(|source| Error::KeyFileIo {
            path: path.to_owned(),
            op: "read",
            source,
        })
        .and_then(|_| {
            decode_base64(&text, &format!("private key in {}", path.display()))
                .map(PrivateKey::from_bytes)
        });
    text.zeroize();
    result
}

/// Write `key` to `path` as base64 (the `wg genkey` format).
///
/// The file is created 0600 from the start (never briefly wider), written to a
/// temporary name in the same directory, synced, then renamed over `path`, so a
/// crash leaves either the old or the new key, never half of one.
pub fn persist(path: &Path, key: &PrivateKey) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| Error::KeyFileIo {
        path: path.to_owned(),
        op: "determine file name",
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let io = |op: &'static str| {
        let path = path.to_owned();
        move |source| Error::KeyFileIo { path, op, source }
    };
    let write = || -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io("create temporary file"))?;
        // umask can only narrow the mode; make it exactly 0600 regardless.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io("chmod 600"))?;
        let mut text = key.expose_base64();
        text.push('\n');
        let written = file.write_all(text.as_bytes());
        text.zeroize();
        written.map_err(io("write"))?;
        file.sync_all().map_err(io("fsync"))?;
        fs::rename(&tmp, path).map_err(io("rename into place"))?;
        if let Ok(d) = File::open(dir) {
            // Best effort: persist the rename itself.
            let _ = d.sync_all();
        }
        Ok(())
    };
    let result = write();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Load the private key from `path`, or generate and persist one if the file
/// does not exist. A file that exists but is too open or malformed is an
/// error, never silently replaced (that would change the node's identity).
pub fn load_or_generate(path: &Path) -> Result<(PrivateKey, KeyOrigin)> {
    match fs::symlink_metadata(path) {
        Ok(_) => load(path).map(|k| (k, KeyOrigin::Loaded)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate()?;
            persist(path, &key)?;
            Ok((key, KeyOrigin::Generated))
        }
        Err(source) => Err(Error::KeyFileIo {
            path: path.to_owned(),
            op: "stat",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Produced with: echo <private> | wg pubkey (wireguard-tools v1.0.20210914).
    const PRIV: &str = "SGb+ojrRNDuMePufwtIYhXzA//k6wF3R21tEBgKlzlM=";
    const PUB: &str = "DD5yKRfzExcV5+kDnTroDgCU15latdMjiQ59j1hEuk8=";

    #[test]
    fn public_key_matches_wg_pubkey() {
        let k = PrivateKey::from_base64(PRIV).unwrap();
        assert_eq!(k.public_key().to_base64(), PUB);
        assert_eq!(k.expose_base64(), PRIV);
    }

    #[test]
    fn base64_and_hex_round_trip() {
        let p: PublicKey = PUB.parse().unwrap();
        assert_eq!(p.to_string(), PUB);
        assert_eq!(PublicKey::from_hex(&p.to_hex()).unwrap(), p);
        let k = PrivateKey::generate().unwrap();
        assert_eq!(PrivateKey::from_hex(&k.expose_hex()).unwrap(), k);
        assert_eq!(PrivateKey::from_base64(&k.expose_base64()).unwrap(), k);
    }

    #[test]
    fn bad_text_is_rejected_without_echoing_it() {
        for bad in [
            "",
            "abc",
            "SGb+ojrRNDuMePufwtIYhXzA//k6wF3R21tEBgKlzl==",
            &"A".repeat(44),
        ] {
            let err = PrivateKey::from_base64(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("invalid private key"), "{msg}");
            if !bad.is_empty() {
                assert!(!msg.contains(bad), "error echoes the input: {msg}");
            }
        }
        assert!(PublicKey::from_hex("zz").is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let k = PrivateKey::from_base64(PRIV).unwrap();
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "PrivateKey(<redacted>)");
        assert!(!dbg.contains(&PRIV[..10]));
        let psk = PresharedKey::generate().unwrap();
        let dbg = format!("{psk:?}");
        assert_eq!(dbg, "PresharedKey(<redacted>)");
        assert!(!dbg.contains(&psk.expose_base64()[..10]));
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_ne!(a, b);
        for k in [&a, &b] {
            let bytes = k.expose_bytes();
            assert_eq!(bytes[0] & 7, 0);
            assert_eq!(bytes[31] & 0xc0, 0x40);
        }
    }

    #[test]
    fn generate_persists_0600_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let (k1, origin) = load_or_generate(&path).unwrap();
        assert_eq!(origin, KeyOrigin::Generated);
        let mode = fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        let (k2, origin) = load_or_generate(&path).unwrap();
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(k1, k2);
        // Same format as `wg genkey`: base64 and a newline.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim_end().len(), 44);
        assert!(text.ends_with('\n'));
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn persist_is_0600_even_with_permissive_umask_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let a = PrivateKey::generate().unwrap();
        persist(&path, &a).unwrap();
        let b = PrivateKey::generate().unwrap();
        persist(&path, &b).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(load(&path).unwrap(), b);
    }

    #[test]
    fn refuses_key_file_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        persist(&path, &PrivateKey::generate().unwrap()).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load(&path).unwrap_err();
            assert!(
                matches!(err, Error::KeyFileReadableByOthers { mode: m, .. } if m == mode),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("refusing private key file"), "{msg}");
            assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            // load_or_generate must not paper over it by generating a new key.
            assert!(load_or_generate(&path).is_err());
        }
    }

    #[test]
    fn refuses_malformed_and_symlinked_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(b"not a key\n").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.to_string().contains("wg.key"), "{err}");
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            load(&link),
            Err(Error::KeyFileIo { op: "open", .. })
        ));
    }
}
