//! `models:`: targets, strategies, rules, context policies, retries.

use super::Ctx;
use crate::catalog::Catalog;
use crate::config::file::ModelSection;
use crate::config::units::format_duration;
use crate::config::ConfigError;
use crate::providers::triton::PromptTemplate;
use crate::providers::Provider;
use crate::router::context::ContextPolicy;
use crate::router::gpu::Scoring;
use crate::router::rules::Rule;
use crate::router::weighted::SmoothWeighted;
use crate::router::{Model, RetryOn, RetryPolicy, Strategy, Target};
use std::sync::Arc;
use std::time::Duration;

/// Envoy's default panic threshold: half the healthy endpoints ejected.
const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

const DEFAULT_BACKOFF: Duration = Duration::from_millis(10);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(500);

pub(super) fn build_model(
    cx: &Ctx,
    path: &str,
    s: ModelSection,
    providers: &[Arc<Provider>],
    catalog: &Catalog,
) -> Result<Model, ConfigError> {
    if s.name.is_empty() {
        return Err(cx.err(format!("{path}.name"), "must not be empty"));
    }
    let strategy = match &s.strategy {
        None => Strategy::Fallback,
        Some(name) => Strategy::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
            cx.err(
                format!("{path}.strategy"),
                format!(
                    "unknown strategy {name:?} (supported: {})",
                    known.join(", ")
                ),
            )
        })?,
    };
    if s.targets.is_empty() {
        return Err(cx.err(format!("{path}.targets"), "needs at least one target"));
    }
    let mut targets = Vec::new();
    for (i, t) in s.targets.into_iter().enumerate() {
        let provider = providers
            .iter()
            .find(|p| p.name == t.provider)
            .ok_or_else(|| {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                cx.err(
                    format!("{path}.targets[{i}].provider"),
                    format!(
                        "unknown provider {:?} (known: {})",
                        t.provider,
                        if known.is_empty() {
                            "none defined".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
        if t.model.is_empty() {
            return Err(cx.err(format!("{path}.targets[{i}].model"), "must not be empty"));
        }
        let weight = t.weight.unwrap_or(1);
        if weight == 0 {
            return Err(cx.err(
                format!("{path}.targets[{i}].weight"),
                "must be at least 1 (remove the target to send it nothing)",
            ));
        }
        let facts = catalog.get(&t.model).copied();
        if t.max_tokens_default == Some(0) {
            return Err(cx.err(
                format!("{path}.targets[{i}].max_tokens_default"),
                "must be at least 1",
            ));
        }
        let prompt_template = match t.prompt_template.as_deref() {
            None => PromptTemplate::Plain,
            Some(name) => PromptTemplate::parse(name).ok_or_else(|| {
                cx.err(
                    format!("{path}.targets[{i}].prompt_template"),
                    format!("unknown prompt template {name:?} (known: plain, llama3, chatml)"),
                )
            })?,
        };
        targets.push(Target {
            provider: provider.clone(),
            model: t.model,
            weight,
            facts,
            prompt_template,
            max_tokens_default: t
                .max_tokens_default
                .unwrap_or(crate::providers::anthropic::DEFAULT_MAX_TOKENS),
        });
    }
    let default_attempts = (targets.len() as u32).max(3);
    let retry = match s.retry {
        None => RetryPolicy {
            attempts: default_attempts,
            on: RetryOn::ALL,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        },
        Some(r) => {
            let attempts = r.attempts.unwrap_or(default_attempts);
            if attempts == 0 {
                return Err(cx.err(format!("{path}.retry.attempts"), "must be at least 1"));
            }
            let on = match r.on {
                None => RetryOn::ALL,
                Some(list) => {
                    let mut on = RetryOn {
                        connect: false,
                        timeout: false,
                        status_429: false,
                        status_5xx: false,
                    };
                    for (i, item) in list.iter().enumerate() {
                        match item.as_str() {
                            "connect" => on.connect = true,
                            "timeout" => on.timeout = true,
                            "429" => on.status_429 = true,
                            "5xx" => on.status_5xx = true,
                            other => {
                                return Err(cx.err(
                                    format!("{path}.retry.on[{i}]"),
                                    format!(
                                        "unknown failure {other:?} (known: connect, timeout, \"429\", 5xx)"
                                    ),
                                ))
                            }
                        }
                    }
                    on
                }
            };
            let backoff = r.backoff.unwrap_or(DEFAULT_BACKOFF);
            let max_backoff = r.max_backoff.unwrap_or(DEFAULT_MAX_BACKOFF.max(backoff));
            if max_backoff < backoff {
                return Err(cx.err(
                    format!("{path}.retry.max_backoff"),
                    format!(
                        "must be at least retry.backoff ({})",
                        format_duration(backoff)
                    ),
                ));
            }
            RetryPolicy {
                attempts,
                on,
                backoff,
                max_backoff,
            }
        }
    };
    let context = match s.context.as_deref() {
        None => None,
        Some(name) => Some(ContextPolicy::parse(name).ok_or_else(|| {
            cx.err(
                format!("{path}.context"),
                format!(
                    "unknown context policy {name:?} (known: reject, overflow_to_larger, truncate_middle)"
                ),
            )
        })?),
    };
    for (i, t) in targets.iter().enumerate() {
        let facts = t.facts.as_ref();
        if context.is_some() && facts.and_then(|f| f.context_window).is_none() {
            return Err(cx.err(
                format!("{path}.targets[{i}].model"),
                format!(
                    "the context policy needs the context window of {:?}: add catalog: {{ {:?}: {{ context_window: N }} }}",
                    t.model, t.model
                ),
            ));
        }
        if strategy == Strategy::Cost && facts.and_then(|f| f.prices).is_none() {
            return Err(cx.err(
                format!("{path}.targets[{i}].model"),
                format!(
                    "strategy cost needs the prices of {:?}: add catalog: {{ {:?}: {{ price_per_mtok: {{ input: N, output: N }} }} }}",
                    t.model, t.model
                ),
            ));
        }
    }
    if s.residency.as_ref().is_some_and(|r| r.is_empty()) {
        return Err(cx.err(
            format!("{path}.residency"),
            "needs at least one region (remove it to allow every region)",
        ));
    }
    let mut rules = Vec::new();
    for (r, rule) in s.rules.into_iter().enumerate() {
        let at = format!("{path}.rules[{r}]");
        let mut chosen = vec![false; targets.len()];
        for (u, name) in rule.use_targets.iter().enumerate() {
            let mut found = false;
            for (i, t) in targets.iter().enumerate() {
                if t.provider.name == *name || t.model == *name {
                    chosen[i] = true;
                    found = true;
                }
            }
            if !found {
                return Err(cx.err(
                    format!("{at}.use[{u}]"),
                    format!("{name:?} names no target of this model (use a provider name or an upstream model)"),
                ));
            }
        }
        if !chosen.iter().any(|&c| c) {
            return Err(cx.err(format!("{at}.use"), "needs at least one target"));
        }
        let w = rule.when;
        let last_user_matches = w
            .last_user_matches
            .map(|re| {
                regex::Regex::new(&re)
                    .map_err(|e| cx.err(format!("{at}.when.last_user_matches"), e.to_string()))
            })
            .transpose()?;
        rules.push(Rule {
            prompt_tokens_below: w.prompt_tokens_below,
            prompt_tokens_above: w.prompt_tokens_above,
            headers: w
                .header
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            last_user_matches,
            targets: chosen,
        });
    }
    let scoring = match s.scoring {
        None => Scoring::default(),
        Some(sc) => {
            let d = Scoring::default();
            let scoring = Scoring {
                queue_weight: sc.queue_weight.unwrap_or(d.queue_weight),
                kv_cache_weight: sc.kv_cache_weight.unwrap_or(d.kv_cache_weight),
                prefix_weight: sc.prefix_weight.unwrap_or(d.prefix_weight),
                lora_weight: sc.lora_weight.unwrap_or(d.lora_weight),
                max_waiting: sc.max_waiting.unwrap_or(d.max_waiting),
                max_kv_cache: sc.max_kv_cache.unwrap_or(d.max_kv_cache),
            };
            let weights = [
                scoring.queue_weight,
                scoring.kv_cache_weight,
                scoring.prefix_weight,
                scoring.lora_weight,
            ];
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || !scoring.max_waiting.is_finite()
                || scoring.max_waiting < 0.0
                || !(0.0..=1.0).contains(&scoring.max_kv_cache)
            {
                return Err(cx.err(
                    format!("{path}.scoring"),
                    "weights and max_waiting must be 0 or more, max_kv_cache a fraction from 0 to 1",
                ));
            }
            scoring
        }
    };
    let panic_threshold = s.panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD);
    if !(0.0..=1.0).contains(&panic_threshold) {
        return Err(cx.err(
            format!("{path}.panic_threshold"),
            "must be a fraction from 0 to 1 (0 turns panic routing off)",
        ));
    }
    let cache = match s.cache.as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(_) => return Err(cx.err(format!("{path}.cache"), "expected on or off")),
    };
    Ok(Model {
        name: s.name,
        strategy,
        scoring,
        rules,
        residency: s.residency,
        context,
        weights: SmoothWeighted::new(targets.iter().map(|t| t.weight).collect()),
        targets,
        retry,
        panic_threshold,
        cache,
    })
}
