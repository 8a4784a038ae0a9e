//! `portwatch report`: trace a window (or replay a recording), then name the leakers,
//! churners and exhausted destinations.
use std::io::{self, Write as _};

use anyhow::{Context as _, Result, bail};
use portwatch_common::Collect;

use crate::{
    cli::{ReportArgs, ReportFormat},
    commands::{
        record::FileSink,
        trace::{self, Sink},
    },
    detect::{
        model::Model,
        ports::PortBudget,
        report::{self, Context, Report},
    },
    event::{CloseWaitSocket, DecodeError, Event, FlowCount, decode},
    filter::{FailedConnectNetns, Filter},
    output,
    record::{self, Recording},
    sockets::table::Seed,
};

/// Whether the run found something at or above `--fail-on`.
pub enum Outcome {
    Clean,
    FailOn,
}

/// Feeds records to the model, counting the ones it cannot decode.
pub struct ModelSink {
    pub model: Model,
    pub undecodable: u64,
    /// Why the first undecodable record was.
    pub first_error: Option<DecodeError>,
    /// `--netns`: only this namespace's sockets (and failed connects) go into the model.
    pub filter: Filter,
    /// The namespace of each EADDRNOTAVAIL record, which carries none.
    failed_connects: FailedConnectNetns,
    /// How the kernel hands transitions over.
    pub collect: Collect,
}

impl ModelSink {
    pub fn new(model: Model) -> Self {
        ModelSink {
            model,
            undecodable: 0,
            first_error: None,
            filter: Filter::default(),
            failed_connects: FailedConnectNetns::default(),
            collect: Collect::Records,
        }
    }

    /// Counts rather than records (see portwatch-ebpf's `counting`).
    pub fn collecting(mut self, collect: Collect) -> Self {
        self.collect = collect;
        self
    }

    /// Only the sockets of network namespace `netns`, if given.
    pub fn in_netns(mut self, netns: Option<u32>) -> Self {
        self.filter.netns = netns;
        self
    }
}

impl Sink for ModelSink {
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        self.model.start_ns = start_ns;
        self.model.last_ns = start_ns;
        if self.collect == Collect::Counts {
            self.model.count_portless_closes_as_failed_connects();
        }
        for seed in seeds {
            if self
                .filter
                .netns
                .is_none_or(|netns| netns == seed.tuple.netns)
            {
                self.model.seed(seed);
            }
        }
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        match decode(bytes) {
            Ok(event) if self.filter.netns.is_some() => {
                let wanted = match &event {
                    Event::Transition(transition) => {
                        self.failed_connects.note(transition);
                        self.filter.netns == Some(transition.netns)
                    }
                    // Charged to the namespace its thread's portless SYN_SENT -> CLOSE
                    // was in; the model pairs the two again for the destination.
                    Event::ConnectFailed(failed) => self
                        .filter
                        .matches_failed_connect(self.failed_connects.of(failed)),
                    Event::Accepted(_) | Event::Exited(_) => true,
                };
                if wanted {
                    self.model.apply(&event);
                }
            }
            Ok(event) => self.model.apply(&event),
            Err(err) => {
                self.undecodable += 1;
                self.first_error.get_or_insert(err);
            }
        }
    }

    fn collect(&self) -> Collect {
        self.collect
    }

    fn counts(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        self.model
            .apply_counts_in(self.filter.netns, from_ns, to_ns, flows, close_waits);
    }
}

pub async fn run(args: ReportArgs) -> Result<Outcome> {
    let report = match &args.replay {
        Some(path) => replay(path, &args)?,
        None => live(&args).await?,
    };
    let mut out = io::stdout().lock();
    let written = match args.format {
        ReportFormat::Text => output::report::text(&mut out, &report),
        ReportFormat::Json => output::report::json(&mut out, &report),
    };
    match written.and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the report")?,
    }
    let failed = args
        .fail_on
        .is_some_and(|level| report.findings.iter().any(|f| f.severity >= level));
    Ok(if failed {
        Outcome::FailOn
    } else {
        Outcome::Clean
    })
}

/// A live report's sink: the model, and with `--record` the recording file too.
struct LiveSink {
    model: ModelSink,
    file: Option<FileSink>,
}

impl Sink for LiveSink {
    fn prepare(&mut self) -> Result<()> {
        match &mut self.file {
            Some(file) => file.prepare(),
            None => Ok(()),
        }
    }

    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        if let Some(file) = &mut self.file {
            file.start(start_ns, seeds.clone())?;
        }
        self.model.start(start_ns, seeds)
    }

    fn record(&mut self, bytes: &[u8]) {
        if let Some(file) = &mut self.file {
            file.record(bytes);
        }
        self.model.record(bytes);
    }

    /// A recording that cannot be written stops the run: its error is `finish`'s.
    fn batch_done(&mut self) -> bool {
        self.file.as_mut().is_none_or(FileSink::batch_done)
    }

    /// A recording needs every record.
    fn collect(&self) -> Collect {
        match self.file {
            Some(_) => Collect::Records,
            None => self.model.collect(),
        }
    }

    fn counts(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        self.model.counts(from_ns, to_ns, flows, close_waits);
    }
}

async fn live(args: &ReportArgs) -> Result<Report> {
    let mut settings = PortBudget::read().context("reading net.ipv4.ip_local_port_range")?;
    let mut live = LiveSink {
        model: ModelSink::new(Model::with_limits(0, args.summary.limits()))
            .in_netns(args.netns)
            .collecting(args.summary.collect.kernel()),
        file: args
            .record
            .as_deref()
            .map(|path| FileSink::new(path, settings.host.clone())),
    };
    let traced = trace::trace(
        &args.summary.kernel,
        Some(args.duration),
        "tracing",
        &mut live,
    )
    .await?;
    // Namespaces that came up while tracing, and settings changed meanwhile.
    settings.read_namespaces();
    let mut sink = live.model;
    // Owners the kernel could not learn for certain: one look at /proc, now, shared
    // with the recording so a replay resolves them the same way.
    let holders = if live.file.is_some() || sink.model.table.unresolved() > 0 {
        crate::commands::startup::holders_now(traced.netns_known)
    } else {
        Default::default()
    };
    sink.model.table.resolve(&holders);
    if let Some(file) = live.file {
        file.finish(&traced, &holders, &settings)?;
    }
    let workload = |pid: u32| crate::commands::startup::workload(pid);
    let context = Context {
        settings: &settings,
        thresholds: &args.summary.thresholds(),
        dropped: traced.counters.ring_buffer_full,
        undecodable: sink.undecodable,
        untracked: traced.counters.untracked(),
        skipped: traced.counters.skipped,
        workload: &workload,
    };
    let mut report = report::build(&sink.model, traced.end_ns, &context);
    report.events.attached(traced.path);
    Ok(report)
}

fn replay(path: &std::path::Path, args: &ReportArgs) -> Result<Report> {
    let recording = record::read(path)?;
    replay_recording(&recording, args).with_context(|| format!("replaying {}", path.display()))
}

/// A recording's report: the same code as a live run's, over the recorded records, with
/// what /proc said taken from the recording (never from this machine's /proc).
pub fn replay_recording(recording: &Recording, args: &ReportArgs) -> Result<Report> {
    let mut sink = ModelSink::new(Model::with_limits(
        recording.header.start_ns,
        args.summary.limits(),
    ))
    .in_netns(args.netns);
    let seeds = recording
        .header
        .seeds
        .iter()
        .map(Seed::try_from)
        .collect::<Result<Vec<_>>>()?;
    sink.start(recording.header.start_ns, seeds)?;
    for bytes in &recording.records {
        sink.record(bytes);
    }
    let total = recording.records.len() as u64;
    if total > 0 && sink.undecodable == total {
        let err = sink
            .first_error
            .map(|err| err.to_string())
            .unwrap_or_default();
        bail!(
            "none of its {total} records could be decoded ({err}): it was made by a \
             portwatch whose records this one does not read; replay it with that portwatch"
        );
    }
    let trailer = &recording.trailer;
    sink.model.table.resolve(&trailer.holders());
    let workload = |pid: u32| trailer.workloads.get(&pid).cloned();
    let budget = recording.budget();
    let context = Context {
        settings: &budget,
        thresholds: &args.summary.thresholds(),
        dropped: trailer.dropped,
        undecodable: sink.undecodable,
        untracked: trailer.untracked,
        skipped: trailer.skipped,
        workload: &workload,
    };
    Ok(report::build(&sink.model, trailer.end_ns, &context))
}
