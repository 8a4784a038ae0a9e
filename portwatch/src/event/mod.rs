//! The kernel's records as typed events; `decode` makes them from ring-buffer bytes.
use std::{fmt, net::IpAddr};

use portwatch_common::COMM_LEN;
use serde::{Serialize, Serializer};

use crate::tcp_state::TcpState;

mod counts;
mod decode;
#[cfg(test)]
pub(crate) mod tests;

pub use counts::{CloseWaitSocket, FlowCount, lifetime_bucket_ns};
pub use decode::{DecodeError, decode, ipv6, unmap};

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// A task's command name as the kernel keeps it: up to 16 bytes, NUL-padded, not
/// necessarily UTF-8. Kept as bytes so decoding allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm([u8; COMM_LEN]);

impl Comm {
    pub const fn from_bytes(bytes: [u8; COMM_LEN]) -> Self {
        Comm(bytes)
    }

    pub fn new(name: &str) -> Self {
        let mut bytes = [0; COMM_LEN];
        let len = name.len().min(COMM_LEN);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Comm(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        &self.0[..len]
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.as_bytes()) {
            Ok(text) => f.pad(text),
            Err(_) => f.pad(&String::from_utf8_lossy(self.as_bytes())),
        }
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// How portwatch learned who owns a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// The process called connect() on it.
    Connect,
    /// The process called listen() on it.
    Listen,
    /// The process accepted it.
    Accept,
    /// Another of the process's own system calls on it (close, shutdown, ...).
    Syscall,
    /// Provisional: the owner of the listener that created it; not accepted yet, or
    /// accepted without the peer address (accept(fd, NULL, NULL)).
    Listener,
    /// Found holding the socket's file descriptor in /proc.
    Procfs,
}

impl OwnerSource {
    /// Learned from the owner's own system call, rather than inferred.
    pub fn is_certain(self) -> bool {
        !matches!(self, OwnerSource::Listener)
    }
}

/// How a socket came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Opened by connect().
    Active,
    /// Created for an incoming connection.
    Passive,
    /// A listening socket.
    Listener,
}

/// The process a socket belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
    /// cgroup v2 id of the owner when it was learned; 0 if unknown.
    pub cgroup_id: u64,
    pub source: OwnerSource,
}

/// The task that was on the CPU when something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
}

/// One TCP state transition, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The socket's identity (kernel address of its `struct sock`).
    pub sock: u64,
    /// The task current when the transition happened. Unless `by_syscall`, it may be
    /// an incidental bystander (softirq context): use `owner`.
    pub task: Task,
    /// Only a system call on the socket makes this transition, so `task` holds it.
    pub by_syscall: bool,
    /// The socket's owner as the kernel knew it after the transition, if it knew.
    pub owner: Option<Owner>,
    pub origin: Option<Origin>,
    pub family: Family,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub old_state: TcpState,
    pub new_state: TcpState,
    /// The socket's network namespace (its inode number, as `ls -l /proc/PID/ns/net`
    /// shows); 0 when the kernel's BTF did not say where to read it.
    pub netns: u32,
    /// How long the socket spent in `old_state`, when portwatch saw it enter it.
    pub in_state_ns: Option<u64>,
    /// When portwatch saw the socket open (CLOCK_MONOTONIC ns).
    pub opened_ns: Option<u64>,
}

impl Transition {
    /// The active closer's socket leaves FIN_WAIT2 or CLOSING for CLOSE when the kernel
    /// swaps it for a time-wait mini-socket (TIME_WAIT never appears as a new state in
    /// this tracepoint). A reset in those states looks the same; rare enough to accept.
    pub fn enters_time_wait(&self) -> bool {
        self.new_state == TcpState::Close
            && matches!(self.old_state, TcpState::FinWait2 | TcpState::Closing)
    }
}

/// A process accepted a socket and owns it from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub ts_ns: u64,
    pub sock: u64,
    pub owner: Owner,
}

/// A process exited; its PID may be reused from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: Comm,
}

/// connect() failed with EADDRNOTAVAIL: no local port was free for its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailed {
    pub ts_ns: u64,
    pub task: Task,
    pub errno: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Transition(Transition),
    Accepted(Accepted),
    Exited(Exited),
    ConnectFailed(ConnectFailed),
}
