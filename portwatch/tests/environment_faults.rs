//! PRIVILEGED: the real portwatch binary in a broken or restricted environment, each
//! fault produced for real (setpriv, prlimit, a private mount namespace, seccomp). Where
//! portwatch cannot work it must say why in one paragraph and exit 1; where it can work
//! with less it must say what is lost and go on. Never a panic.
//!
//! Every portwatch here runs in its own mount namespace or with its own credentials:
//! nothing about the machine changes for other tests.
mod common;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use common::{PORTWATCH, require_privileges, workload};

/// The subcommands that load eBPF.
const TRACING: [&[&str]; 4] = [
    &["stream", "--duration", "1s"],
    &["report", "--duration", "1s"],
    &["record", "--duration", "1s", "--out", "/dev/null"],
    &["demo", "--duration", "1s"],
];

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit code 1 and one line of stderr, starting `portwatch: `, containing every one of
/// `words`, without a panic.
fn assert_refused(output: &Output, words: &[&str], what: &str) {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "{what}: one paragraph: {stderr}"
    );
    assert!(stderr.starts_with("portwatch: "), "{what}: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "{what}: no {word:?} in: {stderr}");
    }
}

/// Exit code 0, traced, no panic; returns stderr.
fn assert_ran(output: &Output, what: &str) -> String {
    let stderr = stderr_of(output);
    assert_eq!(output.status.code(), Some(0), "{what}: {stderr}");
    assert!(stderr.contains("portwatch: tracing"), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    stderr
}

fn setpriv(options: &[&str], args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(options)
        .arg(PORTWATCH)
        .args(args)
        .output()
        .expect("running setpriv (util-linux)")
}

const NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

#[test]
fn not_root_each_tracing_command_names_the_missing_capabilities() {
    require_privileges();
    for args in TRACING {
        let options = [&NOBODY[..], &["--inh-caps=-all"]].concat();
        let output = setpriv(&options, args);
        assert_refused(
            &output,
            &["not running as root", "CAP_BPF and CAP_PERFMON"],
            &format!("{args:?} as nobody"),
        );
    }
}

#[test]
fn root_missing_one_capability_names_that_one() {
    require_privileges();
    // CAP_SYS_ADMIN stands for both, so it goes too.
    for (dropped, named, not_named) in [
        ("-bpf,-sys_admin", "without CAP_BPF:", "CAP_PERFMON:"),
        (
            "-perfmon,-sys_admin",
            "without CAP_PERFMON:",
            "without CAP_BPF",
        ),
    ] {
        let bounding = format!("--bounding-set={dropped}");
        let output = setpriv(
            &["--inh-caps=-all", &bounding],
            &["stream", "--duration", "1s"],
        );
        assert_refused(&output, &["runs as root but", named], dropped);
        assert!(!stderr_of(&output).contains(not_named), "{dropped}");
    }
    // Either one alone is not missed while CAP_SYS_ADMIN is there.
    for dropped in ["-bpf", "-perfmon"] {
        let bounding = format!("--bounding-set={dropped}");
        let output = setpriv(
            &["--inh-caps=-all", &bounding],
            &["stream", "--duration", "1s"],
        );
        assert_ran(&output, dropped);
    }
}

/// tracefs is root-only (mode 0700) on this kernel: CAP_BPF and CAP_PERFMON alone do
/// not let a non-root portwatch find the tracepoints, and it must say that rather than
/// that tracefs is not mounted.
#[test]
fn not_root_without_dac_capability_names_tracefs_permissions() {
    require_privileges();
    let caps = ["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon"];
    let output = setpriv(
        &[&NOBODY[..], &caps].concat(),
        &["stream", "--duration", "1s"],
    );
    assert_refused(
        &output,
        &["tracefs", "permission denied", "CAP_DAC_READ_SEARCH"],
        "nobody with CAP_BPF and CAP_PERFMON",
    );
    assert!(!stderr_of(&output).contains("not mounted"));
}

/// Since Linux 5.11 eBPF memory is charged to the memory cgroup, not RLIMIT_MEMLOCK, so
/// a zero limit that portwatch cannot raise (non-root, no CAP_SYS_RESOURCE) costs
/// nothing. On an older kernel this test would fail, and the loader's error says which
/// limit to raise.
#[test]
fn zero_memlock_limit_it_cannot_raise_does_not_matter_on_this_kernel() {
    require_privileges();
    let caps = "+bpf,+perfmon,+dac_read_search";
    let output = Command::new("setpriv")
        .args(NOBODY)
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .args([
            "prlimit",
            "--memlock=0:0",
            PORTWATCH,
            "stream",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    assert_ran(&output, "memlock 0:0 as nobody");
    // As root it raises the limit itself (CAP_SYS_RESOURCE).
    let output = Command::new("prlimit")
        .args(["--memlock=0:0", PORTWATCH, "stream", "--duration", "1s"])
        .output()
        .unwrap();
    assert_ran(&output, "memlock 0:0 as root");
}

/// A directory standing in for tracefs, holding copies of the real `format` and `id`
/// files of the given tracepoints (the ids are the kernel's own, so attaching works),
/// each `format` passed through `edit`.
fn fake_tracefs(
    name: &str,
    tracepoints: &[&str],
    edit: impl Fn(&str, String) -> String,
) -> PathBuf {
    let root = std::env::temp_dir().join(format!(
        "portwatch-fake-tracefs-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("events")).unwrap();
    for tracepoint in tracepoints {
        let real = Path::new("/sys/kernel/tracing/events").join(tracepoint);
        let fake = root.join("events").join(tracepoint);
        std::fs::create_dir_all(&fake).unwrap();
        let format = std::fs::read_to_string(real.join("format")).unwrap();
        std::fs::write(fake.join("format"), edit(tracepoint, format)).unwrap();
        std::fs::copy(real.join("id"), fake.join("id")).unwrap();
    }
    root
}

/// Runs `portwatch <args>` in a private mount namespace where `tracefs` is mounted over
/// /sys/kernel/tracing.
fn with_tracefs(tracefs: &Path, args: &[&str]) -> Output {
    let script = format!(
        "mount --bind '{}' /sys/kernel/tracing && exec \"$0\" \"$@\"",
        tracefs.display()
    );
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            PORTWATCH,
        ])
        .args(args)
        .output()
        .expect("running unshare (util-linux)");
    std::fs::remove_dir_all(tracefs).unwrap();
    output
}

const STATE: &str = "sock/inet_sock_set_state";
const OPTIONAL: [&str; 6] = [
    "syscalls/sys_enter_accept4",
    "syscalls/sys_enter_accept",
    "syscalls/sys_exit_accept4",
    "syscalls/sys_exit_accept",
    "sched/sched_process_exit",
    "syscalls/sys_exit_connect",
];

#[test]
fn state_tracepoint_with_an_unknown_layout_is_refused() {
    require_privileges();
    let moved = fake_tracefs("moved", &[STATE], |_, format| {
        format.replace("sport;\toffset:24;", "sport;\toffset:22;")
    });
    assert!(
        std::fs::read_to_string(moved.join("events").join(STATE).join("format"))
            .unwrap()
            .contains("sport;\toffset:22;")
    );
    let output = with_tracefs(&moved, &["stream", "--duration", "1s"]);
    assert_refused(
        &output,
        &[
            "record layout portwatch does not know",
            "`sport`",
            "offset 22",
            "report this",
        ],
        "sport moved",
    );
}

#[test]
fn missing_state_tracepoint_is_refused() {
    require_privileges();
    let without = fake_tracefs("absent", &OPTIONAL, |_, format| format);
    let output = with_tracefs(&without, &["report", "--duration", "1s"]);
    assert_refused(
        &output,
        &["no sock:inet_sock_set_state tracepoint", "4.16"],
        "no state tracepoint",
    );
}

/// An optional hook whose tracepoint has an unknown layout is left out with a warning
/// naming it and what is lost; portwatch traces without it.
#[test]
fn optional_tracepoint_with_an_unknown_layout_degrades_with_a_warning() {
    require_privileges();
    let tracepoints = [&[STATE][..], &OPTIONAL].concat();
    let edited = fake_tracefs("accept", &tracepoints, |tracepoint, format| {
        if tracepoint == "syscalls/sys_enter_accept" {
            format.replace("upeer_sockaddr;\toffset:24;", "upeer_sockaddr;\toffset:32;")
        } else {
            format
        }
    });
    let output = with_tracefs(&edited, &["stream", "--duration", "1s"]);
    let stderr = assert_ran(&output, "accept layout moved");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert!(
        warnings.iter().any(
            |w| w.contains("syscalls:sys_enter_accept has an unknown layout")
                && w.contains("listener's owner")
        ),
        "{stderr}"
    );
    // Only the broken hook is left out.
    assert!(
        !warnings
            .iter()
            .any(|w| w.contains("sched_process_exit") || w.contains("sys_exit_connect")),
        "{stderr}"
    );
}

/// Kernel BTF is not needed: hidden behind an empty tmpfs, portwatch runs as usual.
#[test]
fn runs_without_kernel_btf() {
    require_privileges();
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /sys/kernel/btf && test ! -e /sys/kernel/btf/vmlinux && exec \"$0\" \"$@\"")
        .args([PORTWATCH, "stream", "--duration", "1s"])
        .output()
        .unwrap();
    let stderr = assert_ran(&output, "no /sys/kernel/btf/vmlinux");
    // The documented degraded mode: one warning that sockets go without their network
    // namespace (its offsets come from BTF), and every hook attached. (A warning about
    // /proc is about this machine's init, whose descriptors even root cannot read here.)
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("warning") && !line.contains("file descriptors"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("network namespace") && warnings[0].contains("netns 0"),
        "{stderr}"
    );
}

/// Root without CAP_SYS_PTRACE cannot read the descriptors of a process with more
/// capabilities: the holder is unknown, and portwatch must say so instead of showing
/// its sockets as nobody's without a word.
#[test]
fn proc_partly_unreadable_is_counted_and_warned_about() {
    require_privileges();
    let leaker = workload(&["leak-server", "--listen", "127.0.0.1:0"]);
    let snapshot = |bounding: &str| {
        let output = setpriv(
            &["--inh-caps=-all", bounding],
            &["snapshot", "--format", "json"],
        );
        assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        (json, stderr_of(&output))
    };
    let holds_leaker = |json: &serde_json::Value| {
        json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|process| process["pid"] == leaker.pid)
    };

    let (json, _) = snapshot("--bounding-set=+all");
    assert!(
        holds_leaker(&json),
        "with every capability the leaker is named: {json}"
    );
    let (json, stderr) = snapshot("--bounding-set=-sys_ptrace");
    assert!(!holds_leaker(&json), "without CAP_SYS_PTRACE: {json}");
    let unreadable = json["unreadable_processes"].as_u64().unwrap();
    assert!(unreadable >= 1, "{json}");
    assert!(
        stderr.contains(&format!(
            "could not read the file descriptors of {unreadable} process"
        )) && stderr.contains("CAP_SYS_PTRACE"),
        "{stderr}"
    );

    // Tracing says it too, at the start.
    let output = setpriv(
        &["--inh-caps=-all", "--bounding-set=-sys_ptrace"],
        &["report", "--duration", "1s"],
    );
    let stderr = assert_ran(&output, "report without CAP_SYS_PTRACE");
    assert!(
        stderr.contains("warning: could not read the file descriptors of")
            && stderr.contains("unknown owners"),
        "{stderr}"
    );
    drop(leaker);
}

/// Constants of linux/filter.h and linux/seccomp.h, for the filter below.
/// BPF_LD | BPF_W | BPF_ABS (0x00 | 0x00 | 0x20).
const BPF_LD_W_ABS: u16 = 0x20;
/// BPF_JMP | BPF_JEQ | BPF_K (0x05 | 0x10 | 0x00).
const BPF_JMP_JEQ_K: u16 = 0x15;
/// BPF_RET | BPF_K.
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Offsets in `struct seccomp_data`: the system call number, and the low half of its
/// first argument (little-endian).
const NR_OFFSET: u32 = 0;
const ARG0_OFFSET: u32 = 16;

/// Runs portwatch under a seccomp filter that fails `socket(AF_NETLINK, ...)` with
/// EAFNOSUPPORT, as a container runtime's profile may: sock_diag is then unavailable,
/// while eBPF (the bpf() and perf_event_open() calls) is not affected. The host's
/// sock_diag is built in (CONFIG_INET_DIAG=y), so this is how it can be taken away
/// from one process.
fn without_netlink(args: &[&str]) -> Output {
    let filter = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: NR_OFFSET,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 3,
            k: libc::SYS_socket as u32,
        },
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: ARG0_OFFSET,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::AF_NETLINK as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let mut command = Command::new(PORTWATCH);
    command.args(args);
    // SAFETY: the closure runs in the child between fork and exec, and calls only
    // prctl, which is async-signal-safe; `filter` outlives the call (the kernel copies
    // the program), and `program` points at it with its true length.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().unwrap()
}

#[test]
fn sock_diag_unavailable() {
    require_privileges();
    // snapshot is nothing but sock_diag: it cannot work.
    let output = without_netlink(&["snapshot"]);
    assert_refused(
        &output,
        &["NETLINK_SOCK_DIAG", "Address family not supported"],
        "snapshot",
    );
    // Tracing needs it only for the sockets open before it started: it warns and runs.
    let output = without_netlink(&["stream", "--duration", "1s"]);
    let stderr = assert_ran(&output, "stream without sock_diag");
    assert!(
        stderr.contains("warning: no snapshot of the sockets already open")
            && stderr.contains("owners stay unknown"),
        "{stderr}"
    );
}
