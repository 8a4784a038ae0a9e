//! Sockets and their owners: the live table mirrored from the kernel's events.
pub mod table;
