//! The counting path's numbers as typed values: what one flow (an owner toward one
//! destination, or at one local port) did since the last reading, and the sockets in
//! CLOSE_WAIT now. The reader in `bpf::counts` takes the kernel's monotonic counts'
//! differences; this turns them into the model's types.
use std::net::IpAddr;

use portwatch_common::{
    AF_INET, AF_INET6, CloseWaitEntry, FlowCounts, FlowKey, LIFETIME_BUCKETS, LIFETIME_MIN_LOG2,
};

use super::{
    Comm, DecodeError, Origin, Owner,
    decode::{ipv4, origin, owner},
};

/// One flow's counts over an interval (differences of the kernel's monotonic counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowCount {
    pub netns: u32,
    /// Local address.
    pub saddr: IpAddr,
    /// Local port for a passive flow (sockets a listener created), 0 for an active one.
    pub sport: u16,
    /// Remote address and port of an active flow; unspecified and 0 for a passive one.
    pub daddr: IpAddr,
    pub dport: u16,
    pub origin: Option<Origin>,
    /// The owner's PID, 0 if unknown.
    pub pid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
    pub opened: u64,
    pub closed: u64,
    pub closed_first: u64,
    pub peer_closed_first: u64,
    pub close_wait_left: u64,
    pub time_wait: u64,
    /// Closed connections' lifetimes per log2 bucket (see [`lifetime_bucket_ns`]).
    pub lifetimes: [u64; LIFETIME_BUCKETS],
    /// Their exact sum, ns.
    pub lifetime_sum_ns: u64,
    /// When the kernel created the flow (CLOCK_MONOTONIC ns).
    pub created_ns: u64,
}

impl FlowCount {
    /// `now - before` for one key (`before` all zero for a key new since the last
    /// reading, or one the kernel created again after userspace deleted it).
    pub fn between(
        key: &FlowKey,
        now: &FlowCounts,
        before: &FlowCounts,
    ) -> Result<FlowCount, DecodeError> {
        let (saddr, daddr) = addresses(key.family, &key.saddr, &key.daddr)?;
        let mut lifetimes = [0; LIFETIME_BUCKETS];
        for (bucket, (now, before)) in lifetimes
            .iter_mut()
            .zip(now.lifetime_log2.iter().zip(&before.lifetime_log2))
        {
            *bucket = now.wrapping_sub(*before);
        }
        Ok(FlowCount {
            netns: key.netns,
            saddr,
            sport: key.sport,
            daddr,
            dport: key.dport,
            origin: origin(key.origin)?,
            pid: key.tgid,
            comm: Comm(now.comm),
            cgroup_id: now.cgroup_id,
            opened: now.opened.wrapping_sub(before.opened),
            closed: now.closed.wrapping_sub(before.closed),
            closed_first: now.closed_first.wrapping_sub(before.closed_first),
            peer_closed_first: now.peer_closed_first.wrapping_sub(before.peer_closed_first),
            close_wait_left: now.close_wait_left.wrapping_sub(before.close_wait_left),
            time_wait: now.time_wait.wrapping_sub(before.time_wait),
            lifetimes,
            lifetime_sum_ns: now.lifetime_sum_ns.wrapping_sub(before.lifetime_sum_ns),
            created_ns: now.created_ns,
        })
    }

    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self.opened == 0
            && self.closed == 0
            && self.closed_first == 0
            && self.peer_closed_first == 0
            && self.close_wait_left == 0
            && self.time_wait == 0
    }

    /// The lifetimes as (a representative lifetime in ns, count) per bucket: each
    /// bucket's geometric middle, so a percentile is within a factor of 1.42 of the
    /// truth.
    pub fn lifetime_counts(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.lifetimes
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .map(|(bucket, &count)| (lifetime_bucket_ns(bucket), count))
    }
}

/// The geometric middle of a lifetime bucket, in ns.
pub fn lifetime_bucket_ns(bucket: usize) -> u64 {
    let low = 1u64 << (bucket as u32 + LIFETIME_MIN_LOG2);
    // low * sqrt(2), in integers.
    low + low * 41 / 100
}

/// A socket in CLOSE_WAIT now, from the counting path's `CLOSE_WAITS` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseWaitSocket {
    /// The socket's identity (kernel address of its `struct sock`).
    pub sock: u64,
    /// When it entered CLOSE_WAIT (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
    pub opened_ns: Option<u64>,
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub origin: Option<Origin>,
    pub owner: Option<Owner>,
}

impl CloseWaitSocket {
    pub fn decode(sock: u64, raw: &CloseWaitEntry) -> Result<CloseWaitSocket, DecodeError> {
        let (saddr, daddr) = addresses(raw.family, &raw.saddr, &raw.daddr)?;
        Ok(CloseWaitSocket {
            sock,
            since_ns: raw.since_ns,
            opened_ns: (raw.opened_ns != 0).then_some(raw.opened_ns),
            netns: raw.netns,
            saddr,
            sport: raw.sport,
            daddr,
            dport: raw.dport,
            origin: origin(raw.owner.origin)?,
            owner: owner(&raw.owner)?,
        })
    }
}

fn addresses(
    family: u16,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
) -> Result<(IpAddr, IpAddr), DecodeError> {
    match family {
        AF_INET => Ok((ipv4(saddr), ipv4(daddr))),
        AF_INET6 => Ok((super::ipv6(saddr), super::ipv6(daddr))),
        other => Err(DecodeError::UnknownFamily(other)),
    }
}

#[cfg(test)]
mod tests {
    use portwatch_common::lifetime_bucket;

    use super::*;

    #[test]
    fn lifetime_buckets_hold_their_middles() {
        assert_eq!(lifetime_bucket(0), 0);
        assert_eq!(lifetime_bucket(1), 0);
        assert_eq!(lifetime_bucket(2047), 0);
        assert_eq!(lifetime_bucket(2048), 1);
        assert_eq!(lifetime_bucket(u64::MAX), LIFETIME_BUCKETS - 1);
        for bucket in 1..LIFETIME_BUCKETS - 1 {
            let low = 1u64 << (bucket as u32 + LIFETIME_MIN_LOG2);
            assert_eq!(lifetime_bucket(low), bucket);
            assert_eq!(lifetime_bucket(low * 2 - 1), bucket);
            assert_eq!(lifetime_bucket(lifetime_bucket_ns(bucket)), bucket);
        }
    }

    #[test]
    fn a_flow_count_is_the_difference_of_two_readings() {
        let key = FlowKey {
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            netns: 4026531840,
            tgid: 42,
            sport: 0,
            dport: 8080,
            family: AF_INET,
            origin: portwatch_common::Origin::Active as u8,
            _pad: 0,
            cpu: 1,
        };
        let mut before = FlowCounts::ZERO;
        before.opened = 10;
        before.lifetime_log2[3] = 2;
        let mut now = before;
        now.opened = 15;
        now.closed = 4;
        now.time_wait = 4;
        now.lifetime_log2[3] = 6;
        now.comm = *b"curl\0\0\0\0\0\0\0\0\0\0\0\0";
        let count = FlowCount::between(&key, &now, &before).unwrap();
        assert_eq!((count.opened, count.closed, count.time_wait), (5, 4, 4));
        assert_eq!(
            count.lifetime_counts().collect::<Vec<_>>(),
            vec![(lifetime_bucket_ns(3), 4)]
        );
        assert_eq!(count.daddr.to_string(), "127.0.0.2");
        assert_eq!((count.pid, count.comm.to_string()), (42, "curl".to_owned()));
        assert_eq!(count.origin, Some(Origin::Active));
        assert!(!count.is_empty());
        assert!(FlowCount::between(&key, &now, &now).unwrap().is_empty());
    }
}
