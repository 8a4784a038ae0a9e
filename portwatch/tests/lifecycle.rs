//! PRIVILEGED: how a running portwatch ends, and two running at once.
//!
//! - SIGINT, SIGTERM and SIGHUP each stop a `report` early: it still prints its report,
//!   exits 0, and the kernel keeps none of its programs or links.
//! - SIGKILL gives portwatch no chance to clean up: nothing is pinned, so the kernel
//!   detaches everything when the process's descriptors close.
//! - Two `stream`s at once each see every transition of one connection.
//!
//! Other tests and tools load eBPF programs on this machine at the same time, so every
//! assertion is about the objects the portwatch under test held, by kernel id.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{TcpListener, TcpStream},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{
    kernel_objects::{
        assert_is_portwatch, assert_released, held_by, portwatch_named_programs, try_held_by,
    },
    require_privileges, start_portwatch, wait_for_portwatch,
};
use serde_json::Value;

/// How long the kernel may take to free a dead process's programs (an RCU grace period
/// and a workqueue: milliseconds; seconds mean they leaked).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our live, unreaped
    // child, so it cannot name another process.
    let sent = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(sent, 0, "kill({}, {signal})", child.id());
}

#[test]
fn sigint_sigterm_and_sighup_each_stop_a_report_cleanly() {
    require_privileges();
    for (name, number) in [
        ("SIGINT", libc::SIGINT),
        ("SIGTERM", libc::SIGTERM),
        ("SIGHUP", libc::SIGHUP),
    ] {
        let started = Instant::now();
        // An hour: only the signal can end it within the test's time.
        let (portwatch, stderr) = start_portwatch(
            &["report", "--format", "json", "--duration", "1h"],
            Stdio::piped(),
        );
        let held = held_by(portwatch.id());
        assert_is_portwatch(&held);
        signal(&portwatch, number);
        let finished = wait_for_portwatch(portwatch, stderr);
        assert_eq!(
            finished.status.code(),
            Some(0),
            "{name} stops portwatch with exit code 0 ({}): {}",
            finished.status,
            finished.stderr
        );
        let report: Value = serde_json::from_str(&finished.stdout).unwrap_or_else(|err| {
            panic!("{name}: no report on stdout ({err}): {}", finished.stderr)
        });
        let window = report["window_s"].as_f64().unwrap();
        assert!(
            window < started.elapsed().as_secs_f64(),
            "{name}: the report covers the window up to the signal, not the hour: {window} s"
        );
        assert!(report["findings"].is_array(), "{name}: {report}");
        // Detached by portwatch itself: gone by the time it exited, give or take the
        // kernel's deferred free.
        assert_released(&held, RELEASE_TIMEOUT);
    }
}

#[test]
fn sigkill_leaves_no_program_or_link_attached() {
    require_privileges();
    let named_before = portwatch_named_programs();
    for command in [
        &["stream", "--format", "json"][..],
        &["report", "--duration", "1h"],
    ] {
        let (mut portwatch, _stderr) = start_portwatch(command, Stdio::null());
        let held = held_by(portwatch.id());
        assert_is_portwatch(&held);
        signal(&portwatch, libc::SIGKILL);
        let status = portwatch.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{command:?}"
        );
        assert_released(&held, RELEASE_TIMEOUT);
    }
    // Nothing of portwatch's was left in the kernel by anything else either: any
    // portwatch-named program now is one that existed before, or belongs to a process
    // that is still running (another test's portwatch).
    let live_holders: std::collections::BTreeSet<u64> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(try_held_by)
        .flat_map(|held| held.programs)
        .collect();
    let orphans: Vec<u64> = portwatch_named_programs()
        .difference(&named_before)
        .filter(|id| !live_holders.contains(id))
        .copied()
        .collect();
    assert!(
        orphans.is_empty(),
        "portwatch programs nobody holds: {orphans:?}"
    );
}

/// Reads a child's stdout lines on a thread, so the test can wait for one with a
/// deadline.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The fields of a stream event that two instances must agree on (each program reads
/// its own clock, so timestamps differ by nanoseconds).
fn essence(event: &Value) -> (String, u64, u64, String, String, String) {
    (
        event["sock"].as_str().unwrap().to_owned(),
        event["sport"].as_u64().unwrap(),
        event["dport"].as_u64().unwrap(),
        event["old_state"].as_str().unwrap().to_owned(),
        event["new_state"].as_str().unwrap().to_owned(),
        // null when the owner is unknown
        event["pid"].to_string(),
    )
}

#[test]
fn two_streams_at_once_both_see_every_transition() {
    require_privileges();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let args = ["stream", "--format", "json", "--port", &port.to_string()];
    let (mut first, first_stderr) = start_portwatch(&args, Stdio::piped());
    let (mut second, second_stderr) = start_portwatch(&args, Stdio::piped());
    let first_held = held_by(first.id());
    let second_held = held_by(second.id());
    assert!(
        first_held.programs.is_disjoint(&second_held.programs),
        "each instance loads its own programs: {first_held:?} {second_held:?}"
    );
    let first_lines = lines_of(&mut first);
    let second_lines = lines_of(&mut second);

    // One connection, client closing first; the server closes after reading EOF.
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (mut accepted, _) = listener.accept().unwrap();
    drop(client);
    assert_eq!(accepted.read(&mut [0u8; 1]).unwrap(), 0);
    drop(accepted);

    // Both sides reach CLOSE: the client's FIN_WAIT2 -> CLOSE, the server's LAST_ACK ->
    // CLOSE. Wait for both in each instance's output.
    let collect = |lines: &mpsc::Receiver<String>| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut events: Vec<Value> = Vec::new();
        let closed = |events: &[Value], sport: u16, from: &str| {
            events
                .iter()
                .any(|e| e["sport"] == sport && e["old_state"] == from && e["new_state"] == "CLOSE")
        };
        while !(closed(&events, client_port, "FIN_WAIT2") && closed(&events, port, "LAST_ACK")) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out; seen: {events:#?}"));
            events.push(serde_json::from_str(&line).unwrap());
        }
        events
    };
    let first_events = collect(&first_lines);
    let second_events = collect(&second_lines);
    for child in [&first, &second] {
        signal(child, libc::SIGINT);
    }
    // Whatever else each printed before stopping, then its exit.
    let rest = |lines: mpsc::Receiver<String>| -> Vec<Value> {
        lines
            .iter()
            .map(|line| serde_json::from_str(&line).unwrap())
            .collect()
    };
    let mut first_events = first_events;
    first_events.extend(rest(first_lines));
    let mut second_events = second_events;
    second_events.extend(rest(second_lines));
    for (child, stderr) in [(first, first_stderr), (second, second_stderr)] {
        let finished = wait_for_portwatch(child, stderr);
        assert!(finished.status.success(), "{}", finished.stderr);
    }
    assert_released(&first_held, RELEASE_TIMEOUT);
    assert_released(&second_held, RELEASE_TIMEOUT);

    // The connection's sockets, by kernel address: a connect's first transition has no
    // local port yet.
    let ours = |events: &[Value]| {
        let sockets: std::collections::BTreeSet<&str> = events
            .iter()
            .filter(|e| e["sport"] == client_port || e["dport"] == client_port)
            .map(|e| e["sock"].as_str().unwrap())
            .collect();
        let mut ours: Vec<_> = events
            .iter()
            .filter(|e| sockets.contains(e["sock"].as_str().unwrap()))
            .map(essence)
            .collect();
        ours.sort();
        ours
    };
    let (first_ours, second_ours) = (ours(&first_events), ours(&second_events));
    // Client: CLOSE -> SYN_SENT -> ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 -> CLOSE (5);
    // server: SYN_RECV -> ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE (4), plus the
    // listener's LISTEN -> SYN_RECV on 6.18 (it has the peer address there).
    assert!(
        first_ours.len() >= 9,
        "every transition of the connection: {first_ours:#?}"
    );
    assert_eq!(
        first_ours, second_ours,
        "both instances see the same transitions"
    );
    let client_pid = u64::from(std::process::id());
    let client_sock = first_events
        .iter()
        .find(|e| e["sport"] == client_port)
        .unwrap()["sock"]
        .clone();
    for event in first_events.iter().filter(|e| e["sock"] == client_sock) {
        assert_eq!(
            event["pid"], client_pid,
            "charged to this test process: {event}"
        );
    }
}
