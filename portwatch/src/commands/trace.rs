//! The tracing loop shared by `stream`, `report`, `record` and `demo`: attach, hand every kernel record
//! to the caller until a stop is requested, detach, and say what was lost.
use std::time::Duration;

use anyhow::{Context as _, Result};

use portwatch_common::Collect;

use crate::{
    bpf::{KernelCounters, KernelPath, Tracer},
    cli::KernelArgs,
    clock::monotonic_ns,
    event::{CloseWaitSocket, DecodeError, FlowCount},
    sockets::table::Seed,
};

/// How often the counting path's maps are read: the resolution of its rates.
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// What a traced window was, besides its records.
pub struct Traced {
    pub start_ns: u64,
    pub end_ns: u64,
    pub counters: KernelCounters,
    /// Whether the kernel's records carried network namespaces (see `Tracer`).
    pub netns_known: bool,
    pub path: KernelPath,
}

/// Where a traced window goes.
pub trait Sink {
    /// Before anything is loaded: create output files, start child processes. What can
    /// fail fails here, before a window is spent tracing for nothing.
    fn prepare(&mut self) -> Result<()> {
        Ok(())
    }
    /// Tracing began at `start_ns` (CLOCK_MONOTONIC) with these sockets already open;
    /// called once, before any record. An error ends tracing at once.
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()>;
    /// One kernel record, in order.
    fn record(&mut self, bytes: &[u8]);
    /// A batch of records ended (the ring was drained): where output is flushed.
    /// Returns false to stop tracing, e.g. when the output went away.
    fn batch_done(&mut self) -> bool {
        true
    }
    /// How often the sink wants the kernel's loss counters while tracing (None: only
    /// at the end, in [`Traced`]); a long-running sink shows them as they grow.
    fn counters_every(&self) -> Option<Duration> {
        None
    }
    /// The kernel's loss counters now, every [`Sink::counters_every`].
    fn counters(&mut self, _counters: &KernelCounters) {}
    /// How the kernel hands transitions over: one record each (the default), or counts
    /// for a sink that only summarises (see portwatch-ebpf's `counting`).
    fn collect(&self) -> Collect {
        Collect::Records
    }
    /// Counting path: what the flows did over `(from_ns, to_ns]`, and the sockets in
    /// CLOSE_WAIT at `to_ns`; every second, and once more after the last record.
    fn counts(
        &mut self,
        _from_ns: u64,
        _to_ns: u64,
        _flows: &[FlowCount],
        _close_waits: &[CloseWaitSocket],
    ) {
    }
}

/// Reads the counting path's maps and hands what changed to the sink.
#[derive(Default)]
struct Counts {
    last_ns: u64,
    readings: Vec<crate::bpf::FlowReading>,
    close_wait_entries: Vec<(u64, portwatch_common::CloseWaitEntry)>,
    flows: Vec<FlowCount>,
    close_waits: Vec<CloseWaitSocket>,
    warned: bool,
}

impl Counts {
    fn read(&mut self, tracer: &mut Tracer, sink: &mut impl Sink) {
        let Some(reader) = tracer.counts() else {
            return;
        };
        let now_ns = monotonic_ns();
        let read = reader
            .read_flows(&mut self.readings)
            .and_then(|()| reader.read_close_waits(&mut self.close_wait_entries));
        if let Err(err) = read {
            if !std::mem::replace(&mut self.warned, true) {
                eprintln!("portwatch: warning: {err:#}; counts are missing from this reading");
            }
            return;
        }
        let decoded: Result<(), DecodeError> = (|| {
            self.flows.clear();
            for (key, now, before) in &self.readings {
                self.flows.push(FlowCount::between(key, now, before)?);
            }
            self.close_waits.clear();
            for (sock, entry) in &self.close_wait_entries {
                self.close_waits
                    .push(CloseWaitSocket::decode(*sock, entry)?);
            }
            Ok(())
        })();
        if let Err(err) = decoded {
            // The kernel writes only what portwatch-common defines: this is a bug.
            eprintln!("portwatch: warning: undecodable kernel counts ({err}); skipped");
            return;
        }
        sink.counts(self.last_ns, now_ns, &self.flows, &self.close_waits);
        self.last_ns = now_ns;
    }
}

/// Traces until Ctrl-C, SIGTERM or `duration`, feeding `sink`.
pub async fn trace(
    kernel: &KernelArgs,
    duration: Option<Duration>,
    what: &str,
    sink: &mut impl Sink,
) -> Result<Traced> {
    let mut stop = super::StopSignal::install(duration).context("installing signal handlers")?;
    crate::bpf::environment::check_privileges()?;
    sink.prepare()?;
    let options = crate::bpf::TracerOptions {
        collect: sink.collect(),
        ..kernel.options()
    };
    let (mut tracer, mut reader) = Tracer::start(&options)?;
    super::warn_about_missing_features(tracer.features(), tracer.path());
    let start_ns = monotonic_ns();
    let mut counts = Counts {
        last_ns: start_ns,
        ..Counts::default()
    };
    // After attaching, so no socket falls between the snapshot and the first event.
    let seeds = super::startup::seeds(&mut tracer);
    // Namespaces created later must still be entered (their sockets, port settings and
    // pod names): one thread keeps CAP_SYS_ADMIN for that alone, started before the drop.
    if let Err(err) = crate::sockets::netns::keep_entering() {
        eprintln!(
            "portwatch: warning: could not start the thread that enters namespaces ({err}); \
             namespaces are read only as they were at the start"
        );
    }
    // Attached, and the listeners' owners written: what only loading needed can go,
    // before the sink starts any thread (capabilities are per thread).
    if let Err(err) = crate::privileges::drop_after_attach(&tracer) {
        eprintln!("portwatch: warning: could not drop the capabilities only loading needs: {err}");
    }
    sink.start(start_ns, seeds)?;
    match duration {
        Some(duration) => eprintln!(
            "portwatch: {what} for {} ({}); Ctrl-C to stop early",
            humantime::format_duration(duration),
            tracer.path().describe()
        ),
        None => eprintln!(
            "portwatch: {what} until Ctrl-C ({})",
            tracer.path().describe()
        ),
    }
    let mut counters_tick = sink.counters_every().map(tokio::time::interval);
    let mut counts_tick = (tracer.path().collect == Collect::Counts).then(|| {
        tokio::time::interval_at(tokio::time::Instant::now() + COUNTS_EVERY, COUNTS_EVERY)
    });
    let counters_due = async |tick: &mut Option<tokio::time::Interval>| match tick {
        Some(tick) => {
            tick.tick().await;
        }
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            biased;
            () = stop.requested() => break,
            () = counters_due(&mut counts_tick) => counts.read(&mut tracer, sink),
            () = counters_due(&mut counters_tick) => match tracer.counters() {
                Ok(counters) => sink.counters(&counters),
                Err(err) => eprintln!("portwatch: warning: reading the kernel's counters: {err:#}"),
            },
            batch = reader.read_batch(|bytes| sink.record(bytes)) => {
                batch.context("reading the ring buffer")?;
                if !sink.batch_done() {
                    break;
                }
            }
        }
    }
    reader.drain(|bytes| sink.record(bytes));
    counts.read(&mut tracer, sink);
    sink.batch_done();
    let end_ns = monotonic_ns();
    let counters = tracer.counters()?;
    let netns_known = tracer.netns_known();
    let path = tracer.path();
    drop(tracer);
    Ok(Traced {
        start_ns,
        end_ns,
        counters,
        netns_known,
        path,
    })
}
