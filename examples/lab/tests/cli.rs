//! The lab's command line refusing what it cannot do, before building
//! anything: no root, a mode this kernel lacks, a missing agent binary.

use std::path::Path;
use std::process::{Command, Output};

fn lab(args: &[&str], state_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calinet-lab"))
        .args(args)
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .unwrap()
}

#[test]
fn lab_says_it_needs_root() {
    if !testlab::cmd::have("setpriv") {
        testlab::skip!("setpriv (util-linux) is not installed");
    }
    testlab::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_calinet-lab"))
        .args(["run", "--state-dir"])
        .arg(dir.path().join("lab"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the lab needs root"), "{stderr}");
}

#[test]
fn lab_refuses_ipip_on_a_kernel_without_it() {
    testlab::require_root!();
    if testlab::Feature::check(testlab::Feature::Ipip).is_ok() {
        testlab::skip!("this kernel has IPIP (tests/lab.rs runs the ipip mode instead)");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = lab(&["run", "--mode", "ipip"], &dir.path().join("lab"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--mode ipip: IPIP not available in this kernel")
            && stderr.contains("Use --mode vxlan, crosssubnet, direct or wireguard"),
        "{stderr}"
    );
    assert!(!dir.path().join("lab").join("state.json").exists());
}

#[test]
fn lab_names_a_missing_agent_binary_and_leaves_nothing() {
    testlab::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-calinet-agent");
    let out = Command::new(env!("CARGO_BIN_EXE_calinet-lab"))
        .args(["run", "--agent-bin"])
        .arg(&missing)
        .arg("--state-dir")
        .arg(dir.path().join("lab"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(
        !dir.path().join("lab").join("state.json").exists(),
        "torn down: {stderr}"
    );
}

#[test]
fn status_without_a_lab_says_so() {
    testlab::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let out = lab(&["status"], &dir.path().join("lab"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a lab up?"), "{stderr}");
}

#[test]
fn lab_without_an_agent_beside_it_says_how_to_build_it() {
    testlab::require_root!();
    // A copy of the lab in a directory with no calinet-agent next to it.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("calinet-lab");
    std::fs::copy(env!("CARGO_BIN_EXE_calinet-lab"), &exe).unwrap();
    let out = Command::new(&exe)
        .args(["run", "--state-dir"])
        .arg(dir.path().join("lab"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the agent binary {} is missing",
            dir.path().join("calinet-agent").display()
        )) && stderr.contains("build it with cargo build -p calinet-agent"),
        "{stderr}"
    );
    assert!(!dir.path().join("lab").join("state.json").exists());
}
