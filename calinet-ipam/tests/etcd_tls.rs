//! `EtcdStore` over TLS against a real etcd that requires client
//! certificates. The certificates are made with the `openssl` command.
//!
//! The test lab's etcd helper speaks plain HTTP only, so this test starts its
//! own TLS etcd (killed and reaped on drop) in a temporary directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use calinet_ipam::{EtcdConfig, EtcdStore, RetryPolicy, Store, StoreError, TlsFiles};

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// P-256, plus a second, unrelated CA.
fn make_certs(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write ext");
    for ca in ["ca", "other-ca"] {
        run(
            dir,
            &[
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN=calinet test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    for who in ["server", "client"] {
        run(
            dir,
            &[
                "openssl",
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN=calinet-{who}"),
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
            ],
        );
        run(
            dir,
            &[
                "openssl",
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{who}.ext"),
                "-out",
                &format!("{who}.pem"),
            ],
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// An etcd with TLS and client-certificate auth; killed on drop.
struct TlsEtcd(Child);

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tls_etcd(dir: &Path) -> (TlsEtcd, String) {
    let (cp, pp) = (free_port(), free_port());
    let client = format!("https://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let child = Command::new("etcd")
        .args([
            "--name",
            "tls",
            "--data-dir",
            &p("data"),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("tls={peer}"),
            "--cert-file",
            &p("server.pem"),
            "--key-file",
            &p("server.key"),
            "--trusted-ca-file",
            &p("ca.pem"),
            "--client-cert-auth",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    (TlsEtcd(child), client)
}

fn tls(dir: &Path, ca: &str, client: bool) -> TlsFiles {
    let f = |n: &str| -> PathBuf { dir.join(n) };
    TlsFiles {
        ca: f(ca),
        client: client.then(|| (f("client.pem"), f("client.key"))),
        domain: None,
    }
}

fn quick(endpoint: &str, files: TlsFiles) -> EtcdStore {
    EtcdStore::connect(
        EtcdConfig::new([endpoint])
            .with_tls(files)
            .with_timeouts(Duration::from_secs(1), Duration::from_secs(2))
            .with_retry(RetryPolicy {
                attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(10),
            }),
    )
    .expect("connect")
}

#[test]
fn etcd_over_tls_with_client_certificates() {
    testlab::require!(testlab::Feature::Etcd);
    if !Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        testlab::skip!("the openssl command is needed to make test certificates");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let (_etcd, endpoint) = start_tls_etcd(dir.path());
    let s = quick(&endpoint, tls(dir.path(), "ca.pem", true));
    // Wait for etcd to serve (its start-up takes a moment).
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = s.get("/calico/ipam/v2/config") {
        assert!(Instant::now() < deadline, "TLS etcd never answered: {e:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = s
        .create(
            "/calico/ipam/v2/handle/tls-test",
            b"{\"handleID\":\"tls-test\"}",
        )
        .expect("create over TLS");
    let kv = s
        .get("/calico/ipam/v2/handle/tls-test")
        .expect("get")
        .expect("present");
    assert_eq!(kv.mod_revision, r);
    // etcdctl with the same files reads what calinet wrote.
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &endpoint,
            "--cacert",
            &p("ca.pem"),
            "--cert",
            &p("client.pem"),
            "--key",
            &p("client.key"),
            "get",
            "--print-value-only",
            "/calico/ipam/v2/handle/tls-test",
        ])
        .output()
        .expect("etcdctl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "{\"handleID\":\"tls-test\"}"
    );
    // Without a client certificate, or trusting another CA, nothing works,
    // and the error names the endpoint.
    for (what, files) in [
        ("no client certificate", tls(dir.path(), "ca.pem", false)),
        ("unrelated CA", tls(dir.path(), "other-ca.pem", true)),
    ] {
        let bad = quick(&endpoint, files);
        let e = bad.get("/calico/ipam/v2/handle/tls-test").expect_err(what);
        assert!(
            matches!(
                e,
                StoreError::Unavailable { .. } | StoreError::Backend { .. }
            ),
            "{what}: {e:?}"
        );
        let src = std::error::Error::source(&e).expect("source").to_string();
        assert!(src.contains(&endpoint), "{what}: {src}");
    }
}
