//! PRIVILEGED: bounded memory. Real churn through `portwatch report` with small limits,
//! many times more connections, processes and destinations than the limits: its RSS
//! and the kernel's socket table stay flat, evictions are counted, and the leaked
//! CLOSE_WAIT sockets survive them all.
//!
//! CI runs it for 40 s. `PORTWATCH_SOAK_SECS=600` (or `cargo xtask soak --minutes 10`)
//! runs the same for longer; not run by CI.
mod common;

use std::{
    io::BufReader,
    process::{Child, ChildStderr, Command, Stdio},
    time::{Duration, Instant},
};

use common::{require_privileges, start_portwatch, wait_for_portwatch, workload};
use serde_json::Value;

/// The limits the soak runs under: small, so the eviction paths run all the time.
const MAX_SOCKETS: u64 = 256;
const MAX_PROCESSES: u64 = 8;
const MAX_DESTINATIONS: u64 = 4;
/// Leaked sockets that must survive every eviction.
const LEAKS: u64 = 20;
/// Churn clients, each toward its own loopback address: one destination each.
const CHURNERS: u32 = 6;
const CHURN_RATE: u32 = 300;
/// How much RSS may grow from the end of warm-up to the end: allocator noise, not a
/// leak (a leak at these rates grows by megabytes a minute).
const RSS_SLACK_KIB: u64 = 4096;

fn soak_secs() -> u64 {
    match std::env::var("PORTWATCH_SOAK_SECS") {
        Ok(secs) => secs
            .parse()
            .unwrap_or_else(|_| panic!("PORTWATCH_SOAK_SECS={secs:?} is not a number of seconds")),
        Err(_) => 40,
    }
}

/// One sample of portwatch's memory and the kernel's table.
#[derive(Debug)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    /// Entries in portwatch's SOCKETS map; None when this sample skipped the dump.
    sockets_map: Option<u64>,
}

#[test]
fn memory_and_map_use_stay_flat_under_churn_past_every_limit() {
    require_privileges();
    let secs = soak_secs();
    let (portwatch, stderr) = start_portwatch(
        &[
            "report",
            "--format",
            "json",
            "--duration",
            &format!("{secs}s"),
            "--max-sockets",
            &MAX_SOCKETS.to_string(),
            "--max-processes",
            &MAX_PROCESSES.to_string(),
            "--max-destinations",
            &MAX_DESTINATIONS.to_string(),
            // Every socket through portwatch's own table, so that its limit is pushed
            // too: on the counting path userspace holds only CLOSE_WAIT sockets.
            "--collect",
            "records",
        ],
        Stdio::piped(),
    );
    let pid = portwatch.id();
    let sockets_map = sockets_map_id(pid);

    // First the leak, while the kernel's table has room: its owner is then certain.
    let mut leaker = workload(&[
        "leak-server",
        "--listen",
        "127.0.0.1:0",
        "--leak",
        &LEAKS.to_string(),
    ]);
    let mut feeder = workload(&[
        "leak-client",
        "--connect",
        &format!("127.0.0.1:{}", leaker.port),
        "--count",
        &LEAKS.to_string(),
    ]);
    common::expect_line(&mut feeder, "done");
    // "done N": every one of them read EOF, so all are in CLOSE_WAIT.
    common::expect_line(&mut leaker, "done");
    // 200 held connections (400 live sockets, more than MAX_SOCKETS) replaced 50 times a
    // second: the table is full all the time, of sockets that come and go.
    let holder = workload(&["hold-server", "--listen", "127.0.0.1:0"]);
    let mut held = workload(&[
        "hold-client",
        "--connect",
        &format!("127.0.0.1:{}", holder.port),
        "--count",
        "200",
        "--churn-rate",
        "50",
    ]);
    common::expect_line(&mut held, "held");
    // Short connections toward CHURNERS destinations, closed first: TIME_WAIT groups
    // (one per destination, owner and second) past MAX_SOCKETS within the first minute,
    // destinations past MAX_DESTINATIONS, processes past MAX_PROCESSES.
    let echo = workload(&["echo-server", "--listen", "0.0.0.0:0"]);
    let churn_secs = secs.saturating_sub(5).max(5);
    let mut churners: Vec<_> = (0..CHURNERS)
        .map(|i| {
            workload(&[
                "churn-client",
                "--connect",
                &format!("127.0.0.{}:{}", i + 2, echo.port),
                "--rate",
                &CHURN_RATE.to_string(),
                "--duration",
                &format!("{churn_secs}s"),
            ])
        })
        .collect();

    let (portwatch, samples, stderr) = sample_until_exit(portwatch, stderr, sockets_map);
    let finished = wait_for_portwatch(portwatch, stderr);
    assert!(
        finished.status.success(),
        "portwatch failed ({}): {}",
        finished.status,
        finished.stderr
    );
    let report: Value = serde_json::from_str(&finished.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", finished.stdout));

    // "done <made> <seconds> <no_local_port>"
    let made: u64 = churners
        .iter_mut()
        .map(|churner| {
            let done = churner
                .wait_line_timeout("done", Duration::from_secs(30))
                .unwrap();
            done[0].parse::<u64>().unwrap()
        })
        .sum();

    for sample in &samples {
        eprintln!(
            "soak: {:6.1} s  RSS {:6} KiB  SOCKETS map {}",
            sample.at_s,
            sample.rss_kib,
            sample
                .sockets_map
                .map_or_else(|| "-".to_owned(), |n| n.to_string())
        );
    }
    eprintln!(
        "soak: {made} connections by the churners in {churn_secs} s; events {}",
        report["events"]
    );

    // The churn was many times the limits.
    assert!(made >= 50 * MAX_SOCKETS, "only {made} connections");

    // RSS flat after warm-up (the first quarter).
    assert!(samples.len() >= 8, "{samples:?}");
    let warm = samples
        .iter()
        .find(|s| s.at_s >= secs as f64 / 4.0)
        .expect("a sample after warm-up");
    let peak_after = samples
        .iter()
        .filter(|s| s.at_s >= warm.at_s)
        .map(|s| s.rss_kib)
        .max()
        .unwrap();
    assert!(
        peak_after <= warm.rss_kib + RSS_SLACK_KIB,
        "RSS grew from {} KiB after warm-up to {peak_after} KiB: {samples:#?}",
        warm.rss_kib
    );
    let events = &report["events"];
    // The kernel's table stayed at its limit (it counts the rest as untracked). A dump
    // is not a snapshot: sockets that come and go while it walks the map are seen too,
    // hence the slack.
    let map_counts: Vec<u64> = samples.iter().filter_map(|s| s.sockets_map).collect();
    assert!(map_counts.len() >= 3, "{samples:?}");
    assert!(
        map_counts
            .iter()
            .all(|&n| n <= MAX_SOCKETS + MAX_SOCKETS / 4),
        "{map_counts:?}"
    );
    assert!(events["untracked"].as_u64().unwrap() > 0, "{events}");

    // Every limit was reached, and every eviction counted.
    let evicted = &events["evicted"];
    for what in ["sockets", "time_wait", "processes", "destinations"] {
        assert!(
            evicted[what].as_u64().unwrap() > 0,
            "no {what} evicted: {events}"
        );
    }
    assert_eq!(events["incomplete"], true, "{events}");
    // And the leaked CLOSE_WAIT sockets, the last thing evicted, are all there.
    let leak: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pid"] == leaker.pid && f["kind"] == "close_wait_leak")
        .collect();
    assert_eq!(leak.len(), 1, "{:#}", report["findings"]);
    assert_eq!(leak[0]["close_wait"], LEAKS);
}

/// Samples portwatch's RSS every second and its SOCKETS map every fifth, until it exits.
fn sample_until_exit(
    mut portwatch: Child,
    stderr: BufReader<ChildStderr>,
    sockets_map: u32,
) -> (Child, Vec<Sample>, BufReader<ChildStderr>) {
    let pid = portwatch.id();
    let start = Instant::now();
    let mut samples = Vec::new();
    for tick in 0u64.. {
        if portwatch.try_wait().unwrap().is_some() {
            break;
        }
        let Some(rss_kib) = rss_kib(pid) else {
            break; // exited between the two looks
        };
        let sockets = (tick % 5 == 0).then(|| map_entries(sockets_map)).flatten();
        samples.push(Sample {
            at_s: start.elapsed().as_secs_f64(),
            rss_kib,
            sockets_map: sockets,
        });
        // Periodic sampling, not waiting for a condition.
        std::thread::sleep(Duration::from_secs(1));
    }
    (portwatch, samples, stderr)
}

/// VmRSS of `pid`, from /proc/<pid>/status; None once it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The id of the SOCKETS map `pid` holds: its map fds' ids (from /proc/<pid>/fdinfo),
/// named by bpftool. Other portwatch instances (other tests) hold maps of the same
/// name; only this one's fds are looked at.
fn sockets_map_id(pid: u32) -> u32 {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue;
        };
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse::<u32>().ok())
        {
            ids.push(id);
        }
    }
    for id in &ids {
        let shown = bpftool(&["map", "show", "id", &id.to_string()]);
        if shown["name"] == "SOCKETS" {
            assert_eq!(shown["max_entries"], MAX_SOCKETS, "{shown}");
            return *id;
        }
    }
    panic!("portwatch (pid {pid}) holds no SOCKETS map among maps {ids:?}");
}

/// How many entries map `id` holds now; None when it is gone (portwatch exited).
fn map_entries(id: u32) -> Option<u64> {
    let output = Command::new("bpftool")
        .args(["--json", "map", "dump", "id", &id.to_string()])
        .output()
        .expect("running bpftool (cargo xtask setup installs it)");
    if !output.status.success() {
        return None;
    }
    let dump: Value = serde_json::from_slice(&output.stdout).ok()?;
    // A dump walks the map with get_next_key while the kernel inserts and deletes:
    // when the key it stands on is deleted it starts over, and lists some entries
    // twice. Count each key once.
    let keys: std::collections::HashSet<String> = dump
        .as_array()?
        .iter()
        .map(|entry| entry["key"].to_string())
        .collect();
    Some(keys.len() as u64)
}

fn bpftool(args: &[&str]) -> Value {
    let output = Command::new("bpftool")
        .arg("--json")
        .args(args)
        .output()
        .expect("running bpftool (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
