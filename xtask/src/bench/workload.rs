//! The churn workload: the workload library's `echo-server` and `churn-client` (the
//! release build of `portwatch-workload`), run in the benchmark's network namespace.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    netns::Netns,
    process::{Listen, Process},
};

/// Which side sends the first FIN, and so keeps the TIME_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CloseFirst {
    Client,
    Server,
}

impl CloseFirst {
    fn flag(self) -> &'static str {
        match self {
            CloseFirst::Client => "client",
            CloseFirst::Server => "server",
        }
    }
}

/// What every connection of the workload does, and how many at once.
#[derive(Clone, Debug, Serialize)]
pub struct Shape {
    /// Client threads, each with one connection in flight (and as many server workers).
    pub threads: u16,
    /// Request-response exchanges per connection.
    pub requests: u32,
    pub close_first: CloseFirst,
    /// How long each connection stays open before the closing side closes it.
    #[serde(serialize_with = "seconds")]
    pub lifetime: Option<Duration>,
    /// Target connections per second over all threads; 0: flat out.
    pub rate: f64,
}

fn seconds<S: serde::Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    value.map(|d| d.as_secs_f64()).serialize(s)
}

/// When a client run ends.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    Duration(Duration),
    Count(u64),
}

/// What a client run did, as the client counted it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ClientRun {
    pub pid: u32,
    /// Connections that went through every step: the truth a tracer is checked against.
    pub made: u64,
    pub seconds: f64,
    /// connect() failing with EADDRNOTAVAIL (none expected).
    pub no_local_port: u64,
    /// The client process's CPU seconds.
    pub cpu_s: f64,
}

impl ClientRun {
    pub fn rate(&self) -> f64 {
        self.made as f64 / self.seconds
    }
}

/// The echo-server, running for the whole benchmark.
pub struct Server {
    process: Process,
    pub port: u16,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.process.pid
    }
}

/// Runs roles of `portwatch-workload` inside `netns`.
pub struct Actors<'a> {
    pub workload: PathBuf,
    pub netns: &'a Netns,
}

impl Actors<'_> {
    fn spawn(&self, role_args: &[String], name: &str) -> Result<Process> {
        Process::spawn(
            command(self.netns, &self.workload, role_args),
            name,
            Listen::Stdout,
        )
    }

    pub fn server(&self, shape: &Shape) -> Result<Server> {
        let mut args = vec![
            "echo-server".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--workers".into(),
            shape.threads.to_string(),
        ];
        if shape.close_first == CloseFirst::Server {
            args.extend(["--close-after".into(), shape.requests.to_string()]);
            if let Some(lifetime) = shape.lifetime {
                args.extend(["--lifetime".into(), format!("{}us", lifetime.as_micros())]);
            }
        }
        let mut process = self.spawn(&args, "echo-server")?;
        let ready = process.wait_word("ready", Duration::from_secs(10))?;
        let port = ready
            .get(1)
            .and_then(|port| port.parse().ok())
            .context("echo-server's ready line has no port")?;
        Ok(Server { process, port })
    }

    /// Runs one churn-client to its end.
    pub fn client(&self, shape: &Shape, port: u16, limit: Limit) -> Result<ClientRun> {
        let mut args = vec![
            "churn-client".to_owned(),
            "--connect".into(),
            format!("127.0.0.1:{port}"),
            "--rate".into(),
            shape.rate.to_string(),
            "--threads".into(),
            shape.threads.to_string(),
            "--requests".into(),
            shape.requests.to_string(),
            "--close-first".into(),
            shape.close_first.flag().into(),
        ];
        if let (CloseFirst::Client, Some(lifetime)) = (shape.close_first, shape.lifetime) {
            args.extend(["--lifetime".into(), format!("{}us", lifetime.as_micros())]);
        }
        let timeout = match limit {
            Limit::Duration(duration) => {
                args.extend(["--duration".into(), format!("{}ms", duration.as_millis())]);
                duration + Duration::from_secs(30)
            }
            Limit::Count(count) => {
                args.extend(["--count".into(), count.to_string()]);
                Duration::from_secs(120)
            }
        };
        let mut process = self.spawn(&args, "churn-client")?;
        process.wait_word("ready", Duration::from_secs(10))?;
        let done = process.wait_word("done", timeout)?;
        let word = |index: usize| {
            done.get(index)
                .map(String::as_str)
                .with_context(|| format!("churn-client said `done {}`", done.join(" ")))
        };
        let bad = || format!("churn-client said `done {}`", done.join(" "));
        let pid = process.pid;
        let (made, seconds, no_local_port) = (
            word(0)?.parse().with_context(bad)?,
            word(1)?.parse().with_context(bad)?,
            word(2)?.parse().with_context(bad)?,
        );
        // It exits after its done line.
        let finished = process.finish(Duration::from_secs(10))?;
        Ok(ClientRun {
            pid,
            made,
            seconds,
            no_local_port,
            cpu_s: finished.cpu_s,
        })
    }
}

/// `workload [--until-stdin-eof] <role_args>` inside `netns`: the role exits when the
/// benchmark, which holds its stdin, is gone.
pub fn command(netns: &Netns, workload: &Path, role_args: &[String]) -> Command {
    let mut command = netns.command(&workload.to_string_lossy());
    command.arg("--until-stdin-eof").args(role_args);
    command
}

/// Where the workspace's release build of portwatch is.
pub fn portwatch_binary(workspace: &Path) -> PathBuf {
    workspace.join("target/release/portwatch")
}

/// Where the workspace's release build of the workload is: built with portwatch, with
/// the same profile, so its cost per connection is what it always was.
pub fn workload_binary(workspace: &Path) -> PathBuf {
    workspace.join("target/release/portwatch-workload")
}
