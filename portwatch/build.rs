//! Builds the eBPF object (the `portwatch-ebpf` crate, for `bpfel-unknown-none`) so
//! `src/bpf/loader.rs` can embed it with `include_bytes_aligned!`.
//!
//! The nested cargo uses the same rustc that builds us, with `RUSTC_BOOTSTRAP=1` for
//! `-Z build-std=core` (these machines may have no nightly, see ../shared/PLATFORM.md),
//! and the bpf-linker that `cargo xtask setup` installs under `target/tools/bin`.
use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

const EBPF_PACKAGE: &str = "portwatch-ebpf";
const EBPF_BIN: &str = "portwatch";
const TARGET: &str = "bpfel-unknown-none";

fn main() {
    if let Err(message) = build_ebpf() {
        // Cargo shows a failed build script's stderr under "failed to run custom build
        // command"; exiting (not panicking) keeps a backtrace out of it.
        eprintln!("\n{message}\n");
        std::process::exit(1);
    }
}

fn build_ebpf() -> Result<(), String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().ok_or("portwatch/ has no parent")?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    for dir in ["portwatch-ebpf", "portwatch-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=PORTWATCH_TOOLS_DIR");

    let tools_bin = tools_dir(workspace).join("bin");
    let linker = tools_bin.join("bpf-linker");
    if !linker.exists() && !on_path("bpf-linker") {
        return Err(format!(
            "bpf-linker was not found in {} nor on PATH. It links portwatch's eBPF programs; \
             run `cargo xtask setup` once to build it against this Rust toolchain's LLVM.",
            tools_bin.display()
        ));
    }
    let mut path = OsString::from(&tools_bin);
    if let Some(old) = env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ebpf_target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("ebpf");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").map_err(|e| e.to_string())?;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");

    let output = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--package",
            EBPF_PACKAGE,
            "--bin",
            EBPF_BIN,
            "--release",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&ebpf_target_dir)
        // Same compiler as ours, but not clippy's wrapper when we run under clippy.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env("PATH", path)
        .output()
        .map_err(|e| format!("could not run cargo to build the eBPF programs: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("rust-src") || stderr.contains("library/Cargo.lock") {
            "\nThe rust-src component is missing: run `cargo xtask setup` (or `rustup component add rust-src`)."
        } else {
            ""
        };
        return Err(format!(
            "building the eBPF programs failed:\n{stderr}{hint}"
        ));
    }

    let object = ebpf_target_dir.join(TARGET).join("release").join(EBPF_BIN);
    let embedded = out_dir.join("portwatch.bpf.o");
    std::fs::copy(&object, &embedded).map_err(|e| {
        format!(
            "copying {} to {}: {e}",
            object.display(),
            embedded.display()
        )
    })?;
    Ok(())
}

/// Where `cargo xtask setup` puts project-local tools; keep in sync with xtask.
fn tools_dir(workspace: &Path) -> PathBuf {
    env::var_os("PORTWATCH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target").join("tools"))
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}
