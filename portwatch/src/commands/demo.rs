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
        ports::PortSettings,
        report::{self, Context, Thresholds},
    },
    output,
    sockets::table::Seed,
};

/// Leaked connections the demo's leaker accumulates.
const LEAKS: &str = "25";
/// The churner's rate: well above the 20/s churn threshold, far below what loopback
/// sustains, so the demo is cheap.
const CHURN_RATE: &str = "200";

/// The demo's processes, started the moment tracing has begun: so every connection they
/// make is seen, and after portwatch dropped the capabilities only loading needed (they
/// are per thread, and starting a process starts threads that read its output). One
/// that cannot start ends the run there, not after the window.
struct DemoSink {
    inner: ModelSink,
    actors: Vec<WorkloadProcess>,
}

impl Sink for DemoSink {
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        self.inner.start(start_ns, seeds)?;
        self.actors = spawn_actors().context("starting the demo's processes")?;
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        self.inner.record(bytes);
    }
}

fn spawn_actors() -> Result<Vec<WorkloadProcess>> {
    // This binary's hidden `actor` command: the demo needs no other program.
    let exe = std::env::current_exe().context("finding portwatch's own executable")?;
    let actors = Launcher::new(exe, ["actor"]);
    let leaker = actors.spawn(&["leak-server", "--listen", "127.0.0.1:0", "--leak-all"])?;
    let echo = actors.spawn(&["echo-server", "--listen", "127.0.0.1:0"])?;
    let leaker_addr = format!("127.0.0.1:{}", leaker.port);
    let feeder = actors.spawn(&["leak-client", "--connect", &leaker_addr, "--count", LEAKS])?;
    let echo_addr = format!("127.0.0.1:{}", echo.port);
    let churner = actors.spawn(&[
        "churn-client",
        "--connect",
        &echo_addr,
        "--rate",
        CHURN_RATE,
    ])?;
    let healthy = actors.spawn(&[
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
    Ok(vec![leaker, feeder, echo, churner, healthy])
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let settings = PortSettings::read().context("reading net.ipv4.ip_local_port_range")?;
    let mut sink = DemoSink {
        inner: ModelSink::new(Model::with_limits(
            0,
            Limits {
                max_sockets: args.kernel.max_sockets as usize,
                ..Limits::default()
            },
        )),
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
            .resolve(&crate::commands::startup::holders_now());
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
    let report = report::build(model, traced.end_ns, &context);
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
