//! One sock_diag dump datagram, as the kernel sends it to `snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Errors are fine; panics, hangs and runaway allocations are not.
    let _ = portwatch::fuzz::sock_diag(data);
});
