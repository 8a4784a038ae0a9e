//! The eBPF programs and links one process holds, and whether the kernel still has them.
//!
//! Other tests and other people's tools load programs on the same machine at the same
//! time, so assertions are about one process's own objects, found through its file
//! descriptors: `/proc/<pid>/fdinfo/<fd>` names the program (`prog_id:`) or link
//! (`link_id:`) behind each descriptor. (`bpftool prog show` lists holders' pids only
//! when bpftool is built with skeletons, which Debian's is not.)
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The names portwatch's programs have in the kernel (`bpftool prog show`).
pub const PROGRAM_NAMES: [&str; 6] = [
    "inet_sock_set_state",
    "inet_sock_set_state_btf",
    "accept_enter",
    "accept_exit",
    "process_exit",
    "connect_exit",
];

/// Kernel ids of the programs and links a process holds open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub programs: BTreeSet<u64>,
    pub links: BTreeSet<u64>,
}

/// What `pid` holds now, from its fdinfo. A link's fdinfo names its program too; only
/// descriptors of programs themselves count as programs.
pub fn held_by(pid: u32) -> Held {
    try_held_by(pid).unwrap_or_else(|| panic!("cannot read /proc/{pid}/fdinfo"))
}

/// [`held_by`], or None when the process is gone (or its descriptors cannot be read).
pub fn try_held_by(pid: u32) -> Option<Held> {
    let mut held = Held::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()? {
        // A descriptor closed between the listing and the read.
        let Ok(info) = std::fs::read_to_string(entry.ok()?.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        match (field("link_id:"), field("prog_id:")) {
            (Some(link), _) => {
                held.links.insert(link);
            }
            (None, Some(program)) => {
                held.programs.insert(program);
            }
            (None, None) => {}
        }
    }
    Some(held)
}

fn bpftool_json(object: &str) -> Vec<Value> {
    let output = Command::new("bpftool")
        .args(["--json", object, "show"])
        .output()
        .expect("running bpftool (installed by `cargo xtask setup`)");
    assert!(output.status.success(), "bpftool {object} show failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Every program the kernel has loaded now: id to name.
pub fn loaded_programs() -> Vec<(u64, String)> {
    bpftool_json("prog")
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Every link id the kernel has now.
pub fn loaded_links() -> BTreeSet<u64> {
    bpftool_json("link")
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect()
}

/// The ids of programs named like portwatch's, loaded now, by anyone.
pub fn portwatch_named_programs() -> BTreeSet<u64> {
    loaded_programs()
        .into_iter()
        .filter(|(_, name)| PROGRAM_NAMES.contains(&name.as_str()))
        .map(|(id, _)| id)
        .collect()
}

/// Waits until the kernel has none of `held`'s programs and links. The kernel frees a
/// program after its last reference goes, through an RCU grace period, so this polls
/// with a deadline rather than looking once.
pub fn assert_released(held: &Held, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let programs: BTreeSet<u64> = loaded_programs().into_iter().map(|(id, _)| id).collect();
        let links = loaded_links();
        let left = Held {
            programs: held.programs.intersection(&programs).copied().collect(),
            links: held.links.intersection(&links).copied().collect(),
        };
        if left == Held::default() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel {timeout:?} after their holder went: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts `held` is what a running portwatch holds: each of its programs, named as
/// portwatch names them, with at least one link attaching it.
pub fn assert_is_portwatch(held: &Held) {
    let names: std::collections::BTreeMap<u64, String> = loaded_programs().into_iter().collect();
    assert!(
        !held.programs.is_empty() && !held.links.is_empty(),
        "a tracing portwatch holds programs and links: {held:?}"
    );
    for id in &held.programs {
        let name = names.get(id).map(String::as_str).unwrap_or("<gone>");
        assert!(
            PROGRAM_NAMES.contains(&name),
            "program {id} held by portwatch is named {name}"
        );
    }
}
