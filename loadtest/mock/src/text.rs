//! Generated content: completion words, token estimates, embeddings (all
//! deterministic), the canned tool call, and random object ids.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Each word is one token. The leading space lets stream deltas concatenate
/// into the non-stream text; the very first token drops it.
const WORDS: [&str; 12] = [
    " Hello",
    " from",
    " the",
    " Tollgate",
    " mock",
    " provider.",
    " Every",
    " answer",
    " repeats",
    " these",
    " same",
    " words.",
];

/// The text of token `i` of an answer.
pub(crate) fn token_piece(i: u32) -> &'static str {
    let word = WORDS[i as usize % WORDS.len()];
    if i == 0 {
        &word[1..]
    } else {
        word
    }
}

/// The whole answer of `tokens` tokens.
pub(crate) fn completion_text(tokens: u32) -> String {
    (0..tokens).map(token_piece).collect()
}

/// A random object id such as `chatcmpl-3kQ...`.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 24);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(24));
    id
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
}

impl Finish {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Tokens to generate: the configured count, cut to the request's limit.
pub(crate) fn cap_tokens(configured: u32, limit: Option<u32>) -> (u32, Finish) {
    match limit {
        Some(max) if max < configured => (max, Finish::Length),
        _ => (configured, Finish::Stop),
    }
}

/// What a generation request gets: text, or a call of the named tool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Text { tokens: u32, finish: Finish },
    ToolCall { name: String },
}

impl Answer {
    /// The tool call when `tool` names the tool a request triggered,
    /// otherwise text of the configured length cut to `limit`.
    pub(crate) fn new(configured: u32, limit: Option<u32>, tool: Option<String>) -> Self {
        match tool {
            Some(name) => Answer::ToolCall { name },
            None => {
                let (tokens, finish) = cap_tokens(configured, limit);
                Answer::Text { tokens, finish }
            }
        }
    }
}

/// The arguments of the canned tool call: `{"location": "Paris"}`.
#[derive(Serialize)]
pub(crate) struct ToolArgs {
    location: &'static str,
}

pub(crate) const TOOL_ARGS: ToolArgs = ToolArgs { location: "Paris" };

/// [`TOOL_ARGS`] as JSON text in the pieces a stream sends it, cut mid-key
/// and mid-value, and led by an empty piece as Anthropic's streams are.
pub(crate) const TOOL_ARGS_PIECES: [&str; 5] = ["", "{\"locati", "on\": \"P", "ar", "is\"}"];

/// Output tokens the tool call's arguments count as.
pub(crate) const TOOL_ARGS_TOKENS: u32 = TOOL_ARGS_PIECES.len() as u32;

/// Bytes of text the mock counts as one token.
pub(crate) const BYTES_PER_TOKEN: usize = 4;

/// Prompt tokens: about four bytes of text per token, plus given token ids, at least 1.
pub(crate) fn estimate_tokens(text_bytes: usize, token_ids: usize) -> u32 {
    let total = text_bytes
        .div_ceil(BYTES_PER_TOKEN)
        .saturating_add(token_ids)
        .max(1);
    u32::try_from(total).unwrap_or(u32::MAX)
}

pub(crate) const EMBEDDING_DIMS: usize = 8;

/// A unit-length vector derived from the content's hash, so equal inputs embed equally.
pub(crate) fn embedding(content: &[u8]) -> [f32; EMBEDDING_DIMS] {
    let digest = Sha256::digest(content);
    let mut v = [0f32; EMBEDDING_DIMS];
    for (x, word) in v.iter_mut().zip(digest.chunks_exact(4)) {
        let n = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        *x = (f64::from(n) / f64::from(u32::MAX) * 2.0 - 1.0) as f32;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Standard padded base64 of the vector's little-endian floats, the form
/// OpenAI's `encoding_format: "base64"` (the official SDKs' default) returns.
pub(crate) fn embedding_base64(v: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for k in 0..4 {
            if k <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * k)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_to_text() {
        assert_eq!(token_piece(0), "Hello");
        assert_eq!(token_piece(1), " from");
        assert_eq!(completion_text(3), "Hello from the");
        assert_eq!(completion_text(0), "");
        // Wrapping around keeps the leading space.
        assert_eq!(token_piece(12), " Hello");
        assert_eq!(completion_text(16).split(' ').count(), 16);
    }

    #[test]
    fn ids_are_random_and_prefixed() {
        let a = new_id("chatcmpl-");
        assert!(a.starts_with("chatcmpl-") && a.len() == 33);
        assert_ne!(a, new_id("chatcmpl-"));
    }

    #[test]
    fn capping() {
        assert_eq!(cap_tokens(16, None), (16, Finish::Stop));
        assert_eq!(cap_tokens(16, Some(16)), (16, Finish::Stop));
        assert_eq!(cap_tokens(16, Some(100)), (16, Finish::Stop));
        assert_eq!(cap_tokens(16, Some(5)), (5, Finish::Length));
        assert_eq!(cap_tokens(16, Some(0)), (0, Finish::Length));
    }

    #[test]
    fn answers() {
        assert_eq!(
            Answer::new(16, Some(2), None),
            Answer::Text {
                tokens: 2,
                finish: Finish::Length
            }
        );
        assert_eq!(
            Answer::new(16, Some(2), Some("f".into())),
            Answer::ToolCall { name: "f".into() }
        );
    }

    #[test]
    fn tool_args_pieces_make_the_args() {
        let joined: serde_json::Value = serde_json::from_str(&TOOL_ARGS_PIECES.concat()).unwrap();
        assert_eq!(joined, serde_json::to_value(TOOL_ARGS).unwrap());
        assert_eq!(joined, serde_json::json!({"location": "Paris"}));
        assert_eq!(TOOL_ARGS_PIECES.concat(), r#"{"location": "Paris"}"#);
    }

    #[test]
    fn prompt_estimate() {
        assert_eq!(estimate_tokens(0, 0), 1);
        assert_eq!(estimate_tokens(1, 0), 1);
        assert_eq!(estimate_tokens(4, 0), 1);
        assert_eq!(estimate_tokens(5, 0), 2);
        assert_eq!(estimate_tokens(8, 3), 5);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding(b"hello");
        assert_eq!(a, embedding(b"hello"));
        assert_ne!(a, embedding(b"hello!"));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        assert!(a.iter().all(|x| (-1.0..=1.0).contains(x)));
    }

    #[test]
    fn base64_matches_known_encodings() {
        // 1.0f32 is 00 00 80 3f little-endian.
        assert_eq!(embedding_base64(&[1.0]), "AACAPw==");
        assert_eq!(embedding_base64(&[1.0, 1.0]), "AACAPwAAgD8=");
        assert_eq!(embedding_base64(&[1.0, 1.0, 1.0]), "AACAPwAAgD8AAIA/");
        assert_eq!(embedding_base64(&[]), "");
    }
}
