//! `portwatch snapshot` against real processes. PRIVILEGED: it runs as root so that /proc
//! shows every process's descriptors (it loads no eBPF). Separate workload processes
//! leak sockets in CLOSE_WAIT; the snapshot must name the process that holds each one.
mod common;

use std::{
    net::IpAddr,
    process::Command,
    time::{Duration, Instant},
};

use common::{WorkloadProcess, expect_line, workload};
use portwatch::{
    event::Family,
    sockets::snapshot::{self, Snapshot, SnapshotSocket, group_by_process},
    tcp_state::TcpState,
};
use serde_json::Value;

const PORTWATCH: &str = env!("CARGO_BIN_EXE_portwatch");

/// `host:0` as workloads take it: an IPv6 host in brackets.
fn any_port(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:0")
    } else {
        format!("{host}:0")
    }
}

/// A server that will leak `count` connections on `host`, keeping its listener: (server,
/// port, PID of the process that accepts). With `fork`, a pre-fork server: its forked
/// child accepts while the parent keeps only the listener.
fn server(host: &str, count: usize, fork: bool) -> (WorkloadProcess, u16, u32) {
    let (listen, count) = (any_port(host), count.to_string());
    if fork {
        let mut server = workload(&["prefork-server", "--listen", &listen, "--leak", &count]);
        let child = expect_line(&mut server, "forked")[0].parse().unwrap();
        let port = server.port;
        return (server, port, child);
    }
    let server = workload(&[
        "leak-server",
        "--listen",
        &listen,
        "--leak",
        &count,
        "--keep-listening",
    ]);
    let (port, pid) = (server.port, server.pid);
    (server, port, pid)
}

/// Connects to `server` and closes `count` times; returns once every connection is
/// closed by the client and accepted by the server. Until the server accepts, a
/// connection sits in the listener's queue with no file, so no process holds it yet.
/// The client stays alive, so the snapshot can check it is not blamed for the server's
/// sockets.
fn client(server: &mut WorkloadProcess, host: &str, port: u16, count: usize) -> WorkloadProcess {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let count = count.to_string();
    let mut client = workload(&[
        "leak-client",
        "--connect",
        &target,
        "--count",
        &count,
        "--stay",
    ]);
    expect_line(&mut client, "done");
    expect_line(server, "accepted");
    client
}

/// Server-side CLOSE_WAIT sockets of `port`.
fn close_wait_on(snapshot: &Snapshot, port: u16) -> Vec<&SnapshotSocket> {
    snapshot
        .sockets
        .iter()
        .filter(|s| s.socket.state == TcpState::CloseWait && s.socket.sport == port)
        .collect()
}

/// Takes snapshots until `done` holds, rather than guessing how long the FINs take.
fn snapshot_until(done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot =
            snapshot::take(&TcpState::ALL).unwrap_or_else(|err| panic!("snapshot: {err:#}"));
        if done(&snapshot) {
            return snapshot;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; last snapshot: {:#?}",
            snapshot.sockets
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn holder_pids(socket: &SnapshotSocket) -> Vec<u32> {
    socket.holders.iter().map(|h| h.id.pid).collect()
}

/// Runs `portwatch snapshot --format json` and parses its one object.
fn snapshot_json() -> Value {
    common::portwatch_json(&["snapshot", "--format", "json"])
}

/// The JSON process with `pid`.
fn json_process(json: &Value, pid: u32) -> &Value {
    json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("process {pid} missing from {json}"))
}

/// A JSON group's CLOSE_WAIT sockets on local port `port`.
fn json_close_wait(group: &Value, port: u16) -> Vec<&Value> {
    group["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "CLOSE_WAIT" && s["sport"] == port)
        .collect()
}

#[test]
fn close_wait_sockets_are_attributed_to_the_server_that_leaks_them() {
    common::require_privileges();
    let (mut server, port, server_pid) = server("127.0.0.1", 3, false);
    assert_eq!(server_pid, server.pid);
    let client = client(&mut server, "127.0.0.1", port, 3);

    let snapshot = snapshot_until(|s| close_wait_on(s, port).len() == 3);
    for socket in close_wait_on(&snapshot, port) {
        assert_eq!(holder_pids(socket), [server_pid], "{socket:#?}");
        assert_eq!(socket.holders[0].comm, "leak-server");
        assert_eq!(socket.socket.family, Family::Ipv4);
        assert_ne!(socket.socket.inode, 0);
        assert!(
            socket.in_state_at_least_ms.is_some(),
            "CLOSE_WAIT has a lower bound: {socket:#?}"
        );
    }
    let grouping = group_by_process(&snapshot.sockets);
    let group = grouping
        .processes
        .iter()
        .find(|g| g.process.id.pid == server_pid)
        .expect("the server has a group");
    assert_eq!(group.sockets.count(TcpState::CloseWait), 3);
    assert_eq!(group.sockets.count(TcpState::Listen), 1);
    assert!(
        grouping
            .processes
            .iter()
            .all(|g| g.process.id.pid != client.pid),
        "the client closed everything: it holds nothing"
    );

    // The binary says the same, and nothing else holds the server's CLOSE_WAIT sockets.
    let json = snapshot_json();
    let server_json = json_process(&json, server_pid);
    assert_eq!(server_json["comm"], "leak-server");
    assert_eq!(
        server_json["start_time"],
        group.process.id.start_time().unwrap()
    );
    assert_eq!(server_json["states"]["CLOSE_WAIT"], 3);
    assert_eq!(json_close_wait(server_json, port).len(), 3);
    for other in json["processes"].as_array().unwrap() {
        assert_ne!(other["pid"], client.pid, "{other}");
        if other["pid"] != server_pid {
            assert!(json_close_wait(other, port).is_empty(), "{other}");
        }
    }
    assert!(json_close_wait(&json["no_process"], port).is_empty());

    let text = Command::new(PORTWATCH)
        .args(["snapshot", "--state", "CLOSE_WAIT"])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(&server_pid.to_string()))
        .unwrap_or_else(|| panic!("no line for {server_pid}:\n{text}"));
    assert!(
        line.contains("leak-server") && line.contains("CLOSE_WAIT 3 (≥ "),
        "{line}"
    );
}

#[test]
fn pre_fork_child_holds_the_socket_it_accepted() {
    common::require_privileges();
    let (mut server, port, child_pid) = server("127.0.0.1", 1, true);
    let parent_pid = server.pid;
    assert_ne!(child_pid, parent_pid);
    let _client = client(&mut server, "127.0.0.1", port, 1);

    let snapshot = snapshot_until(|s| close_wait_on(s, port).len() == 1);
    let leaked = close_wait_on(&snapshot, port)[0];
    assert_eq!(holder_pids(leaked), [child_pid], "{leaked:#?}");

    // The listener was inherited across fork: both hold it, each listed once.
    let listener = snapshot
        .sockets
        .iter()
        .find(|s| s.socket.state == TcpState::Listen && s.socket.sport == port)
        .expect("the listener");
    let mut pids = holder_pids(listener);
    pids.sort_unstable();
    let mut expected = [parent_pid, child_pid];
    expected.sort_unstable();
    assert_eq!(pids, expected);

    let grouping = group_by_process(&snapshot.sockets);
    let count = |pid: u32, state: TcpState| {
        grouping
            .processes
            .iter()
            .find(|g| g.process.id.pid == pid)
            .map_or(0, |g| g.sockets.count(state))
    };
    assert_eq!(count(child_pid, TcpState::CloseWait), 1);
    assert_eq!(count(parent_pid, TcpState::CloseWait), 0);
    assert_eq!(count(child_pid, TcpState::Listen), 1);
    assert_eq!(count(parent_pid, TcpState::Listen), 1);
}

#[test]
fn ipv6_and_ipv4_mapped_sockets() {
    common::require_privileges();
    let loopback6: IpAddr = "::1".parse().unwrap();
    let loopback4: IpAddr = "127.0.0.1".parse().unwrap();

    // Plain IPv6 on ::1.
    let (mut server6, port6, pid6) = server("::1", 2, false);
    let _client6 = client(&mut server6, "::1", port6, 2);
    // A dual-stack listener on :: that accepts IPv4 connections: the kernel keeps them
    // as IPv6 sockets with ::ffff:127.0.0.1 addresses.
    let (mut mapped, mapped_port, mapped_pid) = server("::", 2, false);
    let _client4 = client(&mut mapped, "127.0.0.1", mapped_port, 2);

    let snapshot = snapshot_until(|s| {
        close_wait_on(s, port6).len() == 2 && close_wait_on(s, mapped_port).len() == 2
    });
    for socket in close_wait_on(&snapshot, port6) {
        assert_eq!(holder_pids(socket), [pid6]);
        assert_eq!(socket.socket.family, Family::Ipv6);
        assert_eq!(
            (socket.socket.saddr, socket.socket.daddr),
            (loopback6, loopback6)
        );
    }
    for socket in close_wait_on(&snapshot, mapped_port) {
        assert_eq!(holder_pids(socket), [mapped_pid]);
        assert_eq!(socket.socket.family, Family::Ipv6);
        assert_eq!(
            (socket.socket.saddr, socket.socket.daddr),
            (loopback4, loopback4)
        );
    }

    let json = snapshot_json();
    let v6 = json_close_wait(json_process(&json, pid6), port6);
    assert_eq!(v6.len(), 2);
    assert!(
        v6.iter()
            .all(|s| s["family"] == "ipv6" && s["saddr"] == "::1" && s["daddr"] == "::1"),
        "{v6:?}"
    );
    let mapped = json_close_wait(json_process(&json, mapped_pid), mapped_port);
    assert_eq!(mapped.len(), 2);
    assert!(
        mapped.iter().all(|s| s["family"] == "ipv6"
            && s["saddr"] == "127.0.0.1"
            && s["daddr"] == "127.0.0.1"),
        "{mapped:?}"
    );
}
