//! `portwatch-workload [--until-stdin-eof] <ROLE> [options]`: runs one workload role.
use std::process::ExitCode;

use clap::Parser;
use portwatch_workload::WorkloadArgs;

#[derive(Parser)]
#[command(
    name = "portwatch-workload",
    version,
    about = "Runs one TCP workload with known behaviour, for portwatch's tests and benchmark"
)]
struct Cli {
    #[command(flatten)]
    workload: WorkloadArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match portwatch_workload::run(&cli.workload.role, cli.workload.options()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One paragraph: the role, the error and its causes.
            eprintln!("portwatch-workload: {err:#}");
            ExitCode::FAILURE
        }
    }
}
