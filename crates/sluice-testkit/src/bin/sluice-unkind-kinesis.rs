//! Runs the Kinesis fault proxy (see `sluice_testkit::kinesis_faults`) in front of moto, so
//! that a whole test suite meets PutRecords calls that Kinesis refuses part way. Listens on
//! 127.0.0.1 only, prints `listening on ADDR`, and stops by itself after `--max-secs`.

use clap::Parser;
use sluice_testkit::kinesis_faults::KinesisFaultProxy;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "A moto front that refuses part of Kinesis PutRecords calls, as Kinesis does")]
struct Args {
    /// moto server, `http://127.0.0.1:PORT`.
    #[arg(long)]
    upstream: String,
    /// Port to listen on (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The share of each call's records refused.
    #[arg(long, default_value_t = 0.1)]
    refuse_rate: f64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 5400)]
    max_secs: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await.expect("bind 127.0.0.1");
    let proxy = KinesisFaultProxy::serve(listener, &args.upstream, args.refuse_rate);
    println!("listening on {}", proxy.addr);
    sluice_testkit::until_stopped(Duration::from_secs(args.max_secs)).await;
    eprintln!(
        "unkind kinesis proxy: {} records refused, {} written",
        proxy.counts.failed.load(Ordering::Relaxed),
        proxy.counts.written.load(Ordering::Relaxed)
    );
}
