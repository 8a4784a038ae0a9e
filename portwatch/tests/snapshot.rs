//! `portwatch snapshot` against real processes. PRIVILEGED: it runs as root so that /proc
//! shows every process's descriptors (it loads no eBPF). Separate python3 processes leak
//! sockets in CLOSE_WAIT; the snapshot must name the process that holds each one.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::unix::process::CommandExt as _,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use portwatch::{
    event::Family,
    sockets::snapshot::{self, Snapshot, SnapshotSocket, group_by_process},
    tcp_state::TcpState,
};
use serde_json::Value;

const PORTWATCH: &str = env!("CARGO_BIN_EXE_portwatch");

/// Listens on argv[1], prints its port and the PID of the process that accepts, accepts
/// argv[2] connections, prints "accepted" and never closes them. With argv[3] == "fork",
/// the parent forks a child that accepts while the parent keeps only the listener, as
/// pre-fork servers do.
const SERVER: &str = r#"
import os, socket, sys, time
host, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
listener = socket.socket(family, socket.SOCK_STREAM)
if family == socket.AF_INET6:
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
listener.bind((host, 0))
listener.listen(16)
print(listener.getsockname()[1], flush=True)
if mode == "fork" and os.fork() != 0:
    time.sleep(3600)
    sys.exit(0)
print(os.getpid(), flush=True)
leaked = [listener.accept()[0] for _ in range(count)]
print("accepted", flush=True)
time.sleep(3600)
"#;

/// Connects argv[3] times to argv[1]:argv[2], closes every connection, prints "closed"
/// and stays alive, so the snapshot can check it is not blamed for the server's sockets.
const CLIENT: &str = r#"
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
connections = [socket.create_connection((host, port)) for _ in range(count)]
for connection in connections:
    connection.close()
print("closed", flush=True)
time.sleep(3600)
"#;

/// A python3 process in its own process group, killed with the whole group (a forked
/// child included) when dropped, also when a test fails.
struct Spawned {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Spawned {
    fn python(script: &str, args: &[&str]) -> Spawned {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("running python3");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Spawned { child, stdout }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the script prints; fails the test if it exited instead.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the python3 script exited early");
        line.trim().to_owned()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: kill has no memory-safety preconditions; the group is the one this
        // test created for its child (process_group(0) made the child its leader).
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A server that will leak `count` connections on `host`: (server, port, PID of the
/// process that accepts).
fn server(host: &str, count: usize, mode: &str) -> (Spawned, u16, u32) {
    let mut server = Spawned::python(SERVER, &[host, &count.to_string(), mode]);
    let port = server.line().parse().unwrap();
    let acceptor = server.line().parse().unwrap();
    (server, port, acceptor)
}

/// Connects to `server` and closes `count` times; returns once every connection is
/// closed by the client and accepted by the server. Until the server accepts, a
/// connection sits in the listener's queue with no file, so no process holds it yet.
fn client(server: &mut Spawned, host: &str, port: u16, count: usize) -> Spawned {
    let mut client = Spawned::python(CLIENT, &[host, &port.to_string(), &count.to_string()]);
    assert_eq!(client.line(), "closed");
    assert_eq!(server.line(), "accepted");
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
        let snapshot = snapshot::take().unwrap_or_else(|err| panic!("snapshot: {err:#}"));
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
    let output = Command::new(PORTWATCH)
        .args(["snapshot", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "portwatch snapshot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
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
    let (mut server, port, server_pid) = server("127.0.0.1", 3, "single");
    assert_eq!(server_pid, server.pid());
    let client = client(&mut server, "127.0.0.1", port, 3);

    let snapshot = snapshot_until(|s| close_wait_on(s, port).len() == 3);
    for socket in close_wait_on(&snapshot, port) {
        assert_eq!(holder_pids(socket), [server_pid], "{socket:#?}");
        assert_eq!(socket.holders[0].comm, "python3");
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
            .all(|g| g.process.id.pid != client.pid()),
        "the client closed everything: it holds nothing"
    );

    // The binary says the same, and nothing else holds the server's CLOSE_WAIT sockets.
    let json = snapshot_json();
    let server_json = json_process(&json, server_pid);
    assert_eq!(server_json["comm"], "python3");
    assert_eq!(
        server_json["start_time"],
        group.process.id.start_time().unwrap()
    );
    assert_eq!(server_json["states"]["CLOSE_WAIT"], 3);
    assert_eq!(json_close_wait(server_json, port).len(), 3);
    for other in json["processes"].as_array().unwrap() {
        assert_ne!(other["pid"], client.pid(), "{other}");
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
        line.contains("python3") && line.contains("CLOSE_WAIT 3 (≥ "),
        "{line}"
    );
}

#[test]
fn pre_fork_child_holds_the_socket_it_accepted() {
    common::require_privileges();
    let (mut server, port, child_pid) = server("127.0.0.1", 1, "fork");
    let parent_pid = server.pid();
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
    let (mut server6, port6, pid6) = server("::1", 2, "single");
    let _client6 = client(&mut server6, "::1", port6, 2);
    // A dual-stack listener on :: that accepts IPv4 connections: the kernel keeps them
    // as IPv6 sockets with ::ffff:127.0.0.1 addresses.
    let (mut mapped, mapped_port, mapped_pid) = server("::", 2, "single");
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
