//! Kernel tests (root): namespace entry and a batch whose answers are matched
//! to the right request, in namespaces made by testlab.

use std::os::unix::fs::MetadataExt;

use calinet_netlink::consts::*;
use calinet_netlink::{Acks, DumpEnd, Netns, Protocol, Socket, Writer, attributes};

type Res = Result<(), Box<dyn std::error::Error>>;

fn thread_netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// Link names of the namespace the socket is in (`RTM_GETLINK` dump).
fn link_names(sock: &Socket, seq: u32) -> Result<Vec<String>, calinet_netlink::Error> {
    const RTM_GETLINK: u16 = 18;
    const IFLA_IFNAME: u16 = 3;
    let mut w = Writer::new();
    let m = w.begin_message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq);
    w.family_header(&[0u8; 16]); // struct ifinfomsg, AF_UNSPEC
    w.end_message(m);
    let mut names = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    let end = sock.dump(&w.finish()?, seq, &mut rx, "links", |msg| {
        for a in attributes(&msg.payload[16..]) {
            let a = a?;
            if a.ty == IFLA_IFNAME {
                names.push(a.str()?.to_owned());
            }
        }
        Ok(())
    })?;
    assert_eq!(end, DumpEnd::Consistent);
    names.sort();
    Ok(names)
}

#[test]
fn run_enters_the_namespace_and_comes_back() -> Res {
    let lab = testlab::Lab::new("nl_run")?;
    let ns = lab.netns("a")?;
    ns.ip(&[
        "link", "add", "nlt0", "type", "veth", "peer", "name", "nlt1",
    ])?;
    let netns = Netns::named(ns.name())?;
    let home = thread_netns_inode();
    let target = netns.file().metadata()?.ino();
    assert_ne!(home, target);
    assert!(!netns.is_current());

    let inside = netns.run(thread_netns_inode)?;
    assert_eq!(inside, target);
    assert_eq!(thread_netns_inode(), home, "thread is back home after run");

    // A panic inside still brings the thread back.
    let caught = std::panic::catch_unwind(|| netns.run(|| panic!("inside")));
    assert!(caught.is_err());
    assert_eq!(thread_netns_inode(), home);

    // A socket opened inside stays bound there: it sees the namespace's links only.
    let sock = Socket::open_in(&netns, Protocol::Route)?;
    assert_eq!(link_names(&sock, 1)?, ["lo", "nlt0", "nlt1"]);
    assert_eq!(sock.netns_label(), netns.to_string());

    // Sysctls go to that namespace too.
    netns.write_sysctl("net/ipv4/conf/nlt0/forwarding", "1")?;
    assert_eq!(ns.sysctl_get("net.ipv4.conf.nlt0.forwarding")?, "1");
    assert_eq!(netns.read_sysctl("net/ipv4/conf/nlt0/forwarding")?, "1");

    // A child process started inside it.
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["-o", "link", "show", "nlt1"]);
    netns.spawn_inside(&mut cmd);
    let out = cmd.output()?;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nlt1@nlt0"));

    // A missing namespace is an error naming its path.
    let err = Netns::named(&format!("{}-missing", lab.prefix())).unwrap_err();
    assert!(err.to_string().contains("-missing"), "{err}");
    Ok(())
}

#[test]
fn a_batch_error_is_matched_to_its_request() -> Res {
    let lab = testlab::Lab::new("nl_acks")?;
    let ns = lab.netns("a")?;
    let netns = Netns::named(ns.name())?;
    let sock = Socket::open_in(&netns, Protocol::Route)?;
    sock.set_cap_ack(true)?;
    sock.set_ext_ack(true)?;

    // Three rule requests without per-request acks, closed by an acked NOOP:
    // add a rule, delete a rule that does not exist, add a second rule.
    let rule = |w: &mut Writer, ty: u16, flags: u16, seq: u32, prio: u32| {
        let m = w.begin_message(ty, NLM_F_REQUEST | flags, seq);
        // struct fib_rule_hdr: AF_INET, table 0 (FRA_TABLE), action FR_ACT_TO_TBL.
        w.family_header(&[libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        w.attr_u32(6, prio); // FRA_PRIORITY
        w.attr_u32(15, 1000 + prio); // FRA_TABLE
        w.end_message(m);
    };
    let mut w = Writer::new();
    rule(&mut w, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, 100, 10);
    rule(&mut w, RTM_DELRULE, 0, 101, 11);
    rule(&mut w, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, 102, 12);
    let noop = w.begin_message(NLMSG_NOOP, NLM_F_REQUEST | NLM_F_ACK, 103);
    w.end_message(noop);
    let mut acks = Acks::new(100, 3).until(103);
    sock.transact(&w.finish()?, &mut acks, &mut [0; 8192], "rules")?;
    assert!(acks.is_complete());
    let r = acks.results();
    assert!(r[0].is_none() && r[2].is_none(), "{r:?}");
    assert_eq!(r[1].as_ref().map(|n| n.errno), Some(libc::ENOENT), "{r:?}");
    let rules = ns.ip(&["rule", "show"])?;
    assert!(rules.contains("10:\tfrom all lookup 1010"), "{rules}");
    assert!(rules.contains("12:\tfrom all lookup 1012"), "{rules}");

    // A request with its own ack: the errno maps to an error naming the request.
    let mut w = Writer::new();
    rule(
        &mut w,
        RTM_NEWRULE,
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        200,
        10,
    );
    let mut acks = Acks::new(200, 1);
    sock.transact(&w.finish()?, &mut acks, &mut [0; 8192], "rule add 10")?;
    let (i, nack) = acks.first_failure().expect("duplicate rule refused");
    assert_eq!((i, nack.errno), (0, libc::EEXIST));
    let err: calinet_netlink::Error = nack.clone().into_error("rule add 10: from all lookup 1010");
    assert!(
        err.to_string()
            .contains("rule add 10: from all lookup 1010 failed"),
        "{err}"
    );
    assert!(err.to_string().contains("(errno 17)"), "{err}");
    Ok(())
}
