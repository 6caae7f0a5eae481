//! `sluice-bench`: the load generator and the benchmark scenarios (a program of its own, so
//! that the server does not carry them).
//!
//! Every scenario drives a real server with real clients (WebSocket through
//! tokio-tungstenite, gRPC through the generated tonic client) and writes its figures to
//! `docs/benchmarks/` (or `--out`): `<scenario>.md`, `<scenario>.json` and PNG plots.
//!
//! - [`args`]: the command line, one subcommand per scenario.
//! - [`target`]: the server under test, started as a child `sluice serve` on embedded
//!   backends unless `--http/--grpc` name a running one; tokens, gRPC, `/metrics`, memory.
//! - [`chat`]: the chat load shared by `interactive` and `spike`; [`campaign`]: EnqueueBulk
//!   in chunks and waiting for the drain, shared by `spike`, `scaling` and `cost`.
//! - [`stats`], [`report`]: latency histograms, progress, tables, JSON and plots.
//! - [`scenarios`]: spike, interactive, connections, scaling, cost, soak.

pub mod args;
pub mod campaign;
pub mod chat;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod target;

pub use args::BenchArgs;
use args::Scenario;
use std::path::Path;
use target::{Launch, Target};

/// Runs the chosen scenario against the server `program` starts (or the one given by
/// address) and writes its results. `program` is the `sluice` binary.
pub async fn run(args: BenchArgs, program: &Path) -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let launch = || Launch { program, args: vec![], env: vec![] };
    let target = &args.target;
    let report = match &args.scenario {
        Scenario::Spike(a) => on_server(target, launch(), async |s| scenarios::spike::run(s, a, &run).await).await?,
        Scenario::Interactive(a) => on_server(target, launch(), async |s| scenarios::interactive::run(s, a, &run).await).await?,
        Scenario::Connections(a) => {
            scenarios::connections::check_limits(a.count)?;
            on_server(target, launch(), async |s| scenarios::connections::run(s, a, &run).await).await?
        }
        Scenario::Scaling(a) => scenarios::scaling::run(program, target, a, &run).await?,
        Scenario::Cost(a) => scenarios::cost::run(program, target, a, &run).await?,
        Scenario::Soak(a) => on_server(target, launch(), async |s| scenarios::soak::run(s, a, &run).await).await?,
        Scenario::Fairness(a) => on_server(target, launch(), async |s| scenarios::fairness::run(s, a, &run).await).await?,
        Scenario::Growth(a) => on_server(target, launch(), async |s| scenarios::growth::run(s, a, &run).await).await?,
    };
    for path in report.write(&args.out)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs `scenario` against the server `target` names (or one started with `launch`), and
/// stops a started server whatever the scenario's outcome.
async fn on_server(
    target: &args::TargetArgs,
    launch: Launch<'_>,
    scenario: impl AsyncFnOnce(&Target) -> anyhow::Result<report::Report>,
) -> anyhow::Result<report::Report> {
    let server = Target::open(target, launch).await?;
    let report = scenario(&server).await;
    server.stop().await;
    report
}
