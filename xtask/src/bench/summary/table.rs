//! The table people read: the churn table with its notes, and each agent's eBPF
//! programs.
use std::fmt::Write as _;

use super::{Calibration, Run, Spread, Summary, TRUTH_TOLERANCE_PCT, short};

impl Summary {
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nportwatch measured: {}", self.agent_binary);
        let _ = writeln!(
            out,
            "machine: {} CPUs ({}), {:.0} GiB, Linux {}",
            self.machine.cpus, self.machine.cpu_model, self.machine.memory_gib, self.machine.kernel
        );
        if let Some(calibration) = &self.calibration {
            self.churn_table(&mut out, calibration);
        }
        if let Some(syscalls) = &self.syscalls {
            out.push_str(&syscalls.table());
        }
        out
    }

    /// Each agent's mean overheads with their confidence intervals, and where they lie
    /// against the mode's target: what a single median cannot say.
    fn mean_overheads(&self, out: &mut String) {
        let rows: Vec<_> = self
            .rows
            .iter()
            .filter_map(|row| Some((row, row.overhead_mean_pct?, row.cost_overhead_mean_pct?)))
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "  mean overhead over the pairs, with its 95 % confidence interval (Student's t):"
        );
        for (row, rate, cost) in rows {
            let verdict = row.overhead_target_pct.map_or(String::new(), |limit| {
                let verdict = rate.against(limit).max(cost.against(limit));
                format!("; target at most {limit:.0} %: {}", verdict.word())
            });
            let _ = writeln!(
                out,
                "    {:<40} conn/s {:.1} ± {:.1} %, CPU/conn {:.1} ± {:.1} % ({} pairs){verdict}",
                row.mode, rate.mean, rate.ci95, cost.mean, cost.ci95, rate.n
            );
        }
    }

    fn churn_table(&self, out: &mut String, calibration: &Calibration) {
        let shape = &self.shape;
        let _ = writeln!(
            out,
            "\nchurn: {} client threads, {} request(s) per connection, {} closes first, \
             lifetime {}, rate {}; {} rounds of {:.0} s; {} transitions per connection\n",
            shape.threads,
            shape.requests,
            match shape.close_first {
                crate::bench::workload::CloseFirst::Client => "client",
                crate::bench::workload::CloseFirst::Server => "server",
            },
            shape.lifetime.map_or("0".into(), |l| format!("{:?}", l)),
            if shape.rate > 0.0 {
                format!("{}/s", shape.rate)
            } else {
                "flat out".into()
            },
            self.rounds,
            self.run_seconds,
            calibration.transitions_per_connection,
        );
        let _ = writeln!(
            out,
            "{:<40} {:>22} {:>20} {:>19} {:>24} {:>24} {:>6} {:>10} {:>14} {:>9}",
            "mode",
            "conn/s median (min-max)",
            "overhead (min-max)",
            "CPU us/conn (ovh)",
            "events seen/expected",
            "conns counted/made",
            "truth",
            "drop/miss",
            "CPU s/M trans",
            "peak RSS"
        );
        let ratio = |seen: Option<u64>, expected: Option<u64>| match (seen, expected) {
            (Some(seen), Some(expected)) => format!(
                "{:.3}% ({}/{})",
                100.0 * seen as f64 / expected.max(1) as f64,
                short(seen),
                short(expected)
            ),
            _ => "-".into(),
        };
        for row in &self.rows {
            let rate = row.connections_per_s;
            let overhead = row.overhead_pct.map_or("-".into(), |o| {
                format!("{:.1}% ({:.1}..{:.1})", o.median, o.min, o.max)
            });
            let losses = match (row.max_dropped, row.max_missed) {
                (Some(dropped), Some(missed)) => format!("{dropped}/{missed}"),
                // The kernel counts misses whether or not the agent counts its drops.
                (None, Some(missed)) => format!("-/{missed}"),
                _ => "-".into(),
            };
            let cost = match row.cost_overhead_pct {
                Some(o) => format!("{:.1} ({:.1}%)", row.cost_us.median, o.median),
                None => format!("{:.1}", row.cost_us.median),
            };
            let _ = writeln!(
                out,
                "{:<40} {:>22} {:>20} {:>19} {:>24} {:>24} {:>6} {:>10} {:>14} {:>9}",
                row.mode,
                format!("{:.0} ({:.0}-{:.0})", rate.median, rate.min, rate.max),
                overhead,
                cost,
                ratio(row.worst_events_seen, row.worst_events_expected),
                ratio(row.worst_connections_counted, row.worst_connections_made),
                row.truth_ok.map_or("-", |ok| if ok { "ok" } else { "OFF" }),
                losses,
                row.cpu_s_per_million_transitions
                    .map_or("-".into(), |c| format!("{:.2}", c.median)),
                row.peak_rss_mib
                    .map_or("-".into(), |m| format!("{m:.1} MiB")),
            );
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|row| {
                let accounted = row.connections_accounted_pct.map(|pct| {
                    format!("{}: connections accounted (worst run) {pct:.3}%", row.mode)
                });
                let bpf = row
                    .bpf_ns_per_call
                    .map(|ns| format!("{}: eBPF {ns:.0} ns per program call", row.mode));
                match (accounted, bpf) {
                    (None, None) => None,
                    (a, b) => Some([a, b].into_iter().flatten().collect::<Vec<_>>().join("; ")),
                }
            })
            .collect();
        for note in notes {
            let _ = writeln!(out, "  {note}");
        }
        self.mean_overheads(out);
        for row in &self.rows {
            if let Some(entries @ 2..) = row.max_entries_per_process {
                let _ = writeln!(
                    out,
                    "  WARNING: {}: the report listed the client's or the server's PID in \
                     {entries} process entries (one process split; the conns column adds \
                     them up)",
                    row.mode
                );
            }
        }
        let _ = writeln!(
            out,
            "  CPU us/conn: client, server and agent CPU per connection, median; (ovh): the \
             overhead that implies, 1 - bare/agent, median of the pairs"
        );
        let _ = writeln!(
            out,
            "  events: the worst run's count against the truth (connections made x the \
             transitions each makes, measured; not for the counting path, which sends \
             records only for what it cannot count); conns: the worst run's connections \
             opened or closed by client or server (the count furthest from the truth) \
             against the client's count; truth: every run within {TRUTH_TOLERANCE_PCT} % of \
             the truth (conns where counted, else events) and nothing dropped; drop/miss: \
             the most one run lost to a full buffer / to the kernel skipping a nested BPF \
             program call; -: the agent gives no such count (top shows its counts only on \
             its screen)"
        );
        if let Some(other) = Spread::of(self.runs.iter().map(Run::other_cpus)) {
            let retried = self.runs.iter().filter(|r| r.attempt > 1).count() / 2;
            let _ = writeln!(
                out,
                "  noise: the rest of the machine kept {:.2} CPUs busy during a run (median; \
                 {:.2}..{:.2}); {retried} pairs were run again for unequal noise",
                other.median, other.min, other.max
            );
        }
        let overflows: u64 = self.runs.iter().map(|r| r.listen_overflows).sum();
        if overflows > 0 {
            let _ = writeln!(
                out,
                "  WARNING: the server's listen queue overflowed {overflows} times: each \
                 stalls a connect for 1 s, so rates are noisier than they should be"
            );
        }
        self.programs_table(out);
    }

    /// Each agent's eBPF programs, with --bpf-stats.
    fn programs_table(&self, out: &mut String) {
        if self.rows.iter().all(|row| row.programs.is_empty()) {
            return;
        }
        let _ = writeln!(
            out,
            "\neBPF programs (with the kernel's run-time statistics on, which add to them; \
             median over runs)"
        );
        let _ = writeln!(
            out,
            "{:<40} {:<32} {:>24} {:>11} {:>9}",
            "mode", "program", "ns/call median (min-max)", "calls/conn", "ns/conn"
        );
        for row in &self.rows {
            for program in &row.programs {
                let ns = program.ns_per_call;
                let _ = writeln!(
                    out,
                    "{:<40} {:<32} {:>24} {:>11.2} {:>9.0}",
                    row.mode,
                    program.hook,
                    format!("{:.0} ({:.0}-{:.0})", ns.median, ns.min, ns.max),
                    program.calls_per_connection,
                    program.ns_per_connection,
                );
            }
        }
        let _ = writeln!(
            out,
            "  calls/conn: the program's calls over connections made (the rest of the \
             host's calls included)"
        );
    }
}
