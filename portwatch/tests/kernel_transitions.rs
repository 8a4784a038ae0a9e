//! PRIVILEGED: loads portwatch's eBPF object into the running kernel and checks the exact
//! transitions it reports for real loopback connections made by this test process.
mod common;

use std::{net::SocketAddr, time::Duration};

use common::{
    all_closed, by_socket, collect_until, connect_and_close, start_tracer, transitions,
    transitions_of,
};
use portwatch::{
    bpf::TracerOptions,
    event::{Family, OwnerSource},
    tcp_state::TcpState::*,
};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn check_one_connection(listen_on: &str, family: Family) {
    let (tracer, mut reader) = start_tracer(&TracerOptions::default());
    let listen_on: SocketAddr = listen_on.parse().unwrap();
    let (server, client) = connect_and_close(listen_on);
    let port = server.port();

    // Every socket involved has the server port at one end: listener, client, accepted.
    let events = collect_until(
        &mut reader,
        |e| e.sport == port || e.dport == port,
        |events| all_closed(events, 3),
        TIMEOUT,
    )
    .await;
    let events = transitions_of(&events);
    let sockets = by_socket(&events);
    assert_eq!(
        sockets.len(),
        3,
        "listener, client and accepted socket: {events:#?}"
    );
    let me = std::process::id();

    let listener = sockets
        .values()
        .find(|events| events[0].new_state == Listen)
        .expect("the listener's CLOSE -> LISTEN");
    assert_eq!(transitions(listener), [(Close, Listen), (Listen, Close)]);
    assert_eq!(listener[0].task.pid, me);
    assert!(listener[0].by_syscall);
    let listen_owner = listener[0].owner.expect("listen() names the owner");
    assert_eq!(
        (listen_owner.pid, listen_owner.source),
        (me, OwnerSource::Listen)
    );

    let connector = sockets
        .values()
        .find(|events| events[0].new_state == SynSent)
        .expect("the client's CLOSE -> SYN_SENT");
    assert_eq!(
        transitions(connector),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            // The active closer's socket becomes a time-wait mini-socket here.
            (FinWait2, Close),
        ]
    );
    // connect() runs in this process: the connect side is attributed to it.
    assert_eq!(
        connector[0].task.pid, me,
        "CLOSE -> SYN_SENT runs in the connecting process"
    );
    assert_eq!(connector[0].dport, port);
    assert_eq!(connector[0].daddr, server.ip());
    for event in connector.iter() {
        let owner = event.owner.expect("connect() names the owner");
        assert_eq!(
            (owner.pid, owner.source),
            (me, OwnerSource::Connect),
            "{event:?}"
        );
    }
    for event in &connector[1..] {
        assert_eq!((event.saddr, event.sport), (client.ip(), client.port()));
        assert_eq!((event.daddr, event.dport), (server.ip(), server.port()));
        assert!(
            event.in_state_ns.is_some(),
            "time in state is known: {event:?}"
        );
    }

    let accepted = sockets
        .values()
        .find(|events| events[0].new_state == SynRecv)
        .expect("the accepted socket's LISTEN -> SYN_RECV");
    assert_eq!(
        transitions(accepted),
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close),
        ]
    );
    for event in accepted.iter() {
        assert_eq!((event.saddr, event.sport), (server.ip(), server.port()));
        assert_eq!((event.daddr, event.dport), (client.ip(), client.port()));
        assert_eq!(event.owner.expect("owner known").pid, me, "{event:?}");
    }
    for event in &events {
        assert_eq!(event.family, family);
    }

    let counters = tracer.counters().unwrap();
    assert_eq!(counters.ring_buffer_full, 0);
}

#[tokio::test]
async fn ipv4_connection_transitions() {
    check_one_connection("127.0.0.1:0", Family::Ipv4).await;
}

#[tokio::test]
async fn ipv6_connection_transitions() {
    check_one_connection("[::1]:0", Family::Ipv6).await;
}

#[tokio::test]
async fn full_ring_buffer_drops_are_counted() {
    // One page holds 28 records of 144 bytes; 40 connections make 400+ transitions
    // while nobody reads.
    let options = TracerOptions {
        ring_buffer_bytes: 4096,
        ..TracerOptions::default()
    };
    let (tracer, mut reader) = start_tracer(&options);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = 40;
    for _ in 0..connections {
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(client);
        drop(accepted);
    }
    let mut seen = 0u64;
    reader.drain(|_| seen += 1);
    let dropped = tracer.counters().unwrap().ring_buffer_full;
    // Each connection makes at least 10 transitions (5 per side), all on this host.
    let made = 10 * connections;
    assert!(
        dropped > 0,
        "a full ring buffer must be counted (seen {seen})"
    );
    assert!(
        seen < 60,
        "one page cannot hold more than ~28 records, read {seen}"
    );
    assert!(
        seen + dropped >= made,
        "every transition is either delivered or counted: seen {seen} + dropped {dropped} < {made}"
    );
}

/// A reader that found the ring empty stops draining on its timer and waits for the
/// kernel: the next record must wake it. Without the wakeup the reader would wait for
/// its backstop, set here to an hour, and the test would time out.
#[tokio::test]
async fn an_asleep_reader_is_woken_by_the_next_record() {
    let (_tracer, mut reader) = start_tracer(&TracerOptions::default());
    reader.set_backstop(Duration::from_secs(3600));
    // Other processes' records may keep it awake for a moment.
    let mut attempts = 0;
    while !reader.is_asleep() {
        attempts += 1;
        assert!(attempts < 1000, "the ring never stayed empty for a moment");
        reader.fall_asleep(|_| {}).expect("updating the READER map");
    }
    let (server, client) = connect_and_close("127.0.0.1:0".parse().unwrap());
    let ours = |port: u16| port == server.port() || port == client.port();
    let events = collect_until(
        &mut reader,
        |t| ours(t.sport) && ours(t.dport),
        |events| !events.is_empty(),
        TIMEOUT,
    )
    .await;
    assert!(!events.is_empty());
    assert!(
        !reader.is_asleep(),
        "a woken reader drains on its timer again while records keep coming"
    );
}
