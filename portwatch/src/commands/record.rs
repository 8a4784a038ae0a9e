//! `portwatch record`: save a window's kernel records for `report --replay`.
use anyhow::{Context as _, Result};

use crate::{
    cli::RecordArgs,
    commands::trace::{self, Sink},
    detect::ports::PortSettings,
    record::{self, Header, RecordedSeed, Trailer, Writer},
    sockets::table::Seed,
};

struct FileSink {
    writer: Option<Writer>,
    header: Header,
    path: std::path::PathBuf,
    error: Option<anyhow::Error>,
    records: u64,
}

impl Sink for FileSink {
    fn start(&mut self, start_ns: u64, seeds: Vec<Seed>) {
        self.header.start_ns = start_ns;
        self.header.seeds = seeds.iter().map(RecordedSeed::from).collect();
        match Writer::create(&self.path, &self.header) {
            Ok(writer) => self.writer = Some(writer),
            Err(err) => self.error = Some(err),
        }
    }

    fn record(&mut self, bytes: &[u8]) {
        if let Some(writer) = &mut self.writer
            && self.error.is_none()
        {
            match writer.record(bytes) {
                Ok(()) => self.records += 1,
                Err(err) => self.error = Some(err.into()),
            }
        }
    }
}

pub async fn run(args: RecordArgs) -> Result<()> {
    let settings = PortSettings::read().context("reading net.ipv4.ip_local_port_range")?;
    let mut sink = FileSink {
        writer: None,
        header: Header {
            start_ns: 0,
            settings,
            seeds: Vec::new(),
            endian: record::native_endian(),
        },
        path: args.out.clone(),
        error: None,
        records: 0,
    };
    let traced = trace::trace(&args.kernel, Some(args.duration), "recording", &mut sink).await?;
    if let Some(err) = sink.error {
        return Err(err).with_context(|| format!("writing {}", args.out.display()));
    }
    let writer = sink.writer.context("the recording was never started")?;
    writer.finish(&Trailer {
        end_ns: traced.end_ns,
        dropped: traced.counters.ring_buffer_full,
        untracked: traced.counters.socket_table_full + traced.counters.owner_table_full,
    })?;
    eprintln!(
        "portwatch: recorded {} events to {} ({} dropped); `portwatch report --replay {}` reads it",
        sink.records,
        args.out.display(),
        traced.counters.ring_buffer_full,
        args.out.display()
    );
    if let Some(skipped) = traced.counters.skipped.filter(|&n| n > 0) {
        // Format version 1 has no field for it: say it here rather than lose it.
        eprintln!(
            "portwatch: {skipped} events were skipped by the kernel (another eBPF program was \
             running on that CPU); the recording does not hold this count"
        );
    }
    Ok(())
}
