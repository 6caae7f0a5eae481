//! `sluice-bench`: runs one benchmark scenario against a `sluice` server it starts (the
//! `sluice` program beside this one, or `--sluice PATH`) or one given by address. A program
//! of its own, so that the server does not carry the load generator and its plotting.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "sluice-bench", version, about = "Benchmark scenarios for Sluice; results go to docs/benchmarks/")]
struct Cli {
    #[command(flatten)]
    bench: sluice_bench::BenchArgs,
    /// The `sluice` program the scenarios start as their server. Default: the one next to
    /// this program (cargo builds both into the same directory).
    #[arg(long, global = true, env = "SLUICE_BIN")]
    sluice: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let program = match cli.sluice {
        Some(p) => Ok(p),
        None => std::env::current_exe().context("cannot find this program's directory").map(|p| p.with_file_name("sluice")),
    };
    let result = program.and_then(|program| {
        anyhow::ensure!(
            program.exists(),
            "no sluice program at {} (build it with `cargo build -p sluice`, or give --sluice)",
            program.display()
        );
        runtime.block_on(sluice_bench::run(cli.bench, &program))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
