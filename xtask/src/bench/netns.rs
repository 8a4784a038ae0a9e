//! The benchmark's workload runs in a network namespace of its own, with only `lo` up.
//!
//! The kernel's tracepoints see every namespace, so the agents trace the workload all
//! the same; but its hundreds of thousands of TIME_WAIT sockets stay out of the host's
//! socket table, which each agent dumps when it starts (and which other work on the
//! host uses), and the host's traffic stays out of the workload's counters.
use std::process::Command;

use anyhow::{Context as _, Result, bail};

pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (replacing a stale one from an interrupted run) and
    /// brings its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        // A namespace left by a killed run: its processes are gone with their parent.
        let _ = Command::new("ip").args(["netns", "delete", name]).output();
        ip(&["netns", "add", name])?;
        let netns = Netns {
            name: name.to_owned(),
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
