//! Helpers for portwatch's privileged tests: they load the real eBPF object into the
//! running kernel, so they need root (CI runs them as root).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    time::Duration,
};

use portwatch::{
    bpf::{EventReader, Tracer, TracerOptions},
    event::{Event, Transition, decode},
    sockets::{owners::SocketOwner, table::SocketTable},
    tcp_state::TcpState,
};

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

/// A real process playing a TCP role from tests/fixtures/tcp_actor.py. It is killed
/// when dropped.
pub struct Actor {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    pub port: u16,
}

impl Actor {
    /// Starts `role` with `args` and waits for its "ready <pid> <port>" line.
    pub fn start(role: &str, args: &[&str]) -> Actor {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tcp_actor.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the test actors");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut actor = Actor {
            child,
            stdin,
            stdout,
            pid: 0,
            port: 0,
        };
        let ready = actor.expect_line("ready");
        actor.pid = ready[0].parse().unwrap();
        actor.port = ready[1].parse().unwrap();
        actor
    }

    /// Waits for the next line, which must start with `word`; returns its other words.
    pub fn expect_line(&mut self, word: &str) -> Vec<String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading the actor");
        let mut words = line.split_whitespace().map(str::to_owned);
        assert_eq!(words.next().as_deref(), Some(word), "actor said {line:?}");
        words.collect()
    }

    /// Lets the actor go on past its current wait.
    pub fn proceed(&mut self) {
        let stdin = self.stdin.as_mut().expect("actor stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the actor to exit by itself.
    pub fn wait(mut self) {
        self.stdin.take();
        self.child.wait().unwrap();
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
