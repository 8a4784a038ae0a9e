//! How portwatch shows what it saw.
pub mod format;
pub mod report;
pub mod snapshot;
pub mod stream;
