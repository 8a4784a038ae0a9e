//! The words of a finding: one line that sums up its evidence, and what to change.
//! Shared by the text report and the JSON report's `summary` and `advice` fields.
use std::{borrow::Cow, fmt};

use crate::{
    detect::{
        rate::RECENT_S,
        report::{ChurnRate, Evidence, Peer},
    },
    output::format::Endpoint,
};

const LEAK_ADVICE: &str = "The application does not close connections after the peer closes them: \
each stays in CLOSE_WAIT, holding its port and file descriptor, until the process closes it or \
exits. Look for code paths that stop using a connection without calling close(): error and \
timeout paths, connection-pool eviction of dead connections, and responses abandoned half-read. \
Restarting only buys time.";

const CHURN_ADVICE: &str = "The process opens and closes short connections at a high rate. Every \
connection closed first by this side leaves a socket in TIME_WAIT for 60 s, holding a local port \
toward its destination. Reuse connections: HTTP keep-alive, a connection pool, or a persistent \
client. If short connections are unavoidable, let the server close first so TIME_WAIT lands on \
the side with no port limit, or spread connections over more local addresses.";

const SERVER_CHURN_ADVICE: &str = "The process closes most connections first, so their TIME_WAIT \
sockets accumulate on this side. If its clients can keep connections alive, enable keep-alive; \
otherwise prefer letting clients close first.";

/// The evidence in one line of words and numbers.
pub fn summary(evidence: &Evidence) -> String {
    match evidence {
        Evidence::Leak {
            close_wait,
            oldest_age_s,
            oldest_age_exact,
            median_age_s,
            growth_per_min,
            top_peers,
            leaked,
            leak_age_ns,
            show_netns,
        } => {
            let bound = if *oldest_age_exact { "" } else { "≥ " };
            format!(
                "{close_wait} sockets in CLOSE_WAIT ({leaked} older than {}), oldest {bound}{}, median {}, {:+.1}/min{}",
                seconds(*leak_age_ns as f64 / 1e9),
                seconds(*oldest_age_s),
                seconds(*median_age_s),
                growth_per_min,
                top_peers
                    .first()
                    .map(|peer| format!("; top peer {}", PeerText(peer, *show_netns)))
                    .unwrap_or_default(),
            )
        }
        Evidence::Churn {
            rate_per_s,
            active_s,
            recent_rate_per_s,
            median_lifetime_ms,
            short_lived_share,
            closes_first_share,
            time_wait_per_s,
            time_wait_now,
            destinations,
            short_lived_ns,
            show_netns,
            ..
        } => format!(
            "{:.1} connections/s while active ({} of the window; {:.1}/s in the last {}), median lifetime {}, {:.0}% shorter than {}; closes first in {:.0}%: {:.1} TIME_WAIT/s, {} held now{}",
            rate_per_s,
            seconds(*active_s),
            recent_rate_per_s,
            seconds(RECENT_S as f64),
            median_lifetime_ms.map_or("-".into(), |ms| seconds(ms / 1000.0)),
            short_lived_share * 100.0,
            seconds(*short_lived_ns as f64 / 1e9),
            closes_first_share * 100.0,
            time_wait_per_s,
            time_wait_now,
            destinations
                .first()
                .map(|d| format!(
                    "; mostly to {}{} ({:.1}/s)",
                    Endpoint(d.daddr, d.dport),
                    NetnsText(d.netns, *show_netns),
                    d.rate_per_s
                ))
                .unwrap_or_default(),
        ),
        Evidence::Exhaustion {
            netns,
            saddr,
            daddr,
            dport,
            ports_in_use: used,
            port_capacity: capacity,
            rate_per_s: rate,
            recent_rate_per_s: recent,
            port_hold_s: hold_s,
            tw_reuse_applies: tw_reuse,
            failed_connects,
            exhaustion_eta_s: eta,
        } => {
            // Each network namespace has its own ports: say whose these are.
            let endpoint = match netns {
                0 => Endpoint(*daddr, *dport).to_string(),
                netns => format!("{} (netns {netns})", Endpoint(*daddr, *dport)),
            };
            if *failed_connects > 0 {
                format!(
                    "ports toward {endpoint} from {saddr} are exhausted: {failed_connects} connect() calls failed with EADDRNOTAVAIL; {used} of {capacity} ports in use",
                )
            } else {
                let sustainable = f64::from(*capacity) / hold_s;
                format!(
                    "{used} of {capacity} local ports toward {endpoint} in use, {recent:.1} new/s in the last {} ({rate:.1}/s while active), each held {}{}: {}",
                    seconds(RECENT_S as f64),
                    seconds(*hold_s),
                    if *tw_reuse {
                        " (tcp_tw_reuse reuses TIME_WAIT ports after 1 s)"
                    } else {
                        " (60 s of TIME_WAIT)"
                    },
                    match eta {
                        Some(eta) => format!("exhausted in {}", seconds(*eta)),
                        None => format!("sustainable up to {sustainable:.0}/s"),
                    }
                )
            }
        }
    }
}

/// What to change.
pub fn advice(evidence: &Evidence) -> Cow<'static, str> {
    match evidence {
        Evidence::Leak { .. } => LEAK_ADVICE.into(),
        Evidence::Churn {
            measured: ChurnRate::Connects,
            ..
        } => CHURN_ADVICE.into(),
        Evidence::Churn {
            measured: ChurnRate::TimeWait,
            ..
        } => SERVER_CHURN_ADVICE.into(),
        Evidence::Exhaustion {
            daddr,
            dport,
            port_capacity: capacity,
            tw_reuse_applies: tw_reuse,
            failed_connects,
            ..
        } => format!(
            "New connections toward {} {} Reuse connections (keep-alive, pooling) so \
             fewer ports are consumed; add local source addresses or destination addresses \
             (each pair has its own {capacity} ports); widen net.ipv4.ip_local_port_range{}.",
            Endpoint(*daddr, *dport),
            if *failed_connects > 0 {
                "already fail for want of a local port."
            } else {
                "are about to run out of local ports."
            },
            if *tw_reuse {
                ""
            } else {
                "; net.ipv4.tcp_tw_reuse=1 lets connect() reuse TIME_WAIT ports older than 1 s (with TCP timestamps)"
            }
        )
        .into(),
    }
}

/// A leak's peer: `10.0.0.2:5432 (3 sockets)`, or only the address for accepted sockets.
/// A peer, and its network namespace when the report involves several.
struct PeerText<'a>(&'a Peer, bool);

impl fmt::Display for PeerText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.0;
        match peer.dport {
            Some(port) => write!(f, "{}", Endpoint(peer.daddr, port))?,
            None => write!(f, "{}", peer.daddr)?,
        }
        write!(f, "{}", NetnsText(peer.netns, self.1))?;
        let plural = if peer.sockets == 1 { "" } else { "s" };
        write!(f, " ({} socket{plural})", peer.sockets)
    }
}

/// ` in netns 4026532301`, when shown and known.
struct NetnsText(u32, bool);

impl fmt::Display for NetnsText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsText(netns, true) if *netns != 0 => write!(f, " in netns {netns}"),
            _ => Ok(()),
        }
    }
}

/// `850ms`, `4.2s`, `3m12s`.
fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1}ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let whole = s as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::report::{FindingKind, tests::failed_connects};

    #[test]
    fn failed_connects_are_named_in_the_summary() {
        let report = failed_connects();
        let exhausted = report
            .findings
            .iter()
            .find(|f| f.kind == FindingKind::PortExhaustion)
            .unwrap();
        assert!(summary(&exhausted.evidence).contains("EADDRNOTAVAIL"));
    }
}
