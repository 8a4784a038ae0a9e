//! A connection's 4-tuple: the name the kernel's events, the startup snapshot and
//! recordings share for one connection.
use std::net::IpAddr;

use serde::Serialize;

use crate::event::Transition;

/// A connection's two ends, as seen from the socket's side, in its network namespace:
/// the same 4-tuple is a different connection in another namespace (two pods each
/// serving 127.0.0.1:8080). IPv4-mapped IPv6 addresses are stored as IPv4, so the
/// kernel's events and sock_diag agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tuple {
    /// Network namespace inode; 0 when unknown.
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl Tuple {
    pub fn of(event: &Transition) -> Self {
        Tuple {
            netns: event.netns,
            saddr: event.saddr,
            sport: event.sport,
            daddr: event.daddr,
            dport: event.dport,
        }
    }
}
