//! Operator control of the drain (pause, resume, rate of the whole drain, a tenant or a
//! campaign) and what a campaign's status says about it (state, recent rate, ETA).

use crate::App;
use crate::error::AppError;
use sluice_core::control::{Control, Controls, Scope};
use sluice_core::ids::{self, CampaignId};
use sluice_core::model::Campaign;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Held messages moved back per queue call while a resume releases them.
const RELEASE_CHUNK: usize = 10_000;
/// Campaigns whose last read this gateway remembers, for their rate.
const RATE_SAMPLES: usize = 4096;
/// Reads of a campaign closer together than this keep the rate measured before.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A campaign as an operator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignStatus {
    pub campaign: Campaign,
    /// `queued`, `draining`, `paused` or `done`.
    pub state: &'static str,
    /// Messages persisted or dead-lettered per second, between this gateway's reads.
    pub rate: f64,
    pub eta_secs: Option<f64>,
}

/// The last read of each campaign: when, how many were finished, and the rate then.
#[derive(Default)]
pub struct CampaignRates {
    samples: Mutex<HashMap<String, (Instant, u64, f64)>>,
}

impl CampaignRates {
    fn rate(&self, campaign_id: &str, finished: u64) -> f64 {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(&(at, before, rate)) = samples.get(campaign_id) {
            let elapsed = now.duration_since(at);
            if elapsed < RATE_WINDOW {
                return rate;
            }
            let rate = finished.saturating_sub(before) as f64 / elapsed.as_secs_f64();
            samples.insert(campaign_id.to_string(), (now, finished, rate));
            return rate;
        }
        if samples.len() >= RATE_SAMPLES {
            // Bounded by forgetting the oldest half (a forgotten campaign's rate starts over).
            let mut ats: Vec<Instant> = samples.values().map(|s| s.0).collect();
            ats.sort();
            let cut = ats[ats.len() / 2];
            samples.retain(|_, s| s.0 > cut);
        }
        samples.insert(campaign_id.to_string(), (now, finished, 0.0));
        0.0
    }
}

impl App {
    /// Changes the operator's control of `scope`: `paused` and `rate` when given (a rate of
    /// 0 removes it). Resuming a tenant or campaign sends its held messages back to the queue.
    pub async fn set_control(self: &Arc<Self>, scope: Scope, paused: Option<bool>, rate: Option<f64>) -> Result<Control, AppError> {
        match &scope {
            Scope::Drain => {}
            Scope::Tenant(t) => ids::validate_user(t).map_err(|e| AppError::bad(format!("tenant: {e}")))?,
            Scope::Campaign(c) => {
                CampaignId::new(c.as_str()).map_err(|e| AppError::bad_id("campaign_id", e))?;
            }
        }
        if let Some(r) = rate
            && (!r.is_finite() || r < 0.0)
        {
            return Err(AppError::bad("rate must be a number of messages per second, 0 or more"));
        }
        let before = self.backends.store.controls().await?;
        let old = before.entries.iter().find(|(s, _)| *s == scope).map(|(_, c)| *c).unwrap_or_default();
        let new = Control {
            paused: paused.unwrap_or(old.paused),
            rate: match rate {
                Some(r) if r > 0.0 => Some(r),
                Some(_) => None,
                None => old.rate,
            },
        };
        self.backends.store.set_control(&scope, new).await?;
        tracing::info!(%scope, paused = new.paused, rate = ?new.rate, "drain control set");
        let keys = [
            (old.paused && !new.paused).then(|| scope.key()),
            // The messages that waited for the rate go back at once.
            (old.rate.is_some() && new.rate.is_none()).then(|| scope.rate_key()),
        ];
        for key in keys.into_iter().flatten().filter(|_| scope != Scope::Drain) {
            // Workers see the change within a refresh; a worker that held a message on its
            // stale view releases again when it sees the change (sluice-worker).
            let (app, scope) = (self.clone(), scope.clone());
            tokio::spawn(async move {
                tokio::time::sleep(2 * sluice_core::control::REFRESH).await;
                app.release_key(&scope, &key).await;
            });
        }
        Ok(new)
    }

    /// Moves every message held under `scope`'s pause back to the queue.
    pub async fn release_held(&self, scope: &Scope) -> usize {
        self.release_key(scope, &scope.key()).await
    }

    /// Moves every message held under `key` (one of `scope`'s) back to the queue.
    async fn release_key(&self, scope: &Scope, key: &str) -> usize {
        let mut total = 0;
        loop {
            match self.backends.queue.release_held(key, RELEASE_CHUNK).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(error = %e, %scope, released = total, "releasing held messages failed; resume again to finish");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(%scope, released = total, "held messages back in the queue");
        }
        total
    }

    /// Every control in force, and how many messages pauses hold.
    pub async fn drain_controls(&self) -> Result<(Controls, u64), AppError> {
        let controls = self.backends.store.controls().await?;
        let held = self.backends.queue.stats().await?.held;
        Ok((controls, held))
    }

    /// A campaign with its state, recent rate and ETA.
    pub async fn campaign_status(&self, campaign_id: &CampaignId, tenant: Option<&str>) -> Result<CampaignStatus, AppError> {
        let controls = self.backends.store.controls().await?;
        self.campaign_status_under(campaign_id, tenant, &controls).await
    }

    /// [`App::campaign_status`] with the controls already read (a list of campaigns reads
    /// them once).
    pub async fn campaign_status_under(
        &self,
        campaign_id: &CampaignId,
        tenant: Option<&str>,
        controls: &Controls,
    ) -> Result<CampaignStatus, AppError> {
        let campaign = self.campaign(campaign_id, tenant).await?;
        let finished = campaign.persisted + campaign.dead_lettered;
        let rate = self.campaign_rates.rate(campaign_id, finished);
        let paused = controls.campaign_paused(&campaign.tenant, campaign_id);
        let state = if campaign.done() {
            "done"
        } else if paused {
            "paused"
        } else if finished > 0 {
            "draining"
        } else {
            "queued"
        };
        let left = campaign.enqueued.saturating_sub(finished);
        let eta_secs = match state {
            "done" => Some(0.0),
            "paused" => None,
            _ => (rate > 0.0).then(|| left as f64 / rate),
        };
        Ok(CampaignStatus { campaign, state, rate, eta_secs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_campaign_rate_is_measured_between_reads() {
        let rates = CampaignRates::default();
        assert_eq!(rates.rate("c", 0), 0.0, "no rate on the first read");
        assert_eq!(rates.rate("c", 10), 0.0, "reads closer than the window keep the last rate");
        rates.samples.lock().unwrap().get_mut("c").unwrap().0 -= Duration::from_secs(2);
        let r = rates.rate("c", 100);
        assert!((45.0..=50.0).contains(&r), "{r}");
        for i in 0..RATE_SAMPLES + 10 {
            rates.rate(&format!("x{i}"), 0);
        }
        assert!(rates.samples.lock().unwrap().len() <= RATE_SAMPLES, "bounded");
    }
}
