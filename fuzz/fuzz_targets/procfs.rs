//! What portwatch reads from /proc about socket holders: cgroup file, fd link, comm.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Errors are fine; panics, hangs and runaway allocations are not.
    let _ = portwatch::fuzz::procfs(data);
});
