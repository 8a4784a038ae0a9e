//! A `portwatch record` file, read and replayed as `report --replay` does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Errors are fine; panics, hangs and runaway allocations are not.
    let _ = portwatch::fuzz::recording(data);
});
