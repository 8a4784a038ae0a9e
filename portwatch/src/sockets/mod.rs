//! The host's TCP sockets as they are now, without eBPF: the kernel's socket table
//! (sock_diag), the processes holding each socket (/proc), and what those processes run
//! as (cgroups).
pub mod diag;
pub mod holders;
pub mod snapshot;
pub mod workload;
