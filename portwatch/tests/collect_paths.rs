//! PRIVILEGED: the counting path (`report`'s default) and the per-record path (`report
//! --collect records`, `stream`'s) say the same about one workload of real processes:
//! a CLOSE_WAIT leaker, a churner, a destination out of ports in a namespace, an
//! owner that exits with its connection open, and a connect that is refused. Both reports run at once over the same
//! window, on the BTF-typed hook; a third, on the classic hook, keeps the fallback
//! tested.
mod common;

use std::{collections::BTreeSet, process::Stdio};

use common::{finish_report, netns, require_privileges, start_portwatch, workload};
use serde_json::Value;

const LEAKS: u64 = 6;
const CHURNS: u64 = 300;

fn start_report(
    collect: &str,
    hook: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
) {
    start_portwatch(
        &[
            "report",
            "--format",
            "json",
            "--duration",
            "1h",
            "--close-wait-age",
            "1s",
            "--collect",
            collect,
            "--state-hook",
            hook,
        ],
        Stdio::piped(),
    )
}

fn stop(child: &std::process::Child) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
}

/// The process entry of `pid` in a JSON report.
fn process(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("no process {pid} in {report:#}"))
}

fn findings(report: &Value) -> BTreeSet<(String, u64)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["pid"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The numbers both paths must agree on exactly, for one process.
fn counts(report: &Value, pid: u32) -> Vec<(&'static str, Value)> {
    let p = process(report, pid);
    [
        "connections_opened",
        "connections_closed",
        "opened_active",
        "opened_passive",
        "closed_first",
        "peer_closed_first",
        "time_wait_created",
        "failed_connects",
    ]
    .into_iter()
    .map(|field| (field, p[field].clone()))
    .collect()
}

/// Two reports' counts for `pid` are equal, unless the kernel skipped runs of their
/// programs (it does when one eBPF program interrupts another on a CPU, which three
/// tracers at once make likely; each report counts its own): then they differ by at
/// most what was skipped.
fn agree(a: &Value, b: &Value, pid: u32) {
    let skipped = |report: &Value| report["events"]["skipped"].as_u64().unwrap_or(0);
    let slack = skipped(a) + skipped(b);
    for ((field, left), (_, right)) in counts(a, pid).into_iter().zip(counts(b, pid)) {
        let (left, right) = (left.as_u64().unwrap(), right.as_u64().unwrap());
        assert!(
            left.abs_diff(right) <= slack,
            "pid {pid} {field}: {left} and {right}, {slack} runs skipped\n{:?}\n{:?}",
            counts(a, pid),
            counts(b, pid)
        );
    }
}

/// A process (bash, through its /dev/tcp) whose connect() is refused: toward a port
/// just bound and closed again, so nothing listens there. Returns its PID.
fn connect_refused() -> u32 {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("refused"),
        "bash's connect to {port}: {}: {stderr}",
        output.status
    );
    pid
}

#[test]
fn counts_and_records_give_the_same_report() {
    require_privileges();
    let (counting, counting_err) = start_report("counts", "auto");
    let (records, records_err) = start_report("records", "auto");
    let (classic, classic_err) = start_report("counts", "classic");

    // A leak: every accepted connection stays in CLOSE_WAIT.
    let leaker = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak-all"]);
    let leak_addr = format!("127.0.0.1:{}", leaker.port);
    let mut feeder = workload(&[
        "leak-client",
        "--connect",
        &leak_addr,
        "--count",
        &LEAKS.to_string(),
    ]);
    feeder.wait_line("done").unwrap();
    // An owner that exits with its connection to the leaker open.
    let mut quitter = workload(&["connect-and-exit", "--connect", &leak_addr]);
    let quitter_pid = quitter.pid;
    quitter
        .wait_success(std::time::Duration::from_secs(10))
        .unwrap();

    // A connect refused: a port bound, no connection made, nothing held.
    let refused_pid = connect_refused();

    // Churn: short connections, this side closing first (TIME_WAIT).
    let echo = workload(&["echo-server", "--listen", "127.0.0.1:0"]);
    let mut churner = workload(&[
        "churn-client",
        "--connect",
        &format!("127.0.0.1:{}", echo.port),
        "--rate",
        "150",
        "--count",
        &CHURNS.to_string(),
    ]);
    churner.wait_line("done").unwrap();

    // A destination out of ports, in a namespace of its own with 4 of them.
    let exhauster = netns::exhaust_ports_in_a_throwaway_namespace();

    // Past the close-wait age, so the leak is a finding on both.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stop(&counting);
    stop(&records);
    stop(&classic);
    let reports: Vec<Value> = [
        (counting, counting_err),
        (records, records_err),
        (classic, classic_err),
    ]
    .into_iter()
    .map(|(child, stderr)| {
        let (_, stdout) = finish_report(child, stderr);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    })
    .collect();
    let [counted, recorded, classic] = &reports[..] else {
        unreachable!()
    };

    // Each says which path it ran on.
    let path = |report: &Value| {
        (
            report["events"]["collect"].clone(),
            report["events"]["state_hook"].clone(),
        )
    };
    assert_eq!(path(counted), ("counts".into(), "btf".into()));
    assert_eq!(path(recorded), ("records".into(), "btf".into()));
    assert_eq!(path(classic), ("counts".into(), "classic".into()));
    // What each path is: the counting path sent a handful of records, not thousands.
    assert!(
        counted["events"]["seen"].as_u64().unwrap()
            < recorded["events"]["seen"].as_u64().unwrap() / 10,
        "counts: {}, records: {}",
        counted["events"],
        recorded["events"]
    );
    for report in &reports {
        assert_eq!(report["events"]["dropped"], 0, "{report:#}");
    }

    let expected: BTreeSet<(String, u64)> = [
        ("close_wait_leak".to_owned(), u64::from(leaker.pid)),
        ("connection_churn".to_owned(), u64::from(churner.pid)),
        ("port_exhaustion".to_owned(), u64::from(exhauster)),
    ]
    .into();
    for report in &reports {
        assert!(
            findings(report).is_superset(&expected),
            "{:?} lacks some of {expected:?}",
            findings(report)
        );
    }
    assert_eq!(findings(counted), findings(recorded));
    assert_eq!(findings(classic), findings(recorded));

    let leak = |report: &Value| -> Value {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "close_wait_leak")
            .unwrap()["close_wait"]
            .clone()
    };
    assert_eq!(leak(counted), LEAKS + 1);
    assert_eq!(leak(recorded), LEAKS + 1);
    assert_eq!(leak(classic), LEAKS + 1);

    for pid in [
        leaker.pid,
        churner.pid,
        echo.pid,
        exhauster,
        feeder.pid,
        quitter_pid,
    ] {
        agree(counted, recorded, pid);
        agree(classic, recorded, pid);
    }
    assert_eq!(process(recorded, churner.pid)["connections_opened"], CHURNS);
    assert_eq!(process(recorded, churner.pid)["time_wait_created"], CHURNS);
    assert_eq!(
        process(counted, exhauster)["failed_connects"],
        netns::FAILED_CONNECTS
    );
    // Neither path shows the refused process as a row of zeros.
    for report in &reports {
        let processes = report["processes"].as_array().unwrap();
        let listed = processes.iter().any(|p| p["pid"] == refused_pid);
        assert!(!listed, "{refused_pid} listed in {report:#}");
    }
    // The quitter's connection outlived it: both paths know it exited.
    assert_eq!(process(counted, quitter_pid)["alive"], false);
    assert_eq!(process(recorded, quitter_pid)["alive"], false);
}
