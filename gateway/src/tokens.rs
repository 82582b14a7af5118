//! Prompt size: a byte-length bound that settles most routing decisions for free, and a
//! tiktoken count, computed at most once per request and only when the bound cannot decide.
//!
//! Client and upstream text is hostile to the tokenizer: tiktoken-rs panics when its regex
//! overflows (a million spaces and a letter) and takes seconds on megabytes of one letter.
//! So text is counted in segments of at most `SEGMENT_BYTES`, cut where a word begins (which
//! keeps ordinary text's count exact), and any count above `INLINE_BYTES` runs on the counting
//! pool, never on a worker thread, or is extrapolated from a sample where an estimate will do.

use crate::catalog::Tokenizer;
use serde::Deserialize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// The most text a worker thread counts inline (~0.3 ms of English, ~3 ms of the worst).
pub const INLINE_BYTES: usize = 16 * 1024;
/// The longest piece of text handed to the tokenizer in one call.
const SEGMENT_BYTES: usize = 1024;

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
    /// Shared with the counting pool.
    texts: Arc<[String]>,
    /// Tokens that do not depend on the text: message framing, images.
    fixed: u64,
    /// What the request asks to generate at most (0 when it does not say).
    pub requested_output: u64,
    /// The text of the last user message (or the prompt), for rules that match on it.
    last_user: Option<String>,
    /// The exact count per tokenizer, once known.
    exact: [OnceLock<u64>; 2],
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
            texts: texts.into(),
            fixed,
            requested_output,
            last_user,
            exact: Default::default(),
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

    /// The exact count with `tokenizer`; counted once per request, inline unless
    /// `count_ahead` counted it on the pool.
    pub fn exact(&self, tokenizer: Tokenizer) -> u64 {
        *self.exact[tokenizer as usize]
            .get_or_init(|| count_texts(tokenizer, &self.texts) + self.fixed)
    }

    /// Counts a prompt too long to count inline on the counting pool, for each of
    /// `tokenizers`, so that `exact` finds the counts ready.
    pub async fn count_ahead(&self, tokenizers: &[Tokenizer]) {
        if self.bound() <= INLINE_BYTES as u64 {
            return;
        }
        for &tokenizer in tokenizers {
            if self.exact[tokenizer as usize].get().is_some() {
                continue;
            }
            let texts = self.texts.clone();
            let n = off_worker(move || count_texts(tokenizer, &texts))
                .await
                .unwrap_or_else(|| self.texts.iter().map(|t| by_length(t.len())).sum());
            let _ = self.exact[tokenizer as usize].set(n + self.fixed);
        }
    }

    /// Whether prompt + requested output fit `window`; counts only when the bound cannot tell.
    pub fn fits(&self, window: u64, tokenizer: Tokenizer) -> bool {
        self.bound().saturating_add(self.requested_output) <= window
            || self.exact(tokenizer).saturating_add(self.requested_output) <= window
    }
}

fn count_texts(tokenizer: Tokenizer, texts: &[String]) -> u64 {
    texts.iter().map(|t| count(tokenizer, t)).sum()
}

/// The tokens of `text`; exact for ordinary text, never a panic, time linear in its length.
/// Above `INLINE_BYTES`, call it on the counting pool (`off_worker`).
pub fn count(tokenizer: Tokenizer, text: &str) -> u64 {
    let bpe = match tokenizer {
        Tokenizer::O200k => tiktoken_rs::o200k_base_singleton(),
        Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton(),
    };
    segments(text)
        .map(|segment| {
            // Segments keep the regex far from its limits; should another input still trip
            // it, that segment is estimated rather than the request lost.
            catch_unwind(AssertUnwindSafe(|| {
                bpe.encode_ordinary(segment).len() as u64
            }))
            .unwrap_or_else(|_| by_length(segment.len()))
        })
        .sum()
}

/// About four bytes a token, as OpenAI estimates: the fallback when counting is no option.
pub fn by_length(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// `text` in pieces of at most `SEGMENT_BYTES`, each cut before a space that follows a letter
/// or digit (where tiktoken's pre-tokenizer starts a new piece anyway), else at a character
/// boundary.
fn segments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= SEGMENT_BYTES {
            rest.len()
        } else {
            let bytes = rest.as_bytes();
            (1..=SEGMENT_BYTES)
                .rev()
                .find(|&i| bytes[i] == b' ' && bytes[i - 1].is_ascii_alphanumeric())
                .unwrap_or_else(|| {
                    (1..=SEGMENT_BYTES)
                        .rev()
                        .find(|&i| rest.is_char_boundary(i))
                        .unwrap_or(rest.len())
                })
        };
        let (segment, tail) = rest.split_at(cut);
        rest = tail;
        Some(segment)
    })
}

/// Tokens of text too long to count inline where an estimate will do: the first
/// `INLINE_BYTES` counted, the rest extrapolated at the same rate.
pub fn estimate(tokenizer: Tokenizer, text: &str) -> u64 {
    let mut sample = Sample::new(INLINE_BYTES);
    sample.push(text);
    sample.count(tokenizer)
}

/// Text generated so far, kept up to a bound: counted exactly while it fits, extrapolated
/// from what was kept beyond that.
#[derive(Debug, Default)]
pub struct Sample {
    kept: String,
    limit: usize,
    total: usize,
}

impl Sample {
    pub fn new(limit: usize) -> Sample {
        Sample {
            kept: String::new(),
            limit,
            total: 0,
        }
    }

    pub fn push(&mut self, text: &str) {
        self.total += text.len();
        let room = self.limit.saturating_sub(self.kept.len());
        if room > 0 {
            let mut end = room.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            self.kept.push_str(&text[..end]);
        }
    }

    /// Bytes pushed, kept or not.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn count(&self, tokenizer: Tokenizer) -> u64 {
        if self.kept.is_empty() {
            return by_length(self.total);
        }
        let kept = count(tokenizer, &self.kept);
        if self.kept.len() == self.total {
            return kept;
        }
        (kept as f64 * self.total as f64 / self.kept.len() as f64).ceil() as u64
    }
}

/// Runs a count on the counting pool: blocking threads, at most half the cores at once, so
/// that hostile prompts can slow each other but never the workers that serve requests.
/// `None` when the runtime is shutting down and runs nothing more.
pub async fn off_worker<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    static POOL: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Semaphore::new((cores / 2).max(1)))
    });
    let _permit = pool.acquire().await.ok()?;
    tokio::task::spawn_blocking(work).await.ok()
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
        assert!(
            p.exact[Tokenizer::O200k as usize].get().is_none(),
            "the bound settled it"
        );
        let long = "word ".repeat(10_000);
        let p = PromptSize::from_body(&chat(&long, Some(1_000))).unwrap();
        assert!(!p.fits(8_000, Tokenizer::O200k));
        assert!(p.exact[Tokenizer::O200k as usize].get().is_some());
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

    fn whole(tokenizer: Tokenizer, text: &str) -> u64 {
        let bpe = match tokenizer {
            Tokenizer::O200k => tiktoken_rs::o200k_base_singleton(),
            Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        };
        bpe.encode_ordinary(text).len() as u64
    }

    #[test]
    fn segments_keep_ordinary_text_exact() {
        let text = "The quick brown fox, aged 12345, jumped over 3 lazy dogs!\n\
                    It said: \"don't\" -- and then \t\twent home; café, naïve, 東京. "
            .repeat(200);
        assert!(text.len() > 10 * SEGMENT_BYTES);
        for tokenizer in [Tokenizer::O200k, Tokenizer::Cl100k] {
            assert_eq!(count(tokenizer, &text), whole(tokenizer, &text));
        }
        let pieces: Vec<&str> = segments(&text).collect();
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| p.len() <= SEGMENT_BYTES));
    }

    #[test]
    fn hostile_text_is_counted_without_a_panic() {
        let cases = [
            format!("{}a", " ".repeat(1_000_000)),
            "a".repeat(200_000),
            "\u{1F600}".repeat(50_000),
            " \n".repeat(100_000),
            "9".repeat(100_000),
        ];
        for text in &cases {
            let n = count(Tokenizer::O200k, text);
            assert!(
                n > 0 && n <= text.len() as u64,
                "{n} for {} bytes",
                text.len()
            );
            let pieces: Vec<&str> = segments(text).collect();
            assert_eq!(pieces.concat(), *text);
        }
    }

    #[test]
    fn samples_count_what_they_keep_and_extrapolate_the_rest() {
        let word = "hello world ";
        let mut small = Sample::new(1024);
        small.push(&word.repeat(10));
        assert_eq!(
            small.count(Tokenizer::O200k),
            whole(Tokenizer::O200k, &word.repeat(10))
        );
        let mut large = Sample::new(1200);
        for _ in 0..1000 {
            large.push(word);
        }
        assert_eq!(large.len(), word.len() * 1000);
        let counted = large.count(Tokenizer::O200k);
        assert!((1990..=2010).contains(&counted), "{counted}");
        assert_eq!(Sample::new(0).count(Tokenizer::O200k), 0);
        let mut unkept = Sample::new(0);
        unkept.push("12345678");
        assert_eq!(unkept.count(Tokenizer::O200k), 2);
    }
}
