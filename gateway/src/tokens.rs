//! Prompt size: a byte-length bound that settles most routing decisions for free, and an
//! exact tiktoken count, computed at most once per request and only when the bound cannot
//! decide.

use crate::catalog::Tokenizer;
use serde::Deserialize;
use std::cell::OnceCell;

/// Per-message framing tokens in OpenAI chat formats, and the reply priming.
const TOKENS_PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;
/// What an image part counts for when only its presence is known (a low-detail image).
const TOKENS_PER_IMAGE: u64 = 85;

#[derive(Deserialize)]
struct Body {
    messages: Option<Vec<Message>>,
    prompt: Option<Prompt>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

impl Message {
    fn texts(&self) -> impl Iterator<Item = &str> {
        let (one, parts) = match &self.content {
            Some(Content::Text(t)) => (Some(t.as_str()), None),
            Some(Content::Parts(p)) => (None, Some(p.iter().filter_map(|p| p.text.as_deref()))),
            None => (None, None),
        };
        one.into_iter().chain(parts.into_iter().flatten())
    }

    fn images(&self) -> u64 {
        match &self.content {
            Some(Content::Parts(p)) => p.iter().filter(|p| p.kind == "image_url").count() as u64,
            _ => 0,
        }
    }
}

/// The prompt of a chat or completion request, as far as its size matters.
pub struct PromptSize {
    texts: Vec<String>,
    /// Tokens that do not depend on the text: message framing, images.
    fixed: u64,
    /// What the request asks to generate at most (0 when it does not say).
    pub requested_output: u64,
    /// The text of the last user message (or the prompt), for rules that match on it.
    last_user: Option<String>,
    exact: OnceCell<(Tokenizer, u64)>,
}

impl PromptSize {
    /// `None` when the body has neither `messages` nor `prompt` (embeddings, say).
    pub fn from_body(body: &[u8]) -> Option<PromptSize> {
        let parsed: Body = serde_json::from_slice(body).ok()?;
        let requested_output = parsed
            .max_completion_tokens
            .or(parsed.max_tokens)
            .unwrap_or(0);
        let (texts, fixed, last_user) = match (parsed.messages, parsed.prompt) {
            (Some(messages), _) => {
                let last_user = messages
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(|m| m.texts().collect::<Vec<_>>().join("\n"));
                let texts = messages
                    .iter()
                    .flat_map(|m| m.texts().map(str::to_string))
                    .collect();
                let fixed = messages
                    .iter()
                    .map(|m| TOKENS_PER_MESSAGE + m.images() * TOKENS_PER_IMAGE)
                    .sum::<u64>()
                    + REPLY_PRIMING;
                (texts, fixed, last_user)
            }
            (None, Some(Prompt::One(p))) => (vec![p.clone()], 0, Some(p)),
            (None, Some(Prompt::Many(ps))) => (ps.clone(), 0, ps.last().cloned()),
            (None, None) => return None,
        };
        Some(PromptSize {
            texts,
            fixed,
            requested_output,
            last_user,
            exact: OnceCell::new(),
        })
    }

    /// The prompt's texts in order, one after the other.
    pub fn text(&self) -> String {
        self.texts.concat()
    }

    pub fn last_user(&self) -> Option<&str> {
        self.last_user.as_deref()
    }

    /// An upper bound on the prompt's tokens: a BPE token covers at least one byte.
    pub fn bound(&self) -> u64 {
        self.texts.iter().map(|t| t.len() as u64).sum::<u64>() + self.fixed
    }

    /// A rough count for estimates that need no precision (about 4 bytes a token).
    pub fn estimate(&self) -> u64 {
        self.texts.iter().map(|t| t.len() as u64 / 4).sum::<u64>() + self.fixed
    }

    /// The exact count with `tokenizer`; counted once per request.
    pub fn exact(&self, tokenizer: Tokenizer) -> u64 {
        if let Some(&(t, n)) = self.exact.get() {
            if t == tokenizer {
                return n;
            }
        }
        let n = self.texts.iter().map(|t| count(tokenizer, t)).sum::<u64>() + self.fixed;
        let _ = self.exact.set((tokenizer, n));
        n
    }

    /// Whether prompt + requested output fit `window`; counts only when the bound cannot tell.
    pub fn fits(&self, window: u64, tokenizer: Tokenizer) -> bool {
        self.bound().saturating_add(self.requested_output) <= window
            || self.exact(tokenizer).saturating_add(self.requested_output) <= window
    }
}

pub fn count(tokenizer: Tokenizer, text: &str) -> u64 {
    let bpe = match tokenizer {
        Tokenizer::O200k => tiktoken_rs::o200k_base_singleton(),
        Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton(),
    };
    bpe.encode_ordinary(text).len() as u64
}

/// Builds the encoders ahead of the first request that needs one (~0.2 s each).
pub fn warm_up() {
    count(Tokenizer::O200k, "warm");
    count(Tokenizer::Cl100k, "warm");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(content: &str, max_tokens: Option<u64>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "model": "m",
            "max_tokens": max_tokens,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": content}, {"type": "image_url", "image_url": {"url": "x"}}]},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn bound_is_an_upper_bound_and_exact_counts_once() {
        let p = PromptSize::from_body(&chat("hello world, how are you today?", Some(50))).unwrap();
        let exact = p.exact(Tokenizer::O200k);
        assert!(exact <= p.bound(), "{exact} <= {}", p.bound());
        // 2 messages × 3 + priming 3 + one image 85, plus the text.
        assert!(exact > 6 + 3 + 85);
        assert_eq!(p.requested_output, 50);
        assert_eq!(p.exact(Tokenizer::O200k), exact);
    }

    #[test]
    fn fits_decides_small_prompts_without_counting() {
        let p = PromptSize::from_body(&chat("short", None)).unwrap();
        assert!(p.fits(1_000, Tokenizer::O200k));
        assert!(p.exact.get().is_none(), "the bound settled it");
        let long = "word ".repeat(10_000);
        let p = PromptSize::from_body(&chat(&long, Some(1_000))).unwrap();
        assert!(!p.fits(8_000, Tokenizer::O200k));
        assert!(p.exact.get().is_some());
        assert!(p.fits(32_000, Tokenizer::O200k));
    }

    #[test]
    fn absurd_output_caps_do_not_overflow() {
        let body = format!(
            r#"{{"model":"m","max_tokens":{},"messages":[{{"role":"user","content":"hi"}}]}}"#,
            u64::MAX
        );
        let p = PromptSize::from_body(body.as_bytes()).unwrap();
        assert!(!p.fits(u64::MAX - 1, Tokenizer::O200k));
    }

    #[test]
    fn completions_and_non_prompt_bodies() {
        let p =
            PromptSize::from_body(br#"{"model":"m","prompt":["a b","c"],"max_tokens":5}"#).unwrap();
        assert_eq!(p.requested_output, 5);
        assert!(PromptSize::from_body(br#"{"model":"m","input":"x"}"#).is_none());
        let p = PromptSize::from_body(br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":7,"max_tokens":3}"#).unwrap();
        assert_eq!(p.requested_output, 7, "max_completion_tokens wins");
    }
}
