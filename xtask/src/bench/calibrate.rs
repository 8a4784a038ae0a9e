//! How many TCP state transitions (and accepts) one connection of the workload really
//! makes, counted by the kernel itself rather than by any of the agents under test.
//!
//! A tracefs instance (its own ring buffer, apart from the global one) records
//! `sock:inet_sock_set_state` filtered to the server's port, and successful accept4()
//! returns of the echo-server's threads, while a client makes a known number of
//! connections. The instance's counts divided by that number are the truth the agents'
//! counts are checked against; a count that does not divide evenly is an error.
use std::{collections::BTreeMap, fs, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::workload::{Actors, Limit, Shape};

const TRACEFS: &str = "/sys/kernel/tracing";
const INSTANCE: &str = "portwatch-bench";
const STATE_EVENT: &str = "events/sock/inet_sock_set_state";
const ACCEPT_EVENT: &str = "events/syscalls/sys_exit_accept4";

#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub connections: u64,
    /// Transitions of both sockets (client and server) per connection.
    pub transitions_per_connection: u64,
    /// Of those, transitions into CLOSE: sockets that ended (what tcplife reports).
    pub closes_per_connection: u64,
    /// Successful accept4() calls per connection (portwatch sends a record for each).
    pub accepts_per_connection: u64,
    /// Each kind of transition, `OLD -> NEW`, per connection.
    pub breakdown: BTreeMap<String, u64>,
}

/// Makes `connections` connections of `shape` to the echo-server `server_pid`
/// (listening on `port`) and counts what the kernel did.
pub fn run(
    actors: &Actors,
    shape: &Shape,
    server_pid: u32,
    port: u16,
    connections: u64,
) -> Result<Calibration> {
    let instance = Instance::create()?;
    instance.filter(STATE_EVENT, &format!("sport == {port} || dport == {port}"))?;
    // The echo-server's threads (echo-server and its echo-workers, all started before
    // it said ready): by thread ID, since other echo-servers may run on a shared host.
    instance.filter(ACCEPT_EVENT, &accept_filter(&threads(server_pid)?))?;
    instance.enable(true)?;
    let client = actors.client(shape, port, Limit::Count(connections));
    // The last close runs just after the client's last close() returned.
    std::thread::sleep(Duration::from_millis(200));
    instance.enable(false)?;
    let client = client?;
    if client.made != connections {
        bail!(
            "the calibration client made {} connections instead of {connections}",
            client.made
        );
    }
    instance.check_nothing_lost()?;
    let trace = instance.read("trace")?;

    let mut breakdown: BTreeMap<String, u64> = BTreeMap::new();
    let mut accepts = 0;
    for line in trace.lines().filter(|line| !line.starts_with('#')) {
        if line.contains("sys_accept4") {
            accepts += 1;
        } else if let Some(pair) = transition(line) {
            *breakdown.entry(pair).or_default() += 1;
        }
    }
    let per_connection = |total: u64, what: &str| -> Result<u64> {
        if !total.is_multiple_of(connections) {
            bail!(
                "{connections} connections made {total} {what}: not a whole number per \
                 connection, so the count cannot serve as the truth (is other traffic \
                 using port {port}?)"
            );
        }
        Ok(total / connections)
    };
    let transitions: u64 = breakdown.values().sum();
    let closes: u64 = breakdown
        .iter()
        .filter(|(pair, _)| pair.ends_with("-> CLOSE"))
        .map(|(_, count)| count)
        .sum();
    let breakdown = breakdown
        .into_iter()
        .map(|(pair, count)| Ok((pair.clone(), per_connection(count, &pair)?)))
        .collect::<Result<_>>()?;
    Ok(Calibration {
        connections,
        transitions_per_connection: per_connection(transitions, "transitions")?,
        closes_per_connection: per_connection(closes, "closes")?,
        accepts_per_connection: per_connection(accepts, "accepts")?,
        breakdown,
    })
}

/// The thread IDs of process `pid`.
fn threads(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/task");
    let mut tids = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// Successful accepts by any of `tids`.
fn accept_filter(tids: &[u32]) -> String {
    let threads: Vec<String> = tids.iter().map(|t| format!("common_pid == {t}")).collect();
    format!("ret >= 0 && ({})", threads.join(" || "))
}

/// `... oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED` -> `SYN_SENT -> ESTABLISHED`.
fn transition(line: &str) -> Option<String> {
    let state = |key: &str| -> Option<&str> {
        let start = line.find(key)? + key.len();
        let value = line[start..].split_whitespace().next()?;
        Some(value.strip_prefix("TCP_").unwrap_or(value))
    };
    Some(format!(
        "{} -> {}",
        state("oldstate=")?,
        state("newstate=")?
    ))
}

/// A tracefs instance, removed when dropped.
struct Instance {
    dir: PathBuf,
}

impl Instance {
    fn create() -> Result<Instance> {
        let dir = PathBuf::from(TRACEFS).join("instances").join(INSTANCE);
        // Left over from an interrupted run.
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let instance = Instance { dir };
        // Room for every event of the calibration: the count must not overrun.
        instance.write("buffer_size_kb", "16384")?;
        Ok(instance)
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn filter(&self, event: &str, filter: &str) -> Result<()> {
        self.write(&format!("{event}/filter"), filter)
    }

    fn enable(&self, on: bool) -> Result<()> {
        let value = if on { "1" } else { "0" };
        self.write(&format!("{STATE_EVENT}/enable"), value)?;
        self.write(&format!("{ACCEPT_EVENT}/enable"), value)
    }

    /// Fails if any CPU's buffer overran, which would make the count too low.
    fn check_nothing_lost(&self) -> Result<()> {
        for entry in fs::read_dir(self.dir.join("per_cpu"))? {
            let stats = fs::read_to_string(entry?.path().join("stats"))?;
            let overrun = stats
                .lines()
                .find_map(|line| line.strip_prefix("overrun:"))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if overrun > 0 {
                bail!("the calibration's trace buffer overran ({overrun} events lost)");
            }
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.write(&format!("{STATE_EVENT}/enable"), "0");
        let _ = self.write(&format!("{ACCEPT_EVENT}/enable"), "0");
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_accepts_by_thread() {
        assert_eq!(
            accept_filter(&[10, 11]),
            "ret >= 0 && (common_pid == 10 || common_pid == 11)"
        );
        assert!(
            threads(std::process::id())
                .unwrap()
                .contains(&std::process::id())
        );
    }

    #[test]
    fn names_a_transition_from_a_trace_line() {
        let line = "churn-client-2726 [001] ..... 3742.937760: inet_sock_set_state: \
                    family=AF_INET protocol=IPPROTO_TCP sport=0 dport=35157 \
                    saddr=127.0.0.1 daddr=127.0.0.1 oldstate=TCP_CLOSE newstate=TCP_SYN_SENT";
        assert_eq!(transition(line).as_deref(), Some("CLOSE -> SYN_SENT"));
        assert_eq!(transition("sys_accept4 -> 0x5"), None);
    }
}
