//! PRIVILEGED: processes that come and go under portwatch, with real processes: a PID
//! reused within the window, a leaker that forks and exits (leaving a zombie and a child
//! holding its sockets), a server that accepts on another thread. Every socket and
//! connection must be charged to the process it belongs to, and nothing may panic.
mod common;

use std::{
    io::BufReader,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Stdio},
    time::{Duration, Instant},
};

use common::{
    Finished, WORKLOAD_TIMEOUT, WorkloadProcess, expect_line, require_privileges, start_portwatch,
    wait_for_portwatch, workload, workload_binary,
};
use portwatch::{sockets::snapshot, tcp_state::TcpState};
use portwatch_workload::Launcher;
use serde_json::Value;

/// Asks a running portwatch to stop: it still prints what it has.
fn stop(portwatch: &Child) {
    let pid = i32::try_from(portwatch.id()).unwrap();
    // SAFETY: kill has no memory preconditions; the PID is our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// Stops portwatch and waits for it; it must have succeeded.
fn stop_and_finish(portwatch: Child, stderr: BufReader<ChildStderr>) -> Finished {
    stop(&portwatch);
    let finished = wait_for_portwatch(portwatch, stderr);
    assert!(
        finished.status.success(),
        "portwatch failed ({}): {}",
        finished.status,
        finished.stderr
    );
    finished
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: not JSON: {text}"))
}

/// The report's `processes[]` rows with this PID.
fn rows(report: &Value, pid: u32) -> Vec<&Value> {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pid"] == pid)
        .collect()
}

fn leak_findings(report: &Value) -> Vec<&Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "close_wait_leak")
        .collect()
}

/// How many sockets a report or snapshot row holds in `state` (0 when none).
fn held(row: &Value, state: &str) -> u64 {
    row["states"][state].as_u64().unwrap_or(0)
}

/// Polls `done` until it holds, failing after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The state letter of /proc/<pid>/stat (`R`, `S`, `Z`, ...); None once it is reaped.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm, in parentheses, may hold spaces: the state follows its closing one.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Waits until every CLOSE_WAIT socket on local port `port` has been there `age`
/// (portwatch's `--close-wait-age` counts from the transition, so the kernel's own
/// view of the age is what to wait on).
fn wait_for_close_wait_age(port: u16, count: usize, age: Duration) {
    wait_until("the CLOSE_WAIT sockets to age", WORKLOAD_TIMEOUT, || {
        let snapshot = snapshot::take(&TcpState::ALL).unwrap();
        let ages: Vec<u64> = snapshot
            .sockets
            .iter()
            .filter(|s| s.socket.sport == port && s.socket.state == TcpState::CloseWait)
            .map(|s| s.in_state_at_least_ms.unwrap_or(0))
            .collect();
        ages.len() == count && ages.iter().all(|&ms| u128::from(ms) >= age.as_millis())
    });
}

/// A file for a recording, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "portwatch-churn-{name}-{}.pwrec",
            std::process::id()
        ));
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `portwatch report --replay FILE <args>`: its stdout.
fn replay(file: &TempFile, args: &[&str]) -> String {
    let output = common::replay(Path::new(file.path()), args);
    assert!(
        output.status.success(),
        "replay failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Starts `role_args` as a process whose PID is `pid`, a PID that was in use a moment
/// ago. The kernel gives a new process the PID after `/proc/sys/kernel/ns_last_pid` when
/// it is free; other processes on this machine may fork in between and take it, so this
/// tries again (the processes that got another PID are killed) a bounded number of times.
fn spawn_with_pid(pid: u32, role_args: &[&str]) -> WorkloadProcess {
    const ATTEMPTS: usize = 200;
    let launcher = Launcher::binary(workload_binary());
    let mut got = Vec::new();
    for _ in 0..ATTEMPTS {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect(
            "writing /proc/sys/kernel/ns_last_pid (needs root in the host's PID namespace)",
        );
        let process = launcher
            .spawn(role_args)
            .unwrap_or_else(|err| panic!("{role_args:?}: {err:#}"));
        if process.pid == pid {
            return process;
        }
        got.push(process.pid);
    }
    panic!("no process got PID {pid} in {ATTEMPTS} attempts; got {got:?}");
}

#[test]
fn a_reused_pid_is_two_processes_each_with_its_own_connections() {
    require_privileges();
    const LEAKS: u64 = 3;
    const CONNECTIONS: u64 = 5;
    let echo = workload(&["echo-server", "--listen", "127.0.0.1:0", "--workers", "2"]);
    let echo_addr = format!("127.0.0.1:{}", echo.port);
    let (portwatch, stderr) = start_portwatch(
        &["report", "--format", "json", "--duration", "2m"],
        Stdio::piped(),
    );

    // The first life of the PID: a leaker, killed with its sockets in CLOSE_WAIT. The
    // kernel closes them as it exits (CLOSE_WAIT -> LAST_ACK -> CLOSE).
    let mut leaker = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak", "3"]);
    let pid = leaker.pid;
    let target = format!("127.0.0.1:{}", leaker.port);
    let mut client = workload(&["leak-client", "--connect", &target, "--count", "3"]);
    expect_line(&mut client, "done");
    expect_line(&mut leaker, "done");
    // Killed and reaped: its PID is free.
    drop(leaker);

    // The second life: a client with the same PID that connects and closes first, and
    // stays. Its TIME_WAITs are its own.
    let count = CONNECTIONS.to_string();
    let mut reuser = spawn_with_pid(
        pid,
        &[
            "leak-client",
            "--connect",
            &echo_addr,
            "--count",
            &count,
            "--stay",
        ],
    );
    expect_line(&mut reuser, "done");
    // Done once the echo-server has closed its side too: only TIME_WAIT left.
    wait_until("the connections to close", WORKLOAD_TIMEOUT, || {
        snapshot::take(&TcpState::ALL)
            .unwrap()
            .sockets
            .iter()
            .all(|s| {
                let ours = s.socket.dport == echo.port || s.socket.sport == echo.port;
                !ours || matches!(s.socket.state, TcpState::TimeWait | TcpState::Listen)
            })
    });

    let finished = stop_and_finish(portwatch, stderr);
    let report = json(&finished.stdout);
    let lives = rows(&report, pid);
    assert_eq!(lives.len(), 2, "one row per life of PID {pid}: {lives:#?}");
    let old = lives
        .iter()
        .find(|row| row["comm"] == "leak-server")
        .unwrap_or_else(|| panic!("the leaker's row: {lives:#?}"));
    let new = lives
        .iter()
        .find(|row| row["comm"] == "leak-client")
        .unwrap_or_else(|| panic!("the new process's row: {lives:#?}"));
    assert_eq!(old["alive"], false, "{old:#}");
    assert_eq!(old["opened_passive"], LEAKS, "{old:#}");
    assert_eq!(old["peer_closed_first"], LEAKS, "{old:#}");
    assert_eq!(old["opened_active"], 0, "{old:#}");
    assert_eq!(old["time_wait_created"], 0, "{old:#}");
    assert_eq!(held(old, "CLOSE_WAIT"), 0, "closed at its exit: {old:#}");
    assert_eq!(new["alive"], true, "{new:#}");
    assert_eq!(new["opened_active"], CONNECTIONS, "{new:#}");
    assert_eq!(new["opened_passive"], 0, "{new:#}");
    assert_eq!(new["closed_first"], CONNECTIONS, "{new:#}");
    assert_eq!(new["peer_closed_first"], 0, "{new:#}");
    assert_eq!(new["time_wait_created"], CONNECTIONS, "{new:#}");
    assert_eq!(held(new, "TIME_WAIT"), CONNECTIONS, "{new:#}");
    // Neither life leaks now: the leaker's sockets went with it.
    let leaks = leak_findings(&report);
    assert!(
        leaks.iter().all(|f| f["pid"] != pid),
        "no leak charged to PID {pid}: {leaks:#?}"
    );
}

#[test]
fn a_leak_handed_to_a_forked_child_is_the_childs_while_the_parent_is_a_zombie() {
    require_privileges();
    const LEAKS: u64 = 3;
    let recording = TempFile::new("hand-over");
    let (portwatch, stderr) = start_portwatch(
        &[
            "report",
            "--format",
            "json",
            "--duration",
            "2m",
            "--close-wait-age",
            "1s",
            "--record",
            recording.path(),
        ],
        Stdio::piped(),
    );
    // It accepts (so portwatch learns it as the owner for certain), the peers close,
    // then it forks and exits: the child holds the CLOSE_WAIT sockets it never accepted.
    let mut parent = workload(&[
        "leak-server",
        "--listen",
        "127.0.0.1:0",
        "--leak",
        "3",
        "--hand-over",
    ]);
    let port = parent.port;
    let target = format!("127.0.0.1:{port}");
    let mut client = workload(&["leak-client", "--connect", &target, "--count", "3"]);
    expect_line(&mut client, "done");
    expect_line(&mut parent, "done");
    let child: u32 = expect_line(&mut parent, "handed-over")[0].parse().unwrap();
    assert_ne!(child, parent.pid);
    // Nobody reaps the parent until the end of this test: it stays a zombie, with a
    // /proc entry and no descriptors.
    wait_until("the parent to become a zombie", WORKLOAD_TIMEOUT, || {
        proc_state(parent.pid) == Some('Z')
    });

    // With a zombie present.
    let snapshot = common::portwatch_json(&["snapshot", "--format", "json"]);
    let holders = rows(&snapshot, child);
    assert_eq!(holders.len(), 1, "{snapshot:#}");
    assert_eq!(held(holders[0], "CLOSE_WAIT"), LEAKS, "{:#}", holders[0]);
    assert!(
        rows(&snapshot, parent.pid).is_empty(),
        "a zombie holds nothing: {snapshot:#}"
    );

    wait_for_close_wait_age(port, 3, Duration::from_millis(1500));
    let finished = stop_and_finish(portwatch, stderr);
    assert_eq!(
        proc_state(parent.pid),
        Some('Z'),
        "still a zombie at the end"
    );
    let check = |report: &Value, what: &str| {
        let ours: Vec<_> = leak_findings(report)
            .into_iter()
            .filter(|f| f["pid"] == child || f["pid"] == parent.pid)
            .collect();
        assert_eq!(ours.len(), 1, "{what}: one leak, the child's: {ours:#?}");
        let leak = ours[0];
        assert_eq!(leak["pid"], child, "{what}: {leak:#}");
        assert_eq!(leak["alive"], true, "{what}: {leak:#}");
        assert_eq!(leak["comm"], "leak-server", "{what}: {leak:#}");
        assert_eq!(leak["close_wait"], LEAKS, "{what}: {leak:#}");
        let child_rows = rows(report, child);
        assert_eq!(child_rows.len(), 1, "{what}: {child_rows:#?}");
        assert_eq!(held(child_rows[0], "CLOSE_WAIT"), LEAKS, "{what}");
        // The parent accepted them, and has exited: its row keeps what it did.
        let parent_rows = rows(report, parent.pid);
        assert_eq!(parent_rows.len(), 1, "{what}: {parent_rows:#?}");
        let parent_row = parent_rows[0];
        assert_eq!(parent_row["alive"], false, "{what}: {parent_row:#}");
        assert_eq!(
            parent_row["opened_passive"], LEAKS,
            "{what}: {parent_row:#}"
        );
        assert_eq!(held(parent_row, "CLOSE_WAIT"), 0, "{what}: {parent_row:#}");
    };
    check(&json(&finished.stdout), "live report");
    let replayed = replay(&recording, &["--format", "json", "--close-wait-age", "1s"]);
    check(&json(&replayed), "replay");
    // Reaped here, when `parent` drops; the child goes when its stdin closes with it.
}

#[test]
fn a_socket_accepted_on_another_thread_belongs_to_the_process() {
    require_privileges();
    const LEAKS: u64 = 2;
    // portwatch first: a thread already blocked in accept() when portwatch attaches is
    // not seen entering it, so its first accept would not name the owner (a limit that
    // has nothing to do with threads; the report's /proc look covers it).
    let (stream, stream_stderr) = start_portwatch(&["stream", "--format", "json"], Stdio::piped());
    let (report, report_stderr) = start_portwatch(
        &["report", "--format", "json", "--duration", "2m"],
        Stdio::piped(),
    );
    let mut server = workload(&[
        "leak-server",
        "--listen",
        "127.0.0.1:0",
        "--leak",
        "2",
        "--greet",
        "--accept-thread",
    ]);
    let tid: u32 = expect_line(&mut server, "thread")[0].parse().unwrap();
    assert_ne!(tid, server.pid, "accepting on a thread of its own");
    let port = server.port;
    let target = format!("127.0.0.1:{port}");
    // Each connection is accepted before its client closes: the accept names the owner.
    let mut client = workload(&[
        "leak-client",
        "--connect",
        &target,
        "--count",
        "2",
        "--await-greeting",
    ]);
    expect_line(&mut client, "done");
    expect_line(&mut server, "done");

    let streamed = stop_and_finish(stream, stream_stderr);
    let lines: Vec<Value> = streamed.stdout.lines().map(json).collect();
    let server_side = |old: &str, new: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["sport"] == server.port && l["old_state"] == old && l["new_state"] == new)
            .collect()
    };
    let leaks = server_side("ESTABLISHED", "CLOSE_WAIT");
    assert_eq!(leaks.len(), 2, "{lines:#?}");
    for leak in leaks {
        assert_eq!(
            leak["pid"], server.pid,
            "the process, not the thread: {leak:#}"
        );
        assert_eq!(leak["owner_source"], "accept", "{leak:#}");
        // Not checked: `comm` is the accepting thread's name ("accept"), not the
        // process's: the kernel's comm is per thread.
    }
    // The listener closes on the accepting thread, in its close(): the task is the
    // thread, the owner its process.
    let closed = server_side("LISTEN", "CLOSE");
    assert_eq!(closed.len(), 1, "{lines:#?}");
    let closed = closed[0];
    assert_eq!(closed["task_tid"], tid, "{closed:#}");
    assert_eq!(closed["task_pid"], server.pid, "{closed:#}");
    assert_eq!(closed["by_syscall"], true, "{closed:#}");
    assert_eq!(closed["pid"], server.pid, "{closed:#}");

    let reported = stop_and_finish(report, report_stderr);
    let report = json(&reported.stdout);
    assert!(
        rows(&report, tid).is_empty(),
        "no row for the thread: {report:#}"
    );
    let processes = rows(&report, server.pid);
    assert_eq!(processes.len(), 1, "{processes:#?}");
    assert_eq!(processes[0]["opened_passive"], LEAKS, "{:#}", processes[0]);
    assert_eq!(
        held(processes[0], "CLOSE_WAIT"),
        LEAKS,
        "{:#}",
        processes[0]
    );
}

/// The `N dropped` of a stream's summary line.
fn stream_dropped(stderr: &str) -> u64 {
    let summary = stderr
        .lines()
        .find(|line| line.contains("events seen"))
        .unwrap_or_else(|| panic!("no summary in: {stderr}"));
    let before = summary
        .split(" dropped")
        .next()
        .and_then(|text| text.rsplit(' ').next());
    before
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dropped count in: {summary}"))
}

/// Overload: a one-page ring buffer (4 KiB, ~28 records) against a client churning
/// flat out. Drops are counted and shown by every output (report JSON and text, the
/// stream's summary, the recording and its replay), the report says it is incomplete,
/// and portwatch recovers by itself: a leak made after the burst is found exactly.
/// (kernel_transitions.rs checks the kernel counts every lost record; this checks what
/// the user sees.)
#[test]
fn a_burst_through_a_one_page_ring_is_counted_everywhere_and_portwatch_recovers() {
    require_privileges();
    const LEAKS: u64 = 3;
    let echo = workload(&["echo-server", "--listen", "127.0.0.1:0", "--workers", "4"]);
    let echo_addr = format!("127.0.0.1:{}", echo.port);
    let recording = TempFile::new("burst");
    let (report, report_stderr) = start_portwatch(
        &[
            "report",
            "--ring-buffer-size",
            "4K",
            "--format",
            "json",
            "--duration",
            "2m",
            "--close-wait-age",
            "1s",
            "--record",
            recording.path(),
        ],
        Stdio::piped(),
    );
    let (stream, stream_stderr) = start_portwatch(
        &["stream", "--ring-buffer-size", "4K", "--format", "json"],
        Stdio::null(),
    );
    let mut churner = workload(&[
        "churn-client",
        "--connect",
        &echo_addr,
        "--rate",
        "0",
        "--threads",
        "2",
        "--duration",
        "2s",
    ]);
    expect_line(&mut churner, "done");

    // After the burst: a leak, accepted before each peer closes.
    let mut leaker = workload(&[
        "leak-server",
        "--listen",
        "127.0.0.1:0",
        "--leak",
        "3",
        "--greet",
    ]);
    let target = format!("127.0.0.1:{}", leaker.port);
    let mut client = workload(&[
        "leak-client",
        "--connect",
        &target,
        "--count",
        "3",
        "--await-greeting",
    ]);
    expect_line(&mut client, "done");
    expect_line(&mut leaker, "done");
    wait_for_close_wait_age(leaker.port, 3, Duration::from_millis(1500));

    let streamed = stop_and_finish(stream, stream_stderr);
    assert!(
        stream_dropped(&streamed.stderr) > 0,
        "the stream says it dropped: {}",
        streamed.stderr
    );
    let reported = stop_and_finish(report, report_stderr);
    let check = |report: &Value, what: &str| -> u64 {
        let events = &report["events"];
        let dropped = events["dropped"].as_u64().unwrap();
        assert!(dropped > 0, "{what}: {events:#}");
        assert_eq!(events["incomplete"], true, "{what}: {events:#}");
        let leaks: Vec<_> = leak_findings(report)
            .into_iter()
            .filter(|f| f["pid"] == leaker.pid)
            .collect();
        assert_eq!(
            leaks.len(),
            1,
            "{what}: the leak after the burst: {report:#}"
        );
        assert_eq!(leaks[0]["close_wait"], LEAKS, "{what}: {:#}", leaks[0]);
        assert_eq!(leaks[0]["alive"], true, "{what}: {:#}", leaks[0]);
        // Not checked here: the echo-server's row may show sockets in CLOSE_WAIT or
        // LAST_ACK that are long gone, whose last transitions were among the dropped
        // records (seen in 1 run of 10). The table is not reconciled with the kernel
        // after drops yet.
        dropped
    };
    let live = check(&json(&reported.stdout), "live report");
    let replayed = replay(&recording, &["--format", "json", "--close-wait-age", "1s"]);
    assert_eq!(check(&json(&replayed), "replay"), live, "the same drops");
    let text = replay(&recording, &["--close-wait-age", "1s"]);
    assert!(
        text.contains(&format!("{live} dropped")) && text.contains("INCOMPLETE"),
        "the text report says so: {text}"
    );
}
