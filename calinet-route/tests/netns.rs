//! Root tests of `Netns::run`: the thread is skipped only when the caller is
//! already in the target namespace.

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
    assert_ne!(thread, caller);
    assert_eq!(inode, want);
    assert_eq!(ns_inode(), here, "caller's thread changed namespace");
    // The same `Netns`, used from a thread that is inside it, runs in place.
    let nested = target
        .run(|| {
            let t = std::thread::current().id();
            target.run(|| std::thread::current().id()).unwrap() == t
        })
        .unwrap();
    assert!(nested, "ran on a second thread although already inside");
}
