//! PRIVILEGED: socket ownership with real processes. The transitions that show a leak
//! (ESTABLISHED -> CLOSE_WAIT) run in softirq context, on whatever task the CPU was
//! running; these tests check portwatch charges them to the process that holds the
//! socket, never to the client, the test runner or PID 0.
mod common;

use std::time::Duration;

use common::{collect_until, expect_line, resolve_owners, start_tracer, transitions_of, workload};
use portwatch::{
    bpf::TracerOptions,
    event::{Event, OwnerSource, Transition},
    sockets::table::SocketTable,
    tcp_state::TcpState,
};

const TIMEOUT: Duration = Duration::from_secs(15);

/// `host:port` as workloads take it: an IPv6 host in brackets.
fn address(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Server-side sockets of `port` that reached CLOSE_WAIT and were accepted, in either
/// order: a client that closes at once can reach CLOSE_WAIT in the accept queue.
fn accepted_close_waits(events: &[Event], port: u16) -> usize {
    transitions_of(events)
        .iter()
        .filter(|e| e.sport == port && e.new_state == TcpState::CloseWait)
        .filter(|leak| {
            events
                .iter()
                .any(|e| matches!(e, Event::Accepted(a) if a.sock == leak.sock))
        })
        .count()
}

/// Runs `leak-server` on `listen_host` and `client` against `connect_host`, and checks
/// every server-side CLOSE_WAIT is charged to the server.
async fn leak_is_charged_to_the_server(listen_host: &str, connect_host: &str) {
    const LEAKS: usize = 3;
    let (_tracer, mut reader) = start_tracer(&TracerOptions::default());
    let leaks = LEAKS.to_string();
    let listen = address(listen_host, 0);
    let mut server = workload(&["leak-server", "--listen", &listen, "--leak", &leaks]);
    let port = server.port;
    let target = address(connect_host, port);
    let mut client = workload(&["leak-client", "--connect", &target, "--count", &leaks]);
    expect_line(&mut client, "done");
    // Once every connection is accepted and at EOF: in CLOSE_WAIT.
    expect_line(&mut server, "done");

    let events = collect_until(
        &mut reader,
        |e| e.sport == port || e.dport == port,
        |events| accepted_close_waits(events, port) == LEAKS,
        TIMEOUT,
    )
    .await;
    let mut table = SocketTable::new();
    let resolved = resolve_owners(&mut table, &events);
    let me = std::process::id();
    for (event, owner) in &resolved {
        if event.sport == port && event.new_state == TcpState::CloseWait {
            // Before accept() the owner is the listener's (the same process here);
            // either way, never the client, the test runner or the interrupted task.
            let owner = owner.unwrap_or_else(|| panic!("no owner for {event:?}"));
            assert_eq!(
                owner.process.pid, server.pid,
                "leak charged to the server: {event:?}"
            );
            assert_ne!(owner.process.pid, client.pid);
            assert_ne!(owner.process.pid, me);
            assert_ne!(owner.process.pid, 0);
            // After the accept, the table knows for certain.
            let now = table
                .get(event.sock)
                .expect("leaked socket is live")
                .owner
                .unwrap();
            assert_eq!(
                (now.process.pid, now.source),
                (server.pid, OwnerSource::Accept)
            );
            assert!(table.is_alive(&now.process));
            // The server's address as the client dialled it: IPv4-mapped shown as IPv4.
            assert_eq!(event.saddr.to_string(), connect_host);
        }
        if event.dport == port && event.old_state == TcpState::Close {
            // The client's connect() names the client.
            assert_eq!(owner.unwrap().process.pid, client.pid, "{event:?}");
        }
    }
    let client_side: Vec<&Transition> = resolved
        .iter()
        .filter(|(e, _)| e.dport == port && e.new_state == TcpState::FinWait1)
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        client_side.len(),
        LEAKS,
        "the client closed each connection"
    );
}

#[tokio::test]
async fn ipv4_close_wait_leak_is_charged_to_the_accepting_server() {
    leak_is_charged_to_the_server("127.0.0.1", "127.0.0.1").await;
}

#[tokio::test]
async fn ipv6_close_wait_leak_is_charged_to_the_accepting_server() {
    leak_is_charged_to_the_server("::1", "::1").await;
}

#[tokio::test]
async fn ipv4_mapped_close_wait_leak_is_charged_and_shown_as_ipv4() {
    // A dual-stack server on "::" accepting an IPv4 client: an AF_INET6 socket whose
    // addresses are ::ffff:127.0.0.1, shown as 127.0.0.1.
    leak_is_charged_to_the_server("::", "127.0.0.1").await;
}

#[tokio::test]
async fn prefork_child_that_accepts_owns_the_leak() {
    let (_tracer, mut reader) = start_tracer(&TracerOptions::default());
    let mut parent = workload(&["prefork-server", "--listen", "127.0.0.1:0", "--leak", "1"]);
    let port = parent.port;
    let child_pid: u32 = expect_line(&mut parent, "forked")[0].parse().unwrap();
    let target = format!("127.0.0.1:{port}");
    let mut client = workload(&["leak-client", "--connect", &target, "--count", "1"]);
    expect_line(&mut client, "done");
    // The child says it on the parent's stdout, which it inherited.
    expect_line(&mut parent, "done");

    let events = collect_until(
        &mut reader,
        |e| e.sport == port || e.dport == port,
        |events| accepted_close_waits(events, port) == 1,
        TIMEOUT,
    )
    .await;
    let mut table = SocketTable::new();
    let resolved = resolve_owners(&mut table, &events);
    let (listen, listen_owner) = resolved
        .iter()
        .find(|(e, _)| e.new_state == TcpState::Listen)
        .expect("the parent's listen()");
    assert_eq!(listen_owner.unwrap().process.pid, parent.pid, "{listen:?}");
    let (leak, leak_owner) = resolved
        .iter()
        .find(|(e, _)| e.sport == port && e.new_state == TcpState::CloseWait)
        .unwrap();
    // Until the child's accept() the socket carries the listener's owner, the parent;
    // the accept hook moves it to the child, which holds the fd.
    assert!(leak_owner.is_some(), "{leak:?}");
    let owner = table.get(leak.sock).unwrap().owner.unwrap();
    assert_eq!(
        (owner.process.pid, owner.source),
        (child_pid, OwnerSource::Accept)
    );
    assert_ne!(owner.process.pid, parent.pid);
}

#[tokio::test]
async fn sockets_of_an_exited_process_are_not_charged_to_a_live_pid() {
    let (_tracer, mut reader) = start_tracer(&TracerOptions::default());
    let server = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak", "1"]);
    let target = format!("127.0.0.1:{}", server.port);
    let mut quitter = workload(&["connect-and-exit", "--connect", &target, "--exit-on-go"]);
    let quitter_pid = quitter.pid;
    let quitter_port: u16 = expect_line(&mut quitter, "connected")[0].parse().unwrap();
    quitter.tell("go").unwrap();
    quitter
        .wait_success(TIMEOUT)
        .unwrap_or_else(|err| panic!("{err:#}"));

    // The kernel closes the quitter's socket as it exits: FIN_WAIT1, then FIN_WAIT2
    // once the server acknowledges. The server never closes, so it stays there.
    let events = collect_until(
        &mut reader,
        |e| e.sport == quitter_port || e.dport == quitter_port,
        |events| {
            let exited = events
                .iter()
                .any(|e| matches!(e, Event::Exited(x) if x.pid == quitter_pid));
            let fin_wait2 = transitions_of(events)
                .iter()
                .any(|e| e.sport == quitter_port && e.new_state == TcpState::FinWait2);
            exited && fin_wait2
        },
        TIMEOUT,
    )
    .await;
    let mut table = SocketTable::new();
    let resolved = resolve_owners(&mut table, &events);
    let (orphan, owner) = resolved
        .iter()
        .find(|(e, _)| e.sport == quitter_port && e.new_state == TcpState::FinWait2)
        .unwrap();
    let owner = owner.unwrap_or_else(|| panic!("orphan keeps its owner: {orphan:?}"));
    assert_eq!(owner.process.pid, quitter_pid);
    assert!(
        !table.is_alive(&owner.process),
        "the owner exited: shown as exited, not as whoever gets its PID next"
    );
    drop(server);
}

#[tokio::test]
async fn connections_open_before_portwatch_are_charged_by_the_startup_snapshot() {
    const HELD: usize = 2;
    // Everything is set up before portwatch attaches: the kernel never sees these
    // sockets open, listen or accept.
    let held = HELD.to_string();
    let mut server = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak", &held]);
    let port = server.port;
    let target = format!("127.0.0.1:{port}");
    let mut client = workload(&[
        "hold-client",
        "--connect",
        &target,
        "--count",
        &held,
        "--close-on-go",
    ]);
    expect_line(&mut server, "accepted");

    let (mut tracer, mut reader) = start_tracer(&TracerOptions::default());
    let mut table = SocketTable::new();
    for seed in portwatch::commands::startup::seeds(&mut tracer) {
        table.seed(seed);
    }
    // Now the client closes: the server's sockets go ESTABLISHED -> CLOSE_WAIT in
    // softirq context, with no owner in the kernel's table.
    client.tell("go").unwrap();
    expect_line(&mut client, "closed");
    let events = collect_until(
        &mut reader,
        |e| e.sport == port || e.dport == port,
        |events| {
            transitions_of(events)
                .iter()
                .filter(|e| e.sport == port && e.new_state == TcpState::CloseWait)
                .count()
                == HELD
        },
        TIMEOUT,
    )
    .await;
    let resolved = resolve_owners(&mut table, &events);
    let leaks: Vec<_> = resolved
        .iter()
        .filter(|(e, _)| e.sport == port && e.new_state == TcpState::CloseWait)
        .collect();
    assert_eq!(leaks.len(), HELD);
    for (event, owner) in leaks {
        assert_eq!(event.owner, None, "the kernel cannot know: {event:?}");
        let owner = owner.unwrap_or_else(|| panic!("the snapshot names the owner: {event:?}"));
        assert_eq!(
            (owner.process.pid, owner.source),
            (server.pid, OwnerSource::Procfs)
        );
    }
}
