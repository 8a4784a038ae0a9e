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
    let success = |()| ExitCode::SUCCESS;
    match cli.command {
        Command::Stream(args) => runtime()?
            .block_on(commands::stream::run(args))
            .map(success),
        Command::Demo(args) => runtime()?.block_on(commands::demo::run(args)).map(success),
        Command::Record(args) => runtime()?
            .block_on(commands::record::run(args))
            .map(success),
        Command::Report(args) => Ok(match runtime()?.block_on(commands::report::run(args))? {
            commands::report::Outcome::Clean => ExitCode::SUCCESS,
            // Distinct from 1 (could not run), for scripts and health checks.
            commands::report::Outcome::FailOn => ExitCode::from(2),
        }),
        Command::Serve(args) => runtime()?.block_on(commands::serve::run(args)).map(success),
        Command::Top(args) => runtime()?.block_on(commands::top::run(args)).map(success),
        // Synchronous: one dump, one pass over /proc, one write.
        Command::Snapshot(args) => commands::snapshot::run(args).map(success),
        // Workloads are plain threads and blocking sockets: no runtime.
        Command::Actor(args) => {
            let options = portwatch_workload::Options {
                until_stdin_eof: args.until_stdin_eof,
                start_on_go: args.start_on_go,
            };
            portwatch_workload::run(&args.role.into(), options).map(success)
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    // One thread is plenty: the work is one ring buffer and one output.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
