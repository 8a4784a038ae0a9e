//! One ring-buffer record: decoded, applied to a model, printed as `stream` prints it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Errors are fine; panics, hangs and runaway allocations are not.
    let _ = portwatch::fuzz::ring_record(data);
});
