use std::process::ExitCode;

use clap::Parser as _;
use portwatch::{
    actors,
    cli::{Cli, Command},
    commands,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One paragraph: the error and its causes, no backtrace.
            eprintln!("portwatch: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Stream(args) => runtime()?.block_on(commands::stream::run(args)),
        // Actors are plain threads and blocking sockets: no runtime.
        Command::Actor(args) => actors::run(&args),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // One thread is plenty: the work is one ring buffer and one output.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
