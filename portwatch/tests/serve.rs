//! PRIVILEGED: `portwatch serve` against real components.
//!
//! - A real Prometheus (Debian's `prometheus`) scrapes portwatch every second while a
//!   real CLOSE_WAIT leak and a real churner run; the test asks Prometheus's HTTP API for
//!   their series, and evaluates every query of deploy/'s dashboard and alert rules.
//! - promtool checks the rules and runs their unit tests.
//! - Concurrent scrapes agree; garbage and oversized requests get errors and tracing
//!   goes on.
//! - `serve` runs as a non-root user holding only deploy/portwatch.service's
//!   capabilities.
mod common;

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{PORTWATCH, expect_line, require_privileges, workload};
use serde_json::Value;

/// The capabilities deploy/portwatch.service grants (AmbientCapabilities).
const UNIT_CAPS: &str = "+bpf,+perfmon,+dac_read_search,+sys_ptrace";
/// How long Prometheus may take to show what happened: a few 1 s scrapes.
const DEADLINE: Duration = Duration::from_secs(30);
/// The comms portwatch-workload's roles give themselves.
const LEAK_COMM: &str = "leak-server";
const CHURN_COMM: &str = "churn-client";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A child killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `portwatch serve --listen 127.0.0.1:0 <args>` (through `prefix`, e.g.
/// setpriv) and returns it with the address it serves on, once it traces.
#[allow(
    clippy::zombie_processes,
    reason = "`Running` kills and waits for it when dropped"
)]
fn start_serve(prefix: &[&str], args: &[&str]) -> (Running, SocketAddr) {
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(PORTWATCH);
            command
        }
        None => Command::new(PORTWATCH),
    };
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            panic!("portwatch serve exited ({status}) before serving: {said}");
        }
        said.push_str(&line);
        if let Some(rest) = line.strip_prefix("portwatch: serving http://") {
            let address = rest.split('/').next().unwrap().parse().unwrap();
            // Keep draining its stderr so that it never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                let _ = stderr.read_to_string(&mut sink);
            });
            return (Running(child), address);
        }
    }
}

/// One request (HTTP/1.0: no chunked replies to decode); returns the status code and body.
fn request(address: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn get(address: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String) {
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let raw = format!("GET {path} HTTP/1.0\r\nHost: test\r\n{accept}\r\n");
    request(address, raw.as_bytes())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus scraping `target` every second, on loopback, storing in a
/// temporary directory.
struct Prometheus {
    _process: Running,
    address: SocketAddr,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("portwatch-serve-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: portwatch\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let process = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "running prometheus (Debian's `prometheus` package; cargo xtask test installs it)",
            );
        let prometheus = Prometheus {
            _process: Running(process),
            address,
            dir,
        };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if TcpStream::connect(address).is_ok() && get(address, "/-/ready", None).0 == 200 {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An instant query's result vector: each series' labels and value.
    fn query(&self, expr: &str) -> Vec<(HashMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = get(self.address, &path, None);
        assert_eq!(status, 200, "{expr}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        let result = &json["data"]["result"];
        match json["data"]["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .unwrap()
                .iter()
                .map(|series| {
                    let labels = series["metric"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                        .collect();
                    let value = series["value"][1].as_str().unwrap().parse().unwrap();
                    (labels, value)
                })
                .collect(),
            Some("scalar") => vec![(HashMap::new(), result[1].as_str().unwrap().parse().unwrap())],
            other => panic!("{expr}: result type {other:?}"),
        }
    }

    /// Polls `expr` until `done` accepts its result; panics with the last one.
    fn await_query(
        &self,
        expr: &str,
        done: impl Fn(&[(HashMap<String, String>, f64)]) -> bool,
    ) -> Vec<(HashMap<String, String>, f64)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let result = self.query(expr);
            if done(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: still {result:?} after {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The workload portwatch names for `pid` (what /proc says), or `host`.
fn expected_workload(pid: u32) -> String {
    portwatch::commands::startup::workload(pid).unwrap_or_else(|| "host".to_owned())
}

#[test]
fn prometheus_sees_the_leak_and_the_churner() {
    require_privileges();
    let (_serve, address) = start_serve(&[], &["--pid-labels", "1000"]);
    let prometheus = Prometheus::start(address);

    // A leak of exactly 5 CLOSE_WAIT sockets.
    let mut leak = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak", "5"]);
    let (leak_pid, leak_port) = (leak.pid.to_string(), leak.port);
    let mut client = workload(&[
        "leak-client",
        "--connect",
        &format!("127.0.0.1:{leak_port}"),
        "--count",
        "5",
    ]);
    expect_line(&mut client, "done");
    expect_line(&mut leak, "done");

    // A churner: 200 connections, each closed first by the client (TIME_WAIT on its side).
    let echo = workload(&["echo-server", "--listen", "127.0.0.1:0"]);
    let echo_port = echo.port;
    let mut churn = workload(&[
        "churn-client",
        "--connect",
        &format!("127.0.0.1:{echo_port}"),
        "--count",
        "200",
        "--rate",
        "0",
    ]);
    let churn_pid = churn.pid.to_string();
    expect_line(&mut churn, "done");

    // The leak: its workload and comm, exactly 5.
    let leak_workload = expected_workload(leak_pid.parse().unwrap());
    let selector = format!("portwatch_close_wait_sockets{{pid=\"{leak_pid}\"}}");
    let result = prometheus.await_query(&selector, |r| r.len() == 1 && r[0].1 == 5.0);
    assert_eq!(result[0].0["workload"], leak_workload, "{result:?}");
    assert_eq!(result[0].0["comm"], LEAK_COMM, "{result:?}");
    let age = prometheus.query(&format!(
        "portwatch_close_wait_oldest_age_seconds{{pid=\"{leak_pid}\"}}"
    ));
    assert!(age.len() == 1 && age[0].1 >= 0.0, "{age:?}");

    // The churner: 200 TIME_WAIT made by its label set (at least: other tests' workload
    // processes share it), and its destination holds exactly 200 ports.
    let churn_workload = expected_workload(churn_pid.parse().unwrap());
    let made = format!(
        "portwatch_time_wait_created_total{{workload=\"{churn_workload}\",comm=\"{CHURN_COMM}\"}}"
    );
    prometheus.await_query(&made, |r| r.len() == 1 && r[0].1 >= 200.0);
    let destination = format!("127.0.0.1->127.0.0.1:{echo_port}");
    let in_use = format!("portwatch_ephemeral_ports_in_use{{destination=\"{destination}\"}}");
    prometheus.await_query(&in_use, |r| r.len() == 1 && r[0].1 == 200.0);
    let capacity = prometheus.query(&format!(
        "portwatch_ephemeral_ports_capacity{{destination=\"{destination}\"}}"
    ));
    assert!(capacity.len() == 1 && capacity[0].1 > 200.0, "{capacity:?}");
    // Its 200 connections opened (at least: the label set is shared, as above).
    let opened = format!(
        "portwatch_connections_opened_total{{workload=\"{churn_workload}\",comm=\"{CHURN_COMM}\",role=\"active\"}}"
    );
    prometheus.await_query(&opened, |r| r.len() == 1 && r[0].1 >= 200.0);

    // Every query of the dashboard and the rules returns data.
    for (origin, expr) in deploy_queries() {
        // Rates need two scrapes in their range: wait for them, within the deadline.
        let result = prometheus.await_query(&expr, |r| !r.is_empty());
        assert!(!result.is_empty(), "{origin}: `{expr}` returned no data");
    }
}

/// Every query the dashboard's panels and the alert rules make, with where it is from.
/// A rule's threshold would make it return nothing on a healthy host, so a rule is
/// evaluated without its comparison: its left-hand side must return data, which proves
/// each metric, label and `on`/`ignoring` matching it relies on exists.
fn deploy_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            queries.push((format!("panel {:?}", panel["title"]), expr));
        }
    }
    let rules = std::fs::read_to_string(deploy().join("alerts.yml")).unwrap();
    // `# data: EXPR` lines above each rule give the expression without its threshold.
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("# data: ") {
            queries.push(("rule".to_owned(), expr.to_owned()));
        }
    }
    let rule_count = rules.matches("- alert:").count();
    let data_count = queries.iter().filter(|(o, _)| o == "rule").count();
    assert_eq!(rule_count, data_count, "every alert needs a `# data:` line");
    assert!(rule_count >= 5);
    queries
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    require_privileges();
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy().join("alerts.yml"))
        .output()
        .expect("running promtool (Debian's `prometheus` package)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules"])
        .arg(deploy().join("alerts_test.yml"))
        .current_dir(deploy())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&test.stderr)
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    require_privileges();
    // The unit names /usr/local/bin/portwatch; verify against this build's binary.
    let dir = std::env::temp_dir().join(format!("portwatch-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = std::fs::read_to_string(deploy().join("portwatch.service"))
        .unwrap()
        .replace("/usr/local/bin/portwatch", PORTWATCH);
    let path = dir.join("portwatch.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("running systemd-analyze (Debian's `systemd` package)");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Only complaints about the unit itself count: this container runs no systemd.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("portwatch.service"))
        .collect();
    assert!(about_unit.is_empty() && output.status.success(), "{stderr}");
}

#[test]
fn concurrent_scrapes_agree_and_bad_requests_do_not_disturb_tracing() {
    require_privileges();
    let (_serve, address) = start_serve(&[], &["--pid-labels", "1000"]);
    assert_eq!(get(address, "/healthz", None), (200, "ok\n".to_owned()));

    // Garbage, an oversized head, a wrong method, an unknown path: errors.
    assert_eq!(request(address, b"\x16\x03\x01garbage\r\n\r\n").0, 400);
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(request(address, huge.as_bytes()).0, 431);
    assert_eq!(request(address, b"POST /metrics HTTP/1.0\r\n\r\n").0, 405);
    assert_eq!(get(address, "/nope", None).0, 404);

    // A leak that starts now, while 8 threads scrape as fast as they can.
    let scrapers: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let accept = (i % 2 == 1).then_some("application/openmetrics-text");
                    let (status, body) = get(address, "/metrics", accept);
                    assert_eq!(status, 200);
                    assert!(body.contains("portwatch_build_info{version="), "{body}");
                    assert_eq!(body.ends_with("# EOF\n"), accept.is_some());
                }
            })
        })
        .collect();
    let mut leak = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak", "3"]);
    let mut client = workload(&[
        "leak-client",
        "--connect",
        &format!("127.0.0.1:{}", leak.port),
        "--count",
        "3",
    ]);
    expect_line(&mut client, "done");
    expect_line(&mut leak, "done");
    for scraper in scrapers {
        scraper.join().unwrap();
    }
    let line = format!(
        "portwatch_close_wait_sockets{{workload=\"{}\",comm=\"{LEAK_COMM}\",pid=\"{}\"}} 3",
        expected_workload(leak.pid),
        leak.pid
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, body) = get(address, "/metrics", None);
        if body.lines().any(|l| l == line) {
            break;
        }
        assert!(Instant::now() < deadline, "no `{line}` in\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn serve_runs_as_nobody_with_the_units_capabilities() {
    require_privileges();
    let inh = format!("--inh-caps={UNIT_CAPS}");
    let ambient = format!("--ambient-caps={UNIT_CAPS}");
    let prefix = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &inh,
        &ambient,
    ];
    let (_serve, address) = start_serve(&prefix, &[]);
    assert_eq!(get(address, "/healthz", None).0, 200);
    let (status, body) = get(address, "/metrics", None);
    assert_eq!(status, 200);
    assert!(body.contains("portwatch_events_total "), "{body}");
}
