//! The kernel side, seen from userspace: environment checks, loading, reading.
mod btf;
mod ebpf_log;
pub mod environment;
mod loader;
mod reader;

pub use ebpf_log::EbpfLogLevel;
pub use environment::Features;
pub use loader::{KernelCounters, Tracer, TracerOptions};
pub use reader::EventReader;
