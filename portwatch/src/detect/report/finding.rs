//! What a report finds: a finding, its kind and severity, and the evidence that backs
//! it, as the report's JSON and text show them.
use std::net::IpAddr;

use serde::{Serialize, Serializer};

use crate::{event::Comm, process::Process};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    CloseWaitLeak,
    ConnectionChurn,
    PortExhaustion,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: FindingKind,
    pub severity: Severity,
    pub process: Process,
    pub comm: Comm,
    /// False when the process has exited (its sockets live on as orphans).
    pub alive: bool,
    /// Container or systemd unit, where one is known.
    pub workload: Option<String>,
    pub evidence: Evidence,
}

/// A destination's share of a churner's connections.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DestinationRate {
    /// The network namespace the connections were made in (inode; 0 unknown).
    pub netns: u32,
    pub daddr: IpAddr,
    pub dport: u16,
    pub rate_per_s: f64,
}

/// A finding's numbers. Serialized as the finding's JSON fields; the measures are kept
/// exact here (the summary words them) and rounded to 3 decimals in JSON.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Evidence {
    Leak {
        close_wait: usize,
        #[serde(serialize_with = "rounded")]
        oldest_age_s: f64,
        /// False when the oldest age is a lower bound (the socket predates portwatch).
        oldest_age_exact: bool,
        #[serde(serialize_with = "rounded")]
        median_age_s: f64,
        #[serde(serialize_with = "rounded")]
        growth_per_min: f64,
        top_peers: Vec<Peer>,
        /// Of `close_wait`, those in CLOSE_WAIT at least `leak_age_ns`: the leaked ones.
        #[serde(skip)]
        leaked: usize,
        /// The age that makes a leak ([`Thresholds::close_wait_age_ns`]).
        #[serde(skip)]
        leak_age_ns: u64,
        /// Whether the words name the peers' namespace: when the report involves
        /// several, where two containers' 127.0.0.1:8080 are different peers.
        #[serde(skip)]
        show_netns: bool,
    },
    Churn {
        /// Over the time it was active (`active_s`), not the whole window.
        #[serde(serialize_with = "rounded")]
        rate_per_s: f64,
        #[serde(serialize_with = "rounded")]
        active_s: f64,
        /// Over the last seconds of the window ([`crate::detect::rate::RECENT_S`]): what
        /// goes on now.
        #[serde(serialize_with = "rounded")]
        recent_rate_per_s: f64,
        median_lifetime_ms: Option<f64>,
        p99_lifetime_ms: Option<f64>,
        #[serde(serialize_with = "rounded")]
        short_lived_share: f64,
        #[serde(serialize_with = "rounded")]
        closes_first_share: f64,
        #[serde(serialize_with = "rounded")]
        time_wait_per_s: f64,
        time_wait_now: usize,
        destinations: Vec<DestinationRate>,
        /// What `rate_per_s` counts.
        #[serde(skip)]
        measured: ChurnRate,
        /// The lifetime under which a connection is short-lived
        /// ([`Thresholds::short_lived_ns`]).
        #[serde(skip)]
        short_lived_ns: u64,
        /// Whether the words name the destinations' namespace (as for a leak's peers).
        #[serde(skip)]
        show_netns: bool,
    },
    Exhaustion {
        /// The destination's network namespace (inode; 0 unknown): whose port range.
        netns: u32,
        saddr: IpAddr,
        daddr: IpAddr,
        dport: u16,
        ports_in_use: usize,
        port_capacity: u32,
        /// Connections opened toward it per second, over the time they were being
        /// opened; and over the last seconds, which the forecast uses.
        #[serde(serialize_with = "rounded")]
        rate_per_s: f64,
        #[serde(serialize_with = "rounded")]
        recent_rate_per_s: f64,
        /// How long each port stays taken: lifetime plus TIME_WAIT (60 s, or ~1 s where
        /// tcp_tw_reuse applies).
        #[serde(serialize_with = "rounded")]
        port_hold_s: f64,
        tw_reuse_applies: bool,
        failed_connects: u64,
        /// Seconds until no port is left at the recent rate; 0 when connects already
        /// fail, null when that rate is sustainable.
        #[serde(serialize_with = "rounded_some")]
        exhaustion_eta_s: Option<f64>,
    },
}

/// What a churn finding's rate counts, which decides what the process should change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChurnRate {
    /// Connections the process opened: a client churning.
    Connects,
    /// TIME_WAIT sockets it left by closing first: a server closing its clients'
    /// connections.
    TimeWait,
}

/// The other end of leaked sockets. For accepted sockets the peer's port is an
/// ephemeral one and tells nothing, so only its address is kept (`dport` null).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Peer {
    /// The network namespace of the leaked sockets (inode; 0 unknown).
    pub netns: u32,
    pub daddr: IpAddr,
    pub dport: Option<u16>,
    pub sockets: usize,
}

/// The process a finding is about, as the report names it.
pub(super) struct Who {
    pub(super) process: Process,
    pub(super) comm: Comm,
    pub(super) alive: bool,
    pub(super) workload: Option<String>,
}

impl Who {
    pub(super) fn finding(
        &self,
        kind: FindingKind,
        severity: Severity,
        evidence: Evidence,
    ) -> Finding {
        Finding {
            kind,
            severity,
            process: self.process,
            comm: self.comm,
            alive: self.alive,
            workload: self.workload.clone(),
            evidence,
        }
    }
}

pub(super) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub(super) fn pid_of<S: Serializer>(process: &Process, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u32(process.pid)
}

fn rounded<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(round3(*value))
}

fn rounded_some<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.serialize_some(&round3(*value)),
        None => serializer.serialize_none(),
    }
}
