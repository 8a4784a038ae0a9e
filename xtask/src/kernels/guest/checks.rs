//! The assertions on portwatch's output. Each check returns what it saw (printed on
//! success too, so a passing log is evidence, not just "ok") or what went wrong.
use serde_json::Value;

use super::portwatch::{self, Finished};

pub type Outcome = Result<String, String>;

/// Runs of portwatch's programs the kernel says it skipped (another eBPF program was
/// running on that CPU): events that never existed, so a check of events made in
/// softirq context may come up that many short. 0 where the kernel does not count
/// them (before Linux 6.7): such checks are then exact.
#[derive(Clone, Copy, Debug, Default)]
pub struct Skipped(pub u64);

impl Skipped {
    pub(super) fn allows(self, expected: usize, seen: usize) -> bool {
        seen <= expected && seen as u64 + self.0 >= expected as u64
    }

    pub(super) fn note(self) -> String {
        if self.0 == 0 {
            String::new()
        } else {
            format!(" ({} runs skipped by the kernel, counted)", self.0)
        }
    }
}

/// Prints each outcome as it is known; remembers failures.
#[derive(Default)]
pub struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    pub fn record(&mut self, name: &str, outcome: Outcome) {
        match outcome {
            Ok(detail) => {
                self.passed += 1;
                println!("guest: ok   {name}: {detail}");
            }
            Err(problem) => {
                self.failed.push(name.to_owned());
                println!("guest: FAIL {name}: {problem}");
            }
        }
    }

    pub fn failed(&self) -> bool {
        !self.failed.is_empty()
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if self.failed.is_empty() {
            println!("guest: all {} checks passed", self.passed);
            Ok(())
        } else {
            anyhow::bail!(
                "{} of {} checks failed: {}",
                self.failed.len(),
                self.failed.len() + self.passed,
                self.failed.join(", ")
            )
        }
    }
}

/// The CLOSE_WAIT leak: a server that accepts and never closes, a client (another
/// process) that connects and closes, and one more client that exits without closing.
pub struct Leak {
    pub server: u32,
    pub port: u16,
    pub client: u32,
    /// Connections the client made and closed.
    pub closed_by_client: usize,
    /// The client that exited without closing.
    pub exited: u32,
}

impl Leak {
    /// CLOSE_WAIT sockets the server holds at the end.
    pub fn close_waits(&self) -> usize {
        self.closed_by_client + 1
    }
}

pub struct Churn {
    pub client: u32,
    pub port: u16,
    pub connections: usize,
}

pub struct Exhaustion {
    pub client: u32,
    pub port: u16,
    pub failed: usize,
}

/// Exited cleanly, said nothing about missing features or lost data.
pub fn ran_cleanly(run: &Finished) -> Outcome {
    if !run.status.success() {
        return Err(format!("{}; stderr:\n{}", run.status, run.stderr));
    }
    let complaints: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| {
            ["warning", "untracked", "lost", "undecodable"]
                .iter()
                .any(|word| line.contains(word))
        })
        .collect();
    if !complaints.is_empty() {
        return Err(complaints.join("\n"));
    }
    Ok("exit status 0, no warnings (every optional hook attached)".to_owned())
}

pub fn nothing_dropped(run: &Finished) -> Outcome {
    let summary = portwatch::summary(&run.stderr)
        .ok_or_else(|| format!("no summary line in stderr:\n{}", run.stderr))?;
    if summary.dropped != 0 {
        return Err(format!("{summary:?}"));
    }
    Ok(format!(
        "{} events seen, 0 dropped, {} skipped by the kernel",
        summary.seen, summary.skipped
    ))
}

pub fn json_lines(stdout: &str) -> Result<Vec<Value>, String> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).map_err(|err| format!("{err}: {line}")))
        .collect()
}

fn is(event: &Value, old: &str, new: &str) -> bool {
    event["old_state"] == old && event["new_state"] == new
}

pub fn listener_owner(events: &[Value], leak: &Leak) -> Outcome {
    let listens: Vec<&Value> = events
        .iter()
        .filter(|e| is(e, "CLOSE", "LISTEN") && e["sport"] == leak.port)
        .collect();
    match listens.as_slice() {
        [listen] if listen["pid"] == leak.server && listen["owner_source"] == "listen" => {
            Ok(format!(
                "CLOSE -> LISTEN charged to the server (pid {})",
                leak.server
            ))
        }
        _ => Err(format!(
            "expected one CLOSE -> LISTEN of pid {} (listen): {listens:?}",
            leak.server
        )),
    }
}

pub fn connect_owner(events: &[Value], leak: &Leak) -> Outcome {
    let connects: Vec<&Value> = events
        .iter()
        .filter(|e| is(e, "CLOSE", "SYN_SENT") && e["dport"] == leak.port)
        .filter(|e| e["pid"] == leak.client)
        .collect();
    let wrong: Vec<&&Value> = connects
        .iter()
        .filter(|e| e["owner_source"] != "connect")
        .collect();
    if connects.len() != leak.closed_by_client || !wrong.is_empty() {
        return Err(format!(
            "expected {} CLOSE -> SYN_SENT of pid {} (connect), got {}: {wrong:?}",
            leak.closed_by_client,
            leak.client,
            connects.len()
        ));
    }
    Ok(format!(
        "{} connects charged to the client (pid {})",
        connects.len(),
        leak.client
    ))
}

/// The point of portwatch: the server's ESTABLISHED -> CLOSE_WAIT runs in softirq
/// context, often on the client's CPU time, yet must be charged to the server.
pub fn close_wait_owner(events: &[Value], leak: &Leak, skipped: Skipped) -> Outcome {
    let close_waits: Vec<&Value> = events
        .iter()
        .filter(|e| is(e, "ESTABLISHED", "CLOSE_WAIT") && e["sport"] == leak.port)
        .collect();
    // The listener's owner (provisional) is the server too; "accept" shows the accept
    // hook learned it for certain, which it does unless the kernel skipped a run.
    let wrong: Vec<&&Value> = close_waits
        .iter()
        .filter(|e| {
            e["pid"] != leak.server
                || (e["owner_source"] != "accept" && e["owner_source"] != "listener")
        })
        .collect();
    let accepted = close_waits
        .iter()
        .filter(|e| e["owner_source"] == "accept")
        .count();
    let expected = leak.close_waits();
    if !wrong.is_empty()
        || !skipped.allows(expected, close_waits.len())
        || !skipped.allows(expected, accepted)
    {
        let histories: Vec<String> = close_waits
            .iter()
            .filter(|e| e["owner_source"] != "accept")
            .map(|e| history(events, e))
            .collect();
        return Err(format!(
            "expected {expected} server-side ESTABLISHED -> CLOSE_WAIT of pid {} learned by \
             accept(){}; got {} ({accepted} by accept, {} of another pid or source); every \
             event of the socket addresses of those not learned by accept:\n{}",
            leak.server,
            skipped.note(),
            close_waits.len(),
            wrong.len(),
            histories.join("\n")
        ));
    }
    let mut on_cpu: Vec<String> = close_waits
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["task_pid"],
                e["task_comm"].as_str().unwrap_or("?")
            )
        })
        .collect();
    on_cpu.sort();
    on_cpu.dedup();
    Ok(format!(
        "{} CLOSE_WAIT transitions, all pid {}, {accepted} learned by accept()/accept4(){} \
         (tasks on the CPU: {})",
        close_waits.len(),
        leak.server,
        skipped.note(),
        on_cpu.join(", ")
    ))
}

/// Every event of `event`'s socket address, one per line, for failure messages.
fn history(events: &[Value], event: &Value) -> String {
    events
        .iter()
        .filter(|e| e["sock"] == event["sock"])
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// sched_process_exit: a socket the kernel closes after its owner exited is shown as
/// the exited owner's.
pub fn exit_marks_owner(events: &[Value], leak: &Leak) -> Outcome {
    let closes: Vec<&Value> = events
        .iter()
        .filter(|e| is(e, "ESTABLISHED", "FIN_WAIT1") && e["pid"] == leak.exited)
        .collect();
    match closes.as_slice() {
        [close] if close["owner_alive"] == false => Ok(format!(
            "ESTABLISHED -> FIN_WAIT1 after pid {} exited: owner_alive false",
            leak.exited
        )),
        _ => Err(format!(
            "expected one ESTABLISHED -> FIN_WAIT1 of pid {} with owner_alive false: {closes:?}",
            leak.exited
        )),
    }
}

const CLIENT_LIFE: [(&str, &str); 5] = [
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];
const SERVER_LIFE: [(&str, &str); 5] = [
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

/// Every transition of every churn connection arrived, in order, with the right owner
/// (all but those the kernel says it skipped).
pub fn churn_complete(events: &[Value], churn: &Churn, skipped: Skipped) -> Outcome {
    let lives = connections(events);
    let clients: Vec<&Vec<&Value>> = lives
        .iter()
        .filter(|life| {
            life.iter().any(|e| {
                e["dport"] == churn.port && e["pid"] == churn.client && e["origin"] == "active"
            })
        })
        .collect();
    let servers: Vec<&Vec<&Value>> = lives
        .iter()
        .filter(|life| life[0]["sport"] == churn.port && life[0]["origin"] == "passive")
        .collect();
    let arrived: usize = clients.iter().chain(&servers).map(|life| life.len()).sum();
    let out_of_order: Vec<String> = clients
        .iter()
        .filter(|life| !in_order(life, &CLIENT_LIFE))
        .chain(servers.iter().filter(|life| !in_order(life, &SERVER_LIFE)))
        .map(|life| history(events, life[0]))
        .collect();
    let expected = 10 * churn.connections;
    if !out_of_order.is_empty() || !skipped.allows(expected, arrived) {
        return Err(format!(
            "expected {expected} transitions ({n} connections, 5 per side, in order){}; got \
             {arrived} in {} client and {} server lives, {} out of order:\n{}",
            skipped.note(),
            clients.len(),
            servers.len(),
            out_of_order.len(),
            out_of_order.join("\n"),
            n = churn.connections
        ));
    }
    Ok(format!(
        "{arrived} of {expected} transitions of {} connections, each side's in order{}",
        churn.connections,
        skipped.note()
    ))
}

/// Whether `life`'s transitions appear in `expected` in the same order (some may be
/// missing).
fn in_order(life: &[&Value], expected: &[(&str, &str)]) -> bool {
    let mut rest = expected.iter();
    life.iter().all(|e| rest.any(|&(old, new)| is(e, old, new)))
}

/// Transitions grouped by connection: by socket, split where a socket starts a new
/// life or after it closed (the kernel reuses a freed socket's address).
fn connections(events: &[Value]) -> Vec<Vec<&Value>> {
    let mut open: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut lives: Vec<Vec<&Value>> = Vec::new();
    for event in events {
        let Some(sock) = event["sock"].as_str() else {
            continue;
        };
        let starts = is(event, "CLOSE", "SYN_SENT")
            || is(event, "LISTEN", "SYN_RECV")
            || is(event, "CLOSE", "LISTEN");
        let ended = |life: usize| {
            lives[life]
                .last()
                .is_some_and(|e| e["new_state"] == "CLOSE")
        };
        match open.get(sock) {
            Some(&life) if !starts && !ended(life) => lives[life].push(event),
            _ => {
                open.insert(sock, lives.len());
                lives.push(vec![event]);
            }
        }
    }
    lives
}

pub fn report_complete(report: &Value) -> Outcome {
    let events = &report["events"];
    let skipped = events["skipped"].as_u64().unwrap_or(0);
    if events["dropped"] != 0 || events["untracked"] != 0 || events["incomplete"] != (skipped > 0) {
        return Err(format!("events: {events}"));
    }
    Ok(format!(
        "{} events, none dropped or untracked, skipped by the kernel: {}",
        events["seen"], events["skipped"]
    ))
}

/// What the report says the kernel skipped (0 where it cannot count).
pub fn report_skipped(report: &Value) -> Skipped {
    Skipped(report["events"]["skipped"].as_u64().unwrap_or(0))
}

/// Whether this kernel counts skipped runs at all (Linux 6.7+).
pub fn kernel_counts_skips(report: &Value) -> bool {
    report["events"]["skipped"].is_u64()
}

fn finding<'a>(
    report: &'a Value,
    kind: &str,
    matches: impl Fn(&Value) -> bool,
) -> Option<&'a Value> {
    report["findings"]
        .as_array()?
        .iter()
        .find(|f| f["kind"] == kind && matches(f))
}

pub(super) fn process(report: &Value, pid: u32) -> Option<&Value> {
    report["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"] == pid)
}

pub fn report_leak(report: &Value, leak: &Leak, skipped: Skipped) -> Outcome {
    let found =
        finding(report, "close_wait_leak", |f| f["pid"] == leak.server).ok_or_else(|| {
            format!(
                "no close_wait_leak of pid {}: {}",
                leak.server, report["findings"]
            )
        })?;
    let close_wait = found["close_wait"].as_u64().unwrap_or(0) as usize;
    if !skipped.allows(leak.close_waits(), close_wait) {
        return Err(format!(
            "expected close_wait {}{}: {found}",
            leak.close_waits(),
            skipped.note()
        ));
    }
    Ok(format!(
        "close_wait_leak of pid {} with {close_wait} sockets{}",
        leak.server,
        skipped.note()
    ))
}

pub fn report_churn(report: &Value, churn: &Churn) -> Outcome {
    let found =
        finding(report, "connection_churn", |f| f["pid"] == churn.client).ok_or_else(|| {
            format!(
                "no connection_churn of pid {}: {}",
                churn.client, report["findings"]
            )
        })?;
    Ok(format!(
        "connection_churn of pid {} at {}/s, {} TIME_WAIT/s",
        churn.client, found["rate_per_s"], found["time_wait_per_s"]
    ))
}

/// sys_exit_connect: every EADDRNOTAVAIL the client saw is counted, toward the right
/// destination.
pub fn report_exhaustion(report: &Value, exhaustion: &Exhaustion) -> Outcome {
    if exhaustion.failed == 0 {
        return Err("the client never saw EADDRNOTAVAIL: the port range did not run out".into());
    }
    let found =
        finding(report, "port_exhaustion", |f| f["dport"] == exhaustion.port).ok_or_else(|| {
            format!(
                "no port_exhaustion toward port {}: {}",
                exhaustion.port, report["findings"]
            )
        })?;
    let by_process = process(report, exhaustion.client).map(|p| &p["failed_connects"]);
    if found["failed_connects"] != exhaustion.failed
        || by_process != Some(&Value::from(exhaustion.failed))
    {
        return Err(format!(
            "the client saw {} EADDRNOTAVAIL; finding: {found}; process: {by_process:?}",
            exhaustion.failed
        ));
    }
    Ok(format!(
        "port_exhaustion toward port {} with all {} failed connects, charged to pid {}",
        exhaustion.port, exhaustion.failed, exhaustion.client
    ))
}

pub fn report_exit(report: &Value, leak: &Leak) -> Outcome {
    let exited = process(report, leak.exited).map(|p| &p["alive"]);
    let server = process(report, leak.server).map(|p| &p["alive"]);
    if exited != Some(&Value::Bool(false)) || server != Some(&Value::Bool(true)) {
        return Err(format!(
            "alive: exited client {exited:?} (expected false), server {server:?} (expected true)"
        ));
    }
    Ok(format!(
        "pid {} marked exited, the server alive",
        leak.exited
    ))
}

/// sock_diag on this kernel: the leaked sockets, with the process holding them.
pub fn snapshot_holder(run: &Finished, leak: &Leak) -> Outcome {
    if !run.status.success() || !run.stderr.trim().is_empty() {
        return Err(format!("{}; stderr:\n{}", run.status, run.stderr));
    }
    let snapshot: Value = serde_json::from_str(&run.stdout).map_err(|e| e.to_string())?;
    let held = process(&snapshot, leak.server).map(|p| &p["states"]["CLOSE_WAIT"]);
    if held != Some(&Value::from(leak.close_waits())) {
        return Err(format!(
            "expected pid {} holding {} CLOSE_WAIT: {snapshot}",
            leak.server,
            leak.close_waits()
        ));
    }
    Ok(format!(
        "pid {} holds {} CLOSE_WAIT sockets",
        leak.server,
        leak.close_waits()
    ))
}

/// With a 4 KiB ring buffer and a reader that stalls, records are lost; the check is
/// that they are counted: seen + dropped (+ skipped by the kernel) covers every
/// transition made.
pub fn drops_counted(run: &Finished, connections: usize) -> Outcome {
    if !run.status.success() {
        return Err(format!("{}; stderr:\n{}", run.status, run.stderr));
    }
    let summary = portwatch::summary(&run.stderr)
        .ok_or_else(|| format!("no summary line in stderr:\n{}", run.stderr))?;
    if summary.dropped == 0 {
        return Err(format!(
            "nothing dropped, so nothing shown about counting: {summary:?}"
        ));
    }
    // Each connection makes 10 transitions (5 per side); accepts and exits add more
    // records, so this is a lower bound on what the programs produced.
    let made = 10 * connections as u64;
    let accounted = summary.seen + summary.dropped + summary.skipped;
    if accounted < made {
        return Err(format!(
            "{} seen + {} dropped + {} skipped < {made} transitions made: losses went \
             uncounted",
            summary.seen, summary.dropped, summary.skipped
        ));
    }
    Ok(format!(
        "{} seen + {} dropped + {} skipped by the kernel >= {made} transitions made",
        summary.seen, summary.dropped, summary.skipped
    ))
}
