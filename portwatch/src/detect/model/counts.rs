//! The counting path's numbers into the model: what each flow did over an interval
//! adds to its process's and destination's activity exactly as its transitions'
//! records would have, and the sockets in CLOSE_WAIT now replace the ones the last
//! reading showed.
use std::net::IpAddr;

use super::{Destination, Model, UNKNOWN, activity_of};
use crate::{
    event::{CloseWaitSocket, FlowCount, Origin, OwnerSource},
    process::{Life, Process},
    sockets::{owners::SocketOwner, tuple::Tuple},
};

/// A flow as the kernel keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FlowId {
    pid: u32,
    netns: u32,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    origin: Option<Origin>,
    /// A flow deleted as idle and made again is another flow (its PID may be too).
    created_ns: u64,
}

impl Model {
    /// One reading of the kernel's counts: `flows` changed over `(from_ns, to_ns]`, and
    /// `close_waits` is every socket in CLOSE_WAIT at `to_ns`.
    pub fn apply_counts(
        &mut self,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        self.last_ns = self.last_ns.max(to_ns);
        self.table.expire_time_wait(to_ns);
        for flow in flows {
            self.flow(flow, from_ns, to_ns);
        }
        // Closes after every open of the reading: each CPU counts in its own copy of a
        // flow, so one reading may list a socket's close (one CPU's copy) before its open
        // (another's), and an open count taken below zero would stay wrong.
        for flow in flows {
            self.flow_closes(flow);
        }
        self.table
            .sync_close_waits(close_waits, &self.exits_since_reading, to_ns);
        self.exits_since_reading.clear();
        self.enforce_limits();
    }

    /// The process a flow's counts go to: the life its PID had when the kernel created
    /// the flow (a process that made connections and exited within one interval is read
    /// after its exit record; another may have its PID by then). Later counts of the
    /// flow (its orphaned sockets closing) stay with that life, as records keep a
    /// socket's owner. A PID reused toward the same destination within the flow's
    /// life adds to the old life: the kernel's key cannot tell the two apart.
    /// [`Model::apply_counts`] for the flows and sockets of network namespace `netns`
    /// only (`--netns`), or all of them.
    pub fn apply_counts_in(
        &mut self,
        netns: Option<u32>,
        from_ns: u64,
        to_ns: u64,
        flows: &[FlowCount],
        close_waits: &[CloseWaitSocket],
    ) {
        let Some(netns) = netns else {
            return self.apply_counts(from_ns, to_ns, flows, close_waits);
        };
        let flows: Vec<FlowCount> = flows.iter().filter(|f| f.netns == netns).cloned().collect();
        let close_waits: Vec<CloseWaitSocket> = close_waits
            .iter()
            .filter(|c| c.netns == netns)
            .copied()
            .collect();
        self.apply_counts(from_ns, to_ns, &flows, &close_waits);
    }

    fn flow_process(&mut self, flow: &FlowCount) -> Process {
        let id = FlowId {
            pid: flow.pid,
            netns: flow.netns,
            saddr: flow.saddr,
            sport: flow.sport,
            daddr: flow.daddr,
            dport: flow.dport,
            origin: flow.origin,
            created_ns: flow.created_ns,
        };
        if let Some(&process) = self.flow_owners.get(&id) {
            return process;
        }
        let now = self.table.process(flow.pid);
        let exited = exits_after(&self.exits_since_reading, flow.pid, flow.created_ns);
        let process = match now.life {
            Life::AfterExits(exits) => Process::after_exits(flow.pid, exits.saturating_sub(exited)),
            Life::StartedAt(_) => now,
        };
        if self.flow_owners.len() >= self.limits.max_destinations {
            // Bounded like the tables it feeds; forgetting only costs a re-derivation.
            self.flow_owners.clear();
        }
        self.flow_owners.insert(id, process);
        process
    }

    fn flow(&mut self, flow: &FlowCount, from_ns: u64, to_ns: u64) {
        let process = self.flow_process(flow);
        let owner = (flow.pid != 0).then_some(SocketOwner {
            process,
            comm: flow.comm,
            cgroup_id: flow.cgroup_id,
            // The kernel learned it in a system call, or from the listener (passive
            // sockets it saw no process act on): which one, a flow does not say.
            source: OwnerSource::Syscall,
        });
        let process = owner.map_or(UNKNOWN, |owner| owner.process);
        let start_ns = self.start_ns;
        let activity = activity_of(&mut self.processes, owner.as_ref());
        activity.last_ns = activity.last_ns.max(to_ns);
        let active = flow.origin == Some(Origin::Active);
        let destination = Destination::of_flow(flow);
        activity
            .opens
            .record_many(flow.opened, from_ns, to_ns, start_ns);
        if active {
            activity
                .opened_active
                .record_many(flow.opened, from_ns, to_ns, start_ns);
        } else {
            activity.opened_passive += flow.opened;
        }
        activity
            .closes
            .record_many(flow.closed, from_ns, to_ns, start_ns);
        if active {
            activity.closed_active += flow.closed;
        } else {
            activity.closed_passive += flow.closed;
        }
        activity.counted_open += flow.opened;
        activity.closed_first += flow.closed_first;
        activity.peer_closed_first += flow.peer_closed_first;
        activity.close_wait_entered += flow.peer_closed_first;
        activity.close_wait_left += flow.close_wait_left;
        activity
            .time_wait_created
            .record_many(flow.time_wait, from_ns, to_ns, start_ns);
        let mut approximate = 0u128;
        for (lifetime, count) in flow.lifetime_counts() {
            activity.lifetimes.record_many(lifetime, count);
            approximate += u128::from(lifetime) * u128::from(count);
        }
        activity
            .lifetimes
            .correct_sum(approximate, u128::from(flow.lifetime_sum_ns));
        if active && (flow.opened > 0 || flow.closed > 0) {
            if flow.opened > 0 {
                *activity.destinations.entry(destination).or_default() += flow.opened;
            }
            let toward = self.destinations.entry(destination).or_default();
            toward.last_ns = to_ns;
            toward.counted_open += flow.opened;
            toward
                .opened
                .record_many(flow.opened, from_ns, to_ns, start_ns);
            if flow.opened > 0 {
                *toward.consumers.entry(process).or_default() += flow.opened;
            }
            for (lifetime, count) in flow.lifetime_counts() {
                toward.lifetimes.record_many(lifetime, count);
            }
            toward
                .lifetimes
                .correct_sum(approximate, u128::from(flow.lifetime_sum_ns));
        }
        if flow.time_wait > 0 {
            let tuple = Tuple {
                netns: flow.netns,
                saddr: flow.saddr,
                sport: flow.sport,
                daddr: flow.daddr,
                dport: flow.dport,
            };
            self.table
                .add_time_waits(tuple, flow.origin, to_ns, owner, flow.time_wait);
        }
    }

    /// Takes a flow's closes off the connections counted open, by its owner and (active
    /// flows) toward its destination; after [`Model::flow`] has added every open of the
    /// reading.
    fn flow_closes(&mut self, flow: &FlowCount) {
        if flow.closed == 0 {
            return;
        }
        let process = if flow.pid != 0 {
            self.flow_process(flow)
        } else {
            UNKNOWN
        };
        if let Some(activity) = self.processes.get_mut(&process) {
            activity.counted_open = activity.counted_open.saturating_sub(flow.closed);
        }
        if flow.origin == Some(Origin::Active)
            && let Some(toward) = self.destinations.get_mut(&Destination::of_flow(flow))
        {
            toward.counted_open = toward.counted_open.saturating_sub(flow.closed);
        }
    }
}

/// How many of the exits of `pid` recorded since the last reading came after `ts_ns`.
pub(crate) fn exits_after(
    recent: &rustc_hash::FxHashMap<u32, Vec<u64>>,
    pid: u32,
    ts_ns: u64,
) -> u32 {
    recent.get(&pid).map_or(0, |exits| {
        exits.iter().filter(|&&exit| exit > ts_ns).count() as u32
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use portwatch_common::LIFETIME_BUCKETS;

    use super::*;
    use crate::event::Comm;

    fn flow(opened: u64, closed: u64, created_ns: u64) -> FlowCount {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        FlowCount {
            netns: 1,
            saddr: localhost,
            sport: 0,
            daddr: localhost,
            dport: 8080,
            origin: Some(Origin::Active),
            pid: 42,
            comm: Comm::default(),
            cgroup_id: 0,
            opened,
            closed,
            closed_first: closed,
            peer_closed_first: 0,
            close_wait_left: 0,
            time_wait: closed,
            lifetimes: [0; LIFETIME_BUCKETS],
            lifetime_sum_ns: 0,
            created_ns,
        }
    }

    /// One reading lists one CPU's copy of a flow with 200 closes before another CPU's
    /// copy with the same 200 connections' opens: none is open after it.
    #[test]
    fn closes_read_before_their_opens_leave_nothing_open() {
        let mut model = Model::new(0);
        model.apply_counts(0, 1_000, &[flow(0, 200, 10), flow(200, 0, 20)], &[]);
        let activity = model
            .processes
            .iter()
            .find(|(process, _)| process.pid == 42)
            .map(|(_, activity)| activity)
            .expect("the flows' process");
        assert_eq!(activity.counted_open, 0);
        assert_eq!(activity.time_wait_created.count(), 200);
        let toward = model.destinations.values().next().expect("the destination");
        assert_eq!(toward.counted_open, 0);

        // Opens still count as open when their closes have not come yet.
        model.apply_counts(1_000, 2_000, &[flow(0, 0, 10), flow(5, 0, 20)], &[]);
        let toward = model.destinations.values().next().unwrap();
        assert_eq!(toward.counted_open, 5);
    }
}
