//! What can fail fails before portwatch's window begins, not after a window spent tracing
//! for nothing. PRIVILEGED: each run could load eBPF.
mod common;

use std::{
    io::Read as _,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{PORTWATCH, require_privileges};

/// Runs portwatch with a long window; a run that got as far as tracing is killed after
/// `deadline` and fails the test (it would have traced for minutes first).
fn run_expecting_early_failure(command: &mut Command, deadline: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > deadline {
            child.kill().unwrap();
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("still running after {deadline:?}: it went on tracing. stderr: {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_failed_before_attaching(output: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
    assert!(
        !stderr.contains("tracing") && !stderr.contains("recording for"),
        "its window began first: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_recording_path_that_cannot_be_written_fails_before_tracing() {
    require_privileges();
    for args in [
        &[
            "report",
            "--record",
            "/no/such/dir/window.pwrec",
            "--duration",
            "5m",
        ][..],
        &[
            "record",
            "--out",
            "/no/such/dir/window.pwrec",
            "--duration",
            "5m",
        ],
    ] {
        let output = run_expecting_early_failure(
            Command::new(PORTWATCH).args(args),
            Duration::from_secs(60),
        );
        assert_failed_before_attaching(&output, "creating the recording /no/such/dir/window.pwrec");
    }
}

#[test]
fn a_demo_whose_processes_cannot_start_fails_before_tracing() {
    require_privileges();
    // A new network namespace's loopback is down: the demo's clients cannot reach its
    // servers, as on a broken host. The demo starts its processes before attaching (its
    // clients then wait for `go`), so it says so before any window begins.
    let output = run_expecting_early_failure(
        Command::new("unshare").args(["--net", PORTWATCH, "demo", "--duration", "5m"]),
        Duration::from_secs(60),
    );
    assert_failed_before_attaching(&output, "starting the demo's processes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to 127.0.0.1"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "no report from a demo that did not run"
    );
}
