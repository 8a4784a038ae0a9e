//! Starting a workload as a child process and talking to it: the one helper for every
//! parent (demo, tests, the kernel-matrix guest; the benchmark builds its commands here).
use std::{
    ffi::OsString,
    io::{self, BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Setting up is a bind or a connect on this host: seconds mean something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run a role: a program and the arguments that come before the role's, e.g.
/// `portwatch-workload`, `portwatch actor`, `xtask guest workload`, or
/// `ip netns exec NAME portwatch-workload`.
#[derive(Clone, Debug)]
pub struct Launcher {
    program: PathBuf,
    leading: Vec<OsString>,
    /// Run first in each thread that reads a child's output.
    reader_start: fn(),
}

impl Launcher {
    /// Runs roles with `program`'s own arguments: `portwatch-workload <ROLE>`.
    pub fn binary(program: impl Into<PathBuf>) -> Launcher {
        Launcher {
            program: program.into(),
            leading: Vec::new(),
            reader_start: || {},
        }
    }

    /// Runs roles with `leading` arguments first: `portwatch actor <ROLE>`.
    pub fn new(
        program: impl Into<PathBuf>,
        leading: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Launcher {
        Launcher {
            program: program.into(),
            leading: leading.into_iter().map(Into::into).collect(),
            reader_start: || {},
        }
    }

    /// Runs `hook` first in each thread that reads a child's output: a privileged
    /// parent drops there what those threads never need (capabilities are per thread).
    pub fn on_reader_threads(mut self, hook: fn()) -> Launcher {
        self.reader_start = hook;
        self
    }

    /// The command that runs `role_args` (the role's name, then its options) with
    /// `--until-stdin-eof`, so the child lives only as long as its stdin is held open.
    /// stdio is left to the caller.
    pub fn command(&self, role_args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.leading);
        if !role_args.contains(&"--until-stdin-eof") {
            command.arg("--until-stdin-eof");
        }
        command.args(role_args);
        command
    }

    /// Starts `role_args` and waits for its `ready` line.
    pub fn spawn(&self, role_args: &[&str]) -> Result<WorkloadProcess> {
        WorkloadProcess::spawn(self.command(role_args), role_args, self.reader_start)
    }
}

/// A workload running as a child process, started by [`Launcher::spawn`].
///
/// It is killed when dropped, and it exits by itself when this process dies, as its stdin
/// closes then.
pub struct WorkloadProcess {
    child: Child,
    /// Held only so the child lives; closing it ends the child.
    stdin: Option<ChildStdin>,
    lines: Receiver<io::Result<String>>,
    /// Collects the child's stderr, for the error when it fails.
    stderr: Option<JoinHandle<String>>,
    description: String,
    pub pid: u32,
    /// The listening port of a server, the destination port of a client.
    pub port: u16,
}

impl WorkloadProcess {
    fn spawn(
        mut command: Command,
        role_args: &[&str],
        reader_start: fn(),
    ) -> Result<WorkloadProcess> {
        let description = role_args.join(" ");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} for {description}",
                    command.get_program().to_string_lossy()
                )
            })?;
        let stdin = child.stdin.take();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (Some(stdout), Some(mut stderr)) = (stdout, stderr) else {
            bail!("{description}: its stdout and stderr were not piped");
        };

        // Readers on threads, so waits can time out instead of hanging on a silent child.
        let (line_tx, lines) = mpsc::channel();
        thread::Builder::new()
            .name("workload-stdout".into())
            .spawn(move || {
                reader_start();
                for line in BufReader::new(stdout).lines() {
                    if line_tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .context("starting a thread to read a workload's stdout")?;
        let stderr = thread::Builder::new()
            .name("workload-stderr".into())
            .spawn(move || {
                reader_start();
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
            .context("starting a thread to read a workload's stderr")?;

        let mut workload = WorkloadProcess {
            pid: child.id(),
            child,
            stdin,
            lines,
            stderr: Some(stderr),
            description,
            port: 0,
        };
        let ready = workload.wait_line_timeout("ready", READY_TIMEOUT)?;
        workload.port = match ready.as_slice() {
            [_pid, port] => port.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| anyhow!("{}: bad ready line: {ready:?}", workload.description))?;
        Ok(workload)
    }

    /// Waits for the child's next line that starts with `word`, skipping others (a
    /// role may say more than a given parent listens for), and returns the line's other
    /// words.
    pub fn wait_line(&mut self, word: &str) -> Result<Vec<String>> {
        loop {
            let line = self.lines.recv().map_err(|_| self.exited(word))?;
            if let Some(words) = self.parse_line(word, line)? {
                return Ok(words);
            }
        }
    }

    /// [`WorkloadProcess::wait_line`], giving up after `timeout`.
    pub fn wait_line_timeout(&mut self, word: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(RecvTimeoutError::Disconnected) => return Err(self.exited(word)),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} (pid {}) said no {word:?} line within {timeout:?}",
                    self.description,
                    self.pid
                ),
            };
            if let Some(words) = self.parse_line(word, line)? {
                return Ok(words);
            }
        }
    }

    /// Writes one line to the child's stdin, e.g. `go` for `hold-client --churn-on-go`.
    pub fn tell(&mut self, line: &str) -> Result<()> {
        use std::io::Write as _;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: its stdin is closed", self.description))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.description))
    }

    /// Closes the child's stdin: a workload exits when it reaches EOF there.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for a workload")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) still runs after {timeout:?}",
                    self.description,
                    self.pid
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for the child to exit by itself, successfully.
    pub fn wait_success(&mut self, timeout: Duration) -> Result<()> {
        let status = self.wait_exit(timeout)?;
        if !status.success() {
            bail!("{} (pid {}) failed: {status}", self.description, self.pid);
        }
        Ok(())
    }

    /// The words after `word` when `line` starts with it.
    fn parse_line(&self, word: &str, line: io::Result<String>) -> Result<Option<Vec<String>>> {
        let line = line.with_context(|| format!("reading the stdout of {}", self.description))?;
        let mut words = line.split_whitespace().map(str::to_owned);
        Ok((words.next().as_deref() == Some(word)).then(|| words.collect()))
    }

    /// The error for a child whose stdout ended: it exited, and its stderr says why.
    fn exited(&mut self, word: &str) -> anyhow::Error {
        let status = self
            .wait_exit(Duration::from_secs(5))
            .map_or_else(|err| format!("{err:#}"), |status| status.to_string());
        let stderr = self
            .stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        let stderr = stderr.trim();
        let said = if stderr.is_empty() {
            String::from("nothing on stderr")
        } else {
            format!("it said: {stderr}")
        };
        anyhow!(
            "{} exited before its {word:?} line ({status}); {said}",
            self.description
        )
    }
}

impl Drop for WorkloadProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
