//! What the benchmark reads about a process from /proc: CPU time, memory, the eBPF maps
//! and programs it holds, and its network namespace's TCP counters.
use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result};

/// User plus system CPU seconds of the whole process so far (`/proc/<pid>/stat` fields
/// 14 and 15, in clock ticks). Still readable while the process is a zombie, which is
/// how the benchmark reads a stopped agent's total.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted
    // from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let ticks = |index: usize| -> Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", index + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(total as f64 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// A `Vm*:` line of `/proc/<pid>/status` in KiB, e.g. `VmRSS` or `VmHWM` (peak RSS).
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// One eBPF map a process holds a descriptor of, from `/proc/<pid>/fdinfo`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapMemory {
    pub id: u32,
    pub map_type: u32,
    pub max_entries: u64,
    /// What the kernel charges for the map (`memlock` in fdinfo; what `bpftool map show`
    /// prints as memlock).
    pub memlock_bytes: u64,
}

/// Statistics of one eBPF program a process holds, from `/proc/<pid>/fdinfo`.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ProgramRuns {
    pub id: u32,
    /// Time in the program and calls of it, counted only while
    /// `kernel.bpf_stats_enabled` is 1.
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// Calls the kernel skipped because a BPF program was already running on that CPU
    /// (a tracepoint hit in an interrupt while a program ran): events lost before any
    /// buffer, which no ring-buffer counter sees. Counted always (Linux 5.12+).
    pub recursion_misses: u64,
}

/// The eBPF maps and programs `pid` holds, each once (a map may sit behind several fds).
pub fn bpf_objects(pid: u32) -> (Vec<MapMemory>, Vec<ProgramRuns>) {
    let mut maps = BTreeMap::new();
    let mut programs = BTreeMap::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (Vec::new(), Vec::new());
    };
    for entry in entries.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |key: &str| -> Option<u64> {
            text.lines().find_map(|line| {
                let value = line.strip_prefix(key)?.strip_prefix(':')?;
                value.trim().parse().ok()
            })
        };
        if let (Some(id), Some(map_type)) = (field("map_id"), field("map_type")) {
            maps.insert(
                id,
                MapMemory {
                    id: id as u32,
                    map_type: map_type as u32,
                    max_entries: field("max_entries").unwrap_or(0),
                    memlock_bytes: field("memlock").unwrap_or(0),
                },
            );
        } else if let (Some(id), Some(run_cnt)) = (field("prog_id"), field("run_cnt")) {
            // A link's fdinfo names its program too, without the statistics.
            programs.insert(
                id,
                ProgramRuns {
                    id: id as u32,
                    run_time_ns: field("run_time_ns").unwrap_or(0),
                    run_cnt,
                    recursion_misses: field("recursion_misses").unwrap_or(0),
                },
            );
        }
    }
    (
        maps.into_values().collect(),
        programs.into_values().collect(),
    )
}

/// A counter of `/proc/<pid>/net/netstat` (the process's network namespace), e.g.
/// `("TcpExt", "ListenOverflows")`.
pub fn netstat(pid: u32, group: &str, name: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/netstat")).ok()?;
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
    // Pairs of lines: the names, then the values.
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let position = names.split_whitespace().position(|n| n == name);
        if let Some(position) = position {
            return values.split_whitespace().nth(position)?.parse().ok();
        }
    }
    None
}

/// `/proc/sys/...` as a string, trimmed.
pub fn sysctl(path: &str) -> Option<String> {
    fs::read_to_string(Path::new("/proc/sys").join(path))
        .ok()
        .map(|text| text.trim().to_owned())
}

/// CPU seconds the whole machine spent busy since boot (`/proc/stat`: all but idle
/// and iowait), to see how much other processes took during a run.
pub fn host_busy_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = ticks.iter().take(8).sum::<u64>()
        - ticks.get(3).copied().unwrap_or(0)
        - ticks.get(4).copied().unwrap_or(0);
    busy as f64 / clock_ticks_per_second()
}
