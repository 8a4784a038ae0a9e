//! `portwatch top`'s view: what a redraw shows and how it is drawn, apart from the
//! terminal and the loop that runs it (`commands::top`).
//!
//! Data flows one way: [`frame::Frame`] (numbers copied from the live model under its
//! lock) → [`history::History`] (rates between frames, sparklines) → [`screen::Screen`]
//! (rows filtered and sorted by the user's [`state::State`]) → [`draw`]. Everything but
//! `draw` is plain data and functions, unit-tested without a terminal; `draw` is tested
//! against ratatui's `TestBackend`.
pub mod columns;
pub mod draw;
pub mod filter;
pub mod format;
pub mod frame;
pub mod history;
pub mod keys;
pub mod rows;
pub mod screen;
pub mod sort;
pub mod state;
