//! PRIVILEGED: `portwatch report` and `record`/`--replay` against real processes: a
//! leaker, a churner at a known rate, a healthy keep-alive client, and a real port
//! exhaustion in a network namespace with a tiny port range.
mod common;

use std::process::{Command, Stdio};

use common::{PORTWATCH, finish_report, netns, require_privileges, start_portwatch, workload};
use serde_json::Value;

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
    const LEAKS: u64 = 7;
    // The churner and the healthy client run from before the window until after it, so
    // the churner's true rate in the window is its average rate, which it reports.
    let echo = workload(&["echo-server", "--listen", "127.0.0.1:0"]);
    let echo_addr = format!("127.0.0.1:{}", echo.port);
    let mut churner = workload(&[
        "churn-client",
        "--connect",
        &echo_addr,
        "--rate",
        "100",
        "--duration",
        "8s",
    ]);
    let healthy = workload(&[
        "keepalive-client",
        "--connect",
        &echo_addr,
        "--interval",
        "100ms",
    ]);
    let record = std::env::temp_dir().join(format!("portwatch-test-{}.pwrec", std::process::id()));

    let (portwatch, stderr) = start_portwatch(
        &[
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
        ],
        Stdio::piped(),
    );
    let leaker = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak-all"]);
    let mut feeder = workload(&[
        "leak-client",
        "--connect",
        &format!("127.0.0.1:{}", leaker.port),
        "--count",
        &LEAKS.to_string(),
    ]);
    feeder.wait_line("done").unwrap();
    let (code, stdout) = finish_report(portwatch, stderr);
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
    // "done <made> <seconds> <no_local_port>"
    let done = churner
        .wait_line_timeout("done", std::time::Duration::from_secs(20))
        .unwrap();
    let truth = done[0].parse::<f64>().unwrap() / done[1].parse::<f64>().unwrap();
    assert!(
        (rate - truth).abs() / truth <= 0.10,
        "rate {rate}/s vs the truth {truth}/s"
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
    let replay = common::replay(&record, &["--format", "json", "--close-wait-age", "1s"]);
    std::fs::remove_file(&record).unwrap();
    let replayed = common::json_of_success("the replay", &replay);
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
    // The same counts; only the live run knows the kernel path it ran on.
    let mut live_events = report["events"].clone();
    assert_eq!(
        live_events["collect"], "records",
        "--record collects records"
    );
    live_events["collect"] = Value::Null;
    live_events["state_hook"] = Value::Null;
    assert_eq!(replayed["events"], live_events);
}

#[test]
fn a_tiny_port_range_in_a_namespace_is_reported_as_exhausted() {
    require_privileges();
    let (portwatch, stderr) = start_portwatch(
        &["report", "--format", "json", "--duration", "3s"],
        Stdio::piped(),
    );
    let pid = netns::exhaust_ports_in_a_throwaway_namespace();

    let (_, stdout) = finish_report(portwatch, stderr);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let exhausted: Vec<&Value> = findings_for(&report, pid)
        .into_iter()
        .filter(|f| f["kind"] == "port_exhaustion")
        .collect();
    assert_eq!(exhausted.len(), 1, "{report:#}");
    let finding = exhausted[0];
    assert_eq!(finding["severity"], "critical");
    assert_eq!(finding["failed_connects"], netns::FAILED_CONNECTS);
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
        .args(["demo", "--duration", "10s", "--format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The demo's processes, as it announced them: "<role> (pid N".
    let demo_pid = |role: &str| -> u64 {
        let start = stderr
            .find(&format!("{role} (pid "))
            .unwrap_or_else(|| panic!("{role}: {stderr}"));
        let digits: String = stderr[start + role.len() + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let roles = [
        "leak-server",
        "leak-client",
        "churn-client",
        "keepalive-client",
        "echo-server",
    ];
    let demo_pids: Vec<u64> = roles.iter().map(|role| demo_pid(role)).collect();
    // Other processes on the host may have findings of their own; among the demo's, exactly
    // the leaker and the churner.
    let mut found: Vec<(String, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| demo_pids.contains(&f["pid"].as_u64().unwrap()))
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("close_wait_leak".to_owned(), demo_pid("leak-server")),
            ("connection_churn".to_owned(), demo_pid("churn-client")),
        ],
        "{report:#}"
    );
    let leak = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "close_wait_leak" && f["pid"] == demo_pid("leak-server"))
        .unwrap();
    assert_eq!(
        leak["close_wait"], 25,
        "every connection the feeder made leaked"
    );
}
