//! The families of one scrape and their encoding through prometheus-client: names,
//! help, units and types, in the order docs/serve.md lists them.
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{Format, Labels};
use crate::live::{LIFETIME_BUCKETS_S, Lifetime};

/// Every family of one scrape, ready to encode.
#[derive(Clone, Debug, Default)]
pub struct Families {
    pub(super) version: &'static str,
    pub sockets: Vec<(Labels, u64)>,
    pub close_wait: Vec<(Labels, u64)>,
    pub close_wait_oldest: Vec<(Labels, f64)>,
    pub opened: Vec<(Labels, u64)>,
    pub closed: Vec<(Labels, u64)>,
    pub time_wait_created: Vec<(Labels, u64)>,
    pub connect_failures: Vec<(Labels, u64)>,
    pub lifetime: Vec<(Labels, Lifetime)>,
    pub ports_in_use: Vec<(Labels, u64)>,
    pub ports_capacity: Vec<(Labels, u64)>,
    pub eta: Vec<(Labels, f64)>,
    pub findings: Vec<(Labels, u64)>,
    pub events: Option<crate::live::EventSample>,
}

impl Families {
    /// Writes every family through a prometheus-client encoder (either text format).
    pub fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        info(
            e,
            "portwatch_build",
            "portwatch's version",
            &[("version", self.version)],
        )?;
        gauges(
            e,
            "portwatch_sockets",
            "TCP sockets held now by state, per workload and command (TIME_WAIT: those its side closed first)",
            None,
            &self.sockets,
        )?;
        gauges(
            e,
            "portwatch_close_wait_sockets",
            "Sockets held in CLOSE_WAIT now: the peer closed, the process has not",
            None,
            &self.close_wait,
        )?;
        gauges(
            e,
            "portwatch_close_wait_oldest_age",
            "How long the oldest CLOSE_WAIT socket has been waiting (a lower bound when it predates portwatch)",
            Some(Unit::Seconds),
            &self.close_wait_oldest,
        )?;
        counters(
            e,
            "portwatch_connections_opened",
            "Connections that reached ESTABLISHED, by who opened them (active: connect(), passive: accepted)",
            &self.opened,
        )?;
        counters(
            e,
            "portwatch_connections_closed",
            "Established connections that began closing, by which side sent the first FIN",
            &self.closed,
        )?;
        counters(
            e,
            "portwatch_time_wait_created",
            "TIME_WAIT sockets made by closing first",
            &self.time_wait_created,
        )?;
        counters(
            e,
            "portwatch_connect_failures",
            "connect() calls that failed for want of a local port",
            &self.connect_failures,
        )?;
        {
            let mut family = e.encode_descriptor(
                "portwatch_connection_lifetime",
                "Lifetimes of connections that opened and closed while portwatch watched",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (labels, lifetime) in &self.lifetime {
                let mut buckets = Vec::with_capacity(LIFETIME_BUCKETS_S.len());
                let mut previous = 0;
                for (le, &below) in LIFETIME_BUCKETS_S.iter().zip(&lifetime.below) {
                    buckets.push((*le, below.saturating_sub(previous)));
                    previous = previous.max(below);
                }
                family.encode_family(labels)?.encode_histogram::<Labels>(
                    lifetime.sum_s,
                    lifetime.count,
                    &buckets,
                    None,
                )?;
            }
        }
        gauges(
            e,
            "portwatch_ephemeral_ports_in_use",
            "Local ports taken toward a destination now: live connections plus TIME_WAIT",
            None,
            &self.ports_in_use,
        )?;
        gauges(
            e,
            "portwatch_ephemeral_ports_capacity",
            "Local ports available toward a destination (ip_local_port_range minus reserved ports)",
            None,
            &self.ports_capacity,
        )?;
        gauges(
            e,
            "portwatch_port_exhaustion_eta",
            "Time until no local port is left toward a destination at the last 10 s rate; 0 when connects already fail; +Inf when that rate is sustainable",
            Some(Unit::Seconds),
            &self.eta,
        )?;
        gauges(
            e,
            "portwatch_findings",
            "Findings open now, as `portwatch report` would name them",
            None,
            &self.findings,
        )?;
        if let Some(events) = &self.events {
            let one = |name: &'static str, help: &'static str, value: u64| (name, help, value);
            let mut plain = vec![
                one("portwatch_events", "Kernel records read", events.seen),
                one(
                    "portwatch_events_dropped",
                    "Kernel records lost because the ring buffer was full",
                    events.dropped,
                ),
                one(
                    "portwatch_events_undecodable",
                    "Kernel records read that could not be decoded",
                    events.undecodable,
                ),
                one(
                    "portwatch_sockets_untracked",
                    "Sockets the kernel's tables had no room for",
                    events.untracked,
                ),
            ];
            if let Some(skipped) = events.skipped {
                plain.push(one(
                    "portwatch_events_skipped",
                    "Runs of portwatch's programs the kernel skipped (events that never existed)",
                    skipped,
                ));
            }
            for (name, help, value) in plain {
                let counter = ConstCounter::new(value);
                counter.encode(e.encode_descriptor(name, help, None, counter.metric_type())?)?;
            }
            let evicted = [
                ("sockets", events.evicted_sockets),
                ("time_wait", events.evicted_time_wait),
                ("processes", events.evicted_processes),
                ("destinations", events.evicted_destinations),
            ]
            .map(|(table, n)| (vec![("table", table.to_owned())], n));
            counters(
                e,
                "portwatch_evictions",
                "Entries portwatch forgot at its limits (--max-sockets, --max-processes, --max-destinations)",
                &evicted,
            )?;
        }
        Ok(())
    }
}

impl Collector for Families {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Families::encode(self, encoder)
    }
}

fn info(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &[(&'static str, &'static str)],
) -> Result<(), std::fmt::Error> {
    e.encode_descriptor(name, help, None, MetricType::Info)?
        .encode_info(&labels)
}

fn gauges<V: prometheus_client::encoding::EncodeGaugeValue + Copy + std::fmt::Debug>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    series: &[(Labels, V)],
) -> Result<(), std::fmt::Error>
where
    ConstGauge<V>: prometheus_client::encoding::EncodeMetric,
{
    let mut family = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes what `collector` yields in `format`: a registry holding only it.
pub fn render(collector: Box<dyn Collector>, format: Format) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(collector);
    let mut text = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
    }
    Ok(text)
}

/// For tests and docs: one family's sample lines.
pub fn lines_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|line| {
            !line.starts_with('#')
                && line
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}
