//! A process, named so that it is not mistaken for a later process given the same PID.
//!
//! PIDs are reused: a leaker that exits leaves its sockets behind, and its PID may go
//! to a healthy process a moment later. Every part of portwatch that names a process
//! (a socket's owner, a report's row, a snapshot's holder) names it with [`Process`].

/// A process: its PID and which life of that PID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Process {
    pub pid: u32,
    pub life: Life,
}

/// Which life of a PID a process is, told apart by what portwatch learned it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Life {
    /// Learned from the kernel's events: the life after this many exits of the PID
    /// (the socket table counts them, see `sockets::table::SocketTable::is_alive`).
    AfterExits(u32),
    /// Read from /proc: the process's start time, clock ticks after boot
    /// (/proc/<pid>/stat field 22), which with the PID names it even after the PID is
    /// reused.
    StartedAt(u64),
}

impl Process {
    /// The process with `pid` after `exits` exits of that PID.
    pub const fn after_exits(pid: u32, exits: u32) -> Self {
        Process {
            pid,
            life: Life::AfterExits(exits),
        }
    }

    /// The process with `pid` that started at `start_time` (clock ticks after boot).
    pub const fn started_at(pid: u32, start_time: u64) -> Self {
        Process {
            pid,
            life: Life::StartedAt(start_time),
        }
    }

    /// Its start time, for a process read from /proc.
    pub fn start_time(&self) -> Option<u64> {
        match self.life {
            Life::StartedAt(ticks) => Some(ticks),
            Life::AfterExits(_) => None,
        }
    }
}
