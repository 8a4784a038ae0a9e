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
/// Needs CAP_SYS_ADMIN; portwatch's own namespace runs `work` on this thread instead.
pub fn run_in<T: Send>(ns: &NetNs, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    if own().is_ok_and(|own| own == ns.inode) {
        return Ok(work());
    }
    let file = fs::File::open(&ns.path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on a valid namespace fd; it changes only this thread,
                // which ends when `work` returns.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(work())
            })
            .join()
            .map_err(|_| io::Error::other("a thread in another network namespace panicked"))?
    })
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
