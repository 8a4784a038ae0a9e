//! Which transitions the user asked to see.
use crate::{event::Transition, tcp_state::TcpState};

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
