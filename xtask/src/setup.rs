//! Idempotent installation of what portwatch's build and tests need.
//!
//! What is installed where, and why (see ../shared/PLATFORM.md):
//! - rust-src for the active toolchain: the eBPF crate is built with `-Z build-std=core`.
//! - bpf-linker under `target/tools`, built against the LLVM shared library that ships
//!   inside the Rust toolchain (no system LLVM of the right version exists). A stamp file
//!   records which LLVM it was built for, so later runs reuse it.
//! - Debian packages the tests drive: bpftool (checks that detach leaves nothing behind).
//! - cargo-deny (`cargo xtask test`) and cargo-fuzz (`cargo xtask fuzz`) under
//!   `target/tools`, built from crates.io once; a stamp file records the version.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The last cargo-deny release whose rust-version (1.88) these toolchains meet.
const CARGO_DENY_VERSION: &str = "0.20.2";
/// cargo-fuzz for `cargo xtask fuzz`; it builds with the stable toolchain.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Debian packages the test suite needs, with the command each provides: bpftool
/// (programs left behind), iproute2 and procps (`ip` and `sysctl` in the
/// port-exhaustion namespace), util-linux (`unshare`, `setpriv`). All but bpftool come with Debian's base system; they are named so a
/// trimmed image says what is missing instead of failing a test.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("procps", "sysctl"),
    ("util-linux", "unshare"),
];

/// Debian packages only the test task needs: `prometheus` (the real Prometheus server
/// and `promtool` that `portwatch/tests/serve.rs` scrapes with and checks the alert rules
/// with), `systemd` (`systemd-analyze verify` for deploy/portwatch.service), `tmux` (the
/// real terminal `portwatch/tests/top.rs` runs `portwatch top` in and reads the screen of).
const TEST_DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("prometheus", "promtool"),
    ("systemd", "systemd-analyze"),
    ("tmux", "tmux"),
];

pub fn all(workspace: &Path) -> Result<()> {
    let sysroot = rust_sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(workspace, &sysroot)?;
    debian_packages(DEBIAN_PACKAGES)?;
    Ok(())
}

/// What `cargo xtask test` needs beyond the build: the Debian packages only tests drive
/// (a real Prometheus, systemd-analyze, tmux), and cargo-deny under `target/tools` (built from
/// crates.io once, a few minutes). `run` waits for none of it.
pub fn test_tools(workspace: &Path) -> Result<PathBuf> {
    debian_packages(TEST_DEBIAN_PACKAGES)?;
    install_crate(workspace, "cargo-deny", CARGO_DENY_VERSION)
}

/// What `cargo xtask fuzz` needs beyond the build: cargo-fuzz, under `target/tools`
/// (built from crates.io once, about a minute).
pub fn fuzz_tools(workspace: &Path) -> Result<PathBuf> {
    install_crate(workspace, "cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// `cargo install`s `name` at `version` under `target/tools` unless a stamp says it is
/// there already; returns the binary.
fn install_crate(workspace: &Path, name: &str, version: &str) -> Result<PathBuf> {
    let tools = tools_dir(workspace);
    let binary = tools.join("bin").join(name);
    let stamp = tools.join(format!("{name}.stamp"));
    if binary.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(version) {
        return Ok(binary);
    }
    eprintln!("xtask: building {name} {version} (once)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", name, "--version", version])
        .args(["--locked", "--force", "--root"])
        .arg(&tools)
        .status()
        .with_context(|| format!("running cargo install {name}"))?;
    if !status.success() {
        bail!("building {name} failed (see cargo's output above)");
    }
    fs::write(&stamp, version).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(binary)
}

/// Where project-local tools live; portwatch/build.rs looks in the same place.
pub fn tools_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("PORTWATCH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target").join("tools"))
}

fn rust_sysroot() -> Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    if !output.status.success() {
        bail!("rustc --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

fn rust_src(sysroot: &Path) -> Result<()> {
    if sysroot
        .join("lib/rustlib/src/rust/library/Cargo.lock")
        .exists()
    {
        return Ok(());
    }
    let toolchain = sysroot
        .file_name()
        .and_then(|name| name.to_str())
        .context("toolchain directory has no name")?;
    eprintln!("xtask: installing rust-src for {toolchain}");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", toolchain])
        .status()
        .context("running rustup (is this Rust installed by rustup?)")?;
    if !status.success() {
        bail!("`rustup component add rust-src --toolchain {toolchain}` failed");
    }
    Ok(())
}

fn bpf_linker(workspace: &Path, sysroot: &Path) -> Result<()> {
    let tools = tools_dir(workspace);
    let llvm_lib = toolchain_llvm(sysroot)?;
    let llvm_name = llvm_lib
        .file_name()
        .and_then(|name| name.to_str())
        .context("LLVM library has no name")?
        .to_owned();
    let stamp = tools.join("bpf-linker.stamp");
    let want = format!(
        "bpf-linker {BPF_LINKER_VERSION} for {}\n",
        llvm_lib.display()
    );
    if tools.join("bin/bpf-linker").exists()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(&want)
    {
        return Ok(());
    }

    // "libLLVM.so.22.1-rust-1.95.0-stable" -> 22
    let major = llvm_name
        .strip_prefix("libLLVM.so.")
        .and_then(|rest| rest.split('.').next())
        .context("unexpected LLVM library name")?;
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm_name} (once, ~1 min)");

    // llvm-sys links `-lLLVM` from LLVM_PREFIX/lib; at run time the loader looks for the
    // SONAME, which is the library's own file name. Both names point at the toolchain's copy.
    let prefix = tools.join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", llvm_name.as_str()] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&llvm_lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let llvm_dir = llvm_lib.parent().context("LLVM library has no directory")?;
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix)
        // An rpath to the toolchain's lib/ lets bpf-linker find its LLVM whoever runs it.
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", llvm_dir.display()),
        )
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("building bpf-linker failed (see cargo's output above)");
    }
    fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// The LLVM shared library inside the Rust toolchain, e.g.
/// `lib/libLLVM.so.22.1-rust-1.95.0-stable`.
fn toolchain_llvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let is_llvm = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"));
        if is_llvm {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.*-rust-* in {}: this Rust toolchain does not ship LLVM as a shared \
         library, so bpf-linker cannot be built against it",
        lib.display()
    )
}

/// Installs those of `packages` (package, command it provides) whose command is
/// missing.
pub fn debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, command)| !on_path(command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install -y {}` (or run this task as root)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    // A fresh machine's package lists may be empty or stale: update once and retry.
    if !install().context("running apt-get")?.success() {
        let updated = Command::new("apt-get").args(["update", "-q"]).status()?;
        if !updated.success() || !install()?.success() {
            bail!("apt-get could not install {}", missing.join(" "));
        }
    }
    Ok(())
}

/// Whether `program` is installed: on PATH, or in /usr/sbin or /sbin.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|dir| Path::new(dir).join(program).is_file())
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
