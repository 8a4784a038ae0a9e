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

/// The address of the server in [`NetNs::exhaust_ports`]' scenario.
pub const EXHAUSTED_SERVER: &str = "127.0.0.1:5000";

impl NetNs {
    /// A namespace whose ephemeral range holds only 4 ports.
    pub fn with_four_ports() -> NetNs {
        let ns = NetNs::new();
        ns.sysctl("net.ipv4.ip_local_port_range=40000 40003");
        ns
    }

    /// Runs a hold-client that asks for 8 connections to [`EXHAUSTED_SERVER`] (which
    /// must be listening) and, in a [`NetNs::with_four_ports`] namespace, gets 4: the
    /// other 4 connect() calls fail with EADDRNOTAVAIL. Keep the client to keep the 4.
    pub fn exhaust_ports(&self) -> WorkloadProcess {
        let mut client = self.workload(&[
            "hold-client",
            "--connect",
            EXHAUSTED_SERVER,
            "--count",
            "8",
            "--count-no-local-port",
        ]);
        let held = super::expect_line(&mut client, "held");
        assert_eq!(held[2], "4", "the namespace ran out of ports: {held:?}");
        client
    }
}

/// Connections [`exhaust_ports_in_a_throwaway_namespace`]'s client could not make.
pub const FAILED_CONNECTS: u64 = 4;

/// The exhausted destination in a throwaway namespace (`unshare --net`) with 4 local
/// ports: a leak-server, and a hold-client that asks it for 8 connections and gets 4,
/// the fifth to eighth connect() failing with EADDRNOTAVAIL. Both have exited when it
/// returns the client's PID.
pub fn exhaust_ports_in_a_throwaway_namespace() -> u32 {
    // The server says `ready` once it listens; then the client runs, says `ready <pid>
    // ...` and `held <opened> <seconds> <failed>`, and exits; then the server is stopped.
    let script = r#"
ip link set lo up
sysctl -qw net.ipv4.ip_local_port_range="40000 40003"
"$WORKLOAD" leak-server --listen 127.0.0.1:5000 | {
    read -r ready server_pid port
    "$WORKLOAD" hold-client --connect 127.0.0.1:5000 --count 8 --count-no-local-port \
        --exit-when-held
    status=$?
    kill "$server_pid"
    exit "$status"
}
"#;
    let output = Command::new("unshare")
        .args(["--net", "sh", "-c", script])
        .env("WORKLOAD", workload_binary())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let said = String::from_utf8(output.stdout).unwrap();
    let words: Vec<&str> = said.split_whitespace().collect();
    // ready <pid> 5000 held <opened> <seconds> <failed>
    assert_eq!((words[0], words[3]), ("ready", "held"), "{said}");
    assert_eq!(
        words[6],
        FAILED_CONNECTS.to_string(),
        "the namespace ran out of ports: {said}"
    );
    words[1].parse().unwrap()
}
