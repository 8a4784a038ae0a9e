//! A traffic process started by the in-guest test (see `actors`), killed when dropped.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdout, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub struct Actor {
    child: Child,
    stdout: BufReader<ChildStdout>,
    pub pid: u32,
    pub port: u16,
}

impl Actor {
    /// Starts `xtask guest <args>` and waits for its `ready <pid> <port>` line.
    pub fn start(args: &[&str]) -> Result<Actor> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut child = Command::new(exe)
            .arg("guest")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `guest {}`", args.join(" ")))?;
        let stdout = BufReader::new(child.stdout.take().context("actor stdout")?);
        let mut actor = Actor {
            child,
            stdout,
            pid: 0,
            port: 0,
        };
        let ready = actor
            .expect("ready")
            .with_context(|| format!("`guest {}`", args.join(" ")))?;
        let (Some(pid), Some(port)) = (ready.first(), ready.get(1)) else {
            bail!(
                "`guest {}` said `ready {}`",
                args.join(" "),
                ready.join(" ")
            );
        };
        actor.pid = pid.parse()?;
        actor.port = port.parse()?;
        Ok(actor)
    }

    /// Reads the next line, which must start with `word`; returns its other words.
    pub fn expect(&mut self, word: &str) -> Result<Vec<String>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut words = line.split_whitespace().map(str::to_owned);
        if words.next().as_deref() != Some(word) {
            let status = self.child.try_wait().ok().flatten();
            bail!("expected `{word} ...`, got {line:?} (exit status: {status:?})");
        }
        Ok(words.collect())
    }

    /// Waits for the process to exit by itself, successfully.
    pub fn wait(mut self) -> Result<()> {
        let status = self.child.wait()?;
        if !status.success() {
            bail!("traffic process {} failed: {status}", self.pid);
        }
        Ok(())
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
