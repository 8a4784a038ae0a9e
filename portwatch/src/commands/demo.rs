//! `portwatch demo`: the newcomer's first run. portwatch starts, as its own child
//! processes, a server that leaks CLOSE_WAIT sockets (and a client that feeds it), a
//! client that churns short connections against a well-behaved echo server, and a
//! healthy keep-alive client; traces them; and prints the report, which should name the
//! leaker and the churner and nobody else.
use std::io::{self, Write as _};

use anyhow::{Context as _, Result};
use portwatch_workload::{Launcher, WorkloadProcess};

use crate::{
    cli::{DemoArgs, ReportFormat},
    commands::{
        report::ModelSink,
        trace::{self, Sink},
    },
    detect::{
        model::{Limits, Model},
        ports::{PortBudget, PortSettings},
        report::{self, Context, Thresholds},
    },
    output, privileges,
    sockets::table::Seed,
};

/// Leaked connections the demo's leaker accumulates.
const LEAKS: &str = "25";
/// The churner's rate: well above the 20/s churn threshold, far below what loopback
/// sustains, so the demo is cheap.
const CHURN_RATE: &str = "200";

/// The demo's processes: started before portwatch attaches, so one that cannot start
/// says so before any window is spent; the clients wait for `go`, sent the moment
/// tracing begins, so every connection they make is seen.
struct DemoSink {
    inner: ModelSink,
    actors: Vec<WorkloadProcess>,
}

/// Indexes into `DemoSink::actors` of the processes that wait for `go`.
const CLIENTS: std::ops::Range<usize> = 2..5;

impl Sink for DemoSink {
    fn prepare(&mut self) -> Result<()> {
        self.actors = spawn_actors().context("starting the demo's processes")?;
        Ok(())
    }

    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        self.inner.start(start_ns, seeds)?;
        for client in &mut self.actors[CLIENTS] {
            client.tell("go").context("starting the demo's clients")?;
        }
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        self.inner.record(bytes);
    }

    fn collect(&self) -> portwatch_common::Collect {
        self.inner.collect()
    }

    fn counts(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        flows: &[crate::event::FlowCount],
        close_waits: &[crate::event::CloseWaitSocket],
    ) {
        self.inner.counts(from_ns, to_ns, flows, close_waits);
    }
}

fn spawn_actors() -> Result<Vec<WorkloadProcess>> {
    // This binary's hidden `actor` command: the demo needs no other program. Its
    // processes start before portwatch drops the capabilities loading needs, and those
    // are per thread: the threads that read their output drop them all at once.
    let exe = std::env::current_exe().context("finding portwatch's own executable")?;
    let servers =
        Launcher::new(&exe, ["actor"]).on_reader_threads(privileges::drop_all_in_this_thread);
    let clients = Launcher::new(&exe, ["actor", "--start-on-go"])
        .on_reader_threads(privileges::drop_all_in_this_thread);
    let leaker = servers.spawn(&["leak-server", "--listen", "127.0.0.1:0", "--leak-all"])?;
    let echo = servers.spawn(&["echo-server", "--listen", "127.0.0.1:0"])?;
    let leaker_addr = format!("127.0.0.1:{}", leaker.port);
    let feeder = clients.spawn(&["leak-client", "--connect", &leaker_addr, "--count", LEAKS])?;
    let echo_addr = format!("127.0.0.1:{}", echo.port);
    let churner = clients.spawn(&[
        "churn-client",
        "--connect",
        &echo_addr,
        "--rate",
        CHURN_RATE,
    ])?;
    let healthy = clients.spawn(&[
        "keepalive-client",
        "--connect",
        &echo_addr,
        "--interval",
        "100ms",
    ])?;
    eprintln!(
        "portwatch demo: started leak-server (pid {}) fed by leak-client (pid {}), \
         churn-client (pid {}, {CHURN_RATE}/s) and keepalive-client (pid {}) against \
         echo-server (pid {})",
        leaker.pid, feeder.pid, churner.pid, healthy.pid, echo.pid
    );
    Ok(vec![leaker, echo, feeder, churner, healthy])
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let settings = PortBudget::host_only(
        PortSettings::read().context("reading net.ipv4.ip_local_port_range")?,
    );
    let mut sink = DemoSink {
        inner: ModelSink::new(Model::with_limits(
            0,
            Limits {
                max_sockets: args.kernel.max_sockets as usize,
                ..Limits::default()
            },
        ))
        .collecting(portwatch_common::Collect::Counts),
        actors: Vec::new(),
    };
    let traced = trace::trace(
        &args.kernel,
        Some(args.duration),
        "tracing the demo",
        &mut sink,
    )
    .await?;
    let model = &mut sink.inner.model;
    if model.table.unresolved() > 0 {
        model
            .table
            .resolve(&crate::commands::startup::holders_now(traced.netns_known));
    }
    let workload = |pid: u32| crate::commands::startup::workload(pid);
    let context = Context {
        settings: &settings,
        thresholds: &Thresholds::default(),
        dropped: traced.counters.ring_buffer_full,
        undecodable: sink.inner.undecodable,
        untracked: traced.counters.untracked(),
        skipped: traced.counters.skipped,
        workload: &workload,
    };
    let mut report = report::build(model, traced.end_ns, &context);
    report.events.attached(traced.path);
    eprintln!();
    // The workload ends with the window: its processes go when `sink` is dropped.
    drop(sink.actors);
    let mut out = io::stdout().lock();
    let written = match args.format {
        ReportFormat::Text => output::report::text(&mut out, &report),
        ReportFormat::Json => output::report::json(&mut out, &report),
    };
    match written.and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}
