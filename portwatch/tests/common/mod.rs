//! Helpers for portwatch's privileged tests: they load the real eBPF object into the
//! running kernel, so they need root (CI runs them as root).
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod kernel_objects;
pub mod netns;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::Duration,
};

use portwatch::{
    bpf::{EventReader, Tracer, TracerOptions},
    event::{Event, Transition, decode},
    sockets::{owners::SocketOwner, table::SocketTable},
    tcp_state::TcpState,
};
use portwatch_workload::Launcher;
pub use portwatch_workload::WorkloadProcess;

/// Fails the test, with the reason, when it cannot load eBPF. There is no silent skip:
/// a non-root developer runs `PORTWATCH_UNPRIVILEGED=1 cargo xtask test`, which leaves
/// these test binaries out and says so.
pub fn require_privileges() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test loads eBPF into the kernel and must run as root (euid is {euid}). \
         Run the suite with sudo, or `PORTWATCH_UNPRIVILEGED=1 cargo xtask test` to run \
         only the unprivileged tests."
    );
}

/// The portwatch binary cargo built for these tests.
pub const PORTWATCH: &str = env!("CARGO_BIN_EXE_portwatch");

/// Starts `portwatch <args>` and waits until it says it is tracing (or recording), past
/// any warnings about hooks this kernel lacks. Returns it with the rest of its stderr.
#[allow(
    clippy::zombie_processes,
    reason = "callers wait for it once they have read its output"
)]
pub fn start_portwatch(args: &[&str], stdout: Stdio) -> (Child, BufReader<ChildStderr>) {
    let mut child = Command::new(PORTWATCH)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            panic!("portwatch exited ({status}) before tracing");
        }
        if line.starts_with("portwatch: tracing") || line.starts_with("portwatch: recording") {
            return (child, stderr);
        }
    }
}

/// What a portwatch started by [`start_portwatch`] left when it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    /// Its stderr after the "tracing" line: warnings and the summary.
    pub stderr: String,
}

/// Reads the rest of a portwatch's output and waits for it to exit.
pub fn wait_for_portwatch(mut child: Child, mut stderr: BufReader<ChildStderr>) -> Finished {
    use std::io::Read as _;
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout).unwrap();
    }
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    Finished {
        status: child.wait().unwrap(),
        stdout,
        stderr: rest,
    }
}

pub fn start_tracer(options: &TracerOptions) -> (Tracer, EventReader) {
    require_privileges();
    Tracer::start(options).unwrap_or_else(|err| panic!("starting the tracer: {err:#}"))
}

/// Reads events until `done` says the collected ones are complete, or fails after
/// `timeout`. Transitions are kept when `keep` says so; accept and exit events always.
pub async fn collect_until(
    reader: &mut EventReader,
    keep: impl Fn(&Transition) -> bool,
    done: impl Fn(&[Event]) -> bool,
    timeout: Duration,
) -> Vec<Event> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&events) {
        let batch = tokio::time::timeout_at(
            deadline,
            reader.read_batch(|bytes| {
                let event = decode(bytes).expect("the kernel sent an undecodable record");
                let wanted = match &event {
                    Event::Transition(transition) => keep(transition),
                    Event::Accepted(_) | Event::Exited(_) | Event::ConnectFailed(_) => true,
                };
                if wanted {
                    events.push(event);
                }
            }),
        )
        .await;
        match batch {
            Ok(result) => {
                result.expect("reading the ring buffer");
            }
            Err(_) => panic!("timed out after {timeout:?}; collected so far: {events:#?}"),
        }
    }
    events
}

pub fn transitions_of(events: &[Event]) -> Vec<&Transition> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Transition(transition) => Some(transition),
            _ => None,
        })
        .collect()
}

/// Transitions grouped by socket, in arrival order.
pub fn by_socket<'a>(events: &[&'a Transition]) -> HashMap<u64, Vec<&'a Transition>> {
    let mut sockets: HashMap<u64, Vec<&Transition>> = HashMap::new();
    for event in events {
        sockets.entry(event.sock).or_default().push(event);
    }
    sockets
}

pub fn transitions(events: &[&Transition]) -> Vec<(TcpState, TcpState)> {
    events.iter().map(|e| (e.old_state, e.new_state)).collect()
}

/// Feeds events to a socket table, as portwatch does, and returns each transition with
/// the owner the table resolved for it.
pub fn resolve_owners(
    table: &mut SocketTable,
    events: &[Event],
) -> Vec<(Transition, Option<SocketOwner>)> {
    let mut resolved = Vec::new();
    for event in events {
        let owner = table.apply(event);
        if let Event::Transition(transition) = event {
            resolved.push((transition.clone(), owner));
        }
    }
    resolved
}

/// One complete connection on loopback: the client connects, closes first, the server
/// reads EOF and closes. Returns (listener address, client address).
pub fn connect_and_close(listen_on: SocketAddr) -> (SocketAddr, SocketAddr) {
    use std::io::Read as _;
    let listener = TcpListener::bind(listen_on).expect("bind");
    let server_addr = listener.local_addr().unwrap();
    let client = TcpStream::connect(server_addr).expect("connect");
    let client_addr = client.local_addr().unwrap();
    let (mut accepted, _) = listener.accept().expect("accept");
    drop(client);
    // EOF means the client's FIN arrived, so the server socket is in CLOSE_WAIT now.
    let mut buffer = [0u8; 1];
    assert_eq!(accepted.read(&mut buffer).expect("read"), 0);
    drop(accepted);
    drop(listener);
    (server_addr, client_addr)
}

/// True when the transitions hold a transition to CLOSE for all `count` sockets seen.
pub fn all_closed(events: &[Event], count: usize) -> bool {
    let transitions = transitions_of(events);
    let sockets = by_socket(&transitions);
    sockets.len() == count
        && sockets
            .values()
            .all(|events| events.iter().any(|e| e.new_state == TcpState::Close))
}

/// How long a workload may take to say a line it owes: its setup and its few loopback
/// connections take milliseconds; seconds mean it is stuck.
pub const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The `portwatch-workload` binary of this workspace, built for this test's profile.
///
/// Cargo hands a test only its own package's binaries, so this one is found where cargo
/// puts it, next to this test's directory (`target/<profile>/deps/<test>` →
/// `target/<profile>/portwatch-workload`), after asking cargo to build it: a no-op
/// when it is up to date, and a fresh build under `cargo test -p portwatch`, which does
/// not build other packages' binaries.
pub fn workload_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("this test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("tests run from target/<profile>/deps");
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("no profile directory above {}", exe.display()),
        };
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let status = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--package", "portwatch-workload"])
            .args(["--bin", "portwatch-workload", "--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("running cargo to build portwatch-workload");
        assert!(status.success(), "building portwatch-workload: {status}");
        profile_dir.join("portwatch-workload")
    })
}

/// Starts `portwatch-workload <role_args>` and waits for its `ready` line. It is
/// killed when dropped, also when the test fails.
pub fn workload(role_args: &[&str]) -> WorkloadProcess {
    Launcher::binary(workload_binary())
        .spawn(role_args)
        .unwrap_or_else(|err| panic!("{role_args:?}: {err:#}"))
}

/// Waits for `process`'s next line starting with `word`; returns its other words.
pub fn expect_line(process: &mut WorkloadProcess, word: &str) -> Vec<String> {
    process
        .wait_line_timeout(word, WORKLOAD_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"))
}

/// `portwatch report --replay <path> <args>`, run to its end.
/// Runs `portwatch <args>` to its end and returns its stdout as one JSON value; fails
/// the test, with its exit status and stderr, unless it succeeded.
pub fn portwatch_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(PORTWATCH).args(args).output().unwrap();
    json_of_success(&format!("portwatch {}", args.join(" ")), &output)
}

/// A finished command's stdout as one JSON value; fails the test, with the command's
/// exit status and stderr, unless it succeeded.
pub fn json_of_success(what: &str, output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "{what} printed no JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

pub fn replay(path: &Path, args: &[&str]) -> std::process::Output {
    Command::new(PORTWATCH)
        .args(["report", "--replay"])
        .arg(path)
        .args(args)
        .output()
        .unwrap()
}

/// Waits for a `portwatch report` to finish, which must have reported (exit 0, or 2
/// for `--fail-on`); returns its exit code and stdout.
pub fn finish_report(child: Child, stderr: BufReader<ChildStderr>) -> (i32, String) {
    let finished = wait_for_portwatch(child, stderr);
    let code = finished.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 2,
        "portwatch failed ({}): {}",
        finished.status,
        finished.stderr
    );
    (code, finished.stdout)
}
