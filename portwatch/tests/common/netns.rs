//! Network namespaces for the tests that need one of their own.
use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use portwatch_workload::{Launcher, WorkloadProcess};

use super::workload_binary;

/// A network namespace made with `ip netns add`, loopback up; deleted when dropped.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pwtest-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Its inode number, as portwatch reports it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(Path::new("/run/netns").join(&self.name))
            .unwrap()
            .ino()
    }

    /// Starts `portwatch-workload <role_args>` inside this namespace.
    pub fn workload(&self, role_args: &[&str]) -> WorkloadProcess {
        let binary = workload_binary().to_str().unwrap();
        Launcher::new("ip", ["netns", "exec", &self.name, binary])
            .spawn(role_args)
            .unwrap_or_else(|err| panic!("{role_args:?} in {}: {err:#}", self.name))
    }

    pub fn sysctl(&self, setting: &str) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw", setting])
            .status()
            .unwrap();
        assert!(status.success(), "sysctl {setting} in {}", self.name);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
