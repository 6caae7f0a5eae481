//! Runs the moto fault proxy (see `sluice_testkit::moto_faults`) in front of moto, so that a
//! whole test suite meets PutRecords calls that Kinesis refuses part way and SQS calls
//! throttled as SQS does. Listens on 127.0.0.1 only, prints `listening on ADDR`, and stops by
//! itself after `--max-secs`.

use clap::Parser;
use sluice_testkit::moto_faults::{MotoFaultProxy, MotoFaults};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "A moto front that refuses part of Kinesis PutRecords calls and throttles SQS calls, as AWS does")]
struct Args {
    /// moto server, `http://127.0.0.1:PORT`.
    #[arg(long)]
    upstream: String,
    /// Port to listen on (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The share of each PutRecords call's records refused.
    #[arg(long, default_value_t = 0.1)]
    refuse_rate: f64,
    /// The share of SQS data-plane calls (send, receive, delete, change visibility) throttled.
    #[arg(long, default_value_t = 0.1)]
    sqs_throttle_rate: f64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 5400)]
    max_secs: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await.expect("bind 127.0.0.1");
    let faults = MotoFaults { records_refused: args.refuse_rate, sqs_throttled: args.sqs_throttle_rate };
    let proxy = MotoFaultProxy::serve(listener, &args.upstream, faults);
    println!("listening on {}", proxy.addr);
    sluice_testkit::until_stopped(Duration::from_secs(args.max_secs)).await;
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "unkind moto proxy: Kinesis {} records refused, {} written; SQS {} calls throttled, {} passed",
        n(&proxy.counts.failed),
        n(&proxy.counts.written),
        n(&proxy.counts.sqs_throttled),
        n(&proxy.counts.sqs_passed)
    );
}
