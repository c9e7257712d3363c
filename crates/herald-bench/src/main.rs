//! `herald-bench`: see `bench/README.md`.

use std::process::ExitCode;

use clap::Parser;
use herald_bench::{run, Cli, RunError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let markdown = cli.common.markdown;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(report) => {
            if markdown {
                print!("{}", report.to_markdown());
            } else {
                print!("{}", report.to_text());
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e @ (RunError::Usage(_) | RunError::Unsupported(_))) => {
            eprintln!("herald-bench: {e}");
            ExitCode::from(2)
        }
    }
}
