//! PRIVILEGED (to make the recording): a replay describes the machine that recorded, and
//! never reports a clean bill of health it did not earn. One real window is recorded,
//! then replayed as it is and damaged in the ways files get damaged.
mod common;

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use common::{
    expect_line, json_of_success, require_privileges, start_portwatch, wait_for_portwatch, workload,
};
use serde_json::Value;

const MAGIC_LEN: usize = 8;
const TAG_HEADER: u8 = 1;
const TAG_RECORD: u8 = 2;

/// A cgroup v2 directory named like a systemd unit, so its processes have a workload;
/// removed when dropped.
struct Unit {
    dir: PathBuf,
    name: String,
}

impl Unit {
    fn new() -> Unit {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mountinfo
            .lines()
            .find(|line| {
                line.split(" - ")
                    .nth(1)
                    .is_some_and(|fs| fs.starts_with("cgroup2 "))
            })
            .and_then(|line| line.split(' ').nth(4))
            .expect("a cgroup2 mount");
        let name = format!("portwatch-replay-{}.service", std::process::id());
        let dir = Path::new(root).join(&name);
        std::fs::create_dir(&dir).unwrap();
        Unit { dir, name }
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The frames of a recording: (tag, payload).
fn frames(file: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = &file[MAGIC_LEN..];
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[1..5].try_into().unwrap()) as usize;
        frames.push((rest[0], rest[5..5 + len].to_vec()));
        rest = &rest[5 + len..];
    }
    frames
}

fn assemble(magic: &[u8], frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut file = magic.to_vec();
    for (tag, payload) in frames {
        file.push(*tag);
        file.extend(u32::try_from(payload.len()).unwrap().to_le_bytes());
        file.extend(payload);
    }
    file
}

fn replay(path: &Path) -> Output {
    common::replay(path, &["--format", "json", "--close-wait-age", "1s"])
}

fn write_variant(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn assert_refused(output: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{says}: {stderr}");
    assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
    assert!(
        output.stdout.is_empty(),
        "no report: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_replay_names_the_recording_machines_workloads_and_never_lies_about_damage() {
    require_privileges();
    let dir = std::env::temp_dir().join(format!("portwatch-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let recording = dir.join("window.pwrec");
    let unit = Unit::new();

    let (portwatch, stderr) = start_portwatch(
        &[
            "record",
            "--out",
            recording.to_str().unwrap(),
            "--duration",
            "3s",
        ],
        Stdio::null(),
    );
    let mut leaker = workload(&["leak-server", "--listen", "127.0.0.1:0", "--leak", "3"]);
    unit.adopt(leaker.pid);
    let mut feeder = workload(&[
        "leak-client",
        "--connect",
        &format!("127.0.0.1:{}", leaker.port),
        "--count",
        "3",
    ]);
    expect_line(&mut feeder, "done");
    expect_line(&mut leaker, "done");
    let finished = wait_for_portwatch(portwatch, stderr);
    assert_eq!(finished.status.code(), Some(0), "{}", finished.stderr);
    let leaker_pid = leaker.pid;
    let unit_name = unit.name.clone();
    // The leaker and its unit are gone before the replay: whatever the replay says of
    // them, it read in the recording.
    drop(leaker);
    drop(feeder);
    drop(unit);

    let report = json_of_success("the replay", &replay(&recording));
    let leak = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pid"] == leaker_pid)
        .unwrap_or_else(|| panic!("the leak: {report:#}"));
    assert_eq!(leak["kind"], "close_wait_leak");
    assert_eq!(leak["close_wait"], 3);
    assert_eq!(leak["comm"], "leak-server");
    assert_eq!(leak["workload"], unit_name.as_str(), "{report:#}");
    assert_eq!(report["events"]["undecodable"], 0);
    let clean_seen = report["events"]["seen"].as_u64().unwrap();

    let file = std::fs::read(&recording).unwrap();
    let magic = &file[..MAGIC_LEN];
    let original = frames(&file);
    let first_record = original
        .iter()
        .position(|(tag, _)| *tag == TAG_RECORD)
        .unwrap();

    // A flipped byte in one record: that record is counted, and the report says it is
    // incomplete; everything else still decodes.
    let mut flipped = original.clone();
    flipped[first_record].1[0] = 0x7f;
    let flipped_file = write_variant(&dir, "flipped.pwrec", &assemble(magic, &flipped));
    let report = json_of_success("the replay", &replay(&flipped_file));
    assert_eq!(report["events"]["undecodable"], 1, "{report:#}");
    assert_eq!(report["events"]["incomplete"], true);
    assert_eq!(report["events"]["seen"], clean_seen);

    // A flipped byte in the header's JSON.
    let mut bad_header = original.clone();
    bad_header[0].1[0] = b'#';
    let output = replay(&write_variant(
        &dir,
        "header.pwrec",
        &assemble(magic, &bad_header),
    ));
    assert_refused(&output, "bad header");

    // Cut short, as by a full disk or a killed recorder.
    let output = replay(&write_variant(&dir, "cut.pwrec", &file[..file.len() / 2]));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("truncated frame") || stderr.contains("ends without its trailer"),
        "{stderr}"
    );
    assert_refused(&output, "reading recording");

    // Records of a future layout, and of an older one.
    let current = portwatch_common::RECORD_LAYOUT_VERSION;
    for (layout, says) in [
        (current + 1, "newer than this portwatch reads"),
        (current - 1, "older than this"),
    ] {
        let mut header: Value = serde_json::from_slice(&original[0].1).unwrap();
        header["layout"] = layout.into();
        let mut other = original.clone();
        other[0] = (TAG_HEADER, serde_json::to_vec(&header).unwrap());
        let output = replay(&write_variant(
            &dir,
            "layout.pwrec",
            &assemble(magic, &other),
        ));
        assert_refused(&output, says);
    }

    // A recording from before layout versions were written whose records have another
    // size: none decodes, and that is an error, not an empty, clean report.
    let mut header: Value = serde_json::from_slice(&original[0].1).unwrap();
    header.as_object_mut().unwrap().remove("layout");
    let mut old = original.clone();
    old[0] = (TAG_HEADER, serde_json::to_vec(&header).unwrap());
    for (tag, payload) in &mut old {
        if *tag == TAG_RECORD {
            payload.truncate(payload.len() - 8);
        }
    }
    let output = replay(&write_variant(&dir, "old.pwrec", &assemble(magic, &old)));
    assert_refused(&output, "could be decoded");

    std::fs::remove_dir_all(&dir).unwrap();
}
