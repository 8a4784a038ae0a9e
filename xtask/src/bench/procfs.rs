//! What the benchmark reads about a process from /proc: CPU time, memory, the eBPF maps
//! and programs it holds, and its network namespace's TCP counters.
//!
//! The `procfs` crate (the one portwatch uses) parses what it knows: a process's stat
//! and status, its fd table, /proc/stat. It does not parse the key-value fdinfo of eBPF
//! maps and programs, nor /proc/<pid>/net/netstat: those few lines are read here.
use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result};
use procfs::{
    CurrentSI as _, KernelStats,
    process::{FDTarget, Process},
};

/// User plus system CPU seconds of the whole process so far (`/proc/<pid>/stat`
/// utime and stime). Still readable while the process is a zombie, which is how the
/// benchmark reads a stopped agent's total.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = process(pid)?
        .stat()
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok((stat.utime + stat.stime) as f64 / clock_ticks_per_second())
}

fn process(pid: u32) -> Result<Process> {
    let pid = i32::try_from(pid).with_context(|| format!("{pid} is not a PID"))?;
    Process::new(pid).with_context(|| format!("opening /proc/{pid}"))
}

fn clock_ticks_per_second() -> f64 {
    match procfs::ticks_per_second() {
        0 => 100.0,
        ticks => ticks as f64,
    }
}

/// A memory line of `/proc/<pid>/status` in KiB: `VmRSS`, `VmHWM` (peak RSS) or
/// `RssAnon`.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = process(pid).ok()?.status().ok()?;
    match key {
        "VmRSS" => status.vmrss,
        "VmHWM" => status.vmhwm,
        "RssAnon" => status.rssanon,
        _ => None,
    }
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
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProgramRuns {
    pub id: u32,
    /// The kernel's name of the program: its first 15 bytes only (`inet_sock_set_s`
    /// for both `inet_sock_set_state` and `inet_sock_set_state_btf`).
    pub name: String,
    /// The kernel's program type (`prog_type` in fdinfo: 5 tracepoint, 26 tracing,
    /// which is what tp_btf programs are).
    pub prog_type: u32,
    /// What the program runs on, from its name and type (see [`hook_name`]), e.g.
    /// `tp_btf/inet_sock_set_state` or `sock:inet_sock_set_state`.
    pub hook: String,
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
    let Ok(fds) = process(pid).and_then(|process| Ok(process.fd()?)) else {
        return (Vec::new(), Vec::new());
    };
    for fd in fds.flatten() {
        // eBPF objects are anonymous inodes: `anon_inode:bpf-map`, `anon_inode:bpf-prog`
        // (links, `bpf_link`, name a program too, without its statistics).
        let FDTarget::AnonInode(kind) = &fd.target else {
            continue;
        };
        if kind != "bpf-map" && kind != "bpf-prog" {
            continue;
        }
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.fd)) else {
            continue;
        };
        let field = |key: &str| fdinfo_field(&text, key);
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
            let prog_type = field("prog_type").unwrap_or(0) as u32;
            let name = program_name(id as u32).unwrap_or_default();
            programs.insert(
                id,
                ProgramRuns {
                    id: id as u32,
                    hook: hook_name(&name, prog_type),
                    name,
                    prog_type,
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

const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;

/// What a program of the benchmark's agents runs on, from the kernel's (15-byte) name
/// and the program type: portwatch's programs and the peers' are known by name; the
/// two state programs of portwatch share their first 15 bytes and differ by type.
pub fn hook_name(name: &str, prog_type: u32) -> String {
    let known = match (name, prog_type) {
        // portwatch's inet_sock_set_state and inet_sock_set_state_btf, tcplife's
        // inet_sock_set_state, tcpstates' handle_set_state.
        ("inet_sock_set_s" | "handle_set_stat", BPF_PROG_TYPE_TRACEPOINT) => {
            "sock:inet_sock_set_state"
        }
        ("inet_sock_set_s" | "handle_set_stat", BPF_PROG_TYPE_TRACING) => {
            "tp_btf/inet_sock_set_state"
        }
        ("inet_sock_set_s" | "handle_set_stat", BPF_PROG_TYPE_RAW_TRACEPOINT) => {
            "raw_tp/inet_sock_set_state"
        }
        ("accept_enter", BPF_PROG_TYPE_TRACEPOINT) => "syscalls:sys_enter_accept(4)",
        ("accept_exit", BPF_PROG_TYPE_TRACEPOINT) => "syscalls:sys_exit_accept(4)",
        ("connect_exit", BPF_PROG_TYPE_TRACEPOINT) => "syscalls:sys_exit_connect",
        ("process_exit", BPF_PROG_TYPE_TRACEPOINT) => "sched:sched_process_exit",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_owned();
    }
    let kind = match prog_type {
        BPF_PROG_TYPE_TRACEPOINT => "tracepoint".to_owned(),
        BPF_PROG_TYPE_RAW_TRACEPOINT => "raw_tracepoint".to_owned(),
        BPF_PROG_TYPE_TRACING => "tracing".to_owned(),
        other => format!("type {other}"),
    };
    match name {
        "" => format!("({kind})"),
        _ => format!("{name} ({kind})"),
    }
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `struct bpf_prog_info` up to and including `name` (offset 64, 16 bytes).
const PROG_INFO_LEN: usize = 80;
const PROG_INFO_NAME: usize = 64;

/// The kernel's name of program `id` (`bpf_prog_info.name`), by the bpf() system call:
/// fdinfo does not carry it. Needs CAP_SYS_ADMIN, which the benchmark has.
fn program_name(id: u32) -> Option<String> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    // union bpf_attr for BPF_PROG_GET_FD_BY_ID: prog_id, next_id, open_flags.
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: bpf() returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut info = [0u64; PROG_INFO_LEN / 8];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd, info_len, info (pointer).
    let mut attr = [0u8; 16];
    attr[..4].copy_from_slice(&std::os::fd::AsRawFd::as_raw_fd(&fd).to_ne_bytes());
    attr[4..8].copy_from_slice(&(PROG_INFO_LEN as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let bytes: Vec<u8> = info.iter().flat_map(|word| word.to_ne_bytes()).collect();
    let name = &bytes[PROG_INFO_NAME..PROG_INFO_LEN];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

const BPF_ENABLE_STATS: libc::c_long = 32;

/// Turns on the kernel's run-time statistics of every eBPF program for as long as the
/// returned descriptor is open (BPF_ENABLE_STATS, BPF_STATS_RUN_TIME; Linux 5.8+). Unlike
/// the kernel.bpf_stats_enabled sysctl, which is one value for the whole machine, this
/// is a reference: another process writing 0 to the sysctl meanwhile does not turn the
/// statistics off.
pub fn enable_bpf_stats() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // union bpf_attr for BPF_ENABLE_STATS: type (0, BPF_STATS_RUN_TIME).
    let mut attr = [0u8; 16];
    let fd = bpf(BPF_ENABLE_STATS, &mut attr)?;
    // SAFETY: bpf() returned a new descriptor that nothing else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// The bpf() system call with `attr`; its non-negative result.
fn bpf(cmd: libc::c_long, attr: &mut [u8; 16]) -> Option<i32> {
    // SAFETY: `attr` is a valid, writable union bpf_attr prefix of the length given, its
    // unused bytes zero; the only pointer in it (OBJ_GET_INFO_BY_FD's `info`) points to
    // a live, writable buffer of the `info_len` given.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    i32::try_from(result).ok().filter(|&fd| fd >= 0)
}

/// A `key:\tvalue` line of an fdinfo file, as a number.
fn fdinfo_field(fdinfo: &str, key: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().parse().ok()
    })
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
    let Ok(stat) = KernelStats::current() else {
        return 0.0;
    };
    busy_ticks(&stat.total) as f64 / clock_ticks_per_second()
}

/// user nice system irq softirq steal (guest time is inside user).
fn busy_ticks(cpu: &procfs::CpuTime) -> u64 {
    cpu.user
        + cpu.nice
        + cpu.system
        + cpu.irq.unwrap_or(0)
        + cpu.softirq.unwrap_or(0)
        + cpu.steal.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1055\nmap_type:\t27\n\
                   key_size:\t0\nvalue_size:\t0\nmax_entries:\t8388608\nmap_flags:\t0x0\n\
                   map_extra:\t0x0\nmemlock:\t8392704\nmap_id:\t297\nfrozen:\t0\n";
        assert_eq!(fdinfo_field(map, "map_id"), Some(297));
        assert_eq!(fdinfo_field(map, "memlock"), Some(8392704));
        assert_eq!(fdinfo_field(map, "map_extra"), None);
        assert_eq!(fdinfo_field(map, "prog_id"), None);
    }

    #[test]
    fn names_hooks() {
        assert_eq!(
            hook_name("inet_sock_set_s", 26),
            "tp_btf/inet_sock_set_state"
        );
        assert_eq!(hook_name("inet_sock_set_s", 5), "sock:inet_sock_set_state");
        assert_eq!(hook_name("handle_set_stat", 5), "sock:inet_sock_set_state");
        assert_eq!(hook_name("connect_exit", 5), "syscalls:sys_exit_connect");
        assert_eq!(hook_name("something", 5), "something (tracepoint)");
        assert_eq!(hook_name("", 2), "(type 2)");
    }

    /// This process, read through procfs: a sanity check that the fields are wired.
    #[test]
    fn own_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).unwrap() >= 0.0);
        assert!(status_kib(me, "VmRSS").unwrap() > 0);
        assert!(status_kib(me, "VmHWM").is_some());
        assert!(status_kib(me, "RssAnon").is_some());
        assert_eq!(status_kib(me, "VmNope"), None);
        assert!(host_busy_seconds() > 0.0);
    }
}
