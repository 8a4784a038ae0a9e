//! The guest's root filesystem: busybox, /init, the release portwatch, this xtask
//! binary (whose hidden `guest` command is the in-guest test), the shared libraries
//! they load, and the kernel's sock_diag modules.
//!
//! The archive is left uncompressed: under software emulation the guest kernel would
//! spend longer inflating it than the host spends copying it.
use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::fetch::Unpacked;

const INIT: &str = include_str!("init.sh");

/// Modules /init loads, in order (tcp_diag needs inet_diag).
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];

/// The host programs the guest runs.
pub struct Programs {
    pub busybox: PathBuf,
    pub portwatch: PathBuf,
    /// This xtask binary.
    pub guest: PathBuf,
}

/// Builds `<work>/initramfs.cpio` for `kernel` and returns its path.
pub fn build(work: &Path, programs: &Programs, kernel: &Unpacked) -> Result<PathBuf> {
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    for dir in ["bin", "dev", "proc", "sys", "tmp", "lib/modules"] {
        fs::create_dir_all(root.join(dir))
            .with_context(|| format!("creating {}/{dir}", root.display()))?;
    }
    install(&programs.busybox, &root.join("bin/busybox"))?;
    // /init's interpreter; /init itself links the other applets.
    symlink("busybox", root.join("bin/sh")).context("linking bin/sh")?;
    install(&programs.portwatch, &root.join("bin/portwatch"))?;
    install(&programs.guest, &root.join("bin/xtask"))?;
    let mut libraries = BTreeSet::new();
    for program in [&programs.busybox, &programs.portwatch, &programs.guest] {
        libraries.extend(shared_libraries(program)?);
    }
    for library in &libraries {
        let relative = library.strip_prefix("/").unwrap_or(library);
        let target = root.join(relative);
        fs::create_dir_all(target.parent().context("library path has no parent")?)?;
        // fs::copy follows symlinks: the guest gets the file under the name the
        // dynamic loader asks for.
        fs::copy(library, &target).with_context(|| format!("copying {}", library.display()))?;
    }
    for module in MODULES {
        copy_module(
            &programs.busybox,
            &kernel.modules,
            module,
            &root.join("lib/modules"),
        )?;
    }
    let init = root.join("init");
    fs::write(&init, INIT).context("writing init")?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;

    let archive = work.join("initramfs.cpio");
    pack(&root, &archive)?;
    Ok(archive)
}

fn install(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The libraries `ldd` says `program` loads, including the dynamic loader; none for a
/// static program.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    // ldd fails on static programs ("not a dynamic executable"): nothing to copy.
    if !output.status.success() {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&output.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.trim(),
                None => line.trim(),
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `<name>.ko` from the kernel's modules, decompressed: busybox's insmod takes
/// plain modules, and Debian compresses them with xz since 6.x.
fn copy_module(busybox: &Path, modules: &Path, name: &str, into: &Path) -> Result<()> {
    let base = modules.join("kernel/net/ipv4").join(name);
    let target = into.join(format!("{name}.ko"));
    let plain = base.with_extension("ko");
    if plain.is_file() {
        fs::copy(&plain, &target).with_context(|| format!("copying {}", plain.display()))?;
        return Ok(());
    }
    let xz = base.with_extension("ko.xz");
    if xz.is_file() {
        let output = Command::new(busybox)
            .arg("xzcat")
            .arg(&xz)
            .output()
            .context("running busybox xzcat")?;
        if !output.status.success() {
            bail!("decompressing {} failed", xz.display());
        }
        fs::write(&target, output.stdout)?;
        return Ok(());
    }
    // Built into the kernel (or absent, which the in-guest snapshot check reports).
    Ok(())
}

/// `cpio -o -H newc` of everything under `root`, owned by root.
fn pack(root: &Path, archive: &Path) -> Result<()> {
    let mut paths = Vec::new();
    walk(root, root, &mut paths)?;
    let file =
        fs::File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let mut cpio = Command::new("cpio")
        .args(["--create", "--format=newc", "--quiet", "--owner=0:0"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("running cpio")?;
    {
        let mut stdin = cpio.stdin.take().context("cpio stdin")?;
        for path in &paths {
            writeln!(stdin, "{}", path.display())?;
        }
    }
    if !cpio.wait()?.success() {
        bail!("cpio failed to write {}", archive.display());
    }
    Ok(())
}

/// Every path under `dir`, relative to `root`, parents before children.
fn walk(root: &Path, dir: &Path, paths: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        paths.push(path.strip_prefix(root)?.to_path_buf());
        if entry.file_type()?.is_dir() {
            walk(root, &path, paths)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd0a5f1000)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(output),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
