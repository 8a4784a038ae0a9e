//! Which processes hold each socket: one pass over `/proc/*/fd`, where a socket shows as
//! a link to `socket:[inode]`.
//!
//! A socket can be held by several processes (inherited across fork, passed with
//! SCM_RIGHTS, shared by a pre-fork server's workers); each is listed once, however many
//! of its descriptors refer to the socket. Threads share their process's descriptor table,
//! so only process directories are read (a thread that unshared its table is missed).
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, PoisonError},
};

use procfs::{
    ProcError, ProcResult,
    process::{FDTarget, Process as ProcProcess},
};

use super::workload::{Workload, workload_from_cgroups};
use crate::process::Process;

/// A process as /proc shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Named by its start time ([`Life::StartedAt`](crate::process::Life::StartedAt)).
    pub id: Process,
    pub comm: String,
    pub workload: Option<Workload>,
}

/// The result of one pass over /proc.
#[derive(Clone, Debug, Default)]
pub struct SocketHolders {
    /// Socket inode to the processes holding it, each once.
    pub by_inode: HashMap<u64, Vec<ProcessInfo>>,
    /// Processes whose descriptors could not be read (another user's, without root):
    /// the sockets they hold show up without them.
    pub unreadable_processes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HoldersError {
    #[error("listing the processes in /proc (is procfs mounted?)")]
    ListProcesses(#[source] ProcError),
}

/// Maps every socket inode some process holds to those processes.
pub fn socket_holders() -> Result<SocketHolders, HoldersError> {
    socket_holders_of(|_| true)
}

/// Maps the socket inodes `wanted` picks to the processes holding them.
///
/// The others are not recorded: a host can hold hundreds of thousands of socket
/// descriptors, many of them sockets a caller has no use for (another network
/// namespace's, which its sock_diag dump does not list), and each recorded inode costs
/// a copy of its holders' names.
pub fn socket_holders_of(wanted: impl Fn(u64) -> bool) -> Result<SocketHolders, HoldersError> {
    let processes = procfs::process::all_processes().map_err(HoldersError::ListProcesses)?;
    let mut holders = SocketHolders::default();
    for process in processes {
        match process.and_then(|process| held_sockets(&process, &wanted)) {
            Ok(None) => {}
            Ok(Some((info, inodes))) => {
                for inode in inodes {
                    holders
                        .by_inode
                        .entry(inode)
                        .or_default()
                        .push(info.clone());
                }
            }
            // It exited between the directory listing and the read.
            Err(ProcError::NotFound(_)) => {}
            // Permission denied, or any other reason this process cannot be read.
            Err(_) => holders.unreadable_processes += 1,
        }
    }
    Ok(holders)
}

/// One process by PID, for owners learned from kernel events. None when it is gone or
/// cannot be read.
pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    let process = ProcProcess::new(i32::try_from(pid).ok()?).ok()?;
    info(&process).ok()
}

/// The wanted socket inodes a process holds, each once, and the process; None when it
/// holds none (most processes), so that only holders pay for reading stat and cgroup.
fn held_sockets(
    process: &ProcProcess,
    wanted: &impl Fn(u64) -> bool,
) -> ProcResult<Option<(ProcessInfo, Vec<u64>)>> {
    let mut inodes = Vec::new();
    let mut read = 0usize;
    for fd in process.fd()? {
        read += 1;
        if let FDTarget::Socket(inode) = fd?.target
            && wanted(inode)
        {
            inodes.push(inode);
        }
    }
    // procfs skips the descriptors whose link it cannot read. The kernel refuses all of
    // a process's links when ptrace access is denied (another user's process, or one
    // with capabilities portwatch lacks, e.g. root without CAP_SYS_PTRACE), though the
    // directory itself may be listable: a process that shows no descriptor while it
    // has some is unreadable, not one without sockets.
    // (procfs's own fd_count counts `.` and `..` on kernels before 6.2: std's listing
    // skips them. Kernel threads have no descriptors.)
    if read == 0 {
        let path = std::path::PathBuf::from(format!("/proc/{}/fd", process.pid));
        if std::fs::read_dir(&path).is_ok_and(|mut fds| fds.next().is_some()) {
            return Err(ProcError::PermissionDenied(Some(path)));
        }
    }
    if inodes.is_empty() {
        return Ok(None);
    }
    inodes.sort_unstable();
    inodes.dedup();
    Ok(Some((info(process)?, inodes)))
}

fn info(process: &ProcProcess) -> ProcResult<ProcessInfo> {
    let stat = process.stat()?;
    // A process without a readable cgroup file is still worth showing.
    let mut workload = process.cgroups().ok().and_then(|cgroups| {
        workload_from_cgroups(cgroups.0.iter().map(|cgroup| cgroup.pathname.as_str()))
    });
    if let Some(Workload::Pod(pod)) = &mut workload {
        pod.name = pod_name(&pod.uid, u32::try_from(process.pid).unwrap_or_default());
    }
    Ok(ProcessInfo {
        id: Process::started_at(u32::try_from(stat.pid).unwrap_or_default(), stat.starttime),
        comm: stat.comm,
        workload,
    })
}

/// A pod's name: its UTS hostname, read once per pod (a UID names one pod for its whole
/// life) through `pid`, one of its processes.
fn pod_name(uid: &str, pid: u32) -> Option<String> {
    static NAMES: Mutex<BTreeMap<String, Option<String>>> = Mutex::new(BTreeMap::new());
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(name) = names.get(uid) {
        return name.clone();
    }
    let name = super::netns::uts_hostname(pid);
    if names.len() >= 4096 {
        // Pods come and go on a long-running node: forget them all now and then.
        names.clear();
    }
    names.insert(uid.to_owned(), name.clone());
    name
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Unprivileged: the test's own sockets and /proc/self are always readable.
    #[test]
    fn finds_this_process_holding_its_own_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let clone = listener.try_clone().unwrap();
        let inode = socket_inode(&listener);
        let holders = socket_holders().unwrap();
        let me = std::process::id();
        let held_by = &holders.by_inode[&inode];
        assert_eq!(
            held_by.iter().filter(|p| p.id.pid == me).count(),
            1,
            "two descriptors, one holder: {held_by:?}"
        );
        drop(clone);
        let info = process_info(me).unwrap();
        assert_eq!(held_by[0], info);
        assert!(info.id.start_time().unwrap() > 0);
        assert!(!info.comm.is_empty());
    }

    #[test]
    fn missing_process_is_none() {
        assert_eq!(process_info(u32::MAX), None);
        // PID 0 has no /proc entry.
        assert_eq!(process_info(0), None);
    }

    fn socket_inode(listener: &TcpListener) -> u64 {
        use std::os::fd::AsRawFd as _;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let link = link.to_str().unwrap();
        link.trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
    }
}
