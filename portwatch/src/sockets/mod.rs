//! Sockets and their owners: the host's TCP sockets as they are now, without eBPF (the
//! kernel's socket table via sock_diag, the processes holding each socket via /proc,
//! what those processes run as via cgroups), and the live table mirrored from the
//! kernel's events.
pub mod connection;
pub mod diag;
mod exits;
pub mod holders;
pub mod netns;
pub mod owners;
pub mod snapshot;
pub mod table;
pub mod time_wait;
pub mod tuple;
pub mod workload;
