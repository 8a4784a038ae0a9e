//! `portwatch serve` under the benchmark is scraped as Prometheus would scrape it: one
//! GET /metrics a second, on a thread of the benchmark's own, for the whole run. The
//! last scrape is what the run's results are read from.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

const EVERY: Duration = Duration::from_secs(1);

/// Scrapes `address` every second until stopped.
pub struct Scraper {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Scraper {
    pub fn start(address: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, failures) = (stop.clone(), failures.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    if let Err(err) = scrape(address) {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{err:#}"));
                    }
                    thread::sleep(EVERY);
                }
            })
        };
        Scraper {
            address,
            stop,
            thread: Some(thread),
            failures,
        }
    }

    /// Stops scraping, then scrapes once more: the metrics at the end of the workload.
    pub fn finish(mut self) -> Result<String> {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(first) = failures.first() {
            bail!(
                "{} of the scrapes failed, the first: {first}",
                failures.len()
            );
        }
        scrape(self.address)
    }
}

/// One GET /metrics; the body.
pub fn scrape(address: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {address}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// The value of an unlabelled metric in a Prometheus text exposition.
pub fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The sum of a labelled metric's series whose labels (`{...}`) `matches` accepts.
pub fn sum(metrics: &str, name: &str, matches: impl Fn(&str) -> bool) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            matches(labels).then(|| value.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_values() {
        let metrics = "# TYPE portwatch_events_total counter\n\
                       portwatch_events_total 1234\n\
                       portwatch_events_dropped_total 5\n\
                       portwatch_events_total_other 9\n";
        assert_eq!(value(metrics, "portwatch_events_total"), Some(1234.0));
        assert_eq!(value(metrics, "portwatch_events_dropped_total"), Some(5.0));
        assert_eq!(value(metrics, "portwatch_missing"), None);
    }

    #[test]
    fn sums_labelled_series() {
        let metrics = "# TYPE portwatch_connections_opened_total counter\n\
                       portwatch_connections_opened_total{workload=\"x\",comm=\"churn-client\",role=\"active\"} 10\n\
                       portwatch_connections_opened_total{workload=\"x\",comm=\"echo-server\",role=\"passive\"} 7\n\
                       portwatch_connections_opened_total{workload=\"x\",comm=\"echo-worker\",role=\"passive\"} 3\n\
                       portwatch_connections_opened_total_x{comm=\"echo-server\"} 100\n";
        let opened = "portwatch_connections_opened_total";
        assert_eq!(sum(metrics, opened, |l| l.contains("comm=\"echo-")), 10.0);
        assert_eq!(sum(metrics, opened, |l| l.contains("comm=\"churn-")), 10.0);
        assert_eq!(sum(metrics, opened, |_| true), 20.0);
    }
}
