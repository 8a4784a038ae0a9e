//! `cargo xtask bench --scale`: portwatch's memory with many live connections, and
//! whether it stays flat while they are replaced.
//!
//! Under `portwatch report --max-sockets M`, hold-clients open `--connections` loopback
//! connections to hold-servers and keep them (so the kernel and portwatch track twice
//! as many sockets: both ends are on this host); then, all at once on a `go`, each
//! client replaces its oldest connection with a new one at `--churn-rate` for
//! `--churn-duration`. Each TIME_WAIT the replacements leave is charged for 60 s, so
//! portwatch's memory should level off about a minute into the churn.
//!
//! A process may hold only as many descriptors as its hard RLIMIT_NOFILE, which may be
//! low and not raisable (without CAP_SYS_RESOURCE): the connections are spread over as
//! many client and server processes as that takes. Each server listens on two
//! 127.0.0.x addresses, and each (address, port) has its own ephemeral-port budget.
use std::{
    fs,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{
    agent::{self, Agent},
    netns::Netns,
    process::{Listen, Process},
    procfs::{self, MapMemory},
    workload,
};

#[derive(Debug, Args)]
#[command(next_help_heading = "Scale run (--scale)")]
pub struct ScaleArgs {
    /// Connections to hold open (each is two sockets on this host).
    #[arg(long, default_value_t = 100_000)]
    connections: u64,

    /// portwatch's --max-sockets: must hold both ends of every connection.
    #[arg(long, default_value_t = 262_144)]
    max_sockets: u32,

    /// Connections replaced per second, over all clients, once all are open.
    #[arg(long, default_value_t = 2000.0)]
    churn_rate: f64,

    /// How long to replace connections; longer than TIME_WAIT's 60 s, to see memory
    /// level off.
    #[arg(long, default_value = "100s", value_parser = super::parse_duration)]
    churn_duration: Duration,
}

/// One sample of the timeline.
#[derive(Clone, Copy, Debug, Serialize)]
struct Sample {
    t_s: f64,
    rss_kib: u64,
    /// Of `rss_kib`, the collector's own memory (heap, stacks): RssAnon. The rest is
    /// mostly RssFile, in which the ring buffer's mapping (twice its size: the kernel
    /// maps its data pages twice) is kernel memory the maps' memlock already counts.
    anon_kib: u64,
    /// Peak RSS so far (VmHWM).
    hwm_kib: u64,
    /// TCP sockets in use in the workload's namespace, and TIME_WAIT ones.
    tcp_inuse: u64,
    tcp_tw: u64,
}

#[derive(Debug, Serialize)]
struct Phase {
    name: &'static str,
    start_s: f64,
}

#[derive(Debug, Serialize)]
struct ScaleResult {
    machine_cpus: usize,
    kernel: String,
    connections: u64,
    processes: u64,
    max_sockets: u32,
    churn_rate: f64,
    churn_s: f64,
    /// The table shows one sample in this many seconds (the JSON has them all).
    print_every_s: f64,
    command: String,
    /// portwatch right after it started tracing.
    idle_rss_kib: u64,
    /// With every connection open and settled: RSS, and of it RssAnon.
    held_rss_kib: u64,
    held_anon_kib: u64,
    held_tcp_inuse: u64,
    /// portwatch's eBPF maps as the kernel charges them.
    maps: Vec<NamedMap>,
    maps_total_bytes: u64,
    /// RSS at the end of the churn, and its growth over the churn's last 30 s.
    churn_end_rss_kib: u64,
    last_30s_growth_kib: i64,
    replaced: u64,
    peak_rss_kib: u64,
    report_events_seen: u64,
    report_events_dropped: u64,
    report_untracked: u64,
    phases: Vec<Phase>,
    timeline: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct NamedMap {
    name: String,
    #[serde(flatten)]
    map: MapMemory,
}

pub fn run(portwatch: &Path, workload: &Path, out_dir: &Path, args: &ScaleArgs) -> Result<()> {
    let per_process = descriptors_per_process()?;
    let processes = args.connections.div_ceil(per_process).max(1);
    if processes > 100 {
        bail!(
            "{processes} processes would be needed for {} connections",
            args.connections
        );
    }
    eprintln!(
        "xtask: bench --scale: {} connections over {processes} client and {processes} server \
         processes (at most {per_process} descriptors each)",
        args.connections
    );
    let netns = Netns::create(super::NETNS)?;
    let started = Instant::now();
    let mut phases = vec![Phase {
        name: "portwatch starts",
        start_s: 0.0,
    }];
    let report_out = out_dir.join("runs/scale-report.json");
    let options = agent::Options {
        max_sockets: Some(args.max_sockets),
        state_hook: None,
    };
    let mut report = agent::start(Agent::Report, portwatch, &report_out, &options)?;
    thread::sleep(Duration::from_secs(1));
    let idle_rss_kib = procfs::status_kib(report.pid(), "VmRSS").unwrap_or(0);

    // Servers first: their ready lines carry the ports.
    let mut servers = Vec::new();
    for i in 0..processes {
        let mut role = vec!["hold-server".to_owned()];
        for address in server_addresses(i) {
            role.extend(["--listen".to_owned(), format!("{address}:0")]);
        }
        let command = workload::command(&netns, workload, &role);
        let mut server = Process::spawn(command, "hold-server", Listen::Stdout)?;
        let port = ready_port(&mut server)?;
        servers.push((server, port));
    }
    let sampler = Sampler::start(report.pid(), servers[0].0.pid, started);
    phases.push(Phase {
        name: "opening",
        start_s: started.elapsed().as_secs_f64(),
    });
    let mut clients = Vec::new();
    let mut left = args.connections;
    for (i, (_, port)) in servers.iter().enumerate() {
        let count = left.min(args.connections.div_ceil(processes));
        left -= count;
        let mut role = vec!["hold-client".to_owned()];
        for address in server_addresses(i as u64) {
            role.extend(["--connect".to_owned(), format!("{address}:{port}")]);
        }
        role.extend([
            "--count".to_owned(),
            count.to_string(),
            "--churn-on-go".to_owned(),
            "--churn-rate".to_owned(),
            (args.churn_rate / processes as f64).to_string(),
            "--churn-duration".to_owned(),
            format!("{}ms", args.churn_duration.as_millis()),
        ]);
        let command = workload::command(&netns, workload, &role);
        let mut client = Process::spawn(command, "hold-client", Listen::Stdout)?;
        client.wait_word("ready", Duration::from_secs(10))?;
        clients.push(client);
    }
    for client in &mut clients {
        client.wait_word("held", Duration::from_secs(600))?;
    }
    phases.push(Phase {
        name: "all held",
        start_s: started.elapsed().as_secs_f64(),
    });
    // Let the last accepts and the collector settle.
    thread::sleep(Duration::from_secs(5));
    let held_rss_kib = procfs::status_kib(report.pid(), "VmRSS").unwrap_or(0);
    let held_anon_kib = procfs::status_kib(report.pid(), "RssAnon").unwrap_or(0);
    let held_tcp_inuse = sockstat(servers[0].0.pid).0;
    let maps = named_maps(report.pid());
    let maps_total_bytes = maps.iter().map(|m| m.map.memlock_bytes).sum();
    eprintln!(
        "xtask: bench --scale: {} connections held ({held_tcp_inuse} TCP sockets in use): \
         portwatch RSS {:.1} MiB, eBPF maps {:.1} MiB; churning for {:?}",
        args.connections,
        held_rss_kib as f64 / 1024.0,
        maps_total_bytes as f64 / (1 << 20) as f64,
        args.churn_duration
    );

    phases.push(Phase {
        name: "churning",
        start_s: started.elapsed().as_secs_f64(),
    });
    for client in &mut clients {
        client.tell("go")?;
    }
    let mut replaced = 0;
    for client in &mut clients {
        let done = client.wait_word("done", args.churn_duration + Duration::from_secs(120))?;
        replaced += done.get(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    phases.push(Phase {
        name: "churn done",
        start_s: started.elapsed().as_secs_f64(),
    });
    let churn_end_rss_kib = procfs::status_kib(report.pid(), "VmRSS").unwrap_or(0);
    thread::sleep(Duration::from_secs(2));
    let timeline = sampler.stop();
    report.workload_starts()?;
    let stopped = report.stop()?;
    let observed = agent::observe(&stopped, 0, 0, 0)?;
    let untracked = report_untracked(&stopped.output);
    drop(clients);
    drop(servers);

    let churn_start = phases[3].start_s;
    let churn_end = phases[4].start_s;
    let rss_at = |t: f64| {
        timeline
            .iter()
            .rfind(|s| s.t_s <= t)
            .map_or(0, |s| s.rss_kib)
    };
    let last_30s_growth_kib =
        rss_at(churn_end) as i64 - rss_at((churn_end - 30.0).max(churn_start)) as i64;
    let result = ScaleResult {
        machine_cpus: thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: procfs::sysctl("kernel/osrelease").unwrap_or_default(),
        connections: args.connections,
        processes,
        max_sockets: args.max_sockets,
        churn_rate: args.churn_rate,
        churn_s: args.churn_duration.as_secs_f64(),
        print_every_s: (timeline.last().map_or(0.0, |s| s.t_s) / 20.0)
            .ceil()
            .max(1.0),
        command: Agent::Report.command_line(&options),
        idle_rss_kib,
        held_rss_kib,
        held_anon_kib,
        held_tcp_inuse,
        maps,
        maps_total_bytes,
        churn_end_rss_kib,
        last_30s_growth_kib,
        replaced,
        peak_rss_kib: stopped.finished.peak_rss_kib,
        report_events_seen: observed.events_total,
        // report always says how many it dropped.
        report_events_dropped: observed.dropped.unwrap_or(0),
        report_untracked: untracked,
        phases,
        timeline,
    };
    print!("{}", table(&result));
    let json = serde_json::to_string_pretty(&result)?;
    fs::write(out_dir.join("scale-latest.json"), &json)?;
    eprintln!(
        "xtask: bench --scale: results in {}",
        out_dir.join("scale-latest.json").display()
    );
    Ok(())
}

fn table(r: &ScaleResult) -> String {
    use std::fmt::Write as _;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = String::new();
    let _ = writeln!(out, "\nscale: {}", r.command);
    let _ = writeln!(
        out,
        "{} connections held ({} TCP sockets in the workload's namespace) by {} client and \
         {} server processes",
        r.connections, r.held_tcp_inuse, r.processes, r.processes
    );
    let _ = writeln!(
        out,
        "portwatch RSS idle             {:>8.1} MiB",
        mib(r.idle_rss_kib)
    );
    let _ = writeln!(
        out,
        "portwatch RSS, all held        {:>8.1} MiB",
        mib(r.held_rss_kib)
    );
    let _ = writeln!(
        out,
        "portwatch RSS, end of churn    {:>8.1} MiB  ({} replaced at {}/s; {:+.1} MiB over its last 30 s)",
        mib(r.churn_end_rss_kib),
        r.replaced,
        r.churn_rate,
        r.last_30s_growth_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "portwatch peak RSS (at exit)   {:>8.1} MiB",
        mib(r.peak_rss_kib)
    );
    let _ = writeln!(
        out,
        "eBPF maps (kernel memlock)     {:>8.1} MiB",
        r.maps_total_bytes as f64 / (1 << 20) as f64
    );
    for map in &r.maps {
        let _ = writeln!(
            out,
            "  {:<12} type {:>2} max_entries {:>8} {:>10.1} KiB",
            map.name,
            map.map.map_type,
            map.map.max_entries,
            map.map.memlock_bytes as f64 / 1024.0
        );
    }
    let _ = writeln!(
        out,
        "report: {} events seen, {} dropped, {} untracked",
        r.report_events_seen, r.report_events_dropped, r.report_untracked
    );
    let _ = writeln!(
        out,
        "\n  time  phase             TCP in use  TIME_WAIT  portwatch RSS"
    );
    let mut next = 0.0;
    for sample in &r.timeline {
        if sample.t_s + 0.001 < next {
            continue;
        }
        next = sample.t_s + r.print_every_s;
        let phase = r
            .phases
            .iter()
            .rfind(|p| p.start_s <= sample.t_s)
            .map_or("", |p| p.name);
        let _ = writeln!(
            out,
            "{:>5.0}s  {:<17} {:>10} {:>10} {:>10.1} MiB ({:.1}) {:>8.1} MiB",
            sample.t_s,
            phase,
            sample.tcp_inuse,
            sample.tcp_tw,
            mib(sample.rss_kib),
            mib(sample.anon_kib),
            mib(sample.hwm_kib)
        );
    }
    out
}

/// Each server's two listening addresses: 127.0.0.10 and .11 for the first, and so on.
fn server_addresses(index: u64) -> [String; 2] {
    let base = 10 + 2 * index;
    [format!("127.0.0.{base}"), format!("127.0.0.{}", base + 1)]
}

fn ready_port(process: &mut Process) -> Result<u16> {
    let ready = process.wait_word("ready", Duration::from_secs(10))?;
    ready
        .get(1)
        .and_then(|port| port.parse().ok())
        .context("an actor's ready line has no port")
}

/// How many connections one actor process can hold: its hard limit on descriptors
/// (inherited from us; the actors raise their soft limit to it), less some headroom.
fn descriptors_per_process() -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    let nr_open: u64 = procfs::sysctl("fs/nr_open")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    // Root with CAP_SYS_RESOURCE may raise the hard limit up to fs.nr_open.
    let hard = if has_sys_resource() {
        nr_open
    } else {
        limit.rlim_max
    };
    Ok(hard.saturating_sub(100).clamp(100, 500_000))
}

fn has_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// `TCP: inuse N orphan O tw T ...` of the namespace `pid` lives in: in use and TIME_WAIT.
fn sockstat(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/net/sockstat")).unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) else {
        return (0, 0);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1)?.parse().ok())
            .unwrap_or(0)
    };
    (value("inuse"), value("tw"))
}

/// portwatch's maps with the names bpftool knows them by.
fn named_maps(pid: u32) -> Vec<NamedMap> {
    let (maps, _) = procfs::bpf_objects(pid);
    let names: Vec<serde_json::Value> = Command::new("bpftool")
        .args(["--json", "map", "show"])
        .output()
        .ok()
        .and_then(|output| serde_json::from_slice(&output.stdout).ok())
        .unwrap_or_default();
    maps.into_iter()
        .map(|map| {
            let name = names
                .iter()
                .find(|m| m["id"] == map.id)
                .and_then(|m| m["name"].as_str())
                .unwrap_or("?")
                .to_owned();
            NamedMap { name, map }
        })
        .collect()
}

/// `events.untracked` of a report (sockets the kernel table had no room for).
fn report_untracked(output: &Path) -> u64 {
    fs::read_to_string(output)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|report| report["events"]["untracked"].as_u64())
        .unwrap_or(0)
}

/// Samples portwatch's RSS and the namespace's sockets every second, on a thread.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(portwatch: u32, in_netns: u32, started: Instant) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (tcp_inuse, tcp_tw) = sockstat(in_netns);
                    let sample = Sample {
                        t_s: started.elapsed().as_secs_f64(),
                        rss_kib: procfs::status_kib(portwatch, "VmRSS").unwrap_or(0),
                        anon_kib: procfs::status_kib(portwatch, "RssAnon").unwrap_or(0),
                        hwm_kib: procfs::status_kib(portwatch, "VmHWM").unwrap_or(0),
                        tcp_inuse,
                        tcp_tw,
                    };
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sample);
                    thread::sleep(Duration::from_secs(1));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
