//! The kernel side, seen from userspace: environment checks, loading, reading.
mod btf;
mod counts;
mod ebpf_log;
pub mod environment;
mod loader;
mod reader;

pub use counts::{CountReader, FlowReading};
pub use ebpf_log::EbpfLogLevel;
pub use environment::Features;
pub use loader::{KernelCounters, KernelPath, StateHook, Tracer, TracerOptions};
pub use reader::EventReader;
