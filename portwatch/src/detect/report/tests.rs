use super::*;
use crate::{
    detect::{
        model::tests::{Script, owner},
        ports::PortSettings,
    },
    event::{ConnectFailed, Event, Exited, Origin, OwnerSource, Task},
    tcp_state::TcpState::*,
};

const SECOND: u64 = 1_000_000_000;

pub(crate) fn report_of(script: &Script, end_ns: u64, dropped: u64) -> Report {
    let model = script.model(0);
    let settings = PortBudget::host_only(PortSettings::default());
    let no_workload = |_| None;
    let context = Context {
        settings: &settings,
        thresholds: &Thresholds::default(),
        dropped,
        undecodable: 0,
        untracked: 0,
        skipped: None,
        workload: &no_workload,
    };
    build(&model, end_ns, &context)
}

/// Two servers on the same port in two namespaces (111, portwatch's own, and 222,
/// whose range is 4 ports), leaking 3 and 2 sockets.
pub(crate) fn two_namespace_leaks() -> Report {
    let mut script = Script::new();
    for (pid, netns, count) in [(10, 111, 3), (20, 222, 2)] {
        let server = owner(pid, "leaky", OwnerSource::Accept);
        let mut leaks = Script::new();
        for i in 0..count {
            leaks.leaked_server_connection(server, i * SECOND, i * SECOND + 1000);
        }
        for mut event in leaks.events {
            if let Event::Transition(t) = &mut event {
                t.netns = netns;
                t.sock += u64::from(netns) * 1000;
            }
            script.events.push(event);
        }
    }
    let model = script.model(0);
    let mut settings = PortBudget::host_only(PortSettings::default());
    settings.host_netns = 111;
    settings.by_netns.insert(111, PortSettings::default());
    settings.by_netns.insert(
        222,
        PortSettings {
            range: (40000, 40003),
            ..PortSettings::default()
        },
    );
    let no_workload = |_| None;
    let context = Context {
        settings: &settings,
        thresholds: &Thresholds::default(),
        dropped: 0,
        undecodable: 0,
        untracked: 0,
        skipped: None,
        workload: &no_workload,
    };
    build(&model, 20 * SECOND, &context)
}

#[test]
fn each_namespace_has_its_peers_and_its_port_settings() {
    let report = two_namespace_leaks();
    let leaks = findings_of(&report, FindingKind::CloseWaitLeak);
    assert_eq!(leaks.len(), 2);
    for (finding, netns, count) in [(leaks[0], 111, 3), (leaks[1], 222, 2)] {
        let Evidence::Leak {
            top_peers,
            show_netns,
            close_wait,
            ..
        } = &finding.evidence
        else {
            panic!("leak evidence");
        };
        assert_eq!(*close_wait, count);
        assert_eq!(top_peers.len(), 1, "{top_peers:?}");
        assert_eq!(top_peers[0].netns, netns);
        assert!(show_netns);
    }
    assert_eq!(
        report.namespaces,
        [
            NamespacePorts {
                netns: 111,
                port_range: (32768, 60999),
                port_capacity: 28232,
                tcp_tw_reuse: 2,
            },
            NamespacePorts {
                netns: 222,
                port_range: (40000, 40003),
                port_capacity: 4,
                tcp_tw_reuse: 2,
            },
        ]
    );
    assert_eq!(report.own_netns, 111);
    // One namespace: the words need not name it.
    let Evidence::Leak { show_netns, .. } = &seven_leaks().findings[0].evidence else {
        panic!("leak evidence");
    };
    assert!(!show_netns);
}

fn findings_of(report: &Report, kind: FindingKind) -> Vec<&Finding> {
    report.findings.iter().filter(|f| f.kind == kind).collect()
}

/// Seven sockets leaked by one server, the oldest 20 s old at the end of the window.
pub(crate) fn seven_leaks() -> Report {
    let server = owner(10, "leaky", OwnerSource::Accept);
    let mut script = Script::new();
    for i in 0..7 {
        script.leaked_server_connection(server, i * SECOND, i * SECOND + 1000);
    }
    report_of(&script, 20 * SECOND, 0)
}

#[test]
fn leaked_sockets_older_than_the_threshold_make_a_leak_finding() {
    let report = seven_leaks();
    let leaks = findings_of(&report, FindingKind::CloseWaitLeak);
    assert_eq!(leaks.len(), 1);
    assert_eq!(leaks[0].process.pid, 10);
    let Evidence::Leak {
        close_wait,
        oldest_age_s,
        ..
    } = &leaks[0].evidence
    else {
        panic!("leak evidence");
    };
    assert_eq!(*close_wait, 7);
    assert!((oldest_age_s - 20.0).abs() < 0.01, "{oldest_age_s}");
    assert_eq!(leaks[0].severity, Severity::Warning);
    assert_eq!(report.processes[0].states["CLOSE_WAIT"], 7);
    // Its JSON, with the advice, is checked in output::report's tests.
}

#[test]
fn a_socket_that_leaves_close_wait_before_the_threshold_is_no_leak() {
    let server = owner(10, "server", OwnerSource::Accept);
    let mut script = Script::new();
    script.leaked_server_connection(server, 0, SECOND);
    // Closed 4.9 s after the peer closed: just under the 5 s default.
    let o = Origin::Passive;
    let ports = (8080, 30001);
    script.transition(
        1,
        5_900_000_000,
        CloseWait,
        LastAck,
        server,
        o,
        ports,
        Some(0),
    );
    script.transition(1, 5_900_100_000, LastAck, Close, server, o, ports, Some(0));
    let report = report_of(&script, 30 * SECOND, 0);
    assert!(findings_of(&report, FindingKind::CloseWaitLeak).is_empty());
    // And a socket still in CLOSE_WAIT but younger than the threshold is no leak yet.
    let mut young = Script::new();
    young.leaked_server_connection(server, 0, 26 * SECOND);
    assert!(
        findings_of(
            &report_of(&young, 30 * SECOND, 0),
            FindingKind::CloseWaitLeak
        )
        .is_empty()
    );
}

/// A client opening 100 connections a second for 10 s, each living 3 ms.
pub(crate) fn churn_at_100_per_s() -> Report {
    let churner = owner(20, "churner", OwnerSource::Connect);
    let mut script = Script::new();
    for i in 0..1000u64 {
        script.short_client_connection(churner, i * 10_000_000, 3_000_000);
    }
    report_of(&script, 10 * SECOND, 0)
}

#[test]
fn churn_rate_and_lifetimes_are_measured() {
    let report = churn_at_100_per_s();
    let churn = findings_of(&report, FindingKind::ConnectionChurn);
    assert_eq!(churn.len(), 1);
    let Evidence::Churn {
        rate_per_s,
        median_lifetime_ms,
        short_lived_share,
        destinations,
        ..
    } = &churn[0].evidence
    else {
        panic!("churn evidence");
    };
    assert!((rate_per_s - 100.0).abs() < 1.0, "{rate_per_s}");
    let median = median_lifetime_ms.unwrap();
    assert!((median - 3.0).abs() / 3.0 < 0.07, "{median}");
    assert_eq!(*short_lived_share, 1.0);
    assert_eq!(destinations[0].dport, 80);
    // Its JSON fields are checked in output::report's tests.
}

#[test]
fn a_keep_alive_client_gets_no_finding() {
    let client = owner(30, "healthy", OwnerSource::Connect);
    let mut script = Script::new();
    // One connection for the whole window.
    let o = Origin::Active;
    script.transition(1, 0, Close, SynSent, client, o, (0, 80), Some(0));
    script.transition(
        1,
        1000,
        SynSent,
        Established,
        client,
        o,
        (40000, 80),
        Some(0),
    );
    let report = report_of(&script, 30 * SECOND, 0);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    assert_eq!(report.processes[0].states["ESTABLISHED"], 1);
}

#[test]
fn an_exited_leaker_is_reported_as_exited_not_as_its_reused_pid() {
    let old = owner(40, "old", OwnerSource::Accept);
    let mut script = Script::new();
    script.leaked_server_connection(old, 0, 1000);
    script.events.push(Event::Exited(Exited {
        ts_ns: SECOND,
        pid: 40,
        comm: crate::event::Comm::new("old"),
    }));
    // PID 40 again: a new, healthy process with one connection.
    let new = owner(40, "new", OwnerSource::Connect);
    let o = Origin::Active;
    script.transition(
        99,
        2 * SECOND,
        Close,
        SynSent,
        new,
        o,
        (0, 80),
        Some(2 * SECOND),
    );
    let report = report_of(&script, 30 * SECOND, 0);
    let leak = findings_of(&report, FindingKind::CloseWaitLeak)[0];
    assert_eq!((leak.process.pid, leak.alive), (40, false));
    assert_eq!(leak.comm.to_string(), "old");
    let alive: Vec<_> = report
        .processes
        .iter()
        .filter(|p| p.process.pid == 40 && p.alive)
        .collect();
    assert_eq!(alive.len(), 1);
    assert_eq!(alive[0].comm.to_string(), "new");
    assert!(!alive[0].states.contains_key("CLOSE_WAIT"));
}

#[test]
fn ipv6_leaks_are_found_too() {
    let server = owner(50, "v6", OwnerSource::Accept);
    let mut script = Script::new();
    script.leaked_server_connection(server, 0, 1000);
    for event in &mut script.events {
        if let Event::Transition(t) = event {
            t.family = crate::event::Family::Ipv6;
            t.saddr = "2001:db8::1".parse().unwrap();
            t.daddr = "2001:db8::2".parse().unwrap();
        }
    }
    let report = report_of(&script, 30 * SECOND, 0);
    let leak = findings_of(&report, FindingKind::CloseWaitLeak)[0];
    let Evidence::Leak { top_peers, .. } = &leak.evidence else {
        panic!()
    };
    assert_eq!(top_peers[0].daddr.to_string(), "2001:db8::2");
    assert_eq!(
        top_peers[0].dport, None,
        "an accepted socket's peer port is noise"
    );
}

#[test]
fn drops_mark_the_window_incomplete() {
    let report = report_of(&Script::new(), SECOND, 3);
    assert!(report.events.incomplete);
    assert_eq!(report.events.dropped, 3);
    assert!(!report_of(&Script::new(), SECOND, 0).events.incomplete);
}

/// Three connect() calls toward port 5432 that found no local port.
pub(crate) fn failed_connects() -> Report {
    let client = owner(60, "client", OwnerSource::Connect);
    let mut script = Script::new();
    let o = Origin::Active;
    for i in 0..3u64 {
        script.transition(
            100 + i,
            i * 1000,
            Close,
            SynSent,
            client,
            o,
            (0, 5432),
            Some(i * 1000),
        );
        script.transition(
            100 + i,
            i * 1000 + 10,
            SynSent,
            Close,
            client,
            o,
            (0, 5432),
            Some(i * 1000),
        );
        script.events.push(Event::ConnectFailed(ConnectFailed {
            ts_ns: i * 1000 + 11,
            task: Task {
                pid: 60,
                tid: 60,
                comm: crate::event::Comm::new("client"),
            },
            errno: 99,
        }));
    }
    report_of(&script, 10 * SECOND, 0)
}

#[test]
fn a_process_whose_connects_were_all_refused_has_no_row_of_zeros() {
    let refused = owner(61, "refused", OwnerSource::Connect);
    let listener = owner(62, "server", OwnerSource::Listen);
    let mut script = Script::new();
    let o = Origin::Active;
    // A port was bound, the peer answered with a reset: nothing opened, nothing held.
    script.transition(1, 0, Close, SynSent, refused, o, (40000, 5432), Some(0));
    script.transition(1, 10, SynSent, Close, refused, o, (40000, 5432), Some(0));
    let l = Origin::Listener;
    script.transition(2, 0, Close, Listen, listener, l, (8080, 0), Some(0));
    let report = report_of(&script, SECOND, 0);
    let pids: Vec<u32> = report.processes.iter().map(|p| p.process.pid).collect();
    assert_eq!(pids, [62], "only the listener, which holds a socket");
}

#[test]
fn failed_connects_are_exhaustion_that_already_happened() {
    let report = failed_connects();
    let exhausted = findings_of(&report, FindingKind::PortExhaustion);
    assert_eq!(exhausted.len(), 1);
    assert_eq!(
        (exhausted[0].process.pid, exhausted[0].severity),
        (60, Severity::Critical)
    );
    let Evidence::Exhaustion {
        failed_connects,
        exhaustion_eta_s,
        dport,
        port_capacity,
        ..
    } = &exhausted[0].evidence
    else {
        panic!()
    };
    assert_eq!(
        (*failed_connects, *exhaustion_eta_s, *dport),
        (3, Some(0.0), 5432)
    );
    assert_eq!(*port_capacity, 28232);
    // Its summary's words are checked in output::advice's tests.
}

#[test]
fn a_rate_above_the_sustainable_one_is_forecast() {
    let client = owner(70, "fast", OwnerSource::Connect);
    let mut script = Script::new();
    // 1000/s toward 10.0.0.2:80 (not loopback: TIME_WAIT holds ports 60 s) for 5 s.
    for i in 0..5000u64 {
        script.short_client_connection(client, i * 1_000_000, 1_000_000);
    }
    let report = report_of(&script, 5 * SECOND, 0);
    let exhausted = findings_of(&report, FindingKind::PortExhaustion);
    assert_eq!(exhausted.len(), 1, "{:?}", report.findings);
    let Evidence::Exhaustion {
        ports_in_use,
        exhaustion_eta_s,
        tw_reuse_applies,
        ..
    } = &exhausted[0].evidence
    else {
        panic!()
    };
    assert!(!tw_reuse_applies);
    assert_eq!(*ports_in_use, 5000);
    // (28232 - 5000) ports left at 1000/s: about 23 s.
    let eta = exhaustion_eta_s.unwrap();
    assert!((eta - 23.2).abs() < 0.5, "{eta}");
    assert_eq!(exhausted[0].severity, Severity::Critical);
}

/// `rate` short connections per second from `from_ns` to `to_ns`, by pid 80.
fn churner(rate: u64, from_ns: u64, to_ns: u64) -> Script {
    let client = owner(80, "bursty", OwnerSource::Connect);
    let mut script = Script::new();
    let gap = SECOND / rate;
    let mut at = from_ns + gap / 2;
    while at < to_ns {
        script.short_client_connection(client, at, 1_000_000);
        at += gap;
    }
    script
}

fn churn_rates(report: &Report) -> (f64, f64, f64) {
    let churn = findings_of(report, FindingKind::ConnectionChurn);
    assert_eq!(churn.len(), 1, "{:?}", report.findings);
    let Evidence::Churn {
        rate_per_s,
        active_s,
        recent_rate_per_s,
        ..
    } = &churn[0].evidence
    else {
        panic!("churn evidence");
    };
    (*rate_per_s, *active_s, *recent_rate_per_s)
}

fn near(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() <= expected * 0.02
}

#[test]
fn a_churner_active_for_part_of_the_window_is_measured_over_its_activity() {
    // 200/s for 5 s of an 8 s report: the window's average would be 125/s.
    let report = report_of(&churner(200, SECOND, 6 * SECOND), 8 * SECOND, 0);
    let (rate, active_s, _) = churn_rates(&report);
    assert!(near(rate, 200.0), "{rate}");
    assert!(near(active_s, 5.0), "{active_s}");
    let process = &report.processes[0];
    assert!(near(process.opened_per_s, 200.0), "{process:?}");
    assert!(near(process.time_wait_per_s, 200.0), "{process:?}");
}

#[test]
fn a_burst_at_the_end_of_the_window_is_forecast_at_its_own_rate() {
    // 500/s toward 10.0.0.2:80 for the last 3 s of a 30 s report: 50/s on average over
    // the window, which the port range would sustain (28232 ports / 61 s = 463/s).
    let report = report_of(&churner(500, 27 * SECOND, 30 * SECOND), 30 * SECOND, 0);
    let (rate, active_s, recent) = churn_rates(&report);
    assert!(near(rate, 500.0) && near(recent, 500.0), "{rate} {recent}");
    assert!(near(active_s, 3.0), "{active_s}");
    let exhausted = findings_of(&report, FindingKind::PortExhaustion);
    assert_eq!(exhausted.len(), 1, "{:?}", report.findings);
    let Evidence::Exhaustion {
        rate_per_s,
        recent_rate_per_s,
        exhaustion_eta_s,
        ..
    } = &exhausted[0].evidence
    else {
        panic!()
    };
    assert!(near(*rate_per_s, 500.0) && near(*recent_rate_per_s, 500.0));
    // (28232 - 1500 ports held) at 500/s.
    let eta = exhaustion_eta_s.unwrap();
    assert!(near(eta, (28232.0 - 1500.0) / 500.0), "{eta}");
}

#[test]
fn a_churner_that_stopped_early_is_no_exhaustion_forecast() {
    // 600/s for the first 10 s of a 60 s report: churn it was, at 600/s; but nothing is
    // being opened now, so no destination is running out.
    let report = report_of(&churner(600, 0, 10 * SECOND), 60 * SECOND, 0);
    let (rate, _, recent) = churn_rates(&report);
    assert!(near(rate, 600.0), "{rate}");
    assert_eq!(recent, 0.0);
    let exhausted = findings_of(&report, FindingKind::PortExhaustion);
    assert!(exhausted.is_empty(), "{exhausted:?}");
}

#[test]
fn evictions_are_counted_and_mark_the_window_incomplete() {
    use crate::detect::model::Limits;
    let server = owner(1, "leaky", OwnerSource::Accept);
    let mut script = Script::new();
    for i in 0..3 {
        script.leaked_server_connection(server, i * SECOND, 2 * SECOND);
    }
    for i in 0..10u32 {
        let client = owner(100 + i, "curl", OwnerSource::Connect);
        script.short_client_connection(client, 5 * SECOND + u64::from(i), 1_000);
    }
    let limits = Limits {
        max_sockets: 64,
        max_processes: 4,
        max_destinations: 64,
    };
    let model = script.model_with(0, limits);
    let settings = PortBudget::host_only(PortSettings::default());
    let no_workload = |_| None;
    let context = Context {
        settings: &settings,
        thresholds: &Thresholds::default(),
        dropped: 0,
        undecodable: 0,
        untracked: 0,
        skipped: None,
        workload: &no_workload,
    };
    let report = build(&model, 30 * SECOND, &context);
    assert!(report.events.incomplete);
    // 11 processes, at most 4 kept.
    assert!(
        report.events.evicted.processes >= 7,
        "{:?}",
        report.events.evicted
    );
    assert_eq!(report.events.evicted.sockets, 0);
    // The leak is still reported, whole.
    let leaks = findings_of(&report, FindingKind::CloseWaitLeak);
    assert_eq!(leaks.len(), 1);
    assert!(matches!(
        leaks[0].evidence,
        Evidence::Leak { close_wait: 3, .. }
    ));
    let mut text = Vec::new();
    crate::output::report::text(&mut text, &report).unwrap();
    let first = String::from_utf8(text).unwrap();
    let first = first.lines().next().unwrap();
    assert!(
        first.contains("evicted at the limits: 0 sockets, 0 TIME_WAIT, "),
        "{first}"
    );
    assert!(first.contains("INCOMPLETE"), "{first}");
}
