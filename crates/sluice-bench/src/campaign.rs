//! Bulk campaigns as the scenarios drive them: EnqueueBulk in chunks with calls in flight,
//! and waiting on GetCampaign until every message is persisted.

use crate::target::Grpc;
use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use sluice_proto::v1;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
