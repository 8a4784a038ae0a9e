//! `portwatch top` in a real terminal: tmux (Debian's `tmux`; `cargo xtask test`
//! installs it) runs a shell, the shell runs top, and the tests read the screen with
//! `tmux capture-pane -p`, polling until what they wait for appears or a deadline
//! passes.
//!
//! - PRIVILEGED: a real leaker and a real churner, traced live: the leaker's PID and
//!   its exact CLOSE_WAIT count on screen, sorting by connections/s puts the churner
//!   first, the detail view opens with the report's advice, and q (or SIGTERM) gives
//!   the shell back with the terminal's settings (`stty -a`) as they were.
//! - No root: a recording played paused and stepped to its end; top refusing without a
//!   terminal.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{PORTWATCH, expect_line, netns::NetNs, require_privileges, workload};

/// How long the screen may take to show what happened: a few 1 s redraws, and
/// attaching the programs first.
const DEADLINE: Duration = Duration::from_secs(30);
/// The test shell's prompt, set so a test can wait for the shell to be ready.
const PROMPT: &str = "top-test$ ";

/// A tmux server of this test's own (its own socket), with one session running a
/// plain shell in a `width`×`height` terminal; killed when dropped.
struct Tmux {
    socket: String,
    dir: PathBuf,
}

impl Tmux {
    fn start(name: &str, width: u16, height: u16) -> Tmux {
        let socket = format!("portwatch-top-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&socket);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tmux = Tmux { socket, dir };
        let status = tmux
            .command()
            .args(["new-session", "-d", "-s", "top"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .args([
                "env",
                &format!("PS1={PROMPT}"),
                "bash",
                "--norc",
                "--noprofile",
            ])
            .status()
            .expect("running tmux (Debian's `tmux` package; cargo xtask test installs it)");
        assert!(status.success(), "tmux new-session: {status}");
        // Keys typed before bash has set up its line editor are echoed and then
        // redrawn over, which once garbled a command line into a false exit marker.
        tmux.await_screen("the shell's prompt", |s| s.contains(PROMPT.trim_end()));
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    /// Types `keys` (tmux key names, e.g. `Enter`, `Escape`, or literal text).
    fn send(&self, keys: &[&str]) {
        let status = self
            .command()
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success(), "tmux send-keys {keys:?}");
    }

    /// Resizes the terminal, as a user dragging its window would (top gets SIGWINCH).
    fn resize(&self, width: u16, height: u16) {
        let status = self
            .command()
            .args(["resize-window", "-t", "top"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "tmux resize-window {width}x{height}");
    }

    /// Runs a shell command line in the session.
    fn type_line(&self, line: &str) {
        self.send(&["-l", line]);
        self.send(&["Enter"]);
    }

    fn capture(&self) -> String {
        let output = self
            .command()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        assert!(output.status.success(), "tmux capture-pane");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls the screen until `done` accepts it; panics with the last screen.
    fn await_screen(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let screen = self.capture();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited {DEADLINE:?} for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The PID of the shell's child named `comm` (top, run by the shell).
    fn child(&self, comm: &str) -> u32 {
        let output = self
            .command()
            .args(["display-message", "-p", "-t", "top", "#{pane_pid}"])
            .output()
            .unwrap();
        let shell: u32 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .find(|pid: &u32| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
            })
            .unwrap_or_else(|| panic!("no {comm} under the shell {shell}"))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `portwatch top <args>` in the shell between two `stty -a`, then says how it
/// exited: `top-exited-<code>`, once the second `stty -a` is written.
fn run_top(tmux: &Tmux, args: &str) {
    let before = tmux.file("stty-before");
    let after = tmux.file("stty-after");
    tmux.type_line(&format!(
        "stty -a > {}; {PORTWATCH} top {args}; code=$?; stty -a > {}; echo top-exited-$code",
        before.display(),
        after.display()
    ));
}

/// The exit code the shell echoed after top (`top-exited-<code>`; the typed command
/// line's `top-exited-$code` is not one).
fn exit_code(screen: &str) -> Option<i32> {
    // Only a whole line counts: the command line, wrapped or redrawn, can hold the
    // marker followed by other text.
    screen
        .lines()
        .find_map(|line| line.trim_end().strip_prefix("top-exited-")?.parse().ok())
}

/// Waits for top to exit with 0, and checks the terminal is as it was before.
fn assert_shell_is_back(tmux: &Tmux) {
    let screen = tmux.await_screen("top to exit", |s| exit_code(s).is_some());
    assert_eq!(exit_code(&screen), Some(0), "{screen}");
    let read = |name: &str| std::fs::read_to_string(tmux.file(name)).unwrap();
    assert_eq!(read("stty-before"), read("stty-after"), "stty -a changed");
}

/// The table's header line and the rows below it.
fn table(screen: &str) -> (&str, Vec<&str>) {
    let mut lines = screen
        .lines()
        .skip_while(|l| !(l.contains(" PID ") && l.contains("COMM")));
    let header = lines.next().unwrap_or("");
    (header, lines.take_while(|l| !l.trim().is_empty()).collect())
}

/// The value in the column headed `title` on the row of `pid`: numbers and their
/// titles are right-aligned, so a value ends where its title ends.
fn cell(screen: &str, pid: u32, title: &str) -> Option<String> {
    let (header, rows) = table(screen);
    let needle = format!(" {title}");
    let at = header.match_indices(&needle).map(|(at, _)| at).find(|at| {
        header[at + needle.len()..].starts_with(' ') || at + needle.len() == header.len()
    })?;
    let end = header[..at].chars().count() + needle.chars().count();
    let row = rows
        .iter()
        .find(|l| l.split_whitespace().any(|w| w == pid.to_string()))?;
    let before: Vec<char> = row.chars().take(end).collect();
    let value: String = before.iter().rev().take_while(|c| **c != ' ').collect();
    Some(value.chars().rev().collect())
}

fn first_row_pid(screen: &str) -> Option<u32> {
    let (_, rows) = table(screen);
    rows.first()?
        .split_whitespace()
        .find_map(|w| w.parse().ok())
}

#[test]
fn live_top_shows_the_leaker_and_the_churner_and_gives_the_shell_back() {
    live_top("counts");
}

/// The same through the per-record kernel path.
#[test]
fn live_top_on_records() {
    live_top("records");
}

/// `collect`: `counts` or `records`; also names the test's tmux server, so the two
/// tests can run at once.
fn live_top(collect: &str) {
    require_privileges();
    // A leak of exactly 5 CLOSE_WAIT sockets.
    let mut leak = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak", "5"]);
    let mut client = workload(&[
        "leak-client",
        "--connect",
        &format!("127.0.0.1:{}", leak.port),
        "--count",
        "5",
    ]);
    expect_line(&mut client, "done");
    expect_line(&mut leak, "done");
    // A churner that keeps churning while top runs.
    let echo = workload(&["echo-server", "--listen", "127.0.0.1:0"]);
    let churn = workload(&[
        "churn-client",
        "--connect",
        &format!("127.0.0.1:{}", echo.port),
        "--rate",
        "200",
    ]);
    let (leak_pid, churn_pid) = (leak.pid, churn.pid);

    let tmux = Tmux::start(&format!("live-{collect}"), 120, 40);
    // Only these two in the table: other processes on the host may churn harder.
    run_top(
        &tmux,
        &format!("--pid {leak_pid} --pid {churn_pid} --close-wait-age 1s --collect {collect}"),
    );

    // The leaker's exact CLOSE_WAIT count; first, by the default sort.
    let screen = tmux.await_screen("the leaker's 5 CLOSE_WAIT sockets", |s| {
        cell(s, leak_pid, "CLOSE_W").as_deref() == Some("5")
    });
    assert_eq!(first_row_pid(&screen), Some(leak_pid), "{screen}");
    assert!(screen.contains("leak-server"), "{screen}");

    // `n`: by connections/s, the churner first, at a rate near its 200/s.
    tmux.send(&["n"]);
    let screen = tmux.await_screen("the churner first by conn/s", |s| {
        s.contains("by conn/s") && first_row_pid(s) == Some(churn_pid)
    });
    let rate: f64 = cell(&screen, churn_pid, "CONN/s")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no conn/s for the churner:\n{screen}"));
    assert!(rate > 50.0, "conn/s {rate}:\n{screen}");

    // Back to CLOSE_WAIT order, Enter on the leaker: its sockets, finding and advice.
    tmux.send(&["c"]);
    tmux.await_screen("the leaker first again", |s| {
        s.contains("by CLOSE_WAIT") && first_row_pid(s) == Some(leak_pid)
    });
    tmux.send(&["Enter"]);
    let screen = tmux.await_screen("the leaker's detail view", |s| {
        s.contains(&format!("PID {leak_pid}"))
            && s.contains("CLOSE_WAIT SOCKETS (5, oldest first)")
            && s.contains("close wait leak")
    });
    assert!(
        screen.contains("The application does not close connections"),
        "{screen}"
    );
    let sockets = screen
        .lines()
        .filter(|l| l.contains(&format!("127.0.0.1:{}", leak.port)))
        .count();
    assert_eq!(sockets, 5, "{screen}");
    tmux.send(&["Escape"]);
    tmux.await_screen("the table again", |s| s.contains("PROCESSES"));

    tmux.send(&["q"]);
    assert_shell_is_back(&tmux);
}

/// top reads the port range of a namespace made after it started (a pod scheduled
/// later), as serve does: the port-budget panel shows that namespace's destination full
/// at its own 4 ports, not at a fraction of the host's range.
#[test]
fn top_reads_the_port_range_of_a_namespace_made_after_it_started() {
    require_privileges();
    let tmux = Tmux::start("netns-later", 160, 40);
    run_top(&tmux, "");
    // (The port-budget panel shows only once there is a destination.)
    tmux.await_screen("top's first frame", |s| s.contains("PROCESSES"));

    let ns = NetNs::with_four_ports();
    let _server = ns.workload(&["leak-server", "--listen", "127.0.0.1:5000"]);
    let _client = ns.exhaust_ports();
    let screen = tmux.await_screen("the namespace's destination at its 4 ports", |s| {
        s.lines()
            .any(|l| l.contains("127.0.0.1:5000") && l.contains(" 4/4 "))
    });
    assert!(
        screen
            .lines()
            .any(|l| l.contains("127.0.0.1:5000") && l.contains("FULL")),
        "{screen}"
    );

    tmux.send(&["q"]);
    assert_shell_is_back(&tmux);
}

#[test]
fn sigterm_restores_the_terminal() {
    require_privileges();
    let tmux = Tmux::start("sigterm", 80, 24);
    run_top(&tmux, "");
    tmux.await_screen("top's screen", |s| s.contains("portwatch top │ live"));
    let top = tmux.child("portwatch");
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(top as i32, libc::SIGTERM) }, 0);
    assert_shell_is_back(&tmux);
}

/// Paused, top has nothing to draw until something happens, and waits without a timer:
/// a resize (a signal, not input) must still wake it to redraw at the new size. Also
/// checks it does sleep: its screen's thread used to wake ten times a second, which a
/// churning host paid for (BENCHMARKS.md).
#[test]
fn paused_top_sleeps_and_still_redraws_on_a_resize() {
    require_privileges();
    let tmux = Tmux::start("resize", 120, 40);
    run_top(&tmux, "--paused");
    tmux.await_screen("top's paused screen", |s| s.contains("PAUSED"));
    let top = tmux.child("portwatch");

    let wakeups = || screen_thread_wakeups(top);
    let before = wakeups();
    // A window to count wakeups in, not a wait for something to happen.
    std::thread::sleep(Duration::from_secs(2));
    let woke = wakeups() - before;
    assert!(
        woke <= 2,
        "paused and untouched, top's screen thread woke {woke} times in 2 s"
    );

    tmux.resize(90, 30);
    // Drawn for 120 columns, the header's right end (its loss counters) is cut off at
    // 90; drawn again for 90, it ends there.
    tmux.await_screen("top redrawn at 90 columns", |s| {
        s.lines().next().is_some_and(|header| {
            header.contains("PAUSED") && header.trim_end().ends_with("skipped -")
        })
    });

    // Back to the size the shell had, which the check of the terminal's settings
    // after top compares with.
    tmux.resize(120, 40);
    tmux.await_screen("top redrawn at 120 columns", |s| {
        s.lines().next().is_some_and(|header| {
            let header = header.trim_end();
            header.chars().count() > 90 && header.ends_with("skipped -")
        })
    });
    tmux.send(&["q"]);
    assert_shell_is_back(&tmux);
}

/// How many times top's screen thread has gone to sleep and been woken.
fn screen_thread_wakeups(top: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{top}/task")).unwrap();
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "top-screen" {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap();
        return status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|count| count.trim().parse().ok())
            .expect("voluntary_ctxt_switches in the thread's status");
    }
    panic!("top (pid {top}) has no top-screen thread");
}

/// The SSH session or the terminal goes away: top ends (it used to spin on the closed
/// terminal at full speed on one CPU, forever, inside crossterm's poll).
#[test]
fn a_terminal_that_goes_away_ends_top() {
    require_privileges();
    let tmux = Tmux::start("hangup", 80, 24);
    run_top(&tmux, "");
    tmux.await_screen("top's screen", |s| s.contains("portwatch top │ live"));
    let top = tmux.child("portwatch");
    drop(tmux);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while Path::new(&format!("/proc/{top}")).exists() {
        // A zombie is gone too, as far as the terminal is concerned.
        let stat = std::fs::read_to_string(format!("/proc/{top}/stat")).unwrap_or_default();
        if stat.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "top (pid {top}) still runs 15 s after its terminal went away"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn recording() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions/recording/ok-loopback-leak-and-churn.pwrec")
}

/// What `report --replay` says of the recording: the process that failed to connect
/// for want of ports, and how often.
fn exhausted_process() -> (u32, u64) {
    let output = common::replay(&recording(), &["--format", "json"]);
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let process = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["failed_connects"].as_u64() > Some(0))
        .expect("a process with failed connects in the recording");
    (
        process["pid"].as_u64().unwrap() as u32,
        process["failed_connects"].as_u64().unwrap(),
    )
}

#[test]
fn a_replay_paused_and_stepped_to_its_end_shows_what_report_says() {
    let (pid, failed) = exhausted_process();
    let tmux = Tmux::start("replay", 80, 24);
    run_top(
        &tmux,
        &format!("--replay {} --paused", recording().display()),
    );
    // Paused at the start: the clock stays at 0 until stepped.
    tmux.await_screen("the paused replay", |s| {
        s.contains("replay 0s of 2s") && s.contains("PAUSED")
    });
    tmux.send(&["."]);
    tmux.await_screen("one step", |s| s.contains("replay 1s of 2s"));
    tmux.send(&["."]);
    tmux.await_screen("two steps", |s| s.contains("replay 2s of 2s │"));
    tmux.send(&["."]);
    let screen = tmux.await_screen("the end", |s| s.contains("(ended)"));
    assert_eq!(
        cell(&screen, pid, "FAIL").as_deref(),
        Some(failed.to_string().as_str()),
        "{screen}"
    );
    // Its destination ran out of ports: FULL, in the port-budget panel.
    let destination = screen
        .lines()
        .find(|l| l.contains("127.0.0.1:5000"))
        .unwrap_or_else(|| panic!("no destination:\n{screen}"));
    assert!(destination.contains("FULL"), "{destination}");
    tmux.send(&["q"]);
    assert_shell_is_back(&tmux);
}

#[test]
fn without_a_terminal_top_says_what_to_use_instead() {
    let output = Command::new(PORTWATCH)
        .args(["top", "--replay"])
        .arg(recording())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for word in [
        "needs a terminal",
        "portwatch report",
        "portwatch stream",
        "portwatch serve",
    ] {
        assert!(stderr.contains(word), "{word:?} not in {stderr}");
    }
    assert_eq!(stderr.trim().lines().count(), 1, "one paragraph: {stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn a_bad_recording_is_one_paragraph_not_a_panic() {
    let tmux = Tmux::start("bad", 80, 24);
    let bad = tmux.file("bad.pwrec");
    std::fs::write(&bad, b"not a recording").unwrap();
    tmux.type_line(&format!(
        "{PORTWATCH} top --replay {} 2> {}; echo top-exited-$?",
        bad.display(),
        tmux.file("stderr").display()
    ));
    let screen = tmux.await_screen("top to exit", |s| exit_code(s).is_some());
    assert_eq!(exit_code(&screen), Some(1), "{screen}");
    let stderr = std::fs::read_to_string(tmux.file("stderr")).unwrap();
    assert!(stderr.starts_with("portwatch: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
