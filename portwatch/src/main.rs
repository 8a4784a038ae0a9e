use std::process::ExitCode;

use clap::Parser as _;
use portwatch::{
    cli::{Cli, Command},
    commands,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One paragraph: the error and its causes, no backtrace.
            eprintln!("portwatch: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // One thread is plenty: the work is one ring buffer and one output.
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Stream(args) => runtime()?
            .block_on(commands::stream::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Record(args) => runtime()?
            .block_on(commands::record::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Report(args) => Ok(match runtime()?.block_on(commands::report::run(args))? {
            commands::report::Outcome::Clean => ExitCode::SUCCESS,
            // Distinct from 1 (could not run), for scripts and health checks.
            commands::report::Outcome::FailOn => ExitCode::from(2),
        }),
        // Synchronous: one dump, one pass over /proc, one write.
        Command::Snapshot(args) => commands::snapshot::run(args).map(|()| ExitCode::SUCCESS),
    }
}
