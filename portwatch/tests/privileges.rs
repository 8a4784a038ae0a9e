//! PRIVILEGED: least privilege (docs/privileges.md).
//!
//! - Each subcommand runs as a non-root user holding only the capabilities the
//!   documentation lists for it.
//! - A tracing portwatch keeps, once attached, none of the capabilities only loading
//!   needed, in any of its threads.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use common::{PORTWATCH, require_privileges, start_portwatch, wait_for_portwatch, workload};

/// Capability numbers from include/uapi/linux/capability.h.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The documented set for `stream`, `report`, `record` and `demo` as a non-root user.
const TRACING_CAPS: &str = "+bpf,+perfmon,+dac_read_search,+sys_ptrace";
/// The documented set for `snapshot` to name every process's sockets.
const SNAPSHOT_CAPS: &str = "+dac_read_search,+sys_ptrace";

fn as_nobody_with(caps: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(PORTWATCH);
    command
}

/// A capability set line (`CapEff:`, `CapPrm:`) of a /proc status file.
fn cap_set(status: &str, name: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn tracing_commands_run_as_nobody_with_the_documented_capabilities() {
    require_privileges();
    for args in [
        &["stream", "--duration", "1s"][..],
        &["report", "--duration", "1s"],
        &["record", "--duration", "1s", "--out", "/dev/null"],
        &["demo", "--duration", "1s"],
    ] {
        let output = as_nobody_with(TRACING_CAPS).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            stderr.contains("portwatch: tracing") || stderr.contains("portwatch: recording"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn snapshot_names_another_users_process_with_the_documented_capabilities() {
    require_privileges();
    // Not root's, not nobody's: reading its descriptors needs both capabilities.
    let leaker = Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups"])
        .arg(common::workload_binary())
        .args(["leak-server", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut leaker = KillOnDrop(leaker);
    let mut ready = String::new();
    BufReader::new(leaker.0.stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let pid: u32 = ready.split_whitespace().nth(1).unwrap().parse().unwrap();
    let named = |caps: &str| {
        let output = as_nobody_with(caps)
            .args(["snapshot", "--format", "json"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{caps}");
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|process| process["pid"] == pid)
    };
    assert!(named(SNAPSHOT_CAPS), "named with {SNAPSHOT_CAPS}");
    // Each of the two is needed.
    assert!(!named("+sys_ptrace"));
    assert!(!named("+dac_read_search"));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn after_attaching_only_the_capabilities_still_used_remain() {
    require_privileges();
    // A listener older than portwatch: each run writes its owner into the kernel's map
    // before the drop, as on any real host.
    let _listener = workload(&["leak-server", "--listen", "127.0.0.1:0"]);
    for args in [
        &["stream", "--format", "json"][..],
        &["report", "--duration", "1h"],
        &["record", "--duration", "1h", "--out", "/dev/null"],
        &["demo", "--duration", "1h"],
    ] {
        let (mut portwatch, stderr) = start_portwatch(args, Stdio::null());
        let pid = portwatch.id();
        // Checked apart, so that a failure kills portwatch before failing the test.
        if let Err(problem) = std::panic::catch_unwind(|| assert_dropped(args, pid)) {
            let _ = portwatch.kill();
            let _ = portwatch.wait();
            std::panic::resume_unwind(problem);
        }
        // And it still works without them: it stops, reads its counters, detaches.
        // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
        let finished = wait_for_portwatch(portwatch, stderr);
        assert!(
            finished.status.success(),
            "{args:?}: {}: {}",
            finished.status,
            finished.stderr
        );
    }
}

/// No thread of `pid` has any capability only loading needs, but the namespace-entering
/// thread's CAP_SYS_ADMIN; the main thread, which
/// makes the end-of-window /proc look, still has what that uses (the demo's threads that
/// only read its processes' output keep nothing).
fn assert_dropped(args: &[&str], pid: u32) {
    // Every thread: capabilities are per thread.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| task.unwrap().path())
        .collect();
    let mut entering = 0;
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        // The one thread that enters namespaces (sockets, port settings and pod names
        // of namespaces made later) keeps CAP_SYS_ADMIN, in its effective and permitted
        // sets only, and nothing else.
        if status.lines().next() == Some("Name:\tportwatch-enter") {
            entering += 1;
            for set in ["CapEff:", "CapPrm:"] {
                assert_eq!(
                    cap_set(&status, set),
                    1 << CAP_SYS_ADMIN,
                    "{args:?}: {} in {set}",
                    task.display()
                );
            }
            for set in ["CapInh:", "CapAmb:"] {
                assert_eq!(cap_set(&status, set), 0, "{args:?}: {set}");
            }
            continue;
        }
        for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            let caps = cap_set(&status, set);
            for (cap, name) in [
                (CAP_BPF, "CAP_BPF"),
                (CAP_PERFMON, "CAP_PERFMON"),
                (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                (CAP_SYS_RESOURCE, "CAP_SYS_RESOURCE"),
            ] {
                assert_eq!(
                    caps & (1 << cap),
                    0,
                    "{args:?}: {} ({}) still has {name} in {set}",
                    task.display(),
                    status.lines().next().unwrap_or_default()
                );
            }
        }
        // What the end-of-window /proc look uses stays, on the thread that makes it.
        if task.ends_with(pid.to_string()) {
            let effective = cap_set(&status, "CapEff:");
            for cap in [CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH] {
                assert_ne!(effective & (1 << cap), 0, "{args:?}: lost capability {cap}");
            }
        }
    }
    assert!(entering <= 1, "{args:?}: {entering} entering threads");
}
