//! A connection's 4-tuple: the name the kernel's events, the startup snapshot and
//! recordings share for one connection.
use std::net::IpAddr;

use serde::Serialize;

use crate::event::Transition;

/// A connection's two ends, as seen from the socket's side. IPv4-mapped IPv6
/// addresses are stored as IPv4, so the kernel's events and sock_diag agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Tuple {
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl Tuple {
    pub fn of(event: &Transition) -> Self {
        Tuple {
            saddr: event.saddr,
            sport: event.sport,
            daddr: event.daddr,
            dport: event.dport,
        }
    }
}
