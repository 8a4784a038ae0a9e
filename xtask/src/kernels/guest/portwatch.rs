//! Runs the real portwatch binary in the guest, as a user would: started, told to stop
//! with SIGTERM, its stdout and stderr kept for the checks.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, Result, bail};

/// A tracing portwatch (`stream`, `report`), attached and running.
pub struct Running {
    child: Child,
    /// Still unread: the drop test leaves it unread on purpose for a while.
    stdout: Option<ChildStdout>,
    stdout_reader: Option<JoinHandle<String>>,
    /// stderr up to and including the "tracing" line.
    early_stderr: String,
    stderr_reader: JoinHandle<String>,
}

/// How a portwatch run ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Starts portwatch and returns once it says it is tracing (programs loaded and
/// attached). Its stdout is read from the start unless `hold_stdout`.
pub fn start(binary: &Path, args: &[&str], hold_stdout: bool) -> Result<Running> {
    let mut child = Command::new(binary)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut stderr = BufReader::new(child.stderr.take().context("portwatch stderr")?);
    let mut early_stderr = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line)? == 0 {
            let status = child.wait()?;
            bail!(
                "`portwatch {}` stopped before tracing ({status}):\n{early_stderr}",
                args.join(" ")
            );
        }
        early_stderr.push_str(&line);
        if line.starts_with("portwatch: tracing") {
            break;
        }
    }
    let stderr_reader = thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    let mut running = Running {
        stdout: child.stdout.take(),
        child,
        stdout_reader: None,
        early_stderr,
        stderr_reader,
    };
    if !hold_stdout {
        running.read_stdout();
    }
    Ok(running)
}

impl Running {
    /// Starts reading stdout (if not already): until then, once the pipe is full,
    /// portwatch blocks writing and stops draining its ring buffer.
    pub fn read_stdout(&mut self) {
        if let Some(mut stdout) = self.stdout.take() {
            self.stdout_reader = Some(thread::spawn(move || {
                let mut text = String::new();
                let _ = stdout.read_to_string(&mut text);
                text
            }));
        }
    }

    /// SIGTERM, the way a service manager stops it; waits for its summary and exit.
    pub fn stop(mut self) -> Result<Finished> {
        self.read_stdout();
        // SAFETY: kill has no memory-safety preconditions; the pid is our child, not
        // yet waited for, so it cannot have been reused.
        if unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGTERM to portwatch");
        }
        let status = self.child.wait()?;
        let stdout = match self.stdout_reader.take() {
            Some(reader) => reader.join().unwrap_or_default(),
            None => String::new(),
        };
        let rest = self.stderr_reader.join().unwrap_or_default();
        Ok(Finished {
            status,
            stdout,
            stderr: self.early_stderr + &rest,
        })
    }
}

/// Runs portwatch to completion (`snapshot`).
pub fn run(binary: &Path, args: &[&str]) -> Result<Finished> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    Ok(Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The counts of stream's last stderr line,
/// `portwatch: N events seen (M shown), D dropped (ring buffer full)...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub seen: u64,
    pub shown: u64,
    pub dropped: u64,
    /// 0 when the line does not say (nothing skipped, or a kernel that cannot count).
    pub skipped: u64,
}

pub fn summary(stderr: &str) -> Option<Summary> {
    let line = stderr.lines().rev().find(|l| l.contains(" events seen "))?;
    let rest = line.strip_prefix("portwatch: ")?;
    let (seen, rest) = rest.split_once(" events seen (")?;
    let (shown, rest) = rest.split_once(" shown), ")?;
    let (dropped, rest) = rest.split_once(" dropped")?;
    let skipped = match rest.split_once(" skipped by the kernel") {
        Some((before, _)) => before.rsplit(' ').next()?.parse().ok()?,
        None => 0,
    };
    Some(Summary {
        seen: seen.parse().ok()?,
        shown: shown.parse().ok()?,
        dropped: dropped.parse().ok()?,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let stderr = "portwatch: tracing TCP state changes; Ctrl-C to stop\n\
                      portwatch: 1234 events seen (56 shown), 7 dropped (ring buffer full), \
                      3 skipped by the kernel (another eBPF program was running on that CPU), \
                      2 sockets untracked (socket table full)\n";
        assert_eq!(
            summary(stderr),
            Some(Summary {
                seen: 1234,
                shown: 56,
                dropped: 7,
                skipped: 3
            })
        );
        let plain = "portwatch: 10 events seen (10 shown), 0 dropped (ring buffer full)\n";
        assert_eq!(summary(plain).map(|s| s.skipped), Some(0));
        assert_eq!(summary("portwatch: tracing\n"), None);
    }
}
