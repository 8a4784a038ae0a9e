//! The fuzz targets' kept inputs, replayed by the ordinary `cargo test` (no root, no
//! fuzzer): every file under `tests/fuzz_regressions/<target>/` goes through the same
//! entry point in `portwatch::fuzz` as the target in `fuzz/fuzz_targets/<target>.rs`.
//!
//! None may panic. A file named `ok-*` must also be accepted (the seeds: real inputs)
//! and one named `err-*` must be refused with an error (corrupt inputs, such as the
//! crashes fuzzing found once). How to add one: docs/development.md, "Fuzzing".
use std::{
    fmt::Debug,
    fs,
    panic::{self, AssertUnwindSafe},
    path::PathBuf,
};

use portwatch::fuzz;

#[test]
fn ring_record() {
    replay_kept_inputs("ring_record", fuzz::ring_record);
}

#[test]
fn recording() {
    replay_kept_inputs("recording", fuzz::recording);
}

#[test]
fn sock_diag() {
    replay_kept_inputs("sock_diag", fuzz::sock_diag);
}

#[test]
fn procfs() {
    replay_kept_inputs("procfs", fuzz::procfs);
}

fn replay_kept_inputs<E: Debug>(target: &str, entry: fn(&[u8]) -> Result<(), E>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(file).unwrap();
        match panic::catch_unwind(AssertUnwindSafe(|| entry(&bytes))) {
            Err(_) => failures.push(format!("{name}: panicked (message above)")),
            Ok(Err(err)) if name.starts_with("ok-") => {
                failures.push(format!("{name}: refused: {err:?}"));
            }
            Ok(Ok(())) if name.starts_with("err-") => {
                failures.push(format!("{name}: accepted, but it is corrupt"));
            }
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs in {} failed:\n{}",
        failures.len(),
        files.len(),
        dir.display(),
        failures.join("\n")
    );
}
