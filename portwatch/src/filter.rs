//! Which transitions the user asked to see.
use rustc_hash::FxHashMap;

use crate::{
    event::{ConnectFailed, Transition},
    tcp_state::TcpState,
};

/// Every non-empty list must match (AND across kinds); within a list, any value may
/// match (OR). Empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Matches the socket's owner.
    pub pids: Vec<u32>,
    /// Matches the local or the remote port.
    pub ports: Vec<u16>,
    /// Matches the old or the new state.
    pub states: Vec<TcpState>,
    /// Matches the socket's network namespace (inode).
    pub netns: Option<u32>,
}

impl Filter {
    /// `owner_pid` is the socket's owner, as the socket table resolved it.
    pub fn matches(&self, event: &Transition, owner_pid: Option<u32>) -> bool {
        (self.pids.is_empty() || owner_pid.is_some_and(|pid| self.pids.contains(&pid)))
            && (self.ports.is_empty()
                || self.ports.contains(&event.sport)
                || self.ports.contains(&event.dport))
            && (self.states.is_empty()
                || self.states.contains(&event.old_state)
                || self.states.contains(&event.new_state))
            && self.netns.is_none_or(|netns| netns == event.netns)
    }

    /// Whether a connect() that failed with EADDRNOTAVAIL is in the namespace asked for.
    /// Its record carries no namespace (nor socket): `netns` is the one
    /// [`FailedConnectNetns`] found for it, None when unknown, which matches only when
    /// no namespace was asked for.
    pub fn matches_failed_connect(&self, netns: Option<u32>) -> bool {
        self.netns.is_none_or(|wanted| netns == Some(wanted))
    }
}

/// The network namespace of EADDRNOTAVAIL records, which carry none: connect() that
/// finds no local port first takes its socket SYN_SENT -> CLOSE with local port 0 (the
/// kernel's `inet_hash_connect` failing), on the same thread, right before the
/// syscall's exit record; that transition carries the namespace. The model pairs them
/// the same way (`detect::model`, `portless`), for the destination.
#[derive(Debug, Default)]
pub struct FailedConnectNetns {
    by_tid: FxHashMap<u32, u32>,
}

/// Threads waiting for their EADDRNOTAVAIL record: more means those records were lost.
const WAITING: usize = 65536;

impl FailedConnectNetns {
    /// Notes a transition: a portless SYN_SENT -> CLOSE is a failing connect().
    pub fn note(&mut self, event: &Transition) {
        if event.old_state == TcpState::SynSent
            && event.new_state == TcpState::Close
            && event.sport == 0
        {
            if self.by_tid.len() >= WAITING {
                self.by_tid.clear();
            }
            self.by_tid.insert(event.task.tid, event.netns);
        }
    }

    /// The namespace of the failed connect(), from its thread's portless transition.
    pub fn of(&mut self, failed: &ConnectFailed) -> Option<u32> {
        self.by_tid.remove(&failed.task.tid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Transition, tests::raw_v4};

    fn event() -> Transition {
        // 127.0.0.1:40000 -> 10.1.2.3:443, SYN_SENT -> ESTABLISHED
        Transition::try_from(&raw_v4()).unwrap()
    }

    const OWNER: Option<u32> = Some(4242);

    #[test]
    fn empty_filter_matches_everything() {
        assert!(Filter::default().matches(&event(), OWNER));
    }

    #[test]
    fn pid_filter() {
        let only = |pids: Vec<u32>| Filter {
            pids,
            ..Filter::default()
        };
        assert!(only(vec![4242]).matches(&event(), OWNER));
        assert!(only(vec![1, 4242]).matches(&event(), OWNER));
        assert!(!only(vec![1]).matches(&event(), OWNER));
        assert!(!only(vec![4242]).matches(&event(), None), "unknown owner");
    }

    #[test]
    fn port_filter_matches_either_end() {
        let only = |ports: Vec<u16>| Filter {
            ports,
            ..Filter::default()
        };
        assert!(only(vec![443]).matches(&event(), OWNER));
        assert!(only(vec![40000]).matches(&event(), OWNER));
        assert!(!only(vec![80]).matches(&event(), OWNER));
    }

    #[test]
    fn netns_filter() {
        let only = |netns| Filter {
            netns: Some(netns),
            ..Filter::default()
        };
        assert_eq!(event().netns, 4026531840);
        assert!(only(4026531840).matches(&event(), OWNER));
        assert!(!only(4026532000).matches(&event(), OWNER));
    }

    #[test]
    fn failed_connects_take_the_namespace_of_their_threads_portless_close() {
        use crate::event::{ConnectFailed, Task};
        let mut portless = event();
        portless.old_state = TcpState::SynSent;
        portless.new_state = TcpState::Close;
        portless.sport = 0;
        portless.netns = 4026532000;
        let failed = |tid| ConnectFailed {
            ts_ns: portless.ts_ns + 1,
            task: Task {
                tid,
                ..portless.task
            },
            errno: 99,
        };
        let mut netns = FailedConnectNetns::default();
        // A transition with a local port is not a failing connect().
        netns.note(&event());
        assert_eq!(netns.of(&failed(event().task.tid)), None);
        netns.note(&portless);
        // Another thread's failure is not this one's.
        assert_eq!(netns.of(&failed(portless.task.tid + 100)), None);
        assert_eq!(netns.of(&failed(portless.task.tid)), Some(4026532000));
        // Taken once.
        assert_eq!(netns.of(&failed(portless.task.tid)), None);

        let only = |netns| Filter {
            netns: Some(netns),
            ..Filter::default()
        };
        assert!(only(4026532000).matches_failed_connect(Some(4026532000)));
        assert!(!only(4026531840).matches_failed_connect(Some(4026532000)));
        assert!(!only(4026531840).matches_failed_connect(None));
        assert!(Filter::default().matches_failed_connect(None));
    }

    #[test]
    fn state_filter_matches_old_or_new() {
        let only = |states: Vec<TcpState>| Filter {
            states,
            ..Filter::default()
        };
        assert!(only(vec![TcpState::SynSent]).matches(&event(), OWNER));
        assert!(only(vec![TcpState::Established]).matches(&event(), OWNER));
        assert!(!only(vec![TcpState::CloseWait]).matches(&event(), OWNER));
    }

    #[test]
    fn kinds_combine_with_and() {
        let filter = Filter {
            pids: vec![4242],
            ports: vec![80],
            states: vec![],
            netns: None,
        };
        assert!(!filter.matches(&event(), OWNER));
    }
}
