//! Context-window policies: which targets a prompt fits, and what to do when it does not.
//!
//! A request fits a target when prompt tokens + requested output (`max_completion_tokens` or
//! `max_tokens`, else 0) ≤ the target's context window.

use crate::catalog::Tokenizer;
use crate::error::GatewayError;
use crate::router::Model;
use crate::tokens::{count, off_worker, PromptSize, INLINE_BYTES};
use bytes::Bytes;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextPolicy {
    /// 400 `context_length_exceeded` unless the request fits every target (so any failover
    /// target can take it).
    Reject,
    /// Only targets whose window fits; 400 when none does.
    OverflowToLarger,
    /// Drop the oldest non-system turns until the request fits every target.
    TruncateMiddle,
}

impl ContextPolicy {
    pub fn parse(text: &str) -> Option<ContextPolicy> {
        match text {
            "reject" => Some(ContextPolicy::Reject),
            "overflow_to_larger" => Some(ContextPolicy::OverflowToLarger),
            "truncate_middle" => Some(ContextPolicy::TruncateMiddle),
            _ => None,
        }
    }
}

/// What the policy decided for one request.
pub struct ContextOutcome {
    /// Per target: may it take the request?
    pub allowed: Vec<bool>,
    /// The shortened body and how many messages were dropped, under `truncate_middle`.
    pub truncated: Option<(Bytes, usize)>,
}

/// (window, tokenizer) per target. Context policies are validated to know every window; under
/// `strategy: cost` a target with no known window is taken to fit anything.
fn windows(model: &Model) -> Vec<(u64, Tokenizer)> {
    model
        .targets
        .iter()
        .map(|t| match t.facts {
            Some(facts) => (facts.context_window.unwrap_or(u64::MAX), facts.tokenizer),
            None => (u64::MAX, Tokenizer::Cl100k),
        })
        .collect()
}

fn exceeded(window: u64, prompt: u64, output: u64) -> GatewayError {
    GatewayError::ContextLengthExceeded {
        window,
        prompt,
        output,
    }
}

pub async fn apply(
    policy: ContextPolicy,
    model: &Model,
    prompt: &PromptSize,
    body: &Bytes,
) -> Result<ContextOutcome, GatewayError> {
    let windows = windows(model);
    let allowed: Vec<bool> = windows.iter().map(|&(w, t)| prompt.fits(w, t)).collect();
    if allowed.iter().all(|&a| a) {
        return Ok(ContextOutcome {
            allowed,
            truncated: None,
        });
    }
    let (smallest, tokenizer) = windows
        .iter()
        .copied()
        .min_by_key(|&(w, _)| w)
        .expect("a model has targets");
    let output = prompt.requested_output;
    match policy {
        ContextPolicy::Reject => Err(exceeded(smallest, prompt.exact(tokenizer), output)),
        ContextPolicy::OverflowToLarger => {
            if allowed.iter().any(|&a| a) {
                Ok(ContextOutcome {
                    allowed,
                    truncated: None,
                })
            } else {
                let (largest, tokenizer) = windows
                    .iter()
                    .copied()
                    .max_by_key(|&(w, _)| w)
                    .expect("targets");
                Err(exceeded(largest, prompt.exact(tokenizer), output))
            }
        }
        ContextPolicy::TruncateMiddle => {
            let (body, dropped) = if body.len() <= INLINE_BYTES {
                truncate_middle(body, smallest, tokenizer, output)?
            } else {
                let body = body.clone();
                off_worker(move || truncate_middle(&body, smallest, tokenizer, output))
                    .await
                    .ok_or(GatewayError::Internal { status: 503 })??
            };
            Ok(ContextOutcome {
                allowed: vec![true; windows.len()],
                truncated: Some((body, dropped)),
            })
        }
    }
}

/// Tokens of one chat message: its text parts plus framing.
fn message_tokens(message: &Value, tokenizer: Tokenizer) -> u64 {
    let content = &message["content"];
    let text: u64 = match content {
        Value::String(s) => count(tokenizer, s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p["text"].as_str() {
                Some(t) => count(tokenizer, t),
                None => 85,
            })
            .sum(),
        _ => 0,
    };
    text + 3
}

/// Drops the oldest non-system messages (never the last one) until the prompt plus `output`
/// fits `window`. A dropped assistant turn takes its tool results with it, so no tool result
/// is left without its call.
pub fn truncate_middle(
    body: &[u8],
    window: u64,
    tokenizer: Tokenizer,
    output: u64,
) -> Result<(Bytes, usize), GatewayError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| GatewayError::BadRequest {
        message: format!("The request body is not valid JSON: {e}."),
        param: None,
    })?;
    let Some(messages) = value.get_mut("messages").and_then(Value::as_array_mut) else {
        return Err(GatewayError::BadRequest {
            message: "The prompt is too long and has no messages to truncate.".into(),
            param: Some("messages"),
        });
    };
    let counts: Vec<u64> = messages
        .iter()
        .map(|m| message_tokens(m, tokenizer))
        .collect();
    let mut total: u64 = counts.iter().sum::<u64>() + 3;
    let last = messages.len().saturating_sub(1);
    let mut drop = vec![false; messages.len()];
    let mut i = 0;
    while total.saturating_add(output) > window && i < last {
        if messages[i]["role"] != "system" && !drop[i] {
            drop[i] = true;
            total -= counts[i];
            let mut j = i + 1;
            while j < last && messages[j]["role"] == "tool" {
                drop[j] = true;
                total -= counts[j];
                j += 1;
            }
        }
        i += 1;
    }
    if total.saturating_add(output) > window {
        return Err(exceeded(window, total, output));
    }
    let dropped = drop.iter().filter(|&&d| d).count();
    let mut index = 0;
    messages.retain(|_| {
        let keep = !drop[index];
        index += 1;
        keep
    });
    let bytes = serde_json::to_vec(&value).expect("a JSON value serializes");
    Ok((Bytes::from(bytes), dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(turns: usize, words: usize) -> Vec<u8> {
        let mut messages = vec![json!({"role": "system", "content": "Be brief."})];
        for i in 0..turns {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            messages.push(
                json!({"role": role, "content": format!("turn {i} {}", "word ".repeat(words))}),
            );
        }
        serde_json::to_vec(&json!({"model": "m", "messages": messages})).unwrap()
    }

    #[test]
    fn truncation_keeps_the_system_prompt_and_the_latest_turn() {
        let b = body(9, 100);
        let (out, dropped) = truncate_middle(&b, 500, Tokenizer::O200k, 50).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let messages = v["messages"].as_array().unwrap();
        assert!(dropped > 0 && messages.len() == 10 - dropped);
        assert_eq!(messages[0]["role"], "system");
        assert!(messages.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .starts_with("turn 8 "));
        let tokens: u64 = messages
            .iter()
            .map(|m| message_tokens(m, Tokenizer::O200k))
            .sum::<u64>()
            + 3;
        assert!(tokens + 50 <= 500, "{tokens}");
        // The oldest turns went first.
        assert!(!String::from_utf8_lossy(&out).contains("turn 0 "));
    }

    #[test]
    fn tool_results_go_with_their_call() {
        let b = serde_json::to_vec(&json!({"model": "m", "messages": [
            {"role": "user", "content": "word ".repeat(300)},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "word ".repeat(300)},
            {"role": "user", "content": "and now?"},
        ]}))
        .unwrap();
        let (out, dropped) = truncate_middle(&b, 100, Tokenizer::O200k, 0).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(dropped, 3);
        assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn too_long_even_alone_is_context_length_exceeded() {
        let b = body(1, 2000);
        let err = truncate_middle(&b, 100, Tokenizer::O200k, 0).unwrap_err();
        assert_eq!(err.status(), 400);
        let v: Value = serde_json::from_slice(&err.body()).unwrap();
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    }
}
