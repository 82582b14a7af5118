//! Limits and budgets as a plugin: the key's and team's reserved before routing, the
//! provider's own quota before each attempt, all reconciled with what the request used once
//! it ends. The reservations are held in one guard, so no path can forget them.

use super::quota;
use super::{Attempt, CacheResult, Held, Phases, Plugin, Request, Verdict};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::sync::Arc;
use std::time::SystemTime;
use tollgate_plugins::limits::{Grant, Limiter, Refusal};
use tollgate_plugins::Settlement;

pub struct LimitsPlugin {
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
}

/// One request's reservations. Whatever is still held when it is dropped (a path that never
/// settled) is given back without waiting.
#[derive(Default)]
struct Reservations {
    limiter: Option<Arc<Limiter>>,
    /// The key's and team's, for the whole request.
    request: Option<Grant>,
    /// The provider's, for the attempt under way.
    attempt: Option<Grant>,
}

impl Reservations {
    fn drain(&mut self) -> impl Iterator<Item = Grant> {
        // The attempt's before the request's, as they were taken in the other order.
        self.attempt.take().into_iter().chain(self.request.take())
    }
}

impl Drop for Reservations {
    fn drop(&mut self) {
        let Some(limiter) = self.limiter.clone() else {
            return;
        };
        for grant in self.drain() {
            limiter.settle_detached(grant, Default::default(), SystemTime::now());
        }
    }
}

impl LimitsPlugin {
    pub fn new(limiter: Arc<Limiter>, metrics: Arc<Metrics>) -> LimitsPlugin {
        LimitsPlugin { limiter, metrics }
    }

    fn reservations<'h>(&self, held: &'h mut Held) -> &'h mut Reservations {
        let reservations: &mut Reservations = held.get_or_default();
        reservations
            .limiter
            .get_or_insert_with(|| self.limiter.clone());
        reservations
    }

    fn count_refusal(&self, refusal: &Refusal) {
        match refusal {
            Refusal::Rate { scope, .. } | Refusal::TooLarge { scope, .. } => self
                .metrics
                .ratelimited
                .with_label_values(&[scope.as_str()])
                .inc(),
            Refusal::Budget { scope, period, .. } | Refusal::OverBudget { scope, period, .. } => {
                self.metrics
                    .budget_exceeded
                    .with_label_values(&[scope.as_str(), period.as_str()])
                    .inc()
            }
            Refusal::Unavailable => {}
        }
    }
}

#[async_trait]
impl Plugin for LimitsPlugin {
    fn name(&self) -> &'static str {
        "limits"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::ATTEMPT | Phases::SETTLE_WAITS
    }

    async fn on_request(
        &self,
        request: &mut Request<'_>,
        held: &mut Held,
    ) -> Result<Verdict, GatewayError> {
        let facts = request.facts;
        let subjects = quota::subjects(facts.runtime, facts.key);
        if subjects.is_empty() {
            return Ok(Verdict::Continue);
        }
        let quotas: Vec<_> = subjects.iter().map(|s| s.quota).collect();
        let demand = quota::demand(
            &quotas,
            facts.model,
            facts.op,
            request.body().len(),
            quota::OutputCap::of(facts.head),
        );
        let grant = self
            .limiter
            .admit(&subjects, demand, SystemTime::now())
            .await
            .map_err(|refusal| {
                self.count_refusal(&refusal);
                GatewayError::Refused(refusal)
            })?;
        request.add_response_headers(grant.headers.to_pairs());
        self.reservations(held).request = Some(grant);
        Ok(Verdict::Continue)
    }

    async fn on_attempt(&self, attempt: &Attempt<'_>, held: &mut Held) -> Result<(), GatewayError> {
        let Some(subject) = quota::provider_subject(&attempt.target.provider) else {
            return Ok(());
        };
        let demand = quota::demand(
            &[subject.quota],
            attempt.model,
            attempt.op,
            attempt.body_len,
            quota::OutputCap::of(attempt.head),
        );
        match self
            .limiter
            .admit(&[subject], demand, SystemTime::now())
            .await
        {
            Ok(grant) => {
                self.reservations(held).attempt = Some(grant);
                Ok(())
            }
            Err(refusal) => {
                log::info!(
                    "request {}: {} passed over, its quota is spent",
                    attempt.request_id,
                    attempt.target.provider.name
                );
                self.count_refusal(&refusal);
                Err(GatewayError::Refused(refusal))
            }
        }
    }

    async fn attempt_failed(&self, held: &mut Held) {
        let Some(grant) = held.get::<Reservations>().and_then(|r| r.attempt.take()) else {
            return;
        };
        // Nothing was generated: the tokens go back.
        self.limiter
            .settle(grant, Default::default(), SystemTime::now())
            .await;
    }

    async fn settle(&self, outcome: &Settlement<'_>, held: &mut Held) {
        let Some(reservations) = held.get::<Reservations>() else {
            return;
        };
        let actual = actual(outcome);
        for grant in reservations.drain() {
            self.limiter.settle(grant, actual, SystemTime::now()).await;
        }
    }

    fn settle_now(&self, outcome: &Settlement<'_>, held: &mut Held) {
        let Some(reservations) = held.get::<Reservations>() else {
            return;
        };
        let actual = actual(outcome);
        for grant in reservations.drain() {
            self.limiter
                .settle_detached(grant, actual, SystemTime::now());
        }
    }
}

/// What the request used of its limits and budgets: a cached or shared answer used no
/// tokens and cost nothing (it still counted as a request).
fn actual(outcome: &Settlement<'_>) -> tollgate_plugins::limits::Demand {
    let answered_without_upstream = [CacheResult::Hit, CacheResult::Coalesced]
        .iter()
        .any(|result| outcome.cache == result.as_str());
    if answered_without_upstream {
        return Default::default();
    }
    quota::actual(outcome.metered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_plugins::limits::{Demand, Quota, Scope, Subject};

    const MOST: Demand = Demand {
        tokens: 900,
        usd: 0.0,
    };

    fn quota() -> Quota {
        Quota {
            tpm: Some(1_000),
            ..Quota::default()
        }
    }

    fn subject(quota: &Quota) -> [Subject<'_>; 1] {
        [Subject {
            scope: Scope::Key,
            id: "k",
            quota,
        }]
    }

    fn plugin() -> (LimitsPlugin, Arc<Limiter>) {
        let limiter = Arc::new(Limiter::in_process());
        let plugin = LimitsPlugin::new(limiter.clone(), Arc::new(Metrics::new()));
        (plugin, limiter)
    }

    #[tokio::test]
    async fn reservations_dropped_unsettled_are_given_back() {
        let (plugin, limiter) = plugin();
        let quota = quota();
        let mut held = Held::default();
        let grant = limiter
            .admit(&subject(&quota), MOST, SystemTime::now())
            .await
            .unwrap();
        plugin.reservations(&mut held).request = Some(grant);
        assert!(limiter
            .admit(&subject(&quota), MOST, SystemTime::now())
            .await
            .is_err());

        drop(held);
        limiter
            .admit(&subject(&quota), MOST, SystemTime::now())
            .await
            .expect("its reservation was given back");
    }

    #[tokio::test]
    async fn a_failed_attempt_gives_its_reservation_back_and_keeps_the_request_s() {
        let (plugin, limiter) = plugin();
        let (request_quota, attempt_quota) = (quota(), quota());
        let attempt_subject = [Subject {
            scope: Scope::Provider,
            id: "p",
            quota: &attempt_quota,
        }];
        let mut held = Held::default();
        let reservations = plugin.reservations(&mut held);
        reservations.request = Some(
            limiter
                .admit(&subject(&request_quota), MOST, SystemTime::now())
                .await
                .unwrap(),
        );
        reservations.attempt = Some(
            limiter
                .admit(&attempt_subject, MOST, SystemTime::now())
                .await
                .unwrap(),
        );

        plugin.attempt_failed(&mut held).await;
        limiter
            .admit(&attempt_subject, MOST, SystemTime::now())
            .await
            .expect("the attempt's reservation was given back");
        assert!(limiter
            .admit(&subject(&request_quota), MOST, SystemTime::now())
            .await
            .is_err());
    }

    #[test]
    fn a_cached_answer_uses_no_tokens_or_budget() {
        let metered = Some(tollgate_plugins::Metered {
            usage: tollgate_plugins::Usage {
                input: 10,
                cached_input: 0,
                output: 5,
            },
            estimated: false,
            cost_usd: 0.5,
        });
        let outcome = |cache| Settlement {
            request_id: "r",
            started_at: SystemTime::UNIX_EPOCH,
            method: "POST",
            path: "/v1/chat/completions",
            key_id: None,
            team: None,
            project: None,
            tags: None,
            model: Some("m"),
            provider: None,
            upstream_model: None,
            status: 200,
            attempts: 0,
            duration: Default::default(),
            time_to_first_token: None,
            overhead: Default::default(),
            cache,
            metered,
        };
        assert_eq!(actual(&outcome("hit")), Demand::default());
        assert_eq!(
            actual(&outcome("miss")),
            Demand {
                tokens: 15,
                usd: 0.5
            }
        );
    }
}
