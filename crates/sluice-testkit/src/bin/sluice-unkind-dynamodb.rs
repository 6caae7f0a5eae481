//! Runs the unkind DynamoDB proxy (see `sluice_testkit::dynamo_faults`) in front of DynamoDB
//! Local, so that a whole test suite meets DynamoDB's conflicts and partition limits. Listens
//! on 127.0.0.1 only, prints `listening on ADDR` once it accepts connections, and stops by
//! itself after `--max-secs`.

use clap::Parser;
use sluice_testkit::dynamo_faults::{DynamoFaultProxy, Unkindness};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "A DynamoDB Local front that conflicts, throttles and lags like DynamoDB")]
struct Args {
    /// DynamoDB Local, `http://127.0.0.1:PORT`.
    #[arg(long)]
    upstream: String,
    /// Port to listen on (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write units per second one partition key takes (0: no budget).
    #[arg(long, default_value_t = 1000.0)]
    partition_wcu: f64,
    /// Extra milliseconds a transaction holds its items.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Milliseconds an item written for the first time stays out of index reads.
    #[arg(long, default_value_t = 0)]
    index_lag_ms: u64,
    /// Forward overlapping transactions instead of cancelling them.
    #[arg(long)]
    no_conflicts: bool,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 5400)]
    max_secs: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await.expect("bind 127.0.0.1");
    let unkindness = Unkindness {
        conflicts: !args.no_conflicts,
        hold: Duration::from_millis(args.hold_ms),
        partition_wcu: args.partition_wcu,
        index_lag: Duration::from_millis(args.index_lag_ms),
    };
    let proxy = DynamoFaultProxy::serve(listener, &args.upstream, 0.0, unkindness);
    println!("listening on {}", proxy.addr);
    sluice_testkit::until_stopped(Duration::from_secs(args.max_secs)).await;
    let c = &proxy.counts;
    eprintln!(
        "unkind proxy: {} transactions, {} item conflicts {:?}, {} partition throttles, {} hidden from indexes",
        c.transactions.load(std::sync::atomic::Ordering::Relaxed),
        c.item_conflicts.load(std::sync::atomic::Ordering::Relaxed),
        c.conflicts_by_table(),
        c.partition_throttles.load(std::sync::atomic::Ordering::Relaxed),
        c.hidden_from_index.load(std::sync::atomic::Ordering::Relaxed),
    );
}
