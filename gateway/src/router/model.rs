//! A configured model and its targets: what the router plans a request's attempts over.

use super::context::ContextPolicy;
use super::gpu::Scoring;
use super::rules::Rule;
use super::weighted::SmoothWeighted;
use super::Strategy;
use crate::catalog::{ModelFacts, Tokenizer};
use crate::providers::triton::PromptTemplate;
use crate::providers::{Provider, UpstreamModel};
use std::sync::Arc;
use std::time::Duration;

/// A model clients name: its targets, and how requests are routed over them.
pub struct Model {
    pub name: String,
    pub strategy: Strategy,
    /// How `gpu-aware` weighs the servers' load.
    pub scoring: Scoring,
    /// Regions the model's traffic may never leave.
    pub residency: Option<Vec<String>>,
    /// The first rule that matches limits a request to its targets.
    pub rules: Vec<Rule>,
    /// What happens to prompts that do not fit a target's context window.
    pub context: Option<ContextPolicy>,
    pub targets: Vec<Target>,
    /// Rotation state for `strategy: weighted`.
    pub weights: SmoothWeighted,
    pub retry: RetryPolicy,
    /// Below this fraction of the model's healthy endpoints not ejected, ejected endpoints
    /// take traffic again rather than leave the survivors a flood or the client a 503.
    pub panic_threshold: f64,
    /// Whether the answer cache may answer and store this model's requests.
    pub cache: bool,
}

pub struct Target {
    pub provider: Arc<Provider>,
    /// The model name sent upstream.
    pub model: String,
    pub weight: u32,
    /// What the catalog knows about `model`.
    pub facts: Option<ModelFacts>,
    /// `max_tokens` sent to providers that require one when the client sets none.
    pub max_tokens_default: u64,
    /// How chat turns become a Triton prompt.
    pub prompt_template: PromptTemplate,
}

impl Target {
    /// What a translation for this target needs to know.
    pub fn upstream(&self) -> UpstreamModel<'_> {
        UpstreamModel {
            name: &self.model,
            max_tokens_default: self.max_tokens_default,
            prompt_template: self.prompt_template,
            tokenizer: self.facts.map_or(Tokenizer::Cl100k, |f| f.tokenizer),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// All upstream attempts of a request, the first included.
    pub attempts: u32,
    pub on: RetryOn,
    /// Exponential backoff between attempts: a random wait up to base × 2^(n-1), capped.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before retry `n` (1 for the second attempt), with full jitter.
    pub fn backoff_before(&self, n: u32) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// Which failures move on to the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryOn {
    pub connect: bool,
    pub timeout: bool,
    pub status_429: bool,
    pub status_5xx: bool,
}

impl RetryOn {
    /// Every failure moves on: the default.
    pub const ALL: RetryOn = RetryOn {
        connect: true,
        timeout: true,
        status_429: true,
        status_5xx: true,
    };

    pub fn status(&self, status: u16) -> bool {
        (status == 429 && self.status_429) || (status >= 500 && self.status_5xx)
    }

    /// The failures that move on, by their config names.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.connect, "connect"),
            (self.timeout, "timeout"),
            (self.status_429, "429"),
            (self.status_5xx, "5xx"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}
