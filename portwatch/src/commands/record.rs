//! `portwatch record`: save a window's kernel records for `report --replay`.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use rustc_hash::FxHashSet;

use crate::{
    cli::RecordArgs,
    commands::{
        startup,
        trace::{self, Sink, Traced},
    },
    detect::ports::PortBudget,
    event::{Comm, Event, decode},
    record::{self, Header, RecordedHolder, RecordedSeed, Trailer, Writer},
    sockets::{table::Seed, tuple::Tuple},
};

/// Writes a window to a recording file. Also used by `report --record`.
pub struct FileSink {
    writer: Option<Writer>,
    header: Header,
    path: PathBuf,
    error: Option<anyhow::Error>,
    pub records: u64,
    /// Every process the records name, whose workload the trailer keeps.
    pids: FxHashSet<u32>,
}

impl FileSink {
    pub fn new(path: &Path, settings: crate::detect::ports::PortSettings) -> Self {
        FileSink {
            writer: None,
            header: Header {
                start_ns: 0,
                settings,
                seeds: Vec::new(),
                endian: record::native_endian(),
                layout: Some(portwatch_common::RECORD_LAYOUT_VERSION),
            },
            path: path.to_owned(),
            error: None,
            records: 0,
            pids: FxHashSet::default(),
        }
    }

    /// Writes the trailer: the end of the window, its losses, `holders` (who held each
    /// connected socket at the end, `startup::holders_now`) and the workload of each
    /// process the records name, as /proc says now: what a live report would ask it.
    pub fn finish(
        self,
        traced: &Traced,
        holders: &HashMap<Tuple, (u32, Comm)>,
        budget: &PortBudget,
    ) -> Result<()> {
        let context = || format!("writing {}", self.path.display());
        if let Some(err) = self.error {
            return Err(err).with_context(context);
        }
        let writer = self.writer.context("the recording was never started")?;
        let holders = holders
            .iter()
            .map(|(tuple, &(pid, comm))| RecordedHolder {
                netns: tuple.netns,
                saddr: tuple.saddr,
                sport: tuple.sport,
                daddr: tuple.daddr,
                dport: tuple.dport,
                pid,
                comm: comm.to_string(),
            })
            .collect();
        let workloads = self
            .pids
            .iter()
            .filter_map(|&pid| Some((pid, startup::workload(pid)?)))
            .collect();
        writer
            .finish(&Trailer {
                end_ns: traced.end_ns,
                dropped: traced.counters.ring_buffer_full,
                untracked: traced.counters.untracked(),
                skipped: traced.counters.skipped,
                holders,
                workloads,
                netns_settings: budget.by_netns.clone(),
            })
            .with_context(context)
    }
}

impl Sink for FileSink {
    /// Creates the file now, so a path that cannot be written is said before tracing,
    /// not after the window. The header (the window's start, the sockets open then)
    /// replaces it once tracing has begun.
    fn prepare(&mut self) -> Result<()> {
        std::fs::File::create(&self.path)
            .map(drop)
            .with_context(|| format!("creating the recording {}", self.path.display()))
    }

    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        self.header.start_ns = start_ns;
        self.header.seeds = seeds.iter().map(RecordedSeed::from).collect();
        let writer = Writer::create(&self.path, &self.header)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.writer = Some(writer);
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        let pid = match decode(bytes) {
            Ok(Event::Transition(t)) => t.owner.map(|owner| owner.pid),
            Ok(Event::Accepted(accepted)) => Some(accepted.owner.pid),
            Ok(Event::ConnectFailed(failed)) => Some(failed.task.pid),
            Ok(Event::Exited(_)) | Err(_) => None,
        };
        self.pids.extend(pid.filter(|&pid| pid != 0));
        if let Some(writer) = &mut self.writer
            && self.error.is_none()
        {
            match writer.record(bytes) {
                Ok(()) => self.records += 1,
                Err(err) => self.error = Some(err.into()),
            }
        }
    }

    /// Stops tracing once a write failed (disk full, say): `finish` says why.
    fn batch_done(&mut self) -> bool {
        self.error.is_none()
    }
}

pub async fn run(args: RecordArgs) -> Result<()> {
    let mut budget = PortBudget::read().context("reading net.ipv4.ip_local_port_range")?;
    let mut sink = FileSink::new(&args.out, budget.host.clone());
    let traced = trace::trace(&args.kernel, Some(args.duration), "recording", &mut sink).await?;
    let records = sink.records;
    // Namespaces that came up while tracing, and settings changed meanwhile.
    budget.read_namespaces();
    sink.finish(&traced, &startup::holders_now(traced.netns_known), &budget)?;
    eprintln!(
        "portwatch: recorded {records} events to {} ({} dropped); `portwatch report --replay {}` reads it",
        args.out.display(),
        traced.counters.ring_buffer_full,
        args.out.display()
    );
    if let Some(skipped) = traced.counters.skipped.filter(|&n| n > 0) {
        eprintln!(
            "portwatch: {skipped} events were skipped by the kernel (another eBPF program was \
             running on that CPU); the replay's report marks the window incomplete"
        );
    }
    Ok(())
}
