//! How portwatch shows what it saw.
pub mod advice;
pub mod connections;
#[cfg(test)]
mod doc_schema;
pub mod format;
pub mod json_line;
pub mod metrics;
pub mod report;
pub mod snapshot;
pub mod stream;
