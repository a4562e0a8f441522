//! Root tests of `Netns::run`: it runs on the calling thread, inside the target
//! namespace, and the thread is back in its own namespace afterwards, also
//! after a panic.

use calinet_route::Netns;
use testlab::Lab;

fn ns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

#[test]
fn run_in_the_current_namespace_stays_on_the_calling_thread() {
    testlab::require_root!();
    let caller = std::thread::current().id();
    let here = ns_inode();
    let (thread, inode) = Netns::current()
        .unwrap()
        .run(|| (std::thread::current().id(), ns_inode()))
        .unwrap();
    assert_eq!(thread, caller);
    assert_eq!(inode, here);
}

#[test]
fn run_in_another_namespace_enters_it_and_leaves_the_caller_alone() {
    testlab::require_root!();
    let lab = Lab::new("run_in_another_namespace").unwrap();
    let other = lab.netns("x").unwrap();
    let target = Netns::open(other.path()).unwrap();
    let want = {
        use std::os::unix::fs::MetadataExt;
        target.file().metadata().unwrap().ino()
    };
    let here = ns_inode();
    assert_ne!(want, here);
    let caller = std::thread::current().id();
    let (thread, inode) = target
        .run(|| (std::thread::current().id(), ns_inode()))
        .unwrap();
    assert_eq!(thread, caller, "no thread is spawned");
    assert_eq!(inode, want);
    assert_eq!(ns_inode(), here, "caller's thread changed namespace");
    // Nested: inside the target already, then into the caller's namespace and
    // back; each level returns to where it was.
    let home = Netns::current().unwrap();
    let (inner, outer) = target
        .run(|| {
            let inner = home.run(ns_inode).unwrap();
            (inner, ns_inode())
        })
        .unwrap();
    assert_eq!(inner, here);
    assert_eq!(outer, want);
    assert_eq!(ns_inode(), here);
}

#[test]
fn a_panic_inside_run_leaves_the_thread_in_its_own_namespace() {
    testlab::require_root!();
    let lab = Lab::new("run_panics").unwrap();
    let other = lab.netns("x").unwrap();
    let target = Netns::open(other.path()).unwrap();
    let here = ns_inode();
    let caught =
        std::panic::catch_unwind(|| target.run(|| panic!("inside the other namespace")).unwrap());
    assert!(caught.is_err(), "the panic reaches the caller");
    assert_eq!(ns_inode(), here, "thread left in the other namespace");
}

#[test]
fn a_socket_made_inside_stays_in_that_namespace() {
    testlab::require_root!();
    let lab = Lab::new("run_socket").unwrap();
    let other = lab.netns("x").unwrap();
    let target = Netns::open(other.path()).unwrap();
    let sock = target
        .run(|| std::net::UdpSocket::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let addr = sock.local_addr().unwrap();
    // The port is taken in the other namespace only: binding it here succeeds.
    let here = std::net::UdpSocket::bind(addr);
    assert!(here.is_ok(), "{addr} also bound in the caller's namespace");
}
