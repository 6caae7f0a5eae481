//! Operator control of the drain: pause, resume and rate of the whole drain, one tenant or
//! one campaign. Controls are durable (kept by the message store) and read by every worker
//! about once a second.
//!
//! Enforcement (see the worker): a paused drain stops receiving; a drain rate caps the
//! fleet's budget. A message of a paused tenant or campaign that reaches a worker is moved
//! to the queue's held area under its scope's key, and a resume moves the scope's held
//! messages back, so a pause of any length costs no receive count and no store write per
//! message, and survives restarts of every process.
//!
//! A tenant's or campaign's rate uses the same held area: a message of a rated scope is
//! persisted when the scope's fleet-wide bucket has a token for it, and held under the
//! scope's [`Scope::rate_key`] otherwise; workers release the scope's held messages back to
//! the queue at the rate (a second fleet-wide bucket), and all of them when the rate goes.
//! So a rated campaign's backlog waits in the held area, not in flight, and costs each
//! message about one hold and one release, however low the rate.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often workers read the controls: a pause takes effect within about this long (plus
/// the batches in hand).
pub const REFRESH: Duration = Duration::from_secs(1);

/// What a control applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Drain,
    Tenant(String),
    Campaign(String),
}

impl Scope {
    /// The key the scope is stored and its messages are held under: `drain`, `tenant:T`,
    /// `campaign:C`.
    pub fn key(&self) -> String {
        match self {
            Scope::Drain => "drain".into(),
            Scope::Tenant(t) => format!("tenant:{t}"),
            Scope::Campaign(c) => format!("campaign:{c}"),
        }
    }

    /// The key a rated scope's messages wait under while over its rate (apart from its
    /// pause's, so that a resume does not release them all at once).
    pub fn rate_key(&self) -> String {
        format!("rate:{}", self.key())
    }

    /// The scope of a key written by [`Scope::key`].
    pub fn parse(key: &str) -> Option<Scope> {
        match key.split_once(':') {
            None if key == "drain" => Some(Scope::Drain),
            Some(("tenant", t)) if !t.is_empty() => Some(Scope::Tenant(t.into())),
            Some(("campaign", c)) if !c.is_empty() => Some(Scope::Campaign(c.into())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Drain => write!(f, "the whole drain"),
            Scope::Tenant(t) => write!(f, "tenant {t}"),
            Scope::Campaign(c) => write!(f, "campaign {c}"),
        }
    }
}

/// The operator's setting for one scope. The default (running, no rate) is no control.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Control {
    pub paused: bool,
    /// Most messages per second of the scope, across every worker.
    pub rate: Option<f64>,
}

impl Control {
    pub fn is_default(&self) -> bool {
        !self.paused && self.rate.is_none()
    }
}

/// Every control in force, as workers and gateways read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Controls {
    pub entries: Vec<(Scope, Control)>,
}

impl Controls {
    fn get(&self, scope: &Scope) -> Control {
        self.entries.iter().find(|(s, _)| s == scope).map(|(_, c)| *c).unwrap_or_default()
    }

    pub fn drain(&self) -> Control {
        self.get(&Scope::Drain)
    }

    /// The narrowest paused scope a message of `tenant` and `campaign` falls under (the
    /// campaign before its tenant), not counting the whole drain.
    pub fn paused_scope(&self, tenant: &str, campaign: Option<&str>) -> Option<Scope> {
        if let Some(c) = campaign.map(|c| Scope::Campaign(c.into()))
            && self.get(&c).paused
        {
            return Some(c);
        }
        let t = Scope::Tenant(tenant.into());
        self.get(&t).paused.then_some(t)
    }

    /// The operator's rates that a message of `tenant` and `campaign` must fit: its
    /// campaign's, then its tenant's (empty in the common case of none).
    pub fn rates(&self, tenant: &str, campaign: Option<&str>) -> Vec<(&Scope, f64)> {
        let mut out: Vec<(&Scope, f64)> = self
            .entries
            .iter()
            .filter(|(s, _)| match s {
                Scope::Campaign(c) => Some(c.as_str()) == campaign,
                Scope::Tenant(t) => t == tenant,
                Scope::Drain => false,
            })
            .filter_map(|(s, c)| c.rate.map(|r| (s, r)))
            .collect();
        out.sort_by_key(|(s, _)| !matches!(s, Scope::Campaign(_)));
        out
    }

    /// The tenants and campaigns with a rate and no pause, with their rate: workers release
    /// their rate-held messages at that rate.
    pub fn rated(&self) -> impl Iterator<Item = (&Scope, f64)> {
        self.entries.iter().filter(|(s, c)| *s != Scope::Drain && !c.paused).filter_map(|(s, c)| c.rate.map(|r| (s, r)))
    }

    /// Whether a campaign of `tenant` is held by any pause, the whole drain's included.
    pub fn campaign_paused(&self, tenant: &str, campaign: &str) -> bool {
        self.drain().paused || self.paused_scope(tenant, Some(campaign)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for s in [Scope::Drain, Scope::Tenant("acme".into()), Scope::Campaign("spring:2".into())] {
            assert_eq!(Scope::parse(&s.key()), Some(s));
        }
        for bad in ["", "tenant:", "campaign", "user:x", "drain:x"] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_campaign_pause_is_narrower_than_the_tenant_pause() {
        let paused = Control { paused: true, rate: None };
        let c = Controls { entries: vec![(Scope::Tenant("acme".into()), paused), (Scope::Campaign("spring".into()), paused)] };
        assert_eq!(c.paused_scope("acme", Some("spring")), Some(Scope::Campaign("spring".into())));
        assert_eq!(c.paused_scope("acme", Some("other")), Some(Scope::Tenant("acme".into())));
        assert_eq!(c.paused_scope("globex", Some("other")), None);
        assert!(c.campaign_paused("globex", "spring"));
        assert!(!c.campaign_paused("globex", "other"));
        let all = Controls { entries: vec![(Scope::Drain, paused)] };
        assert!(all.campaign_paused("globex", "other") && all.paused_scope("globex", None).is_none());
    }

    #[test]
    fn a_message_fits_its_campaign_rate_then_its_tenant_rate() {
        let rate = |r| Control { paused: false, rate: Some(r) };
        let (acme, spring) = (Scope::Tenant("acme".into()), Scope::Campaign("spring".into()));
        let c = Controls {
            entries: vec![
                (Scope::Drain, rate(1000.0)),
                (acme.clone(), rate(50.0)),
                (spring.clone(), rate(5.0)),
                (Scope::Campaign("summer".into()), Control { paused: true, rate: Some(7.0) }),
            ],
        };
        assert_eq!(c.rates("acme", Some("spring")), vec![(&spring, 5.0), (&acme, 50.0)]);
        assert_eq!(c.rates("acme", None), vec![(&acme, 50.0)]);
        assert_eq!(c.rates("globex", Some("spring")), vec![(&spring, 5.0)], "the campaign's rate holds whoever's it is");
        assert!(c.rates("globex", Some("autumn")).is_empty(), "the whole drain's rate is the fleet budget's, not a message's");
        let rated: Vec<_> = c.rated().collect();
        assert_eq!(rated, vec![(&acme, 50.0), (&spring, 5.0)], "a paused scope releases nothing");
        assert_eq!(spring.rate_key(), "rate:campaign:spring");
    }
}
