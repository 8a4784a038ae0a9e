//! Loads portwatch's eBPF object, attaches it, and owns it until dropped.
//!
//! Nothing is pinned: every program, link and map belongs to this process's file
//! descriptors, so dropping the [`Tracer`] (or the process dying, however it dies)
//! detaches everything.
use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use portwatch_common::{
    COUNTER_SLOTS, Collect, Counter, ListenerKey, NetnsOffsets, Owner, SockLayout, names,
};

use super::{
    counts::CountReader,
    ebpf_log::{self, EbpfLogLevel},
    environment::{self, Features},
    reader::EventReader,
};

/// The eBPF object built by build.rs from the portwatch-ebpf crate.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch.bpf.o"));

/// Load-time settings.
#[derive(Clone, Copy, Debug)]
pub struct TracerOptions {
    /// Ring-buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Capacity of the kernel's live-socket table.
    pub max_sockets: u32,
    /// The eBPF programs' diagnostics on stderr, from this level up; off by default.
    pub ebpf_log: EbpfLogLevel,
    /// One record per transition, or counts (see portwatch-ebpf's `counting`).
    pub collect: Collect,
    /// Which form of the state tracepoint may be attached.
    pub state_hook: StateHook,
}

impl Default for TracerOptions {
    fn default() -> Self {
        TracerOptions {
            ring_buffer_bytes: 8 << 20,
            max_sockets: 65536,
            ebpf_log: EbpfLogLevel::Off,
            collect: Collect::Records,
            state_hook: StateHook::Auto,
        }
    }
}

/// Which form of `sock:inet_sock_set_state` to attach the state program to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StateHook {
    /// The BTF-typed tracepoint where the kernel's BTF describes `struct sock` as the
    /// program reads it and the kernel loads the program; else the classic one.
    Auto,
    /// The classic tracepoint, whatever the kernel offers.
    Classic,
}

/// What was attached: the path the kernel's records and counts take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelPath {
    pub collect: Collect,
    /// True for the BTF-typed tracepoint (`tp_btf`), false for the classic one.
    pub btf_hook: bool,
}

impl KernelPath {
    /// As the report header and `--help` name it.
    pub fn describe(&self) -> &'static str {
        match (self.collect, self.btf_hook) {
            (Collect::Counts, true) => "counts, BTF tracepoint",
            (Collect::Counts, false) => "counts, classic tracepoint",
            (Collect::Records, true) => "records, BTF tracepoint",
            (Collect::Records, false) => "records, classic tracepoint",
        }
    }
}

/// Loss counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events lost because the ring buffer was full.
    pub ring_buffer_full: u64,
    /// Sockets the kernel table had no room for.
    pub socket_table_full: u64,
    /// Listener, accept or peer entries the kernel had no room for (owners missed).
    pub owner_table_full: u64,
    /// Counting path: transitions sent as records because `FLOWS` was full (nothing
    /// lost; each cost a record).
    pub flow_table_full: u64,
    /// Counting path: CLOSE_WAIT sockets followed by records because `CLOSE_WAITS` was
    /// full (nothing lost).
    pub close_wait_table_full: u64,
    /// Runs of portwatch's programs the kernel skipped because another eBPF program
    /// was running on that CPU (its recursion guard for kprobe and tracepoint programs,
    /// hit e.g. when a softirq interrupts one): each is an event that never existed.
    /// None where the kernel does not count them.
    pub skipped: Option<u64>,
}

impl KernelCounters {
    /// Sockets or owners the kernel's tables had no room for: what a report calls
    /// untracked.
    pub fn untracked(&self) -> u64 {
        // A full FLOWS sends transitions as records instead (nothing lost), but the
        // close that could not be counted loses its socket's who-closed-first note.
        self.socket_table_full + self.owner_table_full + self.flow_table_full
    }
}

/// portwatch's programs, loaded and attached.
pub struct Tracer {
    // aya detaches every program and closes every map when `ebpf` is dropped.
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    features: Features,
    /// Whether events carry network namespaces (false: the kernel's BTF had no offsets
    /// for them, and every `netns` is 0).
    netns_known: bool,
    path: KernelPath,
    /// The counting path's maps; None on the records path.
    counts: Option<CountReader>,
    /// Reads the eBPF log while `--ebpf-log` is on; stops when dropped.
    _log_task: Option<ebpf_log::LogTask>,
}

impl Tracer {
    /// Checks the environment, loads the programs and attaches them. Returns the tracer
    /// and the reader of its events.
    pub fn start(options: &TracerOptions) -> Result<(Tracer, EventReader)> {
        check_ring_buffer_size(options.ring_buffer_bytes)?;
        let (tracefs, features) = environment::prepare()?;

        let wakeup_bytes = wakeup_bytes(options.ring_buffer_bytes);
        let log_level = options.ebpf_log.kernel_value();
        // The kernel's BTF is read twice just below (the namespace offsets', aya's), a
        // few MB each time. glibc would serve the second reading from heap kept after the
        // first was freed (its mmap threshold rises with each large free) and keep it,
        // beside the ring buffer mapped next: a fixed threshold gives every large buffer
        // back when freed (`report` peaked at 35 MiB without it, 24 with).
        // SAFETY: mallopt only changes the allocator's tuning; any value is valid.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
        let (netns_offsets, sock_layout) = btf_offsets(options.state_hook);
        let counting = options.collect == Collect::Counts;
        let collect = options.collect as u32;
        let sock_layout_global = sock_layout.as_ref().map_or(SockLayout::default(), |l| *l);
        // The path a mode does not use costs nothing: its maps shrink to one entry.
        let (peers, flows, close_waits) = if counting {
            (1, flow_capacity(options.max_sockets), options.max_sockets)
        } else {
            (options.max_sockets, 1, 1)
        };
        // The loader holds the kernel's BTF, parsed (about 15 MB): it goes as soon as the
        // object is loaded, before anything else portwatch allocates adds to the peak.
        let mut ebpf = {
            let mut loader = EbpfLoader::new();
            loader
                .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
                .override_global(names::NETNS_OFFSETS, &netns_offsets, true)
                .override_global(names::COLLECT, &collect, true)
                .override_global(names::SOCK_LAYOUT, &sock_layout_global, true)
                .map_max_entries(names::EVENTS, options.ring_buffer_bytes)
                .map_max_entries(names::SOCKETS, options.max_sockets)
                .map_max_entries(names::PEERS, peers)
                .map_max_entries(names::FLOWS, flows)
                .map_max_entries(names::CLOSE_WAITS, close_waits);
            if counting {
                loader.map_max_entries(names::ACCEPTS, 1);
            }
            ebpf_log::configure(&mut loader, options.ebpf_log, &log_level);
            loader.load(EBPF_OBJECT)
        }
        .map_err(|err| load_error(err.into()))?;

        // Before attaching, so the log shows from the first event.
        let log_task = ebpf_log::start(&mut ebpf, options.ebpf_log)?;

        // Attach the optional hooks first: the state program's events carry what they
        // learn, so it should not run without them. The counting path attaches no
        // `syscalls:*` tracepoint: while one is attached, every system call of every
        // process takes the kernel's slow path.
        if !counting && features.accept_hook.is_ok() {
            attach(
                &mut ebpf,
                names::PROG_ACCEPT_ENTER,
                &environment::ACCEPT_ENTER_TRACEPOINTS,
            )?;
            attach(
                &mut ebpf,
                names::PROG_ACCEPT_EXIT,
                &environment::ACCEPT_EXIT_TRACEPOINTS,
            )?;
        }
        if features.exit_hook.is_ok() {
            attach(
                &mut ebpf,
                names::PROG_PROCESS_EXIT,
                &[environment::EXIT_TRACEPOINT],
            )?;
        }
        if !counting && features.connect_hook.is_ok() {
            attach(
                &mut ebpf,
                names::PROG_CONNECT_EXIT,
                &[environment::CONNECT_EXIT_TRACEPOINT],
            )?;
        }
        let btf_hook = match sock_layout {
            Ok(_) => match attach_btf_state(&mut ebpf) {
                Ok(()) => true,
                Err(err) => {
                    eprintln!(
                        "portwatch: note: the BTF-typed TCP state tracepoint did not load \
                         ({err:#}); using the classic one, which costs a little more per \
                         transition"
                    );
                    false
                }
            },
            Err(_) => false,
        };
        if !btf_hook {
            attach(
                &mut ebpf,
                names::PROG_INET_SOCK_SET_STATE,
                &[environment::STATE_TRACEPOINT],
            )
            .with_context(|| format!("tracefs at {}", tracefs.display()))?;
        }
        let counts = if counting {
            Some(CountReader::new(&mut ebpf)?)
        } else {
            None
        };

        let ring = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("no EVENTS map")?)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map(names::COUNTERS).context("no COUNTERS map")?)?;
        let reader_state = Array::try_from(ebpf.take_map(names::READER).context("no READER map")?)?;
        let reader = EventReader::new(ring, reader_state)
            .context("registering the ring buffer with tokio")?;
        Ok((
            Tracer {
                ebpf,
                counters,
                features,
                netns_known: netns_offsets.enabled != 0,
                path: KernelPath {
                    collect: options.collect,
                    btf_hook,
                },
                counts,
                _log_task: log_task,
            },
            reader,
        ))
    }

    /// Which optional hooks run on this kernel, and why not where they do not.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Whether events carry their socket's network namespace.
    pub fn netns_known(&self) -> bool {
        self.netns_known
    }

    /// Which path and hook were attached.
    pub fn path(&self) -> KernelPath {
        self.path
    }

    /// The counting path's maps; None on the records path.
    pub fn counts(&mut self) -> Option<&mut CountReader> {
        self.counts.as_mut()
    }

    /// Tells the kernel who owns a listening socket that predates portwatch (on `port`
    /// in network namespace `netns`), so the sockets it creates start with that owner.
    pub fn seed_listener(&mut self, netns: u32, port: u16, owner: &Owner) -> Result<()> {
        let mut listeners: BpfHashMap<_, ListenerKey, Owner> = BpfHashMap::try_from(
            self.ebpf
                .map_mut(names::LISTENERS)
                .context("no LISTENERS map")?,
        )?;
        // Without namespaces the kernel keys every listener under netns 0.
        let netns = if self.netns_known { netns } else { 0 };
        let key = ListenerKey {
            netns,
            port,
            _pad: 0,
        };
        listeners.insert(key, owner, 0)?;
        Ok(())
    }

    /// What the kernel could not deliver so far.
    pub fn counters(&self) -> Result<KernelCounters> {
        let sum = |counter: Counter| -> Result<u64> {
            let per_cpu = self.counters.get(&(counter as u32), 0)?;
            Ok(per_cpu.iter().sum())
        };
        debug_assert_eq!(COUNTER_SLOTS, 5);
        Ok(KernelCounters {
            ring_buffer_full: sum(Counter::RingBufFull)?,
            socket_table_full: sum(Counter::SocketTableFull)?,
            owner_table_full: sum(Counter::OwnerTableFull)?,
            flow_table_full: sum(Counter::FlowTableFull)?,
            close_wait_table_full: sum(Counter::CloseWaitTableFull)?,
            skipped: self.skipped_runs(),
        })
    }

    /// The kernel's `recursion_misses` of each program, summed. The counter is in
    /// /proc/<pid>/fdinfo since Linux 5.12, but counts skipped tracepoint runs only since
    /// 6.7 ("bpf: Count missed stats in trace_call_bpf"); before, it reads 0 whatever
    /// was skipped, so it is not reported at all.
    fn skipped_runs(&self) -> Option<u64> {
        let counts = aya::util::KernelVersion::current()
            .is_ok_and(|version| version >= aya::util::KernelVersion::new(6, 7, 0));
        if !counts {
            return None;
        }
        let mut total = 0;
        for (_, program) in self.ebpf.programs() {
            let fd = program.fd().ok()?.as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            total += recursion_misses(&info)?;
        }
        Some(total)
    }

    /// The kernel ids of the loaded programs, for tests that check detach.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, program)| program.info().ok().map(|info| info.id()))
            .collect()
    }
}

/// The `recursion_misses:` line of a BPF program's fdinfo.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|count| count.trim().parse().ok())
}

/// How many flows (owner and destination, per CPU that counted for it) the counting
/// path's `FLOWS` holds: a quarter of the sockets, at least 4096, and at least 1024 per
/// CPU, for a few hundred busy flows that every CPU counts for. Past it, transitions
/// go to the ring buffer as records, so a full map costs records rather than counts.
fn flow_capacity(max_sockets: u32) -> u32 {
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    let per_cpus = u32::try_from(cpus.saturating_mul(1024)).unwrap_or(u32::MAX);
    (max_sockets / 4).max(4096).max(per_cpus.min(1 << 18))
}

/// From the kernel's BTF, in one reading: where the programs find network namespaces,
/// and (unless `hook` says classic) whether `struct sock` is laid out as the BTF-typed
/// state program reads it (Err says why not, and the classic tracepoint is used).
fn btf_offsets(hook: StateHook) -> (NetnsOffsets, Result<SockLayout>) {
    let btf = match super::btf::Btf::from_sys_fs() {
        Ok(Ok(btf)) => Ok(btf),
        Ok(Err(err)) => Err(anyhow::Error::from(err)),
        Err(err) => Err(anyhow::Error::from(err).context("reading /sys/kernel/btf/vmlinux")),
    };
    let sock_layout = match (&btf, hook) {
        (_, StateHook::Classic) => Err(anyhow::anyhow!("--state-hook classic")),
        (Ok(btf), StateHook::Auto) => btf.sock_layout().map_err(anyhow::Error::from),
        (Err(err), StateHook::Auto) => Err(anyhow::anyhow!("{err:#}")),
    };
    let netns = btf.and_then(|btf| btf.netns_offsets().map_err(anyhow::Error::from));
    (netns_offsets(netns), sock_layout)
}

/// Loads the state program on the BTF-typed tracepoint and attaches it.
fn attach_btf_state(ebpf: &mut Ebpf) -> Result<()> {
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut(names::PROG_INET_SOCK_SET_STATE_BTF)
        .context("the eBPF object has no BTF-typed state program")?
        .try_into()?;
    program.load("inet_sock_set_state", &btf)?;
    program.attach()?;
    Ok(())
}

/// The offsets the programs read network namespaces through, from the kernel's BTF;
/// without BTF or the fields, disabled with one warning: events then carry netns 0 and
/// sockets of different namespaces are told apart only by their kernel address.
fn netns_offsets(found: Result<NetnsOffsets>) -> NetnsOffsets {
    found.unwrap_or_else(|err| {
        eprintln!(
            "portwatch: warning: cannot find where the kernel keeps a socket's network \
             namespace ({err:#}); sockets are shown without their namespace (netns 0), and \
             servers on the same port in different namespaces (containers) may be confused. \
             A kernel with BTF (CONFIG_DEBUG_INFO_BTF) avoids this."
        );
        NetnsOffsets::default()
    })
}

/// Loads a tracepoint program and attaches it to each of `tracepoints`.
fn attach(ebpf: &mut Ebpf, program: &str, tracepoints: &[(&str, &str)]) -> Result<()> {
    let tracepoint: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("the eBPF object has no {program} program"))?
        .try_into()?;
    tracepoint.load().map_err(|err| load_error(err.into()))?;
    for &(category, name) in tracepoints {
        tracepoint
            .attach(category, name)
            .with_context(|| format!("attaching {program} to the {category}:{name} tracepoint"))?;
    }
    Ok(())
}

/// How far the collector may fall behind before a record wakes it rather than its timer
/// (see `WAKEUP_BYTES` in portwatch-ebpf and `reader`): an eighth of the ring, so a
/// burst wakes it long before the ring fills, while a steady stream never does.
fn wakeup_bytes(ring_buffer_bytes: u32) -> u64 {
    u64::from(ring_buffer_bytes / 8)
}

fn check_ring_buffer_size(bytes: u32) -> Result<()> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
    if !bytes.is_power_of_two() || bytes < page {
        bail!(
            "the ring buffer size must be a power of two of at least one page ({page} bytes), \
             got {bytes}"
        );
    }
    Ok(())
}

/// Turns a load failure into advice: EPERM usually means missing privileges or, before
/// Linux 5.11, a locked-memory limit too small for the ring buffer.
fn load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        anyhow::anyhow!(
            "the kernel refused to load portwatch's eBPF programs ({text}). This happens \
             without CAP_BPF/CAP_SYS_ADMIN, under a lockdown=confidentiality kernel, or on \
             kernels before 5.11 when the locked-memory limit is too low for the ring buffer: \
             try `ulimit -l unlimited` or a smaller --ring-buffer-size."
        )
    } else {
        err.context("loading portwatch's eBPF programs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursion_misses_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_id:\t9\n\
                      run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t3\n";
        assert_eq!(recursion_misses(fdinfo), Some(3));
        assert_eq!(recursion_misses("prog_type:\t5\nprog_id:\t9\n"), None);
    }
}
