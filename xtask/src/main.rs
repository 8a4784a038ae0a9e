//! portwatch's project tasks: `cargo xtask setup | run | test | test-kernels | bench |
//! fuzz`.
//!
//! Every task installs what it needs first, idempotently, so a newcomer on a fresh
//! machine needs nothing but cargo.
mod bench;
mod fuzz;
mod kernels;
mod layers;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "portwatch's build, setup and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing portwatch needs: rust-src, bpf-linker (built
    /// against this Rust toolchain's LLVM, under target/tools) and Debian packages.
    /// Safe to run again: finished steps are skipped.
    Setup,
    /// Set up, build portwatch (release) and run it. Without arguments it runs
    /// `portwatch demo`; pass portwatch's own arguments after `--`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check CI runs: rustfmt, clippy (host and eBPF crates)
    /// and the whole test suite, including the privileged tests that load eBPF (root).
    /// PORTWATCH_UNPRIVILEGED=1 runs only the tests that need no root (unit tests and
    /// actor tests), for machines without root. The kernel matrix (test-kernels) runs
    /// last.
    Test {
        /// Leave out the kernel matrix (quicker local runs; CI never does).
        #[arg(long)]
        no_kernels: bool,
    },
    /// Set up, build portwatch (release), and run it inside VMs booting the kernels
    /// production hosts run (Debian's cloud kernels 5.10, 6.1 and 6.12, under qemu),
    /// against real loopback traffic: a CLOSE_WAIT leak, churn, port exhaustion and a
    /// stalled reader. Kernel packages are downloaded once into target/kernels/.
    TestKernels {
        /// Only this kernel, by short name (e.g. 6.1) or package name (repeatable).
        #[arg(long = "kernel", value_name = "KERNEL")]
        kernels: Vec<String>,
        /// Kill a VM that has not finished after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        timeout: u64,
    },
    /// Set up, then run the bounded-memory soak test (portwatch/tests/soak.rs, root)
    /// for longer than CI does: churn past every limit while portwatch's RSS and the
    /// kernel's socket table are sampled, and must stay flat. Not run by CI.
    Soak {
        /// How long portwatch traces.
        #[arg(long, value_name = "M", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
    },
    /// Inside a test-kernels VM only: the in-guest test and its traffic processes.
    #[command(hide = true, subcommand)]
    Guest(kernels::guest::Role),
    /// Set up, build portwatch (release) and measure what it costs a host under
    /// connection churn, next to libbpf-tools' tcpstates and tcplife (as root; minutes).
    /// Prints a table and writes it as JSON under target/bench/. See BENCHMARKS.md.
    Bench(Box<bench::BenchArgs>),
    /// Set up, build the fuzz targets (fuzz/, with cargo-fuzz under target/tools) and
    /// run each for a bounded time on one core, growing fuzz/corpus/<target>. A crash
    /// stops the run and leaves its input in fuzz/artifacts/<target>/. Not run by
    /// `test`: the inputs kept under portwatch/tests/fuzz_regressions/ are, by
    /// `cargo test`.
    Fuzz(fuzz::FuzzArgs),
}

/// Set to 1 on a machine without root to run only the tests that need no eBPF.
const UNPRIVILEGED: &str = "PORTWATCH_UNPRIVILEGED";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let workspace = workspace_root()?;
    match cli.task {
        // Before anything touches the workspace, which the guest does not have.
        Task::Guest(role) => kernels::guest::run(role),
        Task::TestKernels { kernels, timeout } => {
            setup::all(&workspace)?;
            kernels::test_kernels(
                &workspace,
                &kernels::Options {
                    kernels,
                    timeout: std::time::Duration::from_secs(timeout),
                },
            )
        }
        Task::Setup => setup::all(&workspace),
        Task::Run { args } => {
            setup::all(&workspace)?;
            cargo(
                &workspace,
                &["build", "--release", "--package", "portwatch"],
            )?;
            let args = if args.is_empty() {
                vec!["demo".to_owned()]
            } else {
                args
            };
            let binary = workspace.join("target/release/portwatch");
            let status = Command::new(&binary)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", binary.display()))?;
            if !status.success() {
                // portwatch already said why; just pass its failure on.
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        Task::Test { no_kernels } => {
            setup::all(&workspace)?;
            cargo(&workspace, &["fmt", "--all", "--check"])?;
            layers::check(&workspace)?;
            cargo(
                &workspace,
                &["clippy", "--all-targets", "--", "-D", "warnings"],
            )?;
            clippy_ebpf(&workspace)?;
            deny(&workspace)?;
            if std::env::var_os(UNPRIVILEGED).is_some_and(|value| value == "1") {
                if std::env::var_os("CI").is_some() {
                    bail!(
                        "{UNPRIVILEGED}=1 is for developer laptops: CI must run the privileged tests"
                    );
                }
                // The workload's tests (portwatch-workload/tests/actors.rs) and the fuzz
                // regressions load no eBPF: they belong with the unit tests here.
                cargo(
                    &workspace,
                    &[
                        "test",
                        "--lib",
                        "--bins",
                        "--test",
                        "actors",
                        "--test",
                        "fuzz_regressions",
                    ],
                )?;
                eprintln!(
                    "xtask: {UNPRIVILEGED}=1: ran the unit, actor and fuzz-regression tests only; \
                     the privileged tests that load eBPF (portwatch/tests/) did NOT run"
                );
                return Ok(());
            }
            // Privileged tests attach to the same kernel tracepoint and would see each
            // other's traffic: one test at a time keeps their assertions exact.
            cargo(&workspace, &["test", "--", "--test-threads=1"])?;
            if no_kernels {
                eprintln!("xtask: --no-kernels: the kernel matrix (test-kernels) did NOT run");
                return Ok(());
            }
            kernels::test_kernels(
                &workspace,
                &kernels::Options {
                    kernels: Vec::new(),
                    timeout: std::time::Duration::from_secs(300),
                },
            )
        }
        Task::Bench(args) => bench::run(&workspace, *args),
        Task::Soak { minutes } => {
            setup::all(&workspace)?;
            // Release, as production runs it; the test reads its length from the
            // environment.
            let status = Command::new(cargo_bin())
                .current_dir(&workspace)
                .args([
                    "test",
                    "--release",
                    "--package",
                    "portwatch",
                    "--test",
                    "soak",
                ])
                .args(["--", "--test-threads=1", "--nocapture"])
                .env("PORTWATCH_SOAK_SECS", (minutes * 60).to_string())
                .status()
                .context("running the soak test")?;
            if !status.success() {
                bail!("the soak test failed (see above)");
            }
            Ok(())
        }
        Task::Fuzz(args) => {
            setup::all(&workspace)?;
            fuzz::run(&workspace, &args)
        }
    }
}

/// Licenses, banned crates and sources of every dependency (deny.toml). Not advisories:
/// RustSec's database cannot be fetched from the project's machines.
fn deny(workspace: &Path) -> Result<()> {
    let cargo_deny = setup::test_tools(workspace)?;
    let status = Command::new(&cargo_deny)
        .args(["deny", "check", "licenses", "bans", "sources"])
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {}", cargo_deny.display()))?;
    if !status.success() {
        bail!("cargo deny check licenses bans sources failed (see above; rules in deny.toml)");
    }
    Ok(())
}

/// Clippy for the eBPF crate, which only builds for the BPF target.
fn clippy_ebpf(workspace: &Path) -> Result<()> {
    let status = Command::new(cargo_bin())
        .current_dir(workspace)
        .args(["clippy", "--package", "portwatch-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"])
        .env("RUSTC_BOOTSTRAP", "1")
        .status()
        .context("running cargo clippy for the eBPF crate")?;
    if !status.success() {
        bail!("clippy found problems in portwatch-ebpf");
    }
    Ok(())
}

pub(crate) fn cargo(workspace: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(cargo_bin())
        .current_dir(workspace)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

/// The cargo that runs us, so every step uses the same toolchain.
fn cargo_bin() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .context("xtask/ has no parent directory")
}
