//! `portwatch serve`: trace for as long as it runs, and serve the live model as
//! Prometheus metrics (see docs/serve.md).
//!
//! Two threads. The tracing loop (this runtime) feeds every kernel record to the
//! [`LiveModel`] under a mutex; the HTTP server runs on a thread of its own with its own
//! runtime, so that a scrape's work (sampling the model, resolving workloads in /proc,
//! formatting) never runs where the ring buffer is drained. The model's lock is held by
//! a scrape only while [`LiveModel::sample`] copies numbers out; meanwhile the ring
//! buffer (`--ring-buffer-size`) holds what the kernel sends.
mod http;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use crate::{
    bpf::KernelCounters,
    cli::ServeArgs,
    clock::monotonic_ns,
    commands::{
        live_feed::{LiveFeed, lock},
        trace::{self, Sink},
    },
    detect::{ports::PortBudget, report::Thresholds},
    event::{CloseWaitSocket, FlowCount},
    live::{LiveModel, NamespaceSettings},
    output::metrics::Exporter,
    sockets::table::Seed,
};

pub use http::Limits as HttpLimits;

/// What the tracing loop and the HTTP server share.
#[derive(Debug)]
pub struct Shared {
    live: Mutex<LiveModel>,
    exporter: Mutex<Exporter>,
    settings: Mutex<NamespaceSettings>,
    thresholds: Thresholds,
}

/// The collector prometheus-client calls on every scrape: samples the live model, then
/// builds every family from that sample.
#[derive(Debug, Clone)]
pub struct MetricsCollector(Arc<Shared>);

impl Collector for MetricsCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let namespaces = lock(&shared.live).namespaces();
        let mut settings = lock(&shared.settings);
        settings.refresh(namespaces);
        let sample =
            lock(&shared.live).sample(monotonic_ns(), &settings.budget, &shared.thresholds);
        drop(settings);
        let families =
            lock(&shared.exporter).families(&sample, &crate::commands::startup::workload);
        families.encode(encoder)
    }
}

struct ServeSink {
    feed: LiveFeed,
    shared: Arc<Shared>,
    listener: Option<std::net::TcpListener>,
    server: Option<http::Server>,
}

impl Sink for ServeSink {
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) -> Result<()> {
        self.feed.start(&self.shared.live, start_ns, seeds);
        let listener = self
            .listener
            .take()
            .context("the listener was already used")?;
        let collector = MetricsCollector(self.shared.clone());
        self.server = Some(http::Server::start(
            listener,
            Box::new(collector),
            http::Limits::default(),
        )?);
        Ok(())
    }

    fn record(&mut self, bytes: &[u8]) {
        self.feed.record(&self.shared.live, bytes);
    }

    fn collect(&self) -> portwatch_common::Collect {
        self.feed.collect
    }

    fn counts(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        self.feed
            .counts(&self.shared.live, from_ns, to_ns, flows, close_waits);
    }

    fn counters_every(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn counters(&mut self, counters: &KernelCounters) {
        LiveFeed::counters(&self.shared.live, counters);
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let settings = PortBudget::read().context("reading net.ipv4.ip_local_port_range")?;
    let listener = bind(args.listen)?;
    let address = listener
        .local_addr()
        .context("reading the listening address")?;
    let shared = Arc::new(Shared {
        live: Mutex::new(LiveModel::new(0, args.summary.limits())),
        exporter: Mutex::new(Exporter::new(
            args.series_limits(),
            env!("CARGO_PKG_VERSION"),
        )),
        settings: Mutex::new(NamespaceSettings::new(settings)),
        thresholds: args.summary.thresholds(),
    });
    let mut sink = ServeSink {
        feed: LiveFeed {
            collect: args.summary.collect.kernel(),
            netns: None,
        },
        shared,
        listener: Some(listener),
        server: None,
    };
    let what = format!("serving http://{address}/metrics");
    trace::trace(&args.summary.kernel, None, &what, &mut sink).await?;
    if let Some(server) = sink.server.take() {
        server.stop();
    }
    Ok(())
}

fn bind(address: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address).with_context(|| {
        format!(
            "cannot listen on {address} (--listen): another process (another portwatch \
             serve?) holds it, or the address is not this host's; choose another with \
             --listen ADDR:PORT"
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    Ok(listener)
}
