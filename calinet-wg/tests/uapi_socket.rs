//! The UAPI backend's socket I/O against a scripted control socket in a
//! directory of our choosing (no root, no wireguard-go): exact request bytes,
//! errno handling, and reading a `get` reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;

use calinet_wg::backend::Backend;
use calinet_wg::backend::uapi::UapiBackend;
use calinet_wg::{DeviceDelta, Error, IfName, PeerUpdate, PublicKey};

/// Serves one connection: records the request, answers `reply`.
fn serve_once(listener: UnixListener, reply: String) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(&stream);
        let mut request = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("read") == 0 || line == "\n" {
                request.push_str(&line);
                break;
            }
            request.push_str(&line);
        }
        (&stream).write_all(reply.as_bytes()).expect("reply");
        tx.send(request).expect("send");
    });
    rx
}

#[test]
fn set_goes_to_the_chosen_directory_with_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let ifname: IfName = "wg-scripted".parse().unwrap();
    let mut backend = UapiBackend::with_socket_dir(dir.path());
    assert_eq!(
        backend.socket_path(&ifname),
        dir.path().join("wg-scripted.sock")
    );
    let listener = UnixListener::bind(backend.socket_path(&ifname)).unwrap();
    let seen = serve_once(listener, "errno=0\n\n".into());
    let mut update = PeerUpdate::touch(PublicKey::from_bytes([1; 32]));
    update.replace_allowed_ips = true;
    update.allowed_ips = vec!["172.16.158.0/24".parse().unwrap()];
    let delta = DeviceDelta {
        peers: vec![update],
        ..Default::default()
    };
    let report = backend.apply(&ifname, &delta).unwrap();
    let request = seen.recv().unwrap();
    assert_eq!(
        request,
        format!(
            "set=1\npublic_key={}\nupdate_only=true\nreplace_allowed_ips=true\nallowed_ip=172.16.158.0/24\n\n",
            hex::encode([1u8; 32])
        )
    );
    assert_eq!(
        (report.operations, report.peer_entries, report.bytes),
        (1, 1, request.len())
    );
}

#[test]
fn nonzero_errno_is_an_error_naming_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let ifname: IfName = "wg-refuse".parse().unwrap();
    let mut backend = UapiBackend::with_socket_dir(dir.path());
    let listener = UnixListener::bind(backend.socket_path(&ifname)).unwrap();
    let _seen = serve_once(listener, "errno=22\n\n".into());
    let delta = DeviceDelta {
        listen_port: Some(1),
        ..Default::default()
    };
    let err = backend.apply(&ifname, &delta).unwrap_err();
    assert!(
        matches!(
            err,
            Error::UapiErrno {
                errno: 22,
                op: "set",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("wg-refuse"), "{err}");
}

#[test]
fn get_reply_is_read_to_the_blank_line() {
    let dir = tempfile::tempdir().unwrap();
    let ifname: IfName = "wg-get".parse().unwrap();
    let mut backend = UapiBackend::with_socket_dir(dir.path());
    let listener = UnixListener::bind(backend.socket_path(&ifname)).unwrap();
    let reply = format!(
        "listen_port=51820\nfwmark=1048576\npublic_key={}\nendpoint=198.51.100.10:51820\nallowed_ip=172.16.10.0/24\nerrno=0\n\n",
        hex::encode([3u8; 32])
    );
    let seen = serve_once(listener, reply);
    let dev = backend.read(&ifname).unwrap();
    assert_eq!(seen.recv().unwrap(), "get=1\n\n");
    assert_eq!(dev.public_key, None, "no private key set");
    assert_eq!((dev.listen_port, dev.fwmark), (51820, 0x100000));
    assert_eq!(dev.peers.len(), 1);
    assert_eq!(
        dev.peers[0].allowed_ips,
        vec!["172.16.10.0/24".parse().unwrap()]
    );
}

#[test]
fn a_closed_socket_is_an_io_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let ifname: IfName = "wg-close".parse().unwrap();
    let mut backend = UapiBackend::with_socket_dir(dir.path());
    let listener = UnixListener::bind(backend.socket_path(&ifname)).unwrap();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        drop(stream);
    });
    let err = backend.read(&ifname).unwrap_err();
    assert!(matches!(err, Error::UapiIo { .. }), "{err:?}");
}

#[cfg(feature = "tokio")]
#[test]
fn async_backend_speaks_the_same_protocol() {
    use calinet_wg::backend::uapi::{AsyncUapiBackend, sync_async};
    let dir = tempfile::tempdir().unwrap();
    let ifname: IfName = "wg-async".parse().unwrap();
    let backend = AsyncUapiBackend::with_socket_dir(dir.path());
    let listener = UnixListener::bind(backend.socket_path(&ifname)).unwrap();
    // One connection for get (empty device), one for set.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for reply in ["listen_port=0\nerrno=0\n\n", "errno=0\n\n"] {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&stream);
            let mut request = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\n" {
                    break;
                }
                request.push_str(&line);
            }
            (&stream).write_all(reply.as_bytes()).unwrap();
            tx.send(request).unwrap();
        }
    });
    let (nodes, key) = calinet_wg::seed::nodes();
    let c = calinet_wg::compute_device(
        &calinet_wg::seed::local(),
        &key,
        &calinet_wg::DeviceSettings::calico_v4(),
        &nodes,
        &Default::default(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (delta, report) = rt
        .block_on(sync_async(&backend, &ifname, &c.device))
        .unwrap();
    assert_eq!(rx.recv().unwrap(), "get=1\n");
    let set = rx.recv().unwrap();
    assert!(set.starts_with("set=1\nprivate_key="), "{}", &set[..6]);
    assert_eq!(set.matches("public_key=").count(), 3);
    assert_eq!((report.operations, report.peer_entries), (1, 3));
    assert_eq!(delta.peers.len(), 3);
}
