//! Child processes of the benchmark: their output lines, stopping them with SIGINT, and
//! what they cost, read after they exit but before they are reaped.
use std::{
    io::{BufRead as _, BufReader, Read, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::procfs;

/// A running child. It is killed when dropped, unless it finished.
pub struct Process {
    child: Child,
    pub pid: u32,
    name: String,
    /// Held so that actors run with `--until-stdin-eof` live as long as we do.
    stdin: Option<ChildStdin>,
    /// Lines of the output we listen to (stdout for actors, stderr for agents).
    lines: Receiver<String>,
    /// Everything that output said, for error messages and summaries.
    said: Arc<Mutex<Vec<String>>>,
    finished: bool,
}

/// How a stopped process ended and what it cost.
#[derive(Clone, Debug)]
pub struct Finished {
    pub success: bool,
    /// User plus system CPU seconds over its whole life.
    pub cpu_s: f64,
    /// Peak resident set (the kernel's maxrss at exit, which is the final VmHWM).
    pub peak_rss_kib: u64,
    /// Every line of the output we listened to.
    pub said: Vec<String>,
}

/// Which output of the child carries its messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Stdout,
    Stderr,
}

impl Process {
    /// Starts `command`; `listen` is read line by line, the other output goes where
    /// `command` already sends it (or nowhere). Its stdin is a pipe we hold.
    pub fn spawn(command: Command, name: &str, listen: Listen) -> Result<Process> {
        Process::spawn_with_stdin(command, name, listen, Stdio::piped())
    }

    /// The same with `stdin` as its standard input (a terminal, say); `tell` works only
    /// if that is `Stdio::piped()`.
    pub fn spawn_with_stdin(
        mut command: Command,
        name: &str,
        listen: Listen,
        stdin: Stdio,
    ) -> Result<Process> {
        match listen {
            Listen::Stdout => command.stdout(Stdio::piped()),
            Listen::Stderr => command.stderr(Stdio::piped()),
        };
        let mut child = command
            .stdin(stdin)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stream: Box<dyn Read + Send> = match listen {
            Listen::Stdout => Box::new(child.stdout.take().context("stdout not piped")?),
            Listen::Stderr => Box::new(child.stderr.take().context("stderr not piped")?),
        };
        let (line_tx, lines) = mpsc::channel();
        let said = Arc::new(Mutex::new(Vec::new()));
        let said_by_reader = Arc::clone(&said);
        thread::Builder::new()
            .name("bench-reader".into())
            .spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    said_by_reader
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line.clone());
                    // The receiver may have stopped listening; the log keeps the line.
                    let _ = line_tx.send(line);
                }
            })
            .context("starting a reader thread")?;
        Ok(Process {
            pid: child.id(),
            stdin: child.stdin.take(),
            child,
            name: name.to_owned(),
            lines,
            said,
            finished: false,
        })
    }

    /// Waits up to `timeout` for a line that `accept` returns Some for.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut accept: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(found) = accept(&line) {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} said no {what} within {timeout:?}{}",
                        self.name,
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    self.finished = true;
                    bail!(
                        "{} exited ({status}) before its {what}{}",
                        self.name,
                        self.log()
                    )
                }
            }
        }
    }

    /// Waits for a line whose first word is `word`; returns the other words.
    pub fn wait_word(&mut self, word: &str, timeout: Duration) -> Result<Vec<String>> {
        self.wait_for(timeout, &format!("{word:?} line"), |line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(word)).then(|| words.map(str::to_owned).collect())
        })
    }

    /// Writes one line to the child's stdin (actors hear `go` there).
    pub fn tell(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin not piped")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.name))
    }

    /// True once the process has exited (not reaped yet: `finish` still reads its cost).
    pub fn has_exited(&self) -> Result<bool> {
        exited_unreaped(self.pid)
    }

    /// Sends SIGINT, as Ctrl-C would.
    pub fn interrupt(&self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid)?;
        // SAFETY: kill has no memory preconditions; `pid` is our unreaped child, so the
        // PID cannot belong to another process yet.
        if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
            return Err(std::io::Error::last_os_error()).context("sending SIGINT");
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit, reads its CPU time while it is a
    /// zombie, then reaps it.
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let deadline = Instant::now() + timeout;
        while !exited_unreaped(self.pid)? {
            if Instant::now() >= deadline {
                bail!(
                    "{} still runs {timeout:?} after SIGINT{}",
                    self.name,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        let cpu_s = procfs::cpu_seconds(self.pid)?;
        let (success, peak_rss_kib) = reap(self.pid)?;
        self.finished = true;
        // The reader thread ends at EOF, which the exit brought.
        let said = self.said.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Finished {
            success,
            cpu_s,
            peak_rss_kib,
            said,
        })
    }

    /// The last lines the process said, for an error message.
    fn log(&self) -> String {
        let said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        let tail: Vec<&str> = said
            .iter()
            .rev()
            .take(10)
            .rev()
            .map(String::as_str)
            .collect();
        if tail.is_empty() {
            String::new()
        } else {
            format!("; it said:\n  {}", tail.join("\n  "))
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// True once `pid` (our child) has exited; it stays a zombie, so /proc still has it.
fn exited_unreaped(pid: u32) -> Result<bool> {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value and si_pid 0 is what
    // WNOHANG leaves when no child changed state.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t. WNOWAIT leaves the child waitable.
    let result = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("waitid");
    }
    // SAFETY: waitid filled `info` for a CLD_* event or left it zeroed; si_pid is valid
    // to read for both.
    Ok(unsafe { info.si_pid() } != 0)
}

/// Reaps the exited `pid`: whether it exited with 0, and its peak RSS in KiB.
fn reap(pid: u32) -> Result<(bool, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain data, valid when zeroed.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: both out-pointers are valid; the child has exited, so this does not block.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    if reaped != pid as libc::pid_t {
        return Err(anyhow!(std::io::Error::last_os_error())).context("wait4");
    }
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((success, usage.ru_maxrss.max(0) as u64))
}
