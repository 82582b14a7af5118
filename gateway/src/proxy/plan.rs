//! Plan: what a request may use before its first attempt. The targets the plugins left, the
//! context policy (which may shorten the body), the model's rules, residency, and the
//! strategy's ranking narrow the model's targets into a `Planner`.

use crate::catalog::Tokenizer;
use crate::config::runtime::Key;
use crate::config::Runtime;
use crate::error::GatewayError;
use crate::providers::Operation;
use crate::router::context::{self, ContextPolicy};
use crate::router::geo::resident;
use crate::router::Model;
use crate::router::{estimated_costs, Planner, Strategy};
use crate::tokens::PromptSize;
use crate::upstream::load::prefix_blocks;
use bytes::Bytes;
use pingora::proxy::Session;
use std::borrow::Cow;

pub struct Plan<'m> {
    pub planner: Planner<'m>,
    /// The body to send: the client's, or shortened by `truncate_middle`.
    pub body: Bytes,
    /// Messages dropped by `truncate_middle`.
    pub truncated: Option<usize>,
    /// What chose the targets, for `x-tollgate-route`.
    pub route: Cow<'static, str>,
}

pub async fn plan<'m>(
    session: &Session,
    rt: &Runtime,
    model: &'m Model,
    key: Option<&Key>,
    op: Operation,
    mut body: Bytes,
    eligible: Vec<bool>,
) -> Result<Plan<'m>, GatewayError> {
    // Prompt size matters only to some policies; most requests never parse it.
    let needs_prompt = model.context.is_some()
        || matches!(model.strategy, Strategy::Cost | Strategy::GpuAware)
        || model.rules.iter().any(|r| r.needs_prompt());
    let prompt = needs_prompt.then(|| PromptSize::from_body(&body)).flatten();
    if let Some(prompt) = &prompt {
        // A long prompt is counted on the counting pool, before the policies ask for it.
        if needs_count(model, prompt) {
            prompt.count_ahead(&tokenizers(model)).await;
        }
    }
    // Those the plugins left, less those whose provider cannot serve this operation
    // (embeddings from Anthropic).
    let mut allowed = eligible;
    for (allowed, target) in allowed.iter_mut().zip(&model.targets) {
        *allowed &= target.provider.kind.supports(op);
    }
    let mut truncated = None;
    // `cost` means the cheapest target that fits, even without a context policy.
    let policy = match (model.context, model.strategy) {
        (None, Strategy::Cost) => Some(ContextPolicy::OverflowToLarger),
        (policy, _) => policy,
    };
    if let (Some(policy), Some(prompt)) = (policy, &prompt) {
        let outcome = context::apply(policy, model, prompt, &body).await?;
        for (allowed, fits) in allowed.iter_mut().zip(outcome.allowed) {
            *allowed &= fits;
        }
        if let Some((shorter, dropped)) = outcome.truncated {
            body = shorter;
            truncated = Some(dropped);
        }
    }

    let mut route: Cow<'static, str> = model.strategy.name().into();
    let tokenizer = model.targets[0]
        .facts
        .map_or(Tokenizer::Cl100k, |f| f.tokenizer);
    let headers = &session.req_header().headers;
    if let Some((i, rule)) = model
        .rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.matches(headers, prompt.as_ref(), tokenizer))
    {
        for (allowed, chosen) in allowed.iter_mut().zip(&rule.targets) {
            *allowed &= chosen;
        }
        route = format!("{} (rule {i})", model.strategy).into();
    }

    // Residency is absolute: a target outside it is never tried, failover included.
    for residency in [
        model.residency.as_ref(),
        key.and_then(|k| k.residency.as_ref()),
    ]
    .into_iter()
    .flatten()
    {
        for (allowed, target) in allowed.iter_mut().zip(&model.targets) {
            *allowed &= resident(target.provider.region.as_deref(), residency);
        }
    }

    let preference = match model.strategy {
        Strategy::Cost => estimated_costs(model, prompt.as_ref()),
        Strategy::Geo => {
            let header = session
                .get_header("x-tollgate-region")
                .and_then(|v| v.to_str().ok());
            let client = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let region = rt.geo.client_region(header, client);
            model
                .targets
                .iter()
                .map(|t| rt.geo.distance(region, t.provider.region.as_deref()))
                .collect()
        }
        _ => Vec::new(),
    };
    // Prefix affinity: which replica may already hold the prompt's leading blocks.
    let prefix = match (model.strategy, &prompt) {
        (Strategy::GpuAware, Some(prompt)) => prefix_blocks(&prompt.text()),
        _ => Vec::new(),
    };
    Ok(Plan {
        planner: Planner::admitted(model, allowed, preference).with_prefix(prefix),
        body,
        truncated,
        route,
    })
}

/// Whether a policy or rule of `model` may need the exact count of `prompt`: its byte bound
/// does not settle a context window or a token threshold.
fn needs_count(model: &Model, prompt: &PromptSize) -> bool {
    let bound = prompt.bound();
    let with_output = bound.saturating_add(prompt.requested_output);
    let windows = (model.context.is_some() || model.strategy == Strategy::Cost)
        && model.targets.iter().any(|t| {
            t.facts
                .and_then(|f| f.context_window)
                .is_some_and(|window| with_output > window)
        });
    let thresholds = model.rules.iter().any(|rule| {
        rule.prompt_tokens_below.is_some_and(|below| bound >= below)
            || rule.prompt_tokens_above.is_some_and(|above| bound > above)
    });
    windows || thresholds
}

/// The tokenizers of a model's targets, each once.
fn tokenizers(model: &Model) -> Vec<Tokenizer> {
    let mut all: Vec<Tokenizer> = Vec::with_capacity(2);
    for target in &model.targets {
        let tokenizer = target.facts.map_or(Tokenizer::Cl100k, |f| f.tokenizer);
        if !all.contains(&tokenizer) {
            all.push(tokenizer);
        }
    }
    all
}
