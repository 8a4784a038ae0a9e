//! PRIVILEGED: `portwatch report` and `record`/`--replay` against real processes: a
//! leaker, a churner at a known rate, a healthy keep-alive client, and a real port
//! exhaustion in a network namespace with a tiny port range.
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, Stdio},
};

use common::require_privileges;
use portwatch::actors::ActorProcess;
use serde_json::Value;

const PORTWATCH: &str = env!("CARGO_BIN_EXE_portwatch");

/// Starts `portwatch <args>` and waits until it says it is tracing.
#[allow(
    clippy::zombie_processes,
    reason = "the caller waits for it in finish()"
)]
fn start_portwatch(args: &[&str]) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child = Command::new(PORTWATCH)
        .args(args)
        .stdout(Stdio::piped())
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
        if line.contains("tracing") || line.contains("recording") {
            return (child, stderr);
        }
    }
}

/// Waits for portwatch to finish; returns its exit code and stdout.
fn finish(mut child: Child, mut stderr: BufReader<std::process::ChildStderr>) -> (i32, String) {
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    let code = status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 2,
        "portwatch failed ({status}): {rest}"
    );
    (code, stdout)
}

fn actor(args: &[&str]) -> ActorProcess {
    ActorProcess::spawn(Path::new(PORTWATCH), args).unwrap()
}

fn findings_for(report: &Value, pid: u32) -> Vec<&Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pid"] == pid)
        .collect()
}

#[test]
fn report_names_the_leaker_and_the_churner_and_not_the_healthy_client() {
    require_privileges();
    const CHURN_RATE: f64 = 100.0;
    const LEAKS: u64 = 7;
    // The churner and the healthy client run for the whole window, so the churner's
    // true rate in the window is its paced rate.
    let echo = actor(&["echo-server", "--listen", "127.0.0.1:0"]);
    let echo_addr = format!("127.0.0.1:{}", echo.port);
    let churner = actor(&["churn-client", "--connect", &echo_addr, "--rate", "100"]);
    let healthy = actor(&[
        "keepalive-client",
        "--connect",
        &echo_addr,
        "--interval",
        "100ms",
    ]);
    let record = std::env::temp_dir().join(format!("portwatch-test-{}.pwrec", std::process::id()));

    let (portwatch, stderr) = start_portwatch(&[
        "report",
        "--format",
        "json",
        "--duration",
        "5s",
        "--close-wait-age",
        "1s",
        "--fail-on",
        "warning",
        "--record",
        record.to_str().unwrap(),
    ]);
    let leaker = actor(&["leak-server", "--listen", "127.0.0.1:0", "--leak-all"]);
    let mut feeder = actor(&[
        "leak-client",
        "--connect",
        &format!("127.0.0.1:{}", leaker.port),
        "--count",
        &LEAKS.to_string(),
    ]);
    feeder.wait_line("done").unwrap();
    let (code, stdout) = finish(portwatch, stderr);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(code, 2, "--fail-on warning with findings exits 2");

    let leak = findings_for(&report, leaker.pid);
    assert_eq!(leak.len(), 1, "{report:#}");
    assert_eq!(leak[0]["kind"], "close_wait_leak");
    assert_eq!(leak[0]["close_wait"], LEAKS);
    assert!(leak[0]["oldest_age_s"].as_f64().unwrap() >= 1.0);

    let churn = findings_for(&report, churner.pid);
    assert_eq!(churn.len(), 1, "{report:#}");
    assert_eq!(churn[0]["kind"], "connection_churn");
    let rate = churn[0]["rate_per_s"].as_f64().unwrap();
    assert!(
        (rate - CHURN_RATE).abs() / CHURN_RATE <= 0.10,
        "rate {rate} vs {CHURN_RATE}"
    );
    assert!(churn[0]["median_lifetime_ms"].as_f64().unwrap() < 1000.0);
    assert_eq!(churn[0]["destinations"][0]["dport"], echo.port);

    for (who, pid) in [
        ("healthy client", healthy.pid),
        ("echo server", echo.pid),
        ("feeder", feeder.pid),
    ] {
        assert!(
            findings_for(&report, pid).is_empty(),
            "no finding for the {who}: {report:#}"
        );
    }
    let processes = report["processes"].as_array().unwrap();
    let healthy_row = processes
        .iter()
        .find(|p| p["pid"] == healthy.pid)
        .expect("healthy listed");
    assert_eq!(healthy_row["states"]["ESTABLISHED"], 1);
    assert_eq!(report["events"]["dropped"], 0);

    // The same window, replayed from its recording without the kernel.
    let replay = Command::new(PORTWATCH)
        .args([
            "report",
            "--format",
            "json",
            "--close-wait-age",
            "1s",
            "--replay",
        ])
        .arg(&record)
        .output()
        .unwrap();
    std::fs::remove_file(&record).unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let replayed: Value = serde_json::from_slice(&replay.stdout).unwrap();
    let strip = |report: &Value| {
        // Workloads are looked up from /proc when reporting; the rest must match.
        let mut findings = report["findings"].clone();
        for finding in findings.as_array_mut().unwrap() {
            finding["workload"] = Value::Null;
        }
        findings
    };
    assert_eq!(
        strip(&replayed),
        strip(&report),
        "replay gives the live run's findings"
    );
    assert_eq!(replayed["events"], report["events"]);
}

#[test]
fn a_tiny_port_range_in_a_namespace_is_reported_as_exhausted() {
    require_privileges();
    let (portwatch, stderr) = start_portwatch(&["report", "--format", "json", "--duration", "3s"]);
    // A network namespace with 4 local ports: the fifth connection to one destination
    // fails with EADDRNOTAVAIL.
    let script = r#"
ip link set lo up
sysctl -qw net.ipv4.ip_local_port_range="40000 40003"
exec python3 -c '
import os, socket
server = socket.socket(); server.bind(("127.0.0.1", 5000)); server.listen(64)
held, failed = [], 0
for _ in range(8):
    try:
        held.append(socket.create_connection(("127.0.0.1", 5000)))
    except OSError as e:
        assert e.errno == 99, e
        failed += 1
print("pid", os.getpid(), "failed", failed, flush=True)
'
"#;
    let output = Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8(output.stdout).unwrap();
    let words: Vec<&str> = said.split_whitespace().collect();
    let (pid, failed): (u32, u64) = (words[1].parse().unwrap(), words[3].parse().unwrap());
    assert_eq!(failed, 4, "the namespace ran out of ports: {said}");

    let (_, stdout) = finish(portwatch, stderr);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let exhausted: Vec<&Value> = findings_for(&report, pid)
        .into_iter()
        .filter(|f| f["kind"] == "port_exhaustion")
        .collect();
    assert_eq!(exhausted.len(), 1, "{report:#}");
    let finding = exhausted[0];
    assert_eq!(finding["severity"], "critical");
    assert_eq!(finding["failed_connects"], failed);
    assert_eq!(finding["exhaustion_eta_s"], 0.0);
    assert_eq!(
        (finding["daddr"].as_str(), finding["dport"].as_u64()),
        (Some("127.0.0.1"), Some(5000))
    );
    assert!(
        finding["summary"]
            .as_str()
            .unwrap()
            .contains("EADDRNOTAVAIL")
    );
}

#[test]
fn demo_names_exactly_the_leaker_and_the_churner() {
    require_privileges();
    let output = Command::new(PORTWATCH)
        .args(["demo", "--duration", "7s", "--format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut found: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["comm"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("close_wait_leak".to_owned(), "leak-server".to_owned()),
            ("connection_churn".to_owned(), "churn-client".to_owned()),
        ],
        "{report:#}"
    );
    // The pids in the findings are the ones the demo said it started.
    for finding in report["findings"].as_array().unwrap() {
        let started = format!(
            "{} (pid {}",
            finding["comm"].as_str().unwrap(),
            finding["pid"]
        );
        assert!(stderr.contains(&started), "{started} in {stderr}");
    }
    let leak = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "close_wait_leak")
        .unwrap();
    assert_eq!(
        leak["close_wait"], 25,
        "every connection the feeder made leaked"
    );
}
