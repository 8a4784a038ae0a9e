//! How portwatch shows what it saw.
pub mod format;
pub mod stream;
