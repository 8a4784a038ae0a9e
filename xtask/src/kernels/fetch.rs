//! Downloads and unpacks a kernel package, once: everything is cached under
//! target/kernels/, and a kernel already unpacked there is used without asking apt.
//!
//! apt runs with a temporary sources list and its own lists directory per suite
//! (`target/kernels/apt/<suite>/`), so the machine's sources and lists are never changed
//! and need not carry the suite (bullseye, for 5.10).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::matrix::{Kernel, Suite};

/// A kernel ready to boot.
pub struct Unpacked {
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the package.
    pub modules: PathBuf,
    /// `uname -r` of the kernel, e.g. `6.1.0-50-cloud-amd64`.
    pub release: String,
    /// False when it came from the cache.
    pub downloaded: bool,
}

pub fn kernel(cache: &Path, kernel: &Kernel) -> Result<Unpacked> {
    let unpacked = cache.join("unpacked").join(kernel.package);
    let mut downloaded = false;
    if !unpacked.is_dir() {
        let deb = match cached_deb(cache, kernel.package)? {
            Some(deb) => deb,
            None => {
                downloaded = true;
                download(cache, kernel)?
            }
        };
        unpack(&deb, &unpacked)?;
    }
    let (vmlinuz, release) = find_vmlinuz(&unpacked)?;
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|dir| unpacked.join(dir).join(&release))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("{} has no lib/modules/{release}", unpacked.display()))?;
    Ok(Unpacked {
        vmlinuz,
        modules,
        release,
        downloaded,
    })
}

fn debs_dir(cache: &Path) -> PathBuf {
    cache.join("debs")
}

/// `<package>_<version>_<arch>.deb`, as `apt-get download` names it.
fn cached_deb(cache: &Path, package: &str) -> Result<Option<PathBuf>> {
    let dir = debs_dir(cache);
    if !dir.is_dir() {
        return Ok(None);
    }
    let prefix = format!("{package}_");
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn download(cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let apt = Apt::new(cache, &kernel.suite)?;
    if !apt.has_lists() {
        apt.update()?;
    }
    // Into a private directory first, so an interrupted download is never mistaken
    // for a cached package.
    let partial = debs_dir(cache).join("partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    eprintln!(
        "xtask: downloading {} from {}",
        kernel.package, kernel.suite.id
    );
    if !apt.download(kernel.package, &partial)? {
        // Lists from an earlier run may be stale: refresh them once and try again.
        apt.update()?;
        if !apt.download(kernel.package, &partial)? {
            bail!(
                "apt-get could not download {} from {} (see its output above). Debian may have \
                 replaced this ABI; available now:\n{}\nUpdate the pin in \
                 xtask/src/kernels/matrix.rs.",
                kernel.package,
                kernel.suite.id,
                apt.available_kernels()
            );
        }
    }
    let file = fs::read_dir(&partial)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", partial.display()))?;
    let target = debs_dir(cache).join(file.file_name().context("no file name")?);
    fs::rename(&file, &target).with_context(|| format!("moving {}", file.display()))?;
    let _ = fs::remove_dir_all(&partial);
    Ok(target)
}

/// `dpkg -x` into a scratch directory renamed into place when complete, so a
/// half-unpacked kernel is never taken for a cached one.
fn unpack(deb: &Path, into: &Path) -> Result<()> {
    // Not with_extension: package names have dots ("linux-image-6.12.117+deb12-...").
    let mut scratch = into.as_os_str().to_owned();
    scratch.push(".partial");
    let scratch = PathBuf::from(scratch);
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(deb)
        .arg(&scratch)
        .status()
        .context("running dpkg -x")?;
    if !status.success() {
        bail!("dpkg -x {} failed", deb.display());
    }
    fs::rename(&scratch, into).with_context(|| format!("moving {}", scratch.display()))
}

/// `boot/vmlinuz-<release>`.
fn find_vmlinuz(unpacked: &Path) -> Result<(PathBuf, String)> {
    let boot = unpacked.join("boot");
    for entry in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let path = entry?.path();
        let release = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("vmlinuz-"))
            .map(str::to_owned);
        if let Some(release) = release {
            return Ok((path, release));
        }
    }
    bail!("no vmlinuz-* in {}", boot.display())
}

/// apt with a suite's temporary sources list and lists directory.
struct Apt {
    sources: PathBuf,
    lists: PathBuf,
}

impl Apt {
    fn new(cache: &Path, suite: &Suite) -> Result<Apt> {
        let dir = cache.join("apt").join(suite.id);
        let lists = dir.join("lists");
        // apt refuses to run without the partial/ directory.
        fs::create_dir_all(lists.join("partial"))
            .with_context(|| format!("creating {}", lists.display()))?;
        let sources = dir.join("sources.list");
        let line = format!("{}\n", suite.source);
        if fs::read_to_string(&sources).ok().as_deref() != Some(line.as_str()) {
            fs::write(&sources, line).with_context(|| format!("writing {}", sources.display()))?;
        }
        Ok(Apt { sources, lists })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        let options = [
            format!("Dir::Etc::SourceList={}", self.sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", self.lists.display()),
            // No binary cache of these lists in /var/cache/apt: the machine's apt keeps
            // its own view of its own lists.
            "Dir::Cache::pkgcache=".to_owned(),
            "Dir::Cache::srcpkgcache=".to_owned(),
            // Only the package index is needed, not translations or AppStream data.
            "Acquire::Languages=none".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_owned(),
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_owned(),
            // target/ belongs to root and is not readable by apt's `_apt` sandbox user.
            "APT::Sandbox::User=root".to_owned(),
        ];
        for option in options {
            command.arg("-o").arg(option);
        }
        command.arg("-q");
        command
    }

    fn has_lists(&self) -> bool {
        fs::read_dir(&self.lists).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|entry| {
                entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.contains("_Packages"))
            })
        })
    }

    fn update(&self) -> Result<()> {
        let status = self
            .command("apt-get")
            .arg("update")
            .status()
            .context("running apt-get update")?;
        if !status.success() {
            bail!(
                "apt-get update for {} failed (see its output above)",
                self.sources.display()
            );
        }
        Ok(())
    }

    /// Ok(false) when apt ran but could not download it.
    fn download(&self, package: &str, into: &Path) -> Result<bool> {
        let status = self
            .command("apt-get")
            .arg("download")
            .arg(package)
            .current_dir(into)
            .status()
            .context("running apt-get download")?;
        Ok(status.success())
    }

    fn available_kernels(&self) -> String {
        let output = self
            .command("apt-cache")
            .args(["search", "--names-only", "^linux-image-.*-cloud-amd64$"])
            .output();
        match output {
            Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            Err(err) => format!("(apt-cache search failed: {err})"),
        }
    }
}
