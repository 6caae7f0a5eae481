//! The `sluice` binary: parses the command line and hands over to the library.

use clap::Parser;

/// glibc's malloc was about a tenth of the store writer's and the runtime's time in the
/// spike profile (docs/benchmarks/README.md), with `malloc_consolidate` stalls.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process: mimalloc asks for them on its arenas, and
    // the thread that first touches one zeroes all 2 MiB of it. A burst of fresh memory on the
    // gateway's runtime (four EnqueueBulk calls of 10,000 recipients decoded at once) held
    // chat's threads for tens of milliseconds that way (docs/benchmarks, "Huge pages").
    #[cfg(target_os = "linux")]
    let thp = rustix::thread::disable_transparent_huge_pages(true);
    let cli = sluice::config::Cli::parse();
    // Every WebSocket is a file descriptor: use the whole allowance the system gives.
    let nofile = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let telemetry = {
        let _in = runtime.enter();
        sluice::telemetry::init(cli.log_format, cli.command.name())
    };
    if let Err(e) = nofile {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = thp {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off");
    }
    let result = runtime.block_on(sluice::run(cli));
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
