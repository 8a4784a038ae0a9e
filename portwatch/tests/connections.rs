//! PRIVILEGED: `portwatch stream --connections` against real processes: a churn-client
//! making a known number of connections to an echo-server, once with the client closing
//! first and once with the server closing first. Every connection must be one line per
//! side, with the right owner, closer and TIME_WAIT, and a plausible duration.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Finished, expect_line, require_privileges, start_portwatch, workload};
use serde_json::Value;

/// Connections the churner makes: enough that a miscount shows, few enough to be quick.
const CONNECTIONS: u64 = 50;

/// How long the lines of connections already closed may take to come out: portwatch
/// writes them when it drains the ring buffer, within milliseconds.
const LINES_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq)]
enum CloseFirst {
    Client,
    Server,
}

#[test]
fn each_connection_is_one_line_per_side_with_the_client_closing_first() {
    connections_with(CloseFirst::Client);
}

#[test]
fn each_connection_is_one_line_per_side_with_the_server_closing_first() {
    connections_with(CloseFirst::Server);
}

fn connections_with(close_first: CloseFirst) {
    require_privileges();
    let started = Instant::now();
    let mut server_args = vec!["echo-server", "--listen", "127.0.0.1:0"];
    if close_first == CloseFirst::Server {
        // Closes after answering the client's one request; the client waits for it.
        server_args.extend(["--close-after", "1"]);
    }
    let server = workload(&server_args);
    let port = server.port.to_string();

    let (mut portwatch, stderr) = start_portwatch(
        &[
            "stream",
            "--connections",
            "--format",
            "json",
            "--port",
            &port,
            // Only a bound: the test stops it once it has every line.
            "--duration",
            "2m",
        ],
        Stdio::piped(),
    );
    let (line_tx, lines) = mpsc::channel();
    let stdout = portwatch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });

    let mut client = workload(&[
        "churn-client",
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--rate",
        "500",
        "--count",
        &CONNECTIONS.to_string(),
        "--close-first",
        match close_first {
            CloseFirst::Client => "client",
            CloseFirst::Server => "server",
        },
    ]);
    // `done <made> <seconds> <no_local_port>`: made counts the connections that went
    // through every step, the number portwatch must show.
    let done = expect_line(&mut client, "done");
    let made: u64 = done[0].parse().unwrap();
    assert_eq!(made, CONNECTIONS, "the churner's own count: {done:?}");

    // Two lines a connection, one per side. Wait for them (the server's side closes
    // a moment after the client's last `done`), then stop portwatch: anything more
    // would be drained and printed before it exits, and counted below.
    let mut out: Vec<String> = Vec::new();
    let deadline = Instant::now() + LINES_TIMEOUT;
    while (out.len() as u64) < 2 * made {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(_) => panic!(
                "only {} of {} lines within {LINES_TIMEOUT:?}:\n{}",
                out.len(),
                2 * made,
                out.join("\n")
            ),
        }
    }
    // SAFETY: kill has no memory preconditions; the PID is our own child's.
    let sent = unsafe { libc::kill(portwatch.id() as i32, libc::SIGINT) };
    assert_eq!(sent, 0, "stopping portwatch");
    reader.join().unwrap();
    out.extend(lines.try_iter());
    let Finished {
        status,
        stderr: rest,
        ..
    } = common::wait_for_portwatch(portwatch, stderr);
    assert!(status.success(), "portwatch failed: {rest}");
    let run_time = started.elapsed();

    let connections: Vec<Value> = out
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert_eq!(
        connections.len() as u64,
        2 * made,
        "exactly two lines a connection:\n{}",
        out.join("\n")
    );
    let netns = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let side =
        |pid: u32| -> Vec<&Value> { connections.iter().filter(|c| c["pid"] == pid).collect() };
    let (client_side, server_side) = (side(client.pid), side(server.pid));
    assert_eq!(client_side.len() as u64, made, "{}", out.join("\n"));
    assert_eq!(server_side.len() as u64, made, "{}", out.join("\n"));

    let (client_closer, server_closer) = match close_first {
        CloseFirst::Client => ("local", "peer"),
        CloseFirst::Server => ("peer", "local"),
    };
    for (lines, origin, closer) in [
        (&client_side, "active", client_closer),
        (&server_side, "passive", server_closer),
    ] {
        for c in lines {
            assert_eq!(c["origin"], origin, "{c}");
            assert_eq!(c["closer"], closer, "{c}");
            // The side that closed first keeps the TIME_WAIT, and only it.
            assert_eq!(c["time_wait"], closer == "local", "{c}");
            let closed_from = if closer == "local" {
                ["FIN_WAIT2", "CLOSING"].as_slice()
            } else {
                ["LAST_ACK"].as_slice()
            };
            assert!(
                closed_from.contains(&c["closed_from"].as_str().unwrap()),
                "{c}"
            );
            assert_eq!(c["opened"], "seen", "{c}");
            let duration = c["duration_ns"].as_u64().unwrap();
            assert!(
                duration > 0 && duration < run_time.as_nanos() as u64,
                "duration {duration} ns not within the test's {run_time:?}: {c}"
            );
            assert_eq!(c["netns"], netns, "{c}");
        }
    }
    // The server runs on; the churner may have exited before its last socket finished
    // closing (it waits for no FIN when it closes first).
    assert!(server_side.iter().all(|c| c["owner_alive"] == true));
    // Both ends of each connection: the client's local port is the server's remote one.
    let mut client_ports: Vec<u64> = client_side
        .iter()
        .map(|c| {
            assert_eq!(c["dport"], server.port, "{c}");
            c["sport"].as_u64().unwrap()
        })
        .collect();
    let mut server_ports: Vec<u64> = server_side
        .iter()
        .map(|c| {
            assert_eq!(c["sport"], server.port, "{c}");
            c["dport"].as_u64().unwrap()
        })
        .collect();
    client_ports.sort_unstable();
    server_ports.sort_unstable();
    assert_eq!(client_ports, server_ports);
    assert!(client_side.iter().all(|c| c["comm"] == "churn-client"));

    let summary = rest.lines().last().unwrap_or_default();
    assert!(
        summary.contains(&format!("{} connections shown", 2 * made))
            && summary.contains(", 0 never established")
            && summary.contains(" 0 dropped"),
        "{rest}"
    );
}
