//! The eBPF programs' own diagnostics, through aya-log: a full socket or owner table,
//! a dropped event. Off unless `--ebpf-log` asks for them, and then free:
//!
//! - the programs log only where something was already lost (`count` in
//!   portwatch-ebpf), never on the path every event takes;
//! - the level is aya-log-ebpf's load-time global `AYA_LOG_LEVEL`, in the object's
//!   .rodata, which aya freezes after writing: the verifier reads a frozen read-only
//!   map's value as a constant and drops the branches it makes dead (Linux 5.2+), so
//!   with the level at 0 no log code is verified or run;
//! - off, its ring buffer shrinks to one page and nothing reads it.
use std::io::Write as _;

use anyhow::{Context as _, Result};
use aya::{Ebpf, EbpfLoader};
use aya_log::{EbpfLogger, Level};
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

/// aya-log-ebpf's ring buffer (a private constant in aya-log 0.3).
const LOG_MAP: &str = "AYA_LOGS";

/// `--ebpf-log`: the least severe eBPF log statement shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfLogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
}

impl EbpfLogLevel {
    /// The value of `AYA_LOG_LEVEL`: statements whose level number is at most this run
    /// (aya-log-ebpf's `level_enabled`), so 0 turns every one off.
    pub(super) fn kernel_value(self) -> u8 {
        match self {
            EbpfLogLevel::Off => 0,
            EbpfLogLevel::Error => Level::Error as u8,
            EbpfLogLevel::Warn => Level::Warn as u8,
            EbpfLogLevel::Info => Level::Info as u8,
            EbpfLogLevel::Debug => Level::Debug as u8,
        }
    }
}

/// Sets the level in the object before it loads. `level_value` is
/// `level.kernel_value()`, held by the caller: the loader keeps a reference until `load`.
pub(super) fn configure<'a>(loader: &mut EbpfLoader<'a>, level: EbpfLogLevel, level_value: &'a u8) {
    debug_assert_eq!(*level_value, level.kernel_value());
    // must_exist: the object's default (0xff) logs everything, so a rename in aya-log
    // must fail the load rather than turn the log on.
    loader.override_global(aya_log::LEVEL, level_value, true);
    if level == EbpfLogLevel::Off {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
        loader.map_max_entries(LOG_MAP, page);
    }
}

/// Reads the eBPF log, when on, into stderr from a task on the current tokio runtime
/// until dropped.
pub(super) struct LogTask(JoinHandle<()>);

impl Drop for LogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts reading the log if `level` is not off. Must run within a tokio runtime.
pub(super) fn start(ebpf: &mut Ebpf, level: EbpfLogLevel) -> Result<Option<LogTask>> {
    if level == EbpfLogLevel::Off {
        return Ok(None);
    }
    let logger = EbpfLogger::init_with_logger(ebpf, Stderr).context("starting the eBPF log")?;
    // SAFETY: the EbpfLogger owns its ring buffer's fd, which stays open and unchanged
    // until the logger is dropped, and the AsyncFd owns the logger, so it goes first.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("registering the eBPF log with tokio")?;
    let task = tokio::spawn(async move {
        // Records are submitted with the kernel's default wakeup, so readiness follows
        // them; the log is rare, so waking per record costs nothing worth saving.
        while let Ok(mut guard) = logger.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(Some(LogTask(task)))
}

/// A `log::Log` to stderr. The kernel already filtered by level, so every record that
/// reaches it is shown. Hand-written rather than a logging crate: one line per record
/// is all it does, and aya-log takes the logger as a value, so no global logger (and
/// no crate to configure one) is needed.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // A closed stderr loses the line; it must not stop the collector.
        let _ = writeln!(
            std::io::stderr().lock(),
            "portwatch: eBPF {}: {}",
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_zero_and_levels_match_aya_log() {
        assert_eq!(EbpfLogLevel::Off.kernel_value(), 0);
        assert_eq!(EbpfLogLevel::Error.kernel_value(), 1);
        assert_eq!(EbpfLogLevel::Warn.kernel_value(), 2);
        assert_eq!(EbpfLogLevel::Debug.kernel_value(), 4);
    }
}
