//! Privileged: containers' network namespaces. Each test makes its own namespaces with
//! `ip netns add` (unique names per test process, deleted on drop), runs the workload
//! processes inside them with `ip netns exec`, and checks portwatch tells same-port
//! servers of different namespaces apart and counts each namespace's own port budget.
mod common;

use std::process::{Command, Stdio};

use common::{netns::NetNs, *};
use portwatch_workload::Launcher;
use serde_json::Value;

fn report_json(
    child: std::process::Child,
    stderr: std::io::BufReader<std::process::ChildStderr>,
) -> Value {
    serde_json::from_str(&common::finish_report(child, stderr).1).unwrap()
}

fn process_row(report: &Value, pid: u32) -> Option<&Value> {
    report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
}

fn count(row: Option<&Value>, field: &str) -> u64 {
    row.and_then(|row| row[field].as_u64()).unwrap_or(0)
}

fn close_waits(row: Option<&Value>) -> u64 {
    row.and_then(|row| row["states"]["CLOSE_WAIT"].as_u64())
        .unwrap_or(0)
}

/// The scenario: two namespaces, a server on 127.0.0.1:8080 in each, both
/// started before portwatch; one leaks every connection, the other serves a churning
/// client. Connections are made both before portwatch attaches and after.
#[test]
fn same_port_servers_in_two_namespaces_are_told_apart() {
    require_privileges();
    const CHURN: u64 = 150;
    let (leaky_ns, healthy_ns) = (NetNs::new(), NetNs::new());
    let leaker = leaky_ns.workload(&["leak-server", "--listen", "127.0.0.1:8080", "--greet"]);
    let echo = healthy_ns.workload(&["echo-server", "--listen", "127.0.0.1:8080"]);
    let connect = ["--connect", "127.0.0.1:8080"];
    // Before portwatch: 3 leaked connections, 20 served ones.
    let mut early = leaky_ns.workload(&[
        "leak-client",
        connect[0],
        connect[1],
        "--count",
        "3",
        "--await-greeting",
    ]);
    expect_line(&mut early, "done");
    let mut early_churn = healthy_ns.workload(&[
        "churn-client",
        connect[0],
        connect[1],
        "--rate",
        "0",
        "--count",
        "20",
    ]);
    expect_line(&mut early_churn, "done");

    // The whole host, and each namespace alone (`--netns NAME`): pid 0 collects every
    // unknown owner on the host (other processes' too), so only a namespace's own
    // report can show none of its sockets went there.
    let reports = [None, Some(&leaky_ns.name), Some(&healthy_ns.name)].map(|netns| {
        let mut args = vec![
            "report",
            "--format",
            "json",
            "--duration",
            "5s",
            "--close-wait-age",
            "1s",
        ];
        if let Some(name) = netns {
            args.extend(["--netns", name.as_str()]);
        }
        start_portwatch(&args, Stdio::piped())
    });
    let mut late = leaky_ns.workload(&[
        "leak-client",
        connect[0],
        connect[1],
        "--count",
        "3",
        "--await-greeting",
    ]);
    expect_line(&mut late, "done");
    let churn_count = CHURN.to_string();
    let mut churn = healthy_ns.workload(&[
        "churn-client",
        connect[0],
        connect[1],
        "--rate",
        "0",
        "--count",
        &churn_count,
    ]);
    expect_line(&mut churn, "done");
    let [report, leaky_only, healthy_only] =
        reports.map(|(child, stderr)| report_json(child, stderr));

    // Exact, unless the kernel skipped runs of portwatch's programs (another eBPF
    // program was running on that CPU: on a busy host, or with three portwatches
    // attached): an event it never produced can only lower a count, by at most that many.
    let near = |report: &Value, seen: u64, expected: u64| {
        let skipped = report["events"]["skipped"].as_u64().unwrap_or(0);
        assert!(
            seen <= expected && seen + skipped >= expected,
            "{seen}, expected {expected} ({skipped} skipped): {report:#}"
        );
    };
    let leaker_row = process_row(&report, leaker.pid);
    let echo_row = process_row(&report, echo.pid);
    // All six leaks, early (from the startup snapshot) and late.
    near(&report, close_waits(leaker_row), 6);
    near(&report, count(leaker_row, "opened_passive"), 3);
    assert_eq!(leaker_row.unwrap()["comm"], "leak-server", "{report:#}");
    near(&report, count(echo_row, "opened_passive"), CHURN);
    near(&report, count(echo_row, "closed_passive"), CHURN);
    assert_eq!(close_waits(echo_row), 0, "{report:#}");
    let leak = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "close_wait_leak" && f["pid"] == leaker.pid)
        .unwrap_or_else(|| panic!("no leak finding: {report:#}"));
    near(&report, leak["close_wait"].as_u64().unwrap(), 6);
    assert!(
        !report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["pid"] == echo.pid && f["kind"] == "close_wait_leak"),
        "{report:#}"
    );

    // Each namespace's own report: its server only, and nothing charged to pid 0 (or
    // at most what the kernel skipped).
    for (own, server, other) in [
        (&leaky_only, &leaker, &echo),
        (&healthy_only, &echo, &leaker),
    ] {
        assert!(process_row(own, server.pid).is_some(), "{own:#}");
        assert!(process_row(own, other.pid).is_none(), "{own:#}");
        let unknown = process_row(own, 0);
        let charged = count(unknown, "opened_passive") + close_waits(unknown);
        near(own, CHURN + 6 - charged, CHURN + 6);
        assert!(
            !own["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["pid"] == 0),
            "{own:#}"
        );
    }
    near(
        &healthy_only,
        count(process_row(&healthy_only, echo.pid), "opened_passive"),
        CHURN,
    );
    near(
        &leaky_only,
        close_waits(process_row(&leaky_only, leaker.pid)),
        6,
    );
}

/// `stream` stamps each transition with its socket's namespace.
#[test]
fn stream_lines_carry_the_namespace() {
    require_privileges();
    let (a, b) = (NetNs::new(), NetNs::new());
    let server_a = a.workload(&["echo-server", "--listen", "127.0.0.1:8080"]);
    let server_b = b.workload(&["echo-server", "--listen", "127.0.0.1:8080"]);
    let (portwatch, stderr) = start_portwatch(
        &[
            "stream",
            "--format",
            "json",
            "--duration",
            "3s",
            "--port",
            "8080",
        ],
        Stdio::piped(),
    );
    for ns in [&a, &b] {
        let mut client = ns.workload(&[
            "churn-client",
            "--connect",
            "127.0.0.1:8080",
            "--rate",
            "0",
            "--count",
            "5",
        ]);
        expect_line(&mut client, "done");
    }
    let finished = wait_for_portwatch(portwatch, stderr);
    assert!(finished.status.success(), "{}", finished.stderr);
    let lines: Vec<Value> = finished
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    for (ns, server) in [(&a, &server_a), (&b, &server_b)] {
        let accepted: Vec<&Value> = lines
            .iter()
            .filter(|l| l["sport"] == 8080 && l["new_state"] == "ESTABLISHED")
            .filter(|l| l["netns"] == ns.inode())
            .collect();
        assert_eq!(accepted.len(), 5, "{}", finished.stdout);
        assert!(
            accepted.iter().all(|l| l["pid"] == server.pid),
            "{}",
            finished.stdout
        );
    }
}

/// A client in a namespace whose port range is 4 ports: the finding counts that
/// namespace's capacity, not the host's.
#[test]
fn a_namespace_port_range_is_its_own_budget() {
    require_privileges();
    let ns = NetNs::with_four_ports();
    let _server = ns.workload(&["leak-server", "--listen", "127.0.0.1:5000"]);
    let (portwatch, stderr) = start_portwatch(
        &["report", "--format", "json", "--duration", "3s"],
        Stdio::piped(),
    );
    let client = ns.exhaust_ports();
    let report = report_json(portwatch, stderr);
    let exhausted: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "port_exhaustion")
        .collect();
    assert_eq!(exhausted.len(), 1, "{report:#}");
    let finding = exhausted[0];
    assert_eq!(finding["pid"], client.pid, "{report:#}");
    assert_eq!(finding["netns"], ns.inode(), "{report:#}");
    assert_eq!(finding["port_capacity"], 4, "{report:#}");
    assert_eq!(finding["ports_in_use"], 4, "{report:#}");
    assert_eq!(finding["failed_connects"], 4, "{report:#}");
    // The host's own range is untouched, and the report's header shows it; the
    // namespace's own is listed beside it.
    assert_ne!(report["port_capacity"], 4, "{report:#}");
    let listed = report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["netns"] == ns.inode())
        .unwrap_or_else(|| panic!("{report:#}"));
    assert_eq!(listed["port_capacity"], 4, "{report:#}");
    assert_eq!(listed["port_range"], serde_json::json!([40000, 40003]));
}

/// `snapshot` lists every namespace's sockets with their holders and namespace.
#[test]
fn snapshot_lists_every_namespace() {
    require_privileges();
    let (a, b) = (NetNs::new(), NetNs::new());
    let mut leaker = a.workload(&[
        "leak-server",
        "--listen",
        "127.0.0.1:8080",
        "--leak",
        "2",
        "--keep-listening",
    ]);
    let mut client = a.workload(&["leak-client", "--connect", "127.0.0.1:8080", "--count", "2"]);
    expect_line(&mut client, "done");
    expect_line(&mut leaker, "done");
    let server_b = b.workload(&["echo-server", "--listen", "127.0.0.1:8080"]);
    let snapshot = portwatch_json(&["snapshot", "--format", "json"]);
    let sockets_of = |pid: u32| -> Vec<Value> {
        snapshot["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} missing: {snapshot:#}"))["sockets"]
            .as_array()
            .unwrap()
            .clone()
    };
    let leaked = sockets_of(leaker.pid);
    assert_eq!(
        leaked.iter().filter(|s| s["state"] == "CLOSE_WAIT").count(),
        2,
        "{snapshot:#}"
    );
    assert!(
        leaked.iter().all(|s| s["netns"] == a.inode()),
        "{snapshot:#}"
    );
    // `--netns PID`: only the namespace of that process.
    let only_b = portwatch_json(&[
        "snapshot",
        "--format",
        "json",
        "--netns",
        &server_b.pid.to_string(),
    ]);
    let pids: Vec<&Value> = only_b["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["pid"])
        .collect();
    assert_eq!(pids, [server_b.pid], "{only_b:#}");
    let listening = sockets_of(server_b.pid);
    assert!(
        listening
            .iter()
            .any(|s| s["state"] == "LISTEN" && s["sport"] == 8080 && s["netns"] == b.inode()),
        "{snapshot:#}"
    );
}

/// Connections nobody accepted: servers that accepted one connection and then stopped
/// accepting, still listening. Later connections wait in the accept queue; their peers
/// close, so they sit in CLOSE_WAIT with no file referring to them. In one namespace
/// they queued before portwatch started (only the startup snapshot sees them), in the
/// other after: both are their server's leak.
#[test]
fn connections_never_accepted_are_their_listeners_leak() {
    require_privileges();
    let stalled_server = |ns: &NetNs| {
        let mut server = ns.workload(&[
            "leak-server",
            "--listen",
            "127.0.0.1:8080",
            "--leak",
            "1",
            "--keep-listening",
        ]);
        connect(ns, "1");
        expect_line(&mut server, "done");
        server
    };
    fn connect(ns: &NetNs, count: &str) {
        let mut client = ns.workload(&[
            "leak-client",
            "--connect",
            "127.0.0.1:8080",
            "--count",
            count,
        ]);
        expect_line(&mut client, "done");
    }
    let (before, after) = (NetNs::new(), NetNs::new());
    let server_before = stalled_server(&before);
    let server_after = stalled_server(&after);
    connect(&before, "2");
    let (portwatch, stderr) = start_portwatch(
        &[
            "report",
            "--format",
            "json",
            "--duration",
            "3s",
            "--close-wait-age",
            "1s",
        ],
        Stdio::piped(),
    );
    connect(&after, "2");
    let report = report_json(portwatch, stderr);
    let leak_of = |pid: u32| {
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["kind"] == "close_wait_leak" && f["pid"] == pid)
            .unwrap_or_else(|| panic!("no leak finding for {pid}: {report:#}"))["close_wait"]
            .as_u64()
            .unwrap()
    };
    // From the startup snapshot alone, no event involved: exact.
    let row = process_row(&report, server_before.pid);
    assert_eq!(close_waits(row), 3, "1 accepted, 2 queued: {report:#}");
    assert_eq!(row.unwrap()["comm"], "leak-server", "{report:#}");
    assert_eq!(leak_of(server_before.pid), 3, "{report:#}");
    // Queued while portwatch watched: exact unless the kernel skipped runs.
    let skipped = report["events"]["skipped"].as_u64().unwrap_or(0);
    let held = close_waits(process_row(&report, server_after.pid));
    assert!(
        held <= 3 && held + skipped >= 3,
        "1 accepted, 2 queued ({skipped} skipped): {report:#}"
    );
    assert_eq!(leak_of(server_after.pid), held, "{report:#}");
}

/// A fake Kubernetes pod's cgroup: a cgroup v2 directory named as the kubelet's systemd
/// driver names a BestEffort pod's slice, under the host's cgroup2 mount; removed (with
/// the slices above it) when dropped, once its processes are gone.
struct PodCgroup {
    /// The slices made, outermost first.
    made: Vec<std::path::PathBuf>,
}

impl PodCgroup {
    const UID: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";

    fn new() -> PodCgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        // Field 5 is the mount point; the type follows the " - " separator.
        let root = mountinfo
            .lines()
            .find_map(|line| {
                let (mount, rest) = line.split_once(" - ")?;
                rest.starts_with("cgroup2 ")
                    .then(|| mount.split(' ').nth(4).map(str::to_owned))?
            })
            .expect("no cgroup2 mount");
        let uid = Self::UID.replace('-', "_");
        let mut path = std::path::PathBuf::from(root);
        let mut made = Vec::new();
        for slice in [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{uid}.slice"),
        ] {
            path.push(slice);
            if !path.exists() {
                std::fs::create_dir(&path).unwrap();
                made.push(path.clone());
            }
        }
        assert!(!made.is_empty(), "a kubepods slice exists already");
        PodCgroup { made }
    }

    fn procs(&self) -> std::path::PathBuf {
        self.made.last().unwrap().join("cgroup.procs")
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.made.iter().rev() {
            // A killed process leaves its cgroup a moment after it is reaped.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// A pod: a process in its own network and UTS namespaces (hostname `my-pod-7d9f`, as a
/// pod's hostname is its name) inside a kubepods pod cgroup. `snapshot` and `report`
/// name it by its pod, a process beside it in the host's UTS namespace and cgroup not.
#[test]
fn a_pods_process_is_named_by_its_pod() {
    require_privileges();
    let cgroup = PodCgroup::new();
    let ns = NetNs::new();
    // Sets the hostname and enters the cgroup (before `ip netns exec`, whose sysfs
    // has no cgroup mounts), then becomes the workload in the namespace (same PID).
    let script = format!(
        "hostname my-pod-7d9f && echo $$ > {} && exec \"$0\" \"$@\"",
        cgroup.procs().display()
    );
    let binary = workload_binary().to_str().unwrap();
    let mut leaker = Launcher::new(
        "unshare",
        [
            "--uts", "sh", "-c", &script, "ip", "netns", "exec", &ns.name, binary,
        ],
    )
    .spawn(&[
        "leak-server",
        "--listen",
        "127.0.0.1:8080",
        "--leak",
        "2",
        "--keep-listening",
    ])
    .unwrap_or_else(|err| panic!("the pod's leak-server: {err:#}"));
    let connect = |count: &str| {
        let mut client = ns.workload(&[
            "leak-client",
            "--connect",
            "127.0.0.1:8080",
            "--count",
            count,
        ]);
        expect_line(&mut client, "done");
        client
    };
    let (report, stderr) = start_portwatch(
        &[
            "report",
            "--format",
            "json",
            "--duration",
            "3s",
            "--close-wait-age",
            "1s",
        ],
        Stdio::piped(),
    );
    let client = connect("2");
    expect_line(&mut leaker, "done");

    let snapshot = portwatch_json(&["snapshot", "--format", "json", "--netns", &ns.name]);
    let workload_of = |pid: u32| {
        snapshot["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} missing: {snapshot:#}"))["workload"]
            .clone()
    };
    assert_eq!(
        workload_of(leaker.pid),
        serde_json::json!({"pod": {"uid": PodCgroup::UID, "name": "my-pod-7d9f"}}),
        "{snapshot:#}"
    );
    let text = Command::new(PORTWATCH)
        .args(["snapshot", "--netns", &ns.name])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(&leaker.pid.to_string()))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(" pod:my-pod-7d9f "), "{text}");

    let report = report_json(report, stderr);
    let leak = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "close_wait_leak" && f["pid"] == leaker.pid)
        .unwrap_or_else(|| panic!("no leak finding: {report:#}"));
    assert_eq!(leak["workload"], "pod:my-pod-7d9f", "{report:#}");
    assert_eq!(
        process_row(&report, leaker.pid).unwrap()["workload"],
        "pod:my-pod-7d9f",
        "{report:#}"
    );
    // The clients ran in the host's cgroup and UTS namespace: no pod.
    if let Some(row) = process_row(&report, client.pid) {
        let workload = row["workload"].as_str().unwrap_or("");
        assert!(!workload.starts_with("pod:"), "{report:#}");
    }
    drop(leaker);
    drop(cgroup);
}

/// connect() failing with EADDRNOTAVAIL in one namespace: its record carries no
/// namespace, so `--netns` takes it from the thread's portless SYN_SENT -> CLOSE just
/// before it. The namespace's own report counts every failure, and its process's; the
/// other namespace's report counts none (not even under the unknown owner).
#[test]
fn failed_connects_count_only_in_their_own_namespace() {
    require_privileges();
    let (full, other) = (NetNs::with_four_ports(), NetNs::new());
    let _server = full.workload(&["leak-server", "--listen", "127.0.0.1:5000"]);
    let _other_server = other.workload(&["echo-server", "--listen", "127.0.0.1:5000"]);
    let reports = [&full, &other].map(|ns| {
        start_portwatch(
            &[
                "report",
                "--format",
                "json",
                "--duration",
                "3s",
                "--netns",
                &ns.name,
            ],
            Stdio::piped(),
        )
    });
    let client = full.exhaust_ports();
    let mut churn = other.workload(&[
        "churn-client",
        "--connect",
        "127.0.0.1:5000",
        "--rate",
        "0",
        "--count",
        "5",
    ]);
    expect_line(&mut churn, "done");
    let [full_only, other_only] = reports.map(|(child, stderr)| report_json(child, stderr));
    let failed = |report: &Value| -> u64 {
        report["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["failed_connects"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(
        count(process_row(&full_only, client.pid), "failed_connects"),
        4,
        "{full_only:#}"
    );
    assert_eq!(failed(&full_only), 4, "{full_only:#}");
    let exhausted = full_only["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "port_exhaustion")
        .unwrap_or_else(|| panic!("{full_only:#}"));
    assert_eq!(exhausted["failed_connects"], 4, "{full_only:#}");
    assert_eq!(exhausted["pid"], client.pid, "{full_only:#}");
    assert_eq!(failed(&other_only), 0, "{other_only:#}");
    assert!(
        !other_only["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "port_exhaustion"),
        "{other_only:#}"
    );
}

/// `serve` reads the port settings of a namespace created after it started (a pod
/// scheduled later): the destination's capacity in the scraped metrics is that
/// namespace's narrowed range, not the host's.
#[test]
fn serve_reads_the_port_range_of_a_namespace_made_after_it_started() {
    use std::io::{BufRead as _, Read as _, Write as _};
    require_privileges();
    let mut serve = Command::new(PORTWATCH)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stderr = std::io::BufReader::new(serve.stderr.take().unwrap());
    let serve = Kill(serve);
    let address: std::net::SocketAddr = loop {
        let mut line = String::new();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "serve exited");
        if let Some(rest) = line.strip_prefix("portwatch: serving http://") {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let scrape = || {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    };
    // A first scrape reads the settings as they are: the namespace does not exist yet.
    assert!(scrape().contains("portwatch_build_info"));

    let ns = NetNs::with_four_ports();
    let _server = ns.workload(&["leak-server", "--listen", "127.0.0.1:5000"]);
    let _client = ns.exhaust_ports();
    let label = format!("netns=\"{}\"", ns.inode());
    let value = |metrics: &str, name: &str| -> Option<f64> {
        metrics
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter(|line| line.contains(&label))
            .find_map(|line| line.rsplit(' ').next()?.parse().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let metrics = loop {
        let metrics = scrape();
        if value(&metrics, "portwatch_ephemeral_ports_in_use") == Some(4.0) {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no destination in {}: {metrics}",
            ns.inode()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(
        value(&metrics, "portwatch_ephemeral_ports_capacity"),
        Some(4.0),
        "{metrics}"
    );
    // Connects already fail there: exhausted now, by that namespace's own count.
    assert_eq!(
        value(&metrics, "portwatch_port_exhaustion_eta_seconds"),
        Some(0.0),
        "{metrics}"
    );
    drop(serve);
}
