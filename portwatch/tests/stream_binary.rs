//! Runs the real `portwatch` binary. PRIVILEGED except where noted: it attaches to the
//! running kernel; another process (bash, via /dev/tcp) makes the connection it must see.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    process::{Command, Stdio},
};

use common::{
    Finished, PORTWATCH,
    kernel_objects::{assert_is_portwatch, assert_released, held_by},
    require_privileges, start_portwatch, wait_for_portwatch,
};
use serde_json::Value;

/// How long the kernel may take to free a stopped portwatch's programs (an RCU grace
/// period: milliseconds).
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[test]
fn stream_json_reports_another_process_connection_and_detaches() {
    require_privileges();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();

    // Wait until it says it is attached, rather than guessing how long that takes.
    let (portwatch, stderr) = start_portwatch(
        &[
            "stream",
            "--format",
            "json",
            "--duration",
            "4s",
            "--port",
            &port.to_string(),
        ],
        Stdio::piped(),
    );
    // Its own programs and links, by kernel id: other tests and tools on this machine
    // load and unload programs meanwhile.
    let held = held_by(portwatch.id());
    assert_is_portwatch(&held);

    // Another process connects and closes: bash's /dev/tcp. It waits for a line from
    // us before closing, so that we accept the connection before its FIN arrives
    // (otherwise the CLOSE_WAIT below would come before the accept that names its
    // owner, and the test would race).
    let mut client = Command::new("bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; read -r -t 10 line <&3; exec 3>&-"),
        ])
        .spawn()
        .unwrap();
    let client_pid = client.id();
    let (mut accepted, client_addr) = listener.accept().unwrap();
    accepted.write_all(b"accepted\n").unwrap();
    assert!(client.wait().unwrap().success());
    let mut buffer = [0u8; 1];
    assert_eq!(accepted.read(&mut buffer).unwrap(), 0, "client closed");
    drop(accepted);

    let Finished {
        status,
        stdout,
        stderr: rest,
    } = wait_for_portwatch(portwatch, stderr);
    assert!(status.success(), "portwatch failed: {rest}");

    let events: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    for event in &events {
        for field in [
            "ts_ns",
            "pid",
            "comm",
            "family",
            "saddr",
            "sport",
            "daddr",
            "dport",
            "old_state",
            "new_state",
            "sock",
            "in_state_ns",
        ] {
            assert!(event.get(field).is_some(), "missing {field}: {event}");
        }
        assert_eq!(event["family"], "ipv4");
    }
    let connect = events
        .iter()
        .find(|e| e["old_state"] == "CLOSE" && e["new_state"] == "SYN_SENT")
        .unwrap_or_else(|| panic!("no CLOSE -> SYN_SENT in {stdout}"));
    assert_eq!(
        connect["pid"], client_pid,
        "connect side is attributed to bash"
    );
    assert_eq!(connect["comm"], "bash");
    assert_eq!(connect["dport"], port);
    let client_sock = &connect["sock"];
    let client_states: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| &e["sock"] == client_sock)
        .map(|e| {
            (
                e["old_state"].as_str().unwrap(),
                e["new_state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        client_states,
        [
            ("CLOSE", "SYN_SENT"),
            ("SYN_SENT", "ESTABLISHED"),
            ("ESTABLISHED", "FIN_WAIT1"),
            ("FIN_WAIT1", "FIN_WAIT2"),
            ("FIN_WAIT2", "CLOSE"),
        ]
    );
    let established = events
        .iter()
        .find(|e| &e["sock"] == client_sock && e["new_state"] == "ESTABLISHED")
        .unwrap();
    assert_eq!(established["sport"], client_addr.port());
    assert_eq!(established["saddr"], "127.0.0.1");
    assert!(established["in_state_ns"].as_u64().is_some());
    let close_wait = events
        .iter()
        .find(|e| e["new_state"] == "CLOSE_WAIT" && e["sport"] == port)
        .expect("the server side's CLOSE_WAIT is reported");
    // It runs in softirq context, but is charged to the socket's owner: this test
    // process. Bash may close before this process accepts, so the socket can reach
    // CLOSE_WAIT in the accept queue, still carrying its listener's owner: the same
    // process here.
    assert_eq!(close_wait["pid"], std::process::id(), "{close_wait}");
    let source = close_wait["owner_source"].as_str();
    assert!(
        matches!(source, Some("accept" | "listener")),
        "{close_wait}"
    );

    let summary = rest.lines().last().unwrap_or_default();
    assert!(
        summary.contains(&format!("{} shown", events.len())) && summary.contains("0 dropped"),
        "summary line: {rest}"
    );
    // Detach leaves none of its programs or links behind.
    assert_released(&held, RELEASE_TIMEOUT);
}

#[test]
fn sigterm_stops_cleanly_with_a_summary() {
    require_privileges();
    let (portwatch, stderr) = start_portwatch(&["stream"], Stdio::null());
    let held = held_by(portwatch.id());
    assert_is_portwatch(&held);
    // SAFETY: kill has no memory-safety preconditions; the pid is our live child.
    let killed = unsafe { libc::kill(portwatch.id() as i32, libc::SIGTERM) };
    assert_eq!(killed, 0);
    let finished = wait_for_portwatch(portwatch, stderr);
    assert!(finished.status.success());
    let rest = finished.stderr;
    assert!(
        rest.contains("events seen") && rest.contains("dropped"),
        "{rest}"
    );
    // Detach leaves none of its programs or links behind.
    assert_released(&held, RELEASE_TIMEOUT);
}

/// Unprivileged user: a clear paragraph naming the missing capabilities, exit code 1.
#[test]
fn without_privileges_explains_what_is_missing() {
    require_privileges(); // to drop them with setpriv
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([PORTWATCH, "stream", "--duration", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not running as root") && stderr.contains("CAP_BPF"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one paragraph: {stderr}");
}

/// Unprivileged: bad arguments get clap's usage error (exit code 2).
#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["stream", "--state", "OPEN"][..],
        &["stream", "--duration", "soon"],
        &["stream", "--port", "70000"],
        &["stream", "--ring-buffer-size", "3M"],
    ] {
        let output = Command::new(PORTWATCH).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("error: invalid value"),
            "{args:?}: {stderr}"
        );
    }
}
