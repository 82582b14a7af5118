//! The request bodies the mock understands; unknown fields are ignored.

use serde::Deserialize;

use crate::prompt::Content;
use crate::text::estimate_tokens;

#[derive(Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
    /// vLLM's running usage on every chunk.
    #[serde(default)]
    pub(crate) continuous_usage_stats: bool,
}

/// What a chat or legacy completion request asks of generation.
pub(crate) struct Generation {
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// Usage so far on every chunk too (vLLM's `continuous_usage_stats`).
    pub(crate) continuous_usage: bool,
    /// The tightest token limit the request gives.
    pub(crate) token_limit: Option<u32>,
}

impl Generation {
    // Plain fields rather than a flattened shared struct: serde's flatten
    // buffers the whole body, messages included, before parsing it again.
    fn new(
        stream: Option<bool>,
        options: Option<&StreamOptions>,
        limits: [Option<u32>; 2],
    ) -> Self {
        Generation {
            stream: stream == Some(true),
            include_usage: options.is_some_and(|o| o.include_usage),
            continuous_usage: options.is_some_and(|o| o.include_usage && o.continuous_usage_stats),
            token_limit: limits.into_iter().flatten().min(),
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) model: Option<String>,
    pub(crate) messages: Option<Vec<Message>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
}

impl ChatRequest {
    pub(crate) fn generation(&self) -> Generation {
        Generation::new(
            self.stream,
            self.stream_options.as_ref(),
            [self.max_tokens, self.max_completion_tokens],
        )
    }
}

#[derive(Deserialize)]
pub(crate) struct Message {
    content: Option<Content>,
}

/// A conversation's text, every message's concatenated: what the
/// simulated GPU's prefix cache sees of it.
pub(crate) fn messages_text(messages: &[Message]) -> Vec<u8> {
    messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .flat_map(Content::texts)
        .flat_map(str::bytes)
        .collect()
}

/// Estimated prompt tokens of a conversation.
pub(crate) fn messages_tokens(messages: &[Message]) -> u32 {
    let bytes = messages
        .iter()
        .filter_map(|m| m.content.as_ref())
        .map(Content::text_bytes)
        .sum();
    estimate_tokens(bytes, 0)
}

#[derive(Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) model: Option<String>,
    pub(crate) prompt: Option<Input>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
}

impl CompletionRequest {
    pub(crate) fn generation(&self) -> Generation {
        Generation::new(
            self.stream,
            self.stream_options.as_ref(),
            [self.max_tokens, None],
        )
    }
}

#[derive(Deserialize)]
pub(crate) struct EmbeddingRequest {
    pub(crate) model: Option<String>,
    pub(crate) input: Option<Input>,
    pub(crate) encoding_format: Option<String>,
}

/// A prompt or embedding input: text, texts, token ids, or lists of token ids.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One embeddable item of an [`Input`].
pub(crate) enum Item<'a> {
    Text(&'a str),
    Tokens(&'a [u32]),
}

impl Item<'_> {
    /// Bytes that identify the item, for deterministic embeddings.
    pub(crate) fn content(&self) -> Vec<u8> {
        match self {
            Item::Text(t) => t.as_bytes().to_vec(),
            Item::Tokens(ids) => ids.iter().flat_map(|id| id.to_le_bytes()).collect(),
        }
    }
}

impl Input {
    pub(crate) fn items(&self) -> Vec<Item<'_>> {
        match self {
            Input::Text(t) => vec![Item::Text(t)],
            Input::Texts(ts) => ts.iter().map(|t| Item::Text(t)).collect(),
            Input::Tokens(ids) => vec![Item::Tokens(ids)],
            Input::TokenLists(lists) => lists.iter().map(|ids| Item::Tokens(ids)).collect(),
        }
    }

    /// Every item's content, concatenated.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.items().iter().flat_map(Item::content).collect()
    }

    pub(crate) fn tokens(&self) -> u32 {
        let (mut bytes, mut ids) = (0, 0);
        for item in self.items() {
            match item {
                Item::Text(t) => bytes += t.len(),
                Item::Tokens(t) => ids += t.len(),
            }
        }
        estimate_tokens(bytes, ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_counts_text_and_parts() {
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[
                {"role":"system","content":"12345678"},
                {"role":"user","content":[{"type":"text","text":"1234"},{"type":"image_url","image_url":{"url":"x"}}]},
                {"role":"assistant","content":null,"tool_calls":[]}
            ],"max_tokens":9,"max_completion_tokens":4}"#,
        )
        .unwrap();
        assert_eq!(messages_tokens(req.messages.as_deref().unwrap()), 3);
        assert_eq!(
            messages_text(req.messages.as_deref().unwrap()),
            b"123456781234"
        );
        let gen = req.generation();
        assert_eq!(gen.token_limit, Some(4));
        assert!(!gen.stream);
        assert!(!gen.include_usage);
    }

    #[test]
    fn input_shapes() {
        let parse = |s: &str| serde_json::from_str::<Input>(s).unwrap();
        assert_eq!(parse(r#""abcdefgh""#).tokens(), 2);
        assert_eq!(parse(r#"["abcd","efgh","i"]"#).items().len(), 3);
        assert_eq!(parse(r#"["abcd","efgh","i"]"#).tokens(), 3);
        assert_eq!(parse("[1,2,3]").items().len(), 1);
        assert_eq!(parse("[1,2,3]").tokens(), 3);
        assert_eq!(parse("[[1,2],[3]]").items().len(), 2);
        assert_eq!(parse("[[1,2],[3]]").tokens(), 3);
        assert_eq!(parse(r#"["ab","c"]"#).bytes(), b"abc");
        assert_eq!(parse("[1,2]").bytes(), [1, 0, 0, 0, 2, 0, 0, 0]);
        assert!(serde_json::from_str::<Input>("{}").is_err());
    }
}
