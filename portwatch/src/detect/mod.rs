//! Diagnosis: what a window of events says about each process and destination.
//! Pure code over events, a clock value and the host's settings.
pub mod histogram;
pub mod model;
pub mod ports;
pub mod rate;
pub mod report;
