use std::process::ExitCode;

use clap::Parser as _;
use portwatch::{
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
        Command::Stream(args) => {
            // One thread is plenty: the work is one ring buffer and one output.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(commands::stream::run(args))
        }
        // Synchronous: one dump, one pass over /proc, one write.
        Command::Snapshot(args) => commands::snapshot::run(args),
    }
}
