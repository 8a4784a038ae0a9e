//! Entry points that feed untrusted bytes through portwatch's parsers the way a live run
//! or a replay does, one per fuzz target (`fuzz/fuzz_targets/`). The regression test
//! (`tests/fuzz_regressions.rs`) feeds every input kept under `tests/fuzz_regressions/`
//! through the same functions, so a crash found once stays fixed.
//!
//! Each function returns `Ok` or a clean error for any input. A panic is a bug, and so
//! is a result that depends on the machine: nothing here reads /proc or the clock in a
//! way that changes what is parsed.
use std::io::{self, Write as _};

use anyhow::Context as _;
use clap::Parser as _;
use procfs::{
    FromBufRead as _, FromRead as _, ProcessCGroups,
    process::{FDTarget, Stat},
};

use crate::{
    cli::{Cli, Command},
    clock::WallClock,
    commands,
    detect::model::Model,
    event::{DecodeError, Event, decode},
    output::{
        self,
        json_line::{JsonTransition, ShownOwner},
        stream::{Format, StreamPrinter},
    },
    process::Process,
    record,
    sockets::{diag, owners::SocketOwner, workload::workload_from_cgroups},
};

/// One ring-buffer record, as every tracing command gets it: decoded, applied to a
/// report model, and printed as `stream` prints it in both formats. The hand-written
/// JSON line must equal serde's (`output::json_line` promises byte-for-byte equality).
pub fn ring_record(bytes: &[u8]) -> Result<(), DecodeError> {
    let event = decode(bytes)?;
    let mut model = Model::new(0);
    model.apply(&event);
    let Event::Transition(transition) = event else {
        return Ok(());
    };
    let owner = transition.owner.map(|owner| ShownOwner {
        owner: SocketOwner {
            process: Process::after_exits(owner.pid, 0),
            comm: owner.comm,
            cgroup_id: owner.cgroup_id,
            source: owner.source,
        },
        // Both spellings (alive, and exited with a dagger) are worth printing: the
        // record's own flags pick one.
        alive: transition.by_syscall,
    });
    let mut text = StreamPrinter::new(Vec::new(), Format::Text, WallClock::now());
    let workload = Some("pod:web-7d9f/3f2a9c1b7d4e");
    text.print(&transition, owner.as_ref(), workload)
        .expect("printing to a Vec cannot fail");
    let mut fast = StreamPrinter::new(Vec::new(), Format::Json, WallClock::now());
    fast.print(&transition, owner.as_ref(), workload)
        .expect("printing to a Vec cannot fail");
    let fast = fast.into_inner().expect("printing to a Vec cannot fail");
    let mut reference =
        serde_json::to_vec(&JsonTransition::new(&transition, owner.as_ref(), workload))
            .expect("a transition always serializes");
    reference.push(b'\n');
    assert_eq!(
        String::from_utf8_lossy(&fast),
        String::from_utf8_lossy(&reference),
        "the JSON line differs from serde's"
    );
    Ok(())
}

/// A recording file, as `portwatch report --replay FILE` reads and replays it (the same
/// function), with the default thresholds and limits, then written as text and JSON.
pub fn recording(bytes: &[u8]) -> anyhow::Result<()> {
    let recording = record::read_from(bytes)?;
    let Command::Report(args) = Cli::try_parse_from(["portwatch", "report", "--replay", "-"])
        .context("the default report arguments")?
        .command
    else {
        unreachable!("parsed a report command line");
    };
    let report = commands::report::replay_recording(&recording, &args)?;
    output::report::text(&mut io::sink(), &report)?;
    output::report::json(&mut io::sink(), &report)?;
    Ok(())
}

/// One datagram of a sock_diag dump (NETLINK_INET_DIAG), as `snapshot` and the startup
/// seeding receive it from the kernel, for request number 1.
pub fn sock_diag(bytes: &[u8]) -> Result<(), diag::DiagError> {
    diag::parse_batch(bytes, 1, &mut Vec::new()).map(drop)
}

/// What portwatch reads from /proc about a socket's holders, chosen by the first byte:
/// - 0: `/proc/<pid>/cgroup`, parsed by procfs, then named as a workload (as
///   `sockets::holders` does) and displayed;
/// - 1: a `/proc/<pid>/fd/N` link target, such as `socket:[123]`;
/// - 2: a command name (any process can pick its own), inside an otherwise well-formed
///   `/proc/<pid>/stat` line as the kernel writes it.
///
/// Other first bytes are not inputs (Ok).
pub fn procfs(bytes: &[u8]) -> procfs::ProcResult<()> {
    let Some((&kind, rest)) = bytes.split_first() else {
        return Ok(());
    };
    match kind {
        0 => {
            let cgroups = ProcessCGroups::from_buf_read(rest)?;
            let workload =
                workload_from_cgroups(cgroups.0.iter().map(|cgroup| cgroup.pathname.as_str()));
            if let Some(workload) = workload {
                let _ = write!(io::sink(), "{workload} {workload:<20}");
                serde_json::to_writer(io::sink(), &workload).expect("a workload serializes");
            }
        }
        1 => {
            // procfs reads the link as lossy UTF-8 (`Process::fd`).
            let target: FDTarget = String::from_utf8_lossy(rest).parse()?;
            let _ = target;
        }
        2 => {
            // The kernel writes comm byte for byte between the parentheses: up to 15
            // bytes, anything but NUL (parentheses, spaces and newlines included).
            let mut line = b"4242 (".to_vec();
            line.extend(rest.iter().copied().filter(|&b| b != 0).take(15));
            line.extend_from_slice(
                b") S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000000 200 \
                  18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 \
                  0 0 0\n",
            );
            let stat = Stat::from_read(&line[..])?;
            let _ = (stat.comm, stat.starttime);
        }
        _ => {}
    }
    Ok(())
}
