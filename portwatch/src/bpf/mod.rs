//! The kernel side, seen from userspace: environment checks, loading, reading.
pub mod environment;
mod loader;
mod reader;

pub use environment::Features;
pub use loader::{KernelCounters, Tracer, TracerOptions};
pub use reader::EventReader;
