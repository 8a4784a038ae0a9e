//! Checks the host can run portwatch's eBPF programs, and says clearly what is missing.
//!
//! Each check runs before loading, so the user sees "you lack CAP_BPF" rather than the
//! verifier's or perf_event_open's EPERM.
use std::{fs, io, path::PathBuf};

use anyhow::{Result, bail};
use aya::{programs::ProgramType, sys::BpfHelper};
use portwatch_common::tracepoint::{Field, InetSockSetState, SysEnterAccept, SysExit};

/// Capability numbers from include/uapi/linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracepoint portwatch attaches to. The fields of its record that the eBPF program
/// reads, and where, come from `InetSockSetState::FIELDS`.
pub const STATE_TRACEPOINT: (&str, &str) = ("sock", "inet_sock_set_state");

/// The accept tracepoints; the accept hook reads `SysEnterAccept::FIELDS` on entry and
/// `SysExit::FIELDS` on exit. They exist with CONFIG_FTRACE_SYSCALLS.
pub const ACCEPT_ENTER_TRACEPOINTS: [(&str, &str); 2] = [
    ("syscalls", "sys_enter_accept4"),
    ("syscalls", "sys_enter_accept"),
];
pub const ACCEPT_EXIT_TRACEPOINTS: [(&str, &str); 2] = [
    ("syscalls", "sys_exit_accept4"),
    ("syscalls", "sys_exit_accept"),
];
pub const EXIT_TRACEPOINT: (&str, &str) = ("sched", "sched_process_exit");
pub const CONNECT_EXIT_TRACEPOINT: (&str, &str) = ("syscalls", "sys_exit_connect");

/// Which optional hooks this kernel can serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// Why the accept hook cannot run, if it cannot.
    pub accept_hook: Result<(), String>,
    /// Why the process-exit hook cannot run, if it cannot.
    pub exit_hook: Result<(), String>,
    /// Why the failed-connect (EADDRNOTAVAIL) hook cannot run, if it cannot.
    pub connect_hook: Result<(), String>,
}

/// Runs every check and fixes what portwatch may fix itself (mounting tracefs, raising
/// the memlock limit). Returns the tracefs mount point and the optional hooks this
/// kernel supports.
/// Whether this process may load and attach eBPF at all: the first thing to know, before
/// a command creates files or starts processes for a run it could not make.
pub fn check_privileges() -> Result<()> {
    check_capabilities(effective_capabilities()?)
}

pub fn prepare() -> Result<(PathBuf, Features)> {
    check_capabilities(effective_capabilities()?)?;
    // Before the probes: on kernels before 5.11 the probes' maps count against it too.
    raise_memlock_limit();
    check_ring_buffer()?;
    let tracefs = tracefs()?;
    check_state_tracepoint(&tracefs)?;
    let accept_hook = check_accept_hook(&tracefs);
    let exit_hook = check_optional(
        &tracefs,
        EXIT_TRACEPOINT,
        &[],
        "it exists on every kernel with CONFIG_TRACEPOINTS",
    );
    let connect_hook = check_optional(
        &tracefs,
        CONNECT_EXIT_TRACEPOINT,
        &SysExit::FIELDS,
        SYSCALL_TRACEPOINTS,
    );
    Ok((
        tracefs,
        Features {
            accept_hook,
            exit_hook,
            connect_hook,
        },
    ))
}

/// The accept hook: both syscall tracepoints of accept() and accept4(), and the helper
/// that reads the peer address accept() wrote to user memory.
fn check_accept_hook(tracefs: &std::path::Path) -> Result<(), String> {
    for tracepoint in ACCEPT_ENTER_TRACEPOINTS {
        check_optional(
            tracefs,
            tracepoint,
            &SysEnterAccept::FIELDS,
            SYSCALL_TRACEPOINTS,
        )?;
    }
    for tracepoint in ACCEPT_EXIT_TRACEPOINTS {
        check_optional(tracefs, tracepoint, &SysExit::FIELDS, SYSCALL_TRACEPOINTS)?;
    }
    check_helper(
        BpfHelper::BPF_FUNC_probe_read_user,
        "bpf_probe_read_user",
        "5.5",
    )
}

/// What the `syscalls:*` tracepoints need, for messages about their absence.
const SYSCALL_TRACEPOINTS: &str =
    "system call tracepoints need a kernel built with CONFIG_FTRACE_SYSCALLS";

/// Checks an optional tracepoint exists with the fields a program reads; `requirement`
/// says what provides it, for the warning when it does not exist.
fn check_optional(
    tracefs: &std::path::Path,
    (category, name): (&str, &str),
    fields: &[Field],
    requirement: &str,
) -> Result<(), String> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let format = fs::read_to_string(&path).map_err(|err| {
        format!("tracepoint {category}:{name} is unavailable ({err}; {requirement})")
    })?;
    check_fields(&format, fields).map_err(|problem| {
        format!("tracepoint {category}:{name} has an unknown layout ({problem})")
    })
}

/// Every event reaches userspace through a BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux
/// 5.8): without one, portwatch cannot run at all, and the loader's own error would only
/// say "Invalid argument".
fn check_ring_buffer() -> Result<()> {
    match aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
        Ok(false) => bail!(
            "this kernel ({}) has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF): portwatch sends \
             every event through one, so it needs Linux 5.8 or newer.",
            kernel_release()
        ),
        // A probe that fails for another reason proves nothing: loading will say what
        // is wrong, with more detail.
        Ok(true) | Err(_) => Ok(()),
    }
}

/// Checks tracepoint programs may call an eBPF helper that appeared in Linux `since`.
fn check_helper(helper: BpfHelper, name: &str, since: &str) -> Result<(), String> {
    match aya::sys::is_helper_supported(ProgramType::TracePoint, helper) {
        Ok(false) => Err(format!(
            "the eBPF helper {name} is unavailable on this kernel ({}; it exists since Linux \
             {since})",
            kernel_release()
        )),
        Ok(true) | Err(_) => Ok(()),
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| format!("Linux {}", release.trim()))
        .unwrap_or_else(|_| "Linux of unknown version".to_owned())
}

fn effective_capabilities() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn check_capabilities(effective: u64) -> Result<()> {
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let who = if root {
        "portwatch runs as root but without"
    } else {
        "portwatch is not running as root and lacks"
    };
    bail!(
        "{who} {}: loading eBPF programs needs CAP_BPF and attaching them to kernel \
         tracepoints needs CAP_PERFMON (or CAP_SYS_ADMIN for both). Run it with sudo, or \
         grant them with `setcap cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_ptrace+ep \
         $(command -v portwatch)` (see docs/privileges.md).",
        missing.join(" and ")
    )
}

/// Since Linux 5.11 eBPF memory is charged to the memory cgroup, but older kernels count
/// it against RLIMIT_MEMLOCK, whose default (8 MiB or less) is smaller than the ring
/// buffer. Raising it is harmless where it is not needed.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; failure is reported by return value.
    // Failure is not fatal: on 5.11+ the limit does not apply, and if a load fails with
    // EPERM the loader's error names this limit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// Finds tracefs, mounting it at /sys/kernel/tracing if no mount exists (many minimal
/// hosts and containers do not mount it by default).
fn tracefs() -> Result<PathBuf> {
    for path in TRACEFS_MOUNTS.iter().map(PathBuf::from) {
        match fs::metadata(path.join("events")) {
            Ok(metadata) if metadata.is_dir() => return Ok(path),
            // Mounted, but root-only (mode 0700 on recent kernels): without this check a
            // non-root portwatch with CAP_BPF and CAP_PERFMON would report tracefs as
            // not mounted, and fail to mount it.
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => bail!(
                "cannot look into tracefs at {} (permission denied): it is readable by root \
                 only, and portwatch finds kernel tracepoints through it. Run portwatch as \
                 root, or grant it CAP_DAC_READ_SEARCH along with CAP_BPF and CAP_PERFMON \
                 (see docs/privileges.md).",
                path.display()
            ),
            _ => {}
        }
    }
    let target = PathBuf::from(TRACEFS_MOUNTS[0]);
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs"])
        .arg(&target)
        .output();
    match mounted {
        Ok(output) if output.status.success() && target.join("events").is_dir() => Ok(target),
        Ok(output) => bail!(
            "tracefs is not mounted and mounting it at {} failed ({}): portwatch finds \
             kernel tracepoints through it. Mount it with `mount -t tracefs tracefs {}`.",
            target.display(),
            String::from_utf8_lossy(&output.stderr).trim(),
            target.display()
        ),
        Err(err) => bail!(
            "tracefs is not mounted and `mount` could not be run ({err}): mount it with \
             `mount -t tracefs tracefs {}`.",
            target.display()
        ),
    }
}

fn check_state_tracepoint(tracefs: &std::path::Path) -> Result<()> {
    let (category, name) = STATE_TRACEPOINT;
    let format_path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let format = match fs::read_to_string(&format_path) {
        Ok(format) => format,
        Err(err) if err.kind() == io::ErrorKind::NotFound => bail!(
            "this kernel has no {category}:{name} tracepoint ({} is missing): portwatch needs \
             it to see TCP state changes, and it exists since Linux 4.16.",
            format_path.display()
        ),
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => bail!(
            "cannot read {} (permission denied): portwatch needs read access to tracefs; \
             run it as root or grant CAP_DAC_OVERRIDE.",
            format_path.display()
        ),
        Err(err) => bail!("cannot read {}: {err}", format_path.display()),
    };
    check_format(&format).map_err(|problem| {
        anyhow::anyhow!(
            "the {category}:{name} tracepoint on this kernel has a record layout portwatch \
             does not know ({problem}), so its eBPF program would read the wrong fields. \
             Please report this with the contents of {}.",
            format_path.display()
        )
    })
}

/// Compares the state tracepoint's format file with the record the eBPF program was
/// built for.
fn check_format(format: &str) -> Result<(), String> {
    check_fields(format, &InetSockSetState::FIELDS)
}

/// Checks each field is where the record's struct in `portwatch_common::tracepoint`
/// has it, with the same size.
fn check_fields(format: &str, fields: &[Field]) -> Result<(), String> {
    for &Field {
        name: field,
        offset,
        size,
    } in fields
    {
        let Some((found_offset, found_size)) = field_layout(format, field) else {
            return Err(format!("no field `{field}`"));
        };
        if (found_offset, found_size) != (offset, size) {
            return Err(format!(
                "field `{field}` is at offset {found_offset} size {found_size}, expected offset \
                 {offset} size {size}"
            ));
        }
    }
    Ok(())
}

/// Finds `field:<type> <name>[..];\toffset:N;\tsize:M;` in a tracefs format file.
fn field_layout(format: &str, name: &str) -> Option<(usize, usize)> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let declaration = parts.next()?.strip_prefix("field:")?;
        let field_name = declaration.rsplit(' ').next()?;
        let field_name = field_name.split('[').next()?;
        if field_name != name {
            return None;
        }
        let offset = parts.next()?.strip_prefix("offset:")?.parse().ok()?;
        let size = parts.next()?.strip_prefix("size:")?.parse().ok()?;
        Some((offset, size))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of Linux 6.18 (also 5.10, 6.1, 6.12).
    const FORMAT: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"";

    #[test]
    fn known_format_passes() {
        assert_eq!(field_layout(FORMAT, "saddr_v6"), Some((40, 16)));
        assert_eq!(field_layout(FORMAT, "skaddr"), Some((8, 8)));
        assert_eq!(check_format(FORMAT), Ok(()));
    }

    #[test]
    fn moved_or_missing_fields_are_named() {
        let moved = FORMAT.replace("sport;\toffset:24", "sport;\toffset:22");
        assert!(check_format(&moved).unwrap_err().contains("`sport`"));
        let missing = FORMAT.replace("protocol", "proto");
        assert_eq!(check_format(&missing), Err("no field `protocol`".into()));
    }

    /// `syscalls:sys_enter_accept4` and `sys_exit_accept` on Linux 6.18.
    const ACCEPT4_ENTER_FORMAT: &str = "name: sys_enter_accept4
ID: 2234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * upeer_sockaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int * upeer_addrlen;\toffset:32;\tsize:8;\tsigned:0;
\tfield:int flags;\toffset:40;\tsize:8;\tsigned:0;
";
    const EXIT_ACCEPT_FORMAT: &str = "name: sys_exit_accept
ID: 2231
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;
";

    #[test]
    fn syscall_formats_pass() {
        assert_eq!(
            check_fields(ACCEPT4_ENTER_FORMAT, &SysEnterAccept::FIELDS),
            Ok(())
        );
        assert_eq!(check_fields(EXIT_ACCEPT_FORMAT, &SysExit::FIELDS), Ok(()));
        let moved = EXIT_ACCEPT_FORMAT.replace("ret;\toffset:16", "ret;\toffset:12");
        assert_eq!(
            check_fields(&moved, &SysExit::FIELDS),
            Err("field `ret` is at offset 12 size 8, expected offset 16 size 8".into())
        );
    }

    /// The tables come from the structs in portwatch-common; this pins them to the
    /// layout every supported kernel has, so a change to a struct shows here too.
    #[test]
    fn tables_follow_the_structs() {
        let state: Vec<_> = InetSockSetState::FIELDS
            .iter()
            .map(|field| (field.name, field.offset, field.size))
            .collect();
        assert_eq!(
            state,
            [
                ("skaddr", 8, 8),
                ("oldstate", 16, 4),
                ("newstate", 20, 4),
                ("sport", 24, 2),
                ("dport", 26, 2),
                ("family", 28, 2),
                ("protocol", 30, 2),
                ("saddr", 32, 4),
                ("daddr", 36, 4),
                ("saddr_v6", 40, 16),
                ("daddr_v6", 56, 16),
            ]
        );
    }

    #[test]
    fn capabilities() {
        let status = "Name:\tportwatch\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert!(check_capabilities(0x1ff_ffff_ffff).is_ok());
        assert!(check_capabilities(1 << CAP_SYS_ADMIN).is_ok());
        assert!(check_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_ok());
        let err = check_capabilities(1 << CAP_BPF).unwrap_err().to_string();
        assert!(
            err.contains("CAP_PERFMON") && !err.contains("without CAP_BPF"),
            "{err}"
        );
        let err = check_capabilities(0).unwrap_err().to_string();
        assert!(err.contains("CAP_BPF and CAP_PERFMON"), "{err}");
    }
}
