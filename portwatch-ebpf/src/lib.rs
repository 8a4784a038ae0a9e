//! Empty on purpose: this library target exists so `portwatch` can name this crate as a
//! build-dependency (cargo then rebuilds portwatch when it changes). The programs are
//! the `portwatch` binary target, built for bpfel-unknown-none by portwatch's build.rs.
#![no_std]
