//! Limits and budgets at admission: what a request may use, reserved before its first
//! attempt (for its key and team) or before each attempt (for the provider's own quota),
//! and reconciled with what it really used once it ends.

use crate::config::runtime::Key;
use crate::config::Runtime;
use crate::metering;
use crate::providers::chat::Usage;
use crate::providers::{Operation, Provider};
use crate::proxy::request::RequestHead;
use crate::router::Model;
use tollgate_plugins::limits::{Ask, Demand, Quota, Scope, Subject};

/// Output tokens reserved for a request that sets no `max_tokens`; settle gives back what
/// it did not use.
pub const DEFAULT_OUTPUT_RESERVATION: u64 = 1024;

/// The key and team a request counts against, with their quotas.
pub fn subjects<'a>(rt: &'a Runtime, key: Option<&'a Key>) -> Vec<Subject<'a>> {
    let Some(key) = key else {
        return Vec::new();
    };
    let mut subjects = Vec::with_capacity(2);
    if let Some(quota) = &key.quota {
        subjects.push(Subject {
            scope: Scope::Key,
            id: &key.id,
            quota,
        });
    }
    if let Some((team, quota)) = key
        .team
        .as_ref()
        .and_then(|team| Some((team, rt.teams.get(team)?)))
    {
        subjects.push(Subject {
            scope: Scope::Team,
            id: team,
            quota,
        });
    }
    subjects
}

/// The provider's own quota, as a subject.
pub fn provider_subject(provider: &Provider) -> Option<Subject<'_>> {
    provider.quota.as_ref().map(|quota| Subject {
        scope: Scope::Provider,
        id: &provider.name,
        quota,
    })
}

/// What to reserve for one request: its prompt, estimated from the body's length (about four
/// bytes a token, as OpenAI's own rate limiter estimates from characters; settle corrects it,
/// and no parse or tokenizer pass is spent on a 1 MiB prompt), plus its output cap for each
/// of its `n` choices, priced at the dearest of the model's targets. A request without an
/// output cap asks for a default output it can do without: it reserves what fits, down to
/// its prompt.
pub fn demand(
    quotas: &[&Quota],
    model: &Model,
    op: Operation,
    body_len: usize,
    output: OutputCap,
) -> Ask {
    let needs_tokens = quotas.iter().any(|q| q.tpm.is_some());
    let needs_usd = quotas
        .iter()
        .any(|q| q.usd_per_day.is_some() || q.usd_per_month.is_some());
    if !needs_tokens && !needs_usd {
        return Ask::default();
    }
    let input = body_len as u64 / 4;
    let per_choice = match op {
        Operation::Embeddings => Some(0),
        _ => output.max_tokens,
    };
    let priced = |output: u64| {
        let usage = Usage {
            input,
            cached_input: 0,
            output,
        };
        let usd = model
            .targets
            .iter()
            .map(|t| metering::cost(t.facts.and_then(|f| f.prices), usage))
            .fold(0.0, f64::max);
        Demand {
            tokens: input.saturating_add(output),
            usd,
        }
    };
    let choices = output.choices.max(1);
    match per_choice {
        Some(cap) => Ask::from(priced(cap.saturating_mul(choices))),
        None => Ask {
            least: priced(0),
            most: priced(DEFAULT_OUTPUT_RESERVATION.saturating_mul(choices)),
        },
    }
}

/// What a request may generate: its output cap (`None` when it sets none) per choice, and
/// how many choices (`n`).
#[derive(Clone, Copy, Debug)]
pub struct OutputCap {
    pub max_tokens: Option<u64>,
    pub choices: u64,
}

impl OutputCap {
    pub fn of(head: &RequestHead) -> OutputCap {
        OutputCap {
            max_tokens: head.max_output,
            choices: head.choices,
        }
    }
}

/// What a request really used, for settling its reservations.
pub fn actual(metered: Option<tollgate_plugins::Metered>) -> Demand {
    metered.map_or(Demand::default(), |m| Demand {
        tokens: m.usage.input.saturating_add(m.usage.output),
        usd: m.cost_usd,
    })
}
