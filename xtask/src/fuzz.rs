//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/, each for a bounded time.
//!
//! cargo-fuzz passes `-Z` flags (the address sanitizer) to rustc; like the eBPF build,
//! it runs on the same stable toolchain as everything else with `RUSTC_BOOTSTRAP=1`, so
//! portwatch's build.rs builds the embedded eBPF object with the rust-src and
//! bpf-linker that `setup` installed for that toolchain.
use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::setup;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long to run each target.
    #[arg(long, value_name = "N", default_value_t = 60)]
    seconds: u64,
    /// Only this target (repeatable); the default is every target in fuzz/fuzz_targets/.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
}

pub fn run(workspace: &Path, args: &FuzzArgs) -> Result<()> {
    let cargo_fuzz = setup::fuzz_tools(workspace)?;
    let fuzz_dir = workspace.join("fuzz");
    let all = targets(&fuzz_dir)?;
    let targets = if args.targets.is_empty() {
        all
    } else {
        for target in &args.targets {
            if !all.contains(target) {
                bail!("no fuzz target {target:?}; there are: {}", all.join(", "));
            }
        }
        args.targets.clone()
    };
    for target in &targets {
        // Grown here, gitignored; the kept inputs seed every run.
        let corpus = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let kept = workspace
            .join("portwatch/tests/fuzz_regressions")
            .join(target);
        eprintln!("xtask: fuzzing {target} for {} s", args.seconds);
        let mut command = Command::new(&cargo_fuzz);
        command
            .current_dir(workspace)
            .args(["fuzz", "run", target])
            .arg(&corpus);
        // libFuzzer refuses a corpus directory that does not exist (a new target's).
        if kept.is_dir() {
            command.arg(&kept);
        }
        let status = command
            .arg("--")
            // One core: these machines are shared. -timeout makes a slow input (over
            // 10 s) a failure rather than a stall; -rss_limit_mb bounds allocations.
            .arg(format!("-max_total_time={}", args.seconds))
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            .env("RUSTC_BOOTSTRAP", "1")
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed: the input is in fuzz/artifacts/{target}/ (see \
                 above). Fix the bug, then keep the input as a regression test in {}",
                kept.display()
            );
        }
    }
    Ok(())
}

/// The targets: fuzz/fuzz_targets/<name>.rs.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "rs")
            && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}
