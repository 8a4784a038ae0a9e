//! portwatch: finds the processes behind TCP port exhaustion.
//!
//! The binary is a thin shell over these modules; integration tests use them directly.
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod detect;
pub mod event;
pub mod filter;
pub mod fuzz;
pub mod live;
pub mod output;
pub mod privileges;
pub mod process;
pub mod record;
pub mod sockets;
pub mod tcp_state;
pub mod top;
