//! The exposition from synthetic samples: names, types, label sets, folding, series of
//! gone processes, the pid-label opt-in, counters that stay monotonic.
use std::collections::BTreeMap;

use super::*;
use crate::{
    event::Comm,
    live::{EventSample, ProcessSample},
};

fn process(pid: u32, comm: &str, states: &[(&'static str, usize)]) -> ProcessSample {
    ProcessSample {
        process: Process::after_exits(pid, 0),
        comm: Comm::new(comm),
        alive: true,
        states: states.iter().copied().collect(),
        close_wait_oldest_s: states
            .iter()
            .any(|(s, _)| *s == "CLOSE_WAIT")
            .then_some(12.5),
        counters: ProcessCounters::default(),
    }
}

fn sample(processes: Vec<ProcessSample>) -> Sample {
    let mut findings = BTreeMap::new();
    findings.insert(("close_wait_leak", "warning"), 1);
    Sample {
        now_ns: 1_000_000_000,
        processes,
        destinations: vec![DestinationSample {
            netns: 4026531840,
            port_capacity: 28232,
            saddr: "127.0.0.1".parse().unwrap(),
            daddr: "127.0.0.1".parse().unwrap(),
            dport: 8080,
            ports_in_use: 300,
            eta_s: Some(90.0),
        }],
        findings,
        events: EventSample {
            seen: 10,
            ..EventSample::default()
        },
    }
}

/// Workloads by PID, as /proc would say.
fn workload(pid: u32) -> Option<String> {
    (pid == 10).then(|| "leaky.service".to_owned())
}

fn text(exporter: &mut Exporter, sample: &Sample) -> String {
    let families = exporter.families(sample, &workload);
    render(Box::new(families), Format::Prometheus).unwrap()
}

#[test]
fn names_types_and_label_sets() {
    let mut exporter = Exporter::new(SeriesLimits::default(), "1.2.3");
    let mut leaky = process(10, "leaky", &[("CLOSE_WAIT", 3), ("LISTEN", 1)]);
    leaky.counters.opened_passive = 3;
    leaky.counters.closed_peer = 3;
    leaky.counters.lifetime.count = 2;
    leaky.counters.lifetime.below = [0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2];
    leaky.counters.lifetime.sum_s = 0.05;
    let text = text(&mut exporter, &sample(vec![leaky]));
    for (name, kind) in [
        ("portwatch_build_info", "gauge"),
        ("portwatch_sockets", "gauge"),
        ("portwatch_close_wait_sockets", "gauge"),
        ("portwatch_close_wait_oldest_age_seconds", "gauge"),
        ("portwatch_connections_opened_total", "counter"),
        ("portwatch_connections_closed_total", "counter"),
        ("portwatch_time_wait_created_total", "counter"),
        ("portwatch_connect_failures_total", "counter"),
        ("portwatch_connection_lifetime_seconds", "histogram"),
        ("portwatch_ephemeral_ports_in_use", "gauge"),
        ("portwatch_ephemeral_ports_capacity", "gauge"),
        ("portwatch_port_exhaustion_eta_seconds", "gauge"),
        ("portwatch_findings", "gauge"),
        ("portwatch_events_total", "counter"),
        ("portwatch_events_dropped_total", "counter"),
        ("portwatch_evictions_total", "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} in\n{text}"
        );
    }
    let has = |line: &str| assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    has(r#"portwatch_build_info{version="1.2.3"} 1"#);
    has(r#"portwatch_sockets{workload="leaky.service",comm="leaky",state="CLOSE_WAIT"} 3"#);
    has(r#"portwatch_sockets{workload="leaky.service",comm="leaky",state="LISTEN"} 1"#);
    has(r#"portwatch_close_wait_sockets{workload="leaky.service",comm="leaky"} 3"#);
    has(r#"portwatch_close_wait_oldest_age_seconds{workload="leaky.service",comm="leaky"} 12.5"#);
    has(
        r#"portwatch_connections_opened_total{workload="leaky.service",comm="leaky",role="passive"} 3"#,
    );
    has(
        r#"portwatch_connections_closed_total{workload="leaky.service",comm="leaky",closed_by="peer"} 3"#,
    );
    has(
        r#"portwatch_connect_failures_total{workload="leaky.service",comm="leaky",reason="EADDRNOTAVAIL"} 0"#,
    );
    // Cumulative buckets, +Inf equal to the count.
    has(
        r#"portwatch_connection_lifetime_seconds_bucket{workload="leaky.service",comm="leaky",le="0.01"} 1"#,
    );
    has(
        r#"portwatch_connection_lifetime_seconds_bucket{workload="leaky.service",comm="leaky",le="3600"} 2"#,
    );
    has(
        r#"portwatch_connection_lifetime_seconds_bucket{workload="leaky.service",comm="leaky",le="+Inf"} 2"#,
    );
    has(r#"portwatch_connection_lifetime_seconds_count{workload="leaky.service",comm="leaky"} 2"#);
    has(
        r#"portwatch_ephemeral_ports_in_use{destination="127.0.0.1->127.0.0.1:8080",netns="4026531840"} 300"#,
    );
    has(
        r#"portwatch_ephemeral_ports_capacity{destination="127.0.0.1->127.0.0.1:8080",netns="4026531840"} 28232"#,
    );
    has(
        r#"portwatch_port_exhaustion_eta_seconds{destination="127.0.0.1->127.0.0.1:8080",netns="4026531840"} 90.0"#,
    );
    has(r#"portwatch_findings{kind="close_wait_leak",severity="warning"} 1"#);
    has("portwatch_events_total 10");
    // No pid label unless asked.
    assert!(!text.contains("pid="), "{text}");

    let open = exporter.families(&sample(vec![]), &workload);
    let open = render(Box::new(open), Format::OpenMetrics).unwrap();
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE portwatch_connections_opened counter\n"),
        "{open}"
    );
    assert!(
        open.contains("# UNIT portwatch_close_wait_oldest_age_seconds seconds\n"),
        "{open}"
    );
}

#[test]
fn label_sets_beyond_the_limit_fold_into_other() {
    let limits = SeriesLimits {
        workloads: 2,
        destinations: 1,
        pid_labels: 0,
    };
    let mut exporter = Exporter::new(limits, "0");
    let processes = vec![
        process(1, "a", &[("CLOSE_WAIT", 5)]),
        process(2, "b", &[("ESTABLISHED", 4)]),
        process(3, "c", &[("ESTABLISHED", 2)]),
        process(4, "d", &[("ESTABLISHED", 1)]),
    ];
    let mut s = sample(processes);
    s.destinations.push(DestinationSample {
        dport: 9090,
        ports_in_use: 7,
        eta_s: None,
        ..s.destinations[0]
    });
    let text = text(&mut exporter, &s);
    let sockets = lines_of(&text, "portwatch_sockets");
    assert_eq!(sockets.len(), 3, "{sockets:?}");
    assert!(
        sockets.contains(&r#"portwatch_sockets{workload="host",comm="a",state="CLOSE_WAIT"} 5"#)
    );
    assert!(
        sockets.contains(&r#"portwatch_sockets{workload="host",comm="b",state="ESTABLISHED"} 4"#)
    );
    assert!(
        sockets
            .contains(&r#"portwatch_sockets{workload="other",comm="other",state="ESTABLISHED"} 3"#)
    );
    // Counters: the first two label sets seen keep theirs, the rest share `other`.
    let opened = lines_of(&text, "portwatch_time_wait_created_total");
    assert_eq!(opened.len(), 3, "{opened:?}");
    let ports = lines_of(&text, "portwatch_ephemeral_ports_in_use");
    assert_eq!(
        ports,
        [
            r#"portwatch_ephemeral_ports_in_use{destination="127.0.0.1->127.0.0.1:8080",netns="4026531840"} 300"#,
            r#"portwatch_ephemeral_ports_in_use{destination="other"} 7"#,
        ]
    );
}

#[test]
fn series_of_a_gone_process_disappear_and_counters_stay() {
    let mut exporter = Exporter::new(SeriesLimits::default(), "0");
    let mut churner = process(7, "churn", &[("TIME_WAIT", 40)]);
    churner.counters.time_wait_created = 40;
    let first = text(&mut exporter, &sample(vec![churner.clone()]));
    assert!(
        first.contains(r#"portwatch_sockets{workload="host",comm="churn",state="TIME_WAIT"} 40"#)
    );
    // Its TIME_WAIT expired and it exited; the model still knows its counts.
    churner.states.clear();
    churner.alive = false;
    let second = text(&mut exporter, &sample(vec![churner]));
    assert!(
        lines_of(&second, "portwatch_sockets").is_empty(),
        "{second}"
    );
    assert!(
        second.contains(r#"portwatch_time_wait_created_total{workload="host",comm="churn"} 40"#)
    );
    // The model forgot it (evicted): the counter keeps its value...
    let third = text(&mut exporter, &sample(vec![]));
    assert!(
        third.contains(r#"portwatch_time_wait_created_total{workload="host",comm="churn"} 40"#)
    );
    // ... and a new process of the same label set adds to it.
    let mut again = process(8, "churn", &[]);
    again.counters.time_wait_created = 2;
    let fourth = text(&mut exporter, &sample(vec![again]));
    assert!(
        fourth.contains(r#"portwatch_time_wait_created_total{workload="host",comm="churn"} 42"#)
    );
    // Ten minutes with nothing new and no process: dropped.
    let mut later = sample(vec![]);
    later.now_ns += COUNTER_IDLE_NS + 1;
    let fifth = text(&mut exporter, &later);
    assert!(
        lines_of(&fifth, "portwatch_time_wait_created_total").is_empty(),
        "{fifth}"
    );
}

#[test]
fn pid_labels_are_opt_in_for_the_top_processes() {
    let limits = SeriesLimits {
        pid_labels: 1,
        ..SeriesLimits::default()
    };
    let mut exporter = Exporter::new(limits, "0");
    let processes = vec![
        process(10, "leaky", &[("CLOSE_WAIT", 2)]),
        process(11, "leaky", &[("CLOSE_WAIT", 9)]),
    ];
    let text = text(&mut exporter, &sample(processes));
    let close_wait = lines_of(&text, "portwatch_close_wait_sockets");
    assert_eq!(
        close_wait,
        [
            r#"portwatch_close_wait_sockets{workload="host",comm="leaky",pid="11"} 9"#,
            r#"portwatch_close_wait_sockets{workload="leaky.service",comm="leaky"} 2"#,
        ],
        "{text}"
    );
}
