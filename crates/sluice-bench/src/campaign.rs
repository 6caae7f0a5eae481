//! Bulk campaigns as the scenarios drive them: EnqueueBulk in chunks with calls in flight,
//! and waiting on GetCampaign until every message is persisted.

use crate::target::Grpc;
use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use sluice_proto::v1;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The name of a run's recipient number `k`: `{prefix}{k}`, or with `scattered` a scramble
/// of `k` (still one name per number). Names in order make a campaign's direct rooms, inbox
/// rows and totals land at the ends of the store's B-trees, next to each other; scattered
/// names land at random places, as user ids not handed out in order do.
pub fn recipient(prefix: &str, k: u64, scattered: bool) -> String {
    if scattered { format!("{prefix}x{:016x}", scramble(k)) } else { format!("{prefix}{k}") }
}

/// splitmix64's finalizer: a bijection of u64 (each step is invertible) that scatters
/// neighbouring numbers.
fn scramble(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One campaign: its id, who sends it and the body every recipient gets.
pub struct Campaign<'a> {
    pub id: &'a str,
    /// `None`: the sender's own tenant.
    pub tenant: Option<&'a str>,
    pub sender: &'a str,
    pub body: &'a str,
}

impl Campaign<'_> {
    /// Enqueues one message to each of `recipient(0..n)`, `chunk` recipients per EnqueueBulk
    /// call and `parallel` calls in flight, adding what each call accepted to `accepted`.
    /// Fails unless all `n` were accepted.
    pub async fn enqueue(
        &self,
        g: &Grpc,
        n: u64,
        recipient: impl Fn(u64) -> String,
        chunk: u64,
        parallel: usize,
        accepted: &AtomicU64,
    ) -> anyhow::Result<()> {
        let chunks = (0..n).step_by(chunk as usize).map(|from| from..(from + chunk).min(n));
        let calls: Vec<anyhow::Result<u64>> = stream::iter(chunks)
            .map(|range| {
                let mut g = g.clone();
                let req = v1::EnqueueBulkRequest {
                    campaign_id: self.id.into(),
                    sender: self.sender.into(),
                    recipients: range.map(&recipient).collect(),
                    body: self.body.into(),
                    tenant: self.tenant.map(str::to_string),
                };
                async move {
                    let n = g.enqueue_bulk(req).await.context("EnqueueBulk")?.into_inner().accepted;
                    accepted.fetch_add(n, Ordering::Relaxed);
                    Ok(n)
                }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
        let total: u64 = calls.into_iter().sum::<anyhow::Result<u64>>()?;
        if total != n {
            bail!("EnqueueBulk accepted {total} of {n} messages");
        }
        Ok(())
    }

    /// Polls GetCampaign every `poll` until `n` messages are persisted (publishing the count
    /// in `persisted`). Fails if any was dead-lettered or `limit` passes; `log` adds the
    /// server's log to the error.
    pub async fn wait_persisted(
        &self,
        g: &mut Grpc,
        n: u64,
        poll: Duration,
        limit: Duration,
        persisted: &AtomicU64,
        log: impl Fn() -> String,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let c = g.get_campaign(v1::GetCampaignRequest { campaign_id: self.id.into(), tenant: None }).await?.into_inner();
            persisted.store(c.persisted, Ordering::Relaxed);
            if c.persisted + c.dead_lettered >= n {
                if c.dead_lettered > 0 {
                    bail!("{} of {n} messages were dead-lettered\n{}", c.dead_lettered, log());
                }
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("not drained within {limit:?}: {} of {n} persisted\n{}", c.persisted, log());
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[cfg(test)]
mod tests {
    /// Scattered names are as many as the numbers they stand for, and out of order.
    #[test]
    fn scattered_recipients_stay_distinct() {
        let names: Vec<String> = (0..100_000).map(|k| super::recipient("r", k, true)).collect();
        let distinct: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
        assert!(names.windows(2).filter(|w| w[0] < w[1]).count() < 60_000, "about half in order, not all");
        assert_eq!(super::recipient("r", 7, false), "r7");
    }
}
