//! Helpers for portwatch's privileged tests: they load the real eBPF object into the
//! running kernel, so they need root (CI runs them as root).
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use portwatch::{
    bpf::{EventReader, Tracer, TracerOptions},
    event::{Transition, decode},
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

pub fn start_tracer(options: &TracerOptions) -> (Tracer, EventReader) {
    require_privileges();
    Tracer::start(options).unwrap_or_else(|err| panic!("starting the tracer: {err:#}"))
}

/// Reads events until `done` says the collected ones are complete, or fails after
/// `timeout`. Only events for which `keep` is true are collected.
pub async fn collect_until(
    reader: &mut EventReader,
    keep: impl Fn(&Transition) -> bool,
    done: impl Fn(&[Transition]) -> bool,
    timeout: Duration,
) -> Vec<Transition> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&events) {
        let batch = tokio::time::timeout_at(
            deadline,
            reader.read_batch(|bytes| {
                let event = decode(bytes).expect("the kernel sent an undecodable record");
                if keep(&event) {
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

/// Events grouped by socket, in arrival order.
pub fn by_socket(events: &[Transition]) -> HashMap<u64, Vec<&Transition>> {
    let mut sockets: HashMap<u64, Vec<&Transition>> = HashMap::new();
    for event in events {
        sockets.entry(event.sock).or_default().push(event);
    }
    sockets
}

pub fn transitions(events: &[&Transition]) -> Vec<(TcpState, TcpState)> {
    events.iter().map(|e| (e.old_state, e.new_state)).collect()
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

/// True when `events` hold a transition to CLOSE for all `count` sockets seen.
pub fn all_closed(events: &[Transition], count: usize) -> bool {
    let sockets = by_socket(events);
    sockets.len() == count
        && sockets
            .values()
            .all(|events| events.iter().any(|e| e.new_state == TcpState::Close))
}
