//! `herald-bench`: see `bench/README.md`.

use std::process::ExitCode;

use clap::Parser;
use herald_bench::{run, Cli, RunError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let markdown = cli.common.markdown;
    let mut builder = match cli.common.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
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
