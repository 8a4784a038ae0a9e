//! The host's network namespaces, and running code inside one.
//!
//! sock_diag lists only the sockets of the calling thread's namespace, and
//! /proc/sys/net shows the reading thread's namespace's settings; containers each have
//! their own. A namespace is found through a process in it (`/proc/PID/ns/net`) or a
//! bind mount (`ip netns add` makes `/run/netns/NAME`), and named by its inode number,
//! which is what `ls -l /proc/PID/ns/net`, `lsns -t net` and portwatch's events show.
use std::{
    collections::BTreeMap,
    fs, io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock, mpsc},
};

/// Where `ip netns` keeps its named namespaces.
pub const RUN_NETNS: &str = "/run/netns";

/// A network namespace and a path that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNs {
    /// Its inode number.
    pub inode: u32,
    /// `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub path: PathBuf,
    /// Its `ip netns` name, if it has one.
    pub name: Option<String>,
}

/// The inode of the namespace `path` (a `/proc/PID/ns/net` or a bind mount of one)
/// refers to.
pub fn inode_of(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.ino() as u32)
}

/// portwatch's own network namespace.
pub fn own() -> io::Result<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// Every network namespace portwatch can find: the named ones first, then those of
/// processes, each once. Unreadable entries (processes exiting meanwhile) are skipped.
pub fn all() -> Vec<NetNs> {
    let mut found: BTreeMap<u32, NetNs> = BTreeMap::new();
    if let Ok(own) = own() {
        found.insert(
            own,
            NetNs {
                inode: own,
                path: PathBuf::from("/proc/self/ns/net"),
                name: None,
            },
        );
    }
    for (name, path) in named() {
        if let Ok(inode) = inode_of(&path) {
            found
                .entry(inode)
                .and_modify(|ns| ns.name = Some(name.clone()))
                .or_insert(NetNs {
                    inode,
                    path,
                    name: Some(name),
                });
        }
    }
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(pid) = file_name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Ok(inode) = inode_of(&path) {
                found.entry(inode).or_insert(NetNs {
                    inode,
                    path,
                    name: None,
                });
            }
        }
    }
    found.into_values().collect()
}

/// The `ip netns` names and their bind mounts.
fn named() -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(RUN_NETNS) else {
        return Vec::new();
    };
    let mut named: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
        .collect();
    named.sort();
    named
}

/// Runs `work` on a new thread that has entered network namespace `ns` (setns with
/// CLONE_NEWNET: allowed in a thread of a multithreaded process, and only that thread
/// moves). Sockets `work` opens belong to `ns`; `/proc/sys/net` shows `ns`'s settings.
/// Entering needs CAP_SYS_ADMIN (see [`keep_entering`]); portwatch's own namespace runs
/// `work` on this thread instead.
pub fn run_in<T: Send + 'static>(
    ns: &NetNs,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    if own().is_ok_and(|own| own == ns.inode) {
        return Ok(work());
    }
    enter(&ns.path, libc::CLONE_NEWNET, work)
}

/// Runs `work` on a new thread that has entered the namespace `path` refers to
/// (`/proc/PID/ns/...` or a bind mount of one), of kind `nstype` (`CLONE_NEWNET`,
/// `CLONE_NEWUTS`). Once inside, the thread gives up every capability before `work`
/// runs. The thread is started by the entering thread when one runs (a tracing
/// portwatch, whose other threads have dropped CAP_SYS_ADMIN), else by this one.
pub fn enter<T: Send + 'static>(
    path: &Path,
    nstype: libc::c_int,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let file = fs::File::open(path)?;
    let (done, result) = mpsc::sync_channel::<io::Result<T>>(1);
    let start = move || {
        let spawned = std::thread::Builder::new()
            .name("portwatch-ns".into())
            .spawn(move || {
                // Started by a thread with every capability (before the drop), it
                // keeps only what setns needs, and after setns (whether it worked)
                // nothing: no moment of its life holds more.
                keep_only_sys_admin();
                // SAFETY: setns on a valid namespace fd; it changes only this thread,
                // which ends when `work` returns.
                let failed = unsafe { libc::setns(file.as_raw_fd(), nstype) } != 0;
                let error = failed.then(io::Error::last_os_error);
                crate::privileges::drop_all_in_this_thread();
                let entered = match error {
                    Some(err) => Err(err),
                    None => Ok(work()),
                };
                let _ = done.send(entered);
            });
        // A thread that could not start drops `done`: the receiver says so.
        drop(spawned);
    };
    match ENTERING.get() {
        Some(entering) => {
            let sent = entering
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .send(Box::new(start));
            if sent.is_err() {
                return Err(io::Error::other("the namespace-entering thread is gone"));
            }
        }
        None => start(),
    }
    result.recv().map_err(|_| {
        io::Error::other("a thread entering another namespace could not start or panicked")
    })?
}

type Start = Box<dyn FnOnce() + Send>;

/// The entering thread's queue, once [`keep_entering`] started it.
static ENTERING: OnceLock<Mutex<mpsc::Sender<Start>>> = OnceLock::new();

/// Starts the one thread that keeps CAP_SYS_ADMIN for the rest of the run, so that
/// namespaces can still be entered after the capability drop (capabilities are per
/// thread, and a new thread starts with its creator's): it only starts the threads
/// [`enter`] asks for, which drop every capability once inside. Call it just before
/// dropping capabilities; it keeps nothing else of what it had. Without CAP_SYS_ADMIN
/// it keeps nothing, and entering fails as it would anyway.
pub fn keep_entering() -> io::Result<()> {
    if ENTERING.get().is_some() {
        return Ok(());
    }
    let (queue, starts) = mpsc::channel::<Start>();
    let (ready, dropped) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("portwatch-enter".into())
        .spawn(move || {
            keep_only_sys_admin();
            let _ = ready.send(());
            for start in starts {
                start();
            }
        })?;
    // Until it has run, the new thread holds every capability this one had: the
    // caller's capability drop must not be followed by a moment where one thread
    // still has them all.
    dropped
        .recv()
        .map_err(|_| io::Error::other("the namespace-entering thread did not start"))?;
    // Another caller won the race: its thread serves; this one's queue closes.
    let _ = ENTERING.set(Mutex::new(queue));
    Ok(())
}

/// Keeps CAP_SYS_ADMIN (if this thread has it) and nothing else, in every set.
fn keep_only_sys_admin() {
    use caps::{CapSet, Capability, CapsHashSet};
    let had = caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).unwrap_or(false);
    let keep: CapsHashSet = if had {
        [Capability::CAP_SYS_ADMIN].into_iter().collect()
    } else {
        CapsHashSet::new()
    };
    let _ = caps::clear(None, CapSet::Inheritable);
    let _ = caps::set(None, CapSet::Effective, &keep);
    let _ = caps::set(None, CapSet::Permitted, &keep);
}

/// The hostname of `pid`'s UTS namespace, when that namespace is not the host's (PID
/// 1's, or portwatch's own where PID 1's cannot be read): a Kubernetes pod's hostname is
/// its name. Read with uname() from a thread that entered it; None when it is the
/// host's, or cannot be entered.
pub fn uts_hostname(pid: u32) -> Option<String> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/uts"));
    let theirs = inode_of(&path).ok()?;
    let host = inode_of(Path::new("/proc/1/ns/uts"))
        .or_else(|_| inode_of(Path::new("/proc/self/ns/uts")))
        .ok()?;
    if theirs == host {
        return None;
    }
    enter(&path, libc::CLONE_NEWUTS, || {
        // SAFETY: utsname is arrays of c_char, for which all zeroes is a valid value.
        let mut name: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: uname fills the struct it is given, which lives across the call.
        if unsafe { libc::uname(&mut name) } != 0 {
            return None;
        }
        // SAFETY: the kernel NUL-terminates nodename within its array.
        let nodename = unsafe { std::ffi::CStr::from_ptr(name.nodename.as_ptr()) };
        Some(nodename.to_string_lossy().into_owned())
    })
    .ok()
    .flatten()
    .filter(|name| !name.is_empty())
}

/// Resolves `--netns`: an inode number, an `ip netns` name, or `pid:PID` / a PID whose
/// namespace to use. A number is taken as an inode if it is one of the host's
/// namespaces' inodes, else as a PID.
pub fn resolve(spec: &str) -> Result<u32, String> {
    let spec = spec.trim();
    if let Some(pid) = spec.strip_prefix("pid:") {
        return inode_of(Path::new(&format!("/proc/{pid}/ns/net")))
            .map_err(|err| format!("no network namespace for PID {pid}: {err}"));
    }
    if let Ok(number) = spec.parse::<u32>() {
        if all().iter().any(|ns| ns.inode == number) {
            return Ok(number);
        }
        if let Ok(inode) = inode_of(Path::new(&format!("/proc/{number}/ns/net"))) {
            return Ok(inode);
        }
        // An inode of a namespace with no process and no name (yet): take it as given.
        return Ok(number);
    }
    inode_of(&Path::new(RUN_NETNS).join(spec)).map_err(|err| {
        format!("`{spec}` is not a network namespace inode, PID or {RUN_NETNS} name ({err})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_namespace() {
        let own = own().unwrap();
        assert!(all().iter().any(|ns| ns.inode == own));
        assert_eq!(resolve(&own.to_string()), Ok(own));
        assert_eq!(resolve(&format!("pid:{}", std::process::id())), Ok(own));
        assert_eq!(resolve(&std::process::id().to_string()), Ok(own));
        assert!(resolve("no-such-namespace-name").is_err());
    }
}
