//! `cargo xtask test-kernels`: portwatch on the kernels production hosts run.
//!
//! For each kernel of the matrix (`matrix`: Debian's cloud kernels 5.10, 6.1, 6.12) it
//! fetches the kernel package (`fetch`, cached under target/kernels/), builds an
//! initramfs with busybox, the release portwatch and this very binary (`initramfs`),
//! boots it under qemu (`qemu`), and reads the verdict of the in-guest test (`guest`)
//! from the serial console. The host's own kernel is covered by `cargo xtask test`.
mod fetch;
pub mod guest;
mod initramfs;
mod matrix;
mod qemu;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::setup;

/// Debian packages the VMs need, with the command each provides.
const VM_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    // Static, so the initramfs needs no libraries for /init (any busybox would do: the
    // libraries ldd lists are copied anyway).
    ("busybox-static", "busybox"),
    ("cpio", "cpio"),
];

/// What /init prints last, followed by PASS or FAIL.
const VERDICT: &str = "PORTWATCH-KERNEL-TEST: ";

pub struct Options {
    /// Kernels to test, by short name or package; all when empty.
    pub kernels: Vec<String>,
    /// How long one VM may run before it is killed.
    pub timeout: Duration,
}

pub fn test_kernels(workspace: &Path, options: &Options) -> Result<()> {
    let kernels = matrix::select(&options.kernels)?;
    setup::debian_packages(VM_PACKAGES)?;
    crate::cargo(workspace, &["build", "--release", "--package", "portwatch"])?;
    let programs = initramfs::Programs {
        busybox: find_program("busybox")?,
        portwatch: workspace.join("target/release/portwatch"),
        guest: std::env::current_exe().context("finding the xtask binary")?,
    };
    let cache = workspace.join("target/kernels");
    let mut results = Vec::new();
    for kernel in kernels {
        eprintln!(
            "xtask: kernel {} ({}, {})",
            kernel.name, kernel.distribution, kernel.package
        );
        let result = test_one(&cache, &programs, &kernel, options.timeout);
        if let Verdict::Fail(why) = &result.verdict {
            eprintln!("xtask: kernel {} FAILED: {why}", kernel.name);
            if let Some(output) = &result.guest_output {
                eprintln!("xtask: the guest's console ({}):", result.log.display());
                eprintln!("{output}");
            }
        }
        results.push((kernel, result));
    }
    print_summary(&results);
    let failed = results
        .iter()
        .filter(|(_, result)| !matches!(result.verdict, Verdict::Pass))
        .count();
    // The plain closing line CI reads, since this runs after cargo test's last line.
    println!(
        "kernels: {} passed, {failed} failed",
        results.len() - failed
    );
    if failed > 0 {
        bail!("portwatch failed on {failed} of {} kernels", results.len());
    }
    Ok(())
}

enum Verdict {
    Pass,
    Fail(String),
}

struct KernelResult {
    release: Option<String>,
    /// Whether the package was downloaded (false: cached), and how long getting it
    /// (and building the initramfs) took.
    prepared: Option<(bool, Duration)>,
    vm: Option<Duration>,
    verdict: Verdict,
    log: PathBuf,
    /// The console, without firmware noise, when the guest failed.
    guest_output: Option<String>,
}

fn test_one(
    cache: &Path,
    programs: &initramfs::Programs,
    kernel: &matrix::Kernel,
    timeout: Duration,
) -> KernelResult {
    let work = cache.join("runs").join(kernel.name);
    let log = work.join("console.log");
    let mut result = KernelResult {
        release: None,
        prepared: None,
        vm: None,
        verdict: Verdict::Fail("not run".into()),
        log: log.clone(),
        guest_output: None,
    };
    let started = Instant::now();
    let prepared = fs::create_dir_all(&work)
        .with_context(|| format!("creating {}", work.display()))
        .and_then(|()| fetch::kernel(cache, kernel))
        .and_then(|unpacked| {
            let initrd = initramfs::build(&work, programs, &unpacked)?;
            Ok((unpacked, initrd))
        });
    let (unpacked, initrd) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => {
            result.verdict = Verdict::Fail(format!("{err:#}"));
            return result;
        }
    };
    result.release = Some(unpacked.release.clone());
    result.prepared = Some((unpacked.downloaded, started.elapsed()));

    let prefix = format!("  [{}] ", kernel.name);
    let boot = qemu::boot(&unpacked.vmlinuz, &initrd, &log, timeout, |line| {
        if line.starts_with("guest:") || line.starts_with(VERDICT) {
            eprintln!("{prefix}{line}");
        }
    });
    let boot = match boot {
        Ok(boot) => boot,
        Err(err) => {
            result.verdict = Verdict::Fail(format!("{err:#}"));
            return result;
        }
    };
    result.vm = Some(boot.elapsed);
    result.verdict = verdict(&boot.lines, boot.timed_out, timeout);
    if matches!(result.verdict, Verdict::Fail(_)) {
        result.guest_output = Some(console_text(&boot.lines));
    }
    result
}

fn verdict(lines: &[String], timed_out: bool, timeout: Duration) -> Verdict {
    let said = lines
        .iter()
        .find_map(|line| line.strip_prefix(VERDICT))
        .map(str::trim);
    match said {
        Some("PASS") if !timed_out => Verdict::Pass,
        Some(other) => Verdict::Fail(format!("the guest test said {other}")),
        None if timed_out => Verdict::Fail(format!(
            "no verdict within {}s; the VM was killed",
            timeout.as_secs()
        )),
        None => Verdict::Fail("the VM stopped without a verdict (kernel panic?)".into()),
    }
}

/// The console as text, without the firmware's screen-control noise. A long one (a
/// verifier log) keeps its head, where the error is named, and its tail, where the
/// verdict is.
fn console_text(lines: &[String]) -> String {
    const HEAD: usize = 60;
    const TAIL: usize = 200;
    let clean: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|line| !line.contains('\u{1b}'))
        .collect();
    if clean.len() <= HEAD + TAIL {
        return clean.join("\n");
    }
    format!(
        "{}\n[... {} lines, see the log ...]\n{}",
        clean[..HEAD].join("\n"),
        clean.len() - HEAD - TAIL,
        clean[clean.len() - TAIL..].join("\n")
    )
}

fn print_summary(results: &[(matrix::Kernel, KernelResult)]) {
    eprintln!();
    eprintln!("xtask: kernel matrix (qemu -accel tcg, 1 CPU)");
    eprintln!(
        "  {:<40} {:<28} {:<6} {:<20} {:>8}",
        "KERNEL", "RELEASE", "RESULT", "PACKAGE+INITRAMFS", "VM"
    );
    for (kernel, result) in results {
        let prepared = match result.prepared {
            Some((downloaded, took)) => format!(
                "{} {:.1}s",
                if downloaded { "downloaded" } else { "cached" },
                took.as_secs_f64()
            ),
            None => "-".into(),
        };
        let vm = result
            .vm
            .map_or("-".into(), |took| format!("{:.1}s", took.as_secs_f64()));
        eprintln!(
            "  {:<40} {:<28} {:<6} {:<20} {:>8}",
            format!("{} ({})", kernel.name, kernel.distribution),
            result.release.as_deref().unwrap_or("-"),
            match result.verdict {
                Verdict::Pass => "PASS",
                Verdict::Fail(_) => "FAIL",
            },
            prepared,
            vm
        );
    }
    let host = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!(
        "  {:<40} {:<28} {:<6} the privileged tests of `cargo xtask test` run on it",
        "host (ordinary test suite)",
        host.trim(),
        "-"
    );
}

fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{name} is not on PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn long_consoles_keep_head_and_tail() {
        let mut console: Vec<String> = (0..1000).map(|n| format!("line {n}")).collect();
        console.insert(0, "\u{1b}[2J firmware".into());
        let text = console_text(&console);
        assert!(text.starts_with("line 0\n"), "{text}");
        assert!(text.contains("line 59\n[... 740 lines, see the log ...]\nline 800\n"));
        assert!(text.ends_with("line 999"));
        assert_eq!(console_text(&lines("a\nb")), "a\nb");
    }

    #[test]
    fn verdicts() {
        let timeout = Duration::from_secs(60);
        let pass =
            lines("guest: ok   x: y\nPORTWATCH-KERNEL-TEST: PASS\n[ 9.1] reboot: Power down");
        assert!(matches!(verdict(&pass, false, timeout), Verdict::Pass));
        let fail = lines("PORTWATCH-KERNEL-TEST: FAIL (guest test exit status 1)");
        let Verdict::Fail(why) = verdict(&fail, false, timeout) else {
            panic!("passed")
        };
        assert!(why.contains("exit status 1"), "{why}");
        let Verdict::Fail(why) = verdict(&lines("guest: step x"), true, timeout) else {
            panic!("passed")
        };
        assert!(why.contains("within 60s"), "{why}");
        assert!(matches!(
            verdict(&lines("Kernel panic"), false, timeout),
            Verdict::Fail(_)
        ));
    }
}
