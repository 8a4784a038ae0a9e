//! Starting an actor as a child process and reading what it says.
use std::{
    io::{self, BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Setting up is a bind or a connect on this host: seconds mean something is wrong.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// An actor running as a child process (`<exe> actor --until-stdin-eof <role_args>`).
///
/// It is killed when dropped, and it exits by itself when this process dies, as its stdin
/// closes then.
pub struct ActorProcess {
    child: Child,
    /// Held only so the actor lives; closing it ends the actor.
    stdin: Option<ChildStdin>,
    lines: Receiver<io::Result<String>>,
    /// Collects the actor's stderr, for the error when it fails.
    stderr: Option<JoinHandle<String>>,
    description: String,
    pub pid: u32,
    /// The listening port of a server, the destination port of a client.
    pub port: u16,
}

impl ActorProcess {
    /// Starts `exe actor <role_args>` (`exe` is portwatch: `std::env::current_exe()`,
    /// or `env!("CARGO_BIN_EXE_portwatch")` in tests) and waits for its `ready` line.
    pub fn spawn(exe: &Path, role_args: &[&str]) -> Result<ActorProcess> {
        let description = format!("actor {}", role_args.join(" "));
        let mut command = Command::new(exe);
        command.arg("actor");
        if !role_args.contains(&"--until-stdin-eof") {
            command.arg("--until-stdin-eof");
        }
        let mut child = command
            .args(role_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {description}", exe.display()))?;
        let stdin = child.stdin.take();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (Some(stdout), Some(mut stderr)) = (stdout, stderr) else {
            bail!("{description}: its stdout and stderr were not piped");
        };

        // Readers on threads, so waits can time out instead of hanging on a silent child.
        let (line_tx, lines) = mpsc::channel();
        thread::Builder::new()
            .name("actor-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    if line_tx.send(line).is_err() {
                        return;
                    }
                }
            })
            .context("starting a thread to read an actor's stdout")?;
        let stderr = thread::Builder::new()
            .name("actor-stderr".into())
            .spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
            .context("starting a thread to read an actor's stderr")?;

        let mut actor = ActorProcess {
            pid: child.id(),
            child,
            stdin,
            lines,
            stderr: Some(stderr),
            description,
            port: 0,
        };
        let ready = actor.wait_line_timeout("ready", READY_TIMEOUT)?;
        actor.port = match ready.as_slice() {
            [_pid, port] => port.parse().ok(),
            _ => None,
        }
        .ok_or_else(|| anyhow!("{}: bad ready line: {ready:?}", actor.description))?;
        Ok(actor)
    }

    /// Waits for the actor's next line, which must start with `word`, and returns the
    /// line's other words.
    pub fn wait_line(&mut self, word: &str) -> Result<Vec<String>> {
        let line = self.lines.recv().map_err(|_| self.exited(word))?;
        self.parse_line(word, line)
    }

    /// [`ActorProcess::wait_line`], giving up after `timeout`.
    pub fn wait_line_timeout(&mut self, word: &str, timeout: Duration) -> Result<Vec<String>> {
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Disconnected) => return Err(self.exited(word)),
            Err(RecvTimeoutError::Timeout) => bail!(
                "{} (pid {}) said no {word:?} line within {timeout:?}",
                self.description,
                self.pid
            ),
        };
        self.parse_line(word, line)
    }

    /// Writes one line to the actor's stdin, e.g. `go` for `hold-client --churn-on-go`.
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

    /// Closes the actor's stdin: an actor exits when it reaches EOF there.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits up to `timeout` for the actor to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for an actor")? {
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

    fn parse_line(&self, word: &str, line: io::Result<String>) -> Result<Vec<String>> {
        let line = line.with_context(|| format!("reading the stdout of {}", self.description))?;
        let mut words = line.split_whitespace().map(str::to_owned);
        if words.next().as_deref() != Some(word) {
            bail!(
                "{} said {line:?}; expected a {word:?} line",
                self.description
            );
        }
        Ok(words.collect())
    }

    /// The error for an actor whose stdout ended: it exited, and its stderr says why.
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

impl Drop for ActorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
