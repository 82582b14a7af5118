//! `memo`: a plugin written the way a newcomer would, in one file. It answers some prompts
//! from memory, rewrites words in prompts before they are routed, and masks words in answers
//! as they stream out. Configured by one section:
//!
//! ```yaml
//! plugins:
//!   memo:
//!     answers: { "ping": "pong" }          # a last user message exactly this: this answer
//!     rewrite: { "k8s": "Kubernetes" }     # in every message, before routing
//!     mask: ["Tollgate"]                   # in answers, as they leave
//!     end_after: "provider."               # a stream ends after the chunk that says this
//! ```
//!
//! Chat completions only; other operations pass untouched. A masked word split across two
//! chunks escapes it: a real output guard keeps a window of text back, this one does not.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use tollgate::error::GatewayError;
use tollgate::pipeline::{
    Answer, AnswerBody, ChunkStep, Held, Phases, Plugin, PluginFactory, Request, Verdict,
};
use tollgate::providers::Operation;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoConfig {
    #[serde(default)]
    answers: BTreeMap<String, String>,
    #[serde(default)]
    rewrite: BTreeMap<String, String>,
    #[serde(default)]
    mask: Vec<String>,
    end_after: Option<String>,
}

/// What the plugin remembers of one request between its phases.
#[derive(Default)]
struct Streaming(bool);

pub struct Memo {
    config: MemoConfig,
}

pub struct MemoFactory;

impl PluginFactory for MemoFactory {
    fn name(&self) -> &'static str {
        "memo"
    }

    fn build(&self, section: &serde_yaml::Value) -> Result<Arc<dyn Plugin>, String> {
        let config: MemoConfig =
            serde_yaml::from_value(section.clone()).map_err(|e| e.to_string())?;
        if config.mask.iter().any(String::is_empty) {
            return Err("mask: a word to mask cannot be empty".into());
        }
        Ok(Arc::new(Memo { config }))
    }
}

#[async_trait]
impl Plugin for Memo {
    fn name(&self) -> &'static str {
        "memo"
    }

    fn phases(&self) -> Phases {
        if self.config.mask.is_empty() && self.config.end_after.is_none() {
            Phases::REQUEST
        } else {
            Phases::REQUEST | Phases::CHUNK
        }
    }

    async fn on_request(
        &self,
        request: &mut Request<'_>,
        held: &mut Held,
    ) -> Result<Verdict, GatewayError> {
        if request.facts.op != Operation::ChatCompletions {
            return Ok(Verdict::Continue);
        }
        held.get_or_default::<Streaming>().0 = request.facts.head.stream;
        let Ok(mut body) = serde_json::from_slice::<Value>(request.body()) else {
            return Ok(Verdict::Continue);
        };
        let Some(messages) = body["messages"].as_array_mut() else {
            return Ok(Verdict::Continue);
        };
        let last_user = messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str());
        if let Some(answer) = last_user.and_then(|text| self.config.answers.get(text)) {
            return Ok(Verdict::Answer(remembered(
                request.facts.model.name.as_str(),
                answer,
                request.facts.head.stream,
            )));
        }
        let mut changed = false;
        for content in messages.iter_mut().map(|m| &mut m["content"]) {
            let Some(text) = content.as_str() else {
                continue;
            };
            let mut text = text.to_string();
            for (from, to) in &self.config.rewrite {
                if text.contains(from.as_str()) {
                    text = text.replace(from.as_str(), to);
                    changed = true;
                }
            }
            *content = Value::String(text);
        }
        if changed {
            request.rewrite(Bytes::from(body.to_string()));
        }
        Ok(Verdict::Continue)
    }

    fn on_chunk(&self, chunk: Bytes, _last: bool, held: &mut Held) -> ChunkStep {
        let mut bytes = chunk.to_vec();
        for word in &self.config.mask {
            let word = word.as_bytes();
            let mut at = 0;
            while let Some(found) = bytes[at..].windows(word.len()).position(|w| w == word) {
                let start = at + found;
                bytes[start..start + word.len()].fill(b'*');
                at = start + word.len();
            }
        }
        let streaming = held.get::<Streaming>().is_some_and(|s| s.0);
        let word = self
            .config
            .end_after
            .as_deref()
            .unwrap_or_default()
            .as_bytes();
        let found = (streaming && !word.is_empty())
            .then(|| bytes.windows(word.len()).position(|w| w == word))
            .flatten();
        if let Some(at) = found {
            // Up to the end of the event that says it, then the stream's proper end. Chunks
            // need not hold whole events: a real plugin would hold back a split one.
            let end = bytes[at..]
                .windows(2)
                .position(|w| w == b"\n\n")
                .map_or(bytes.len(), |i| at + i + 2);
            bytes.truncate(end);
            bytes.extend_from_slice(b"data: [DONE]\n\n");
            return ChunkStep::End(Bytes::from(bytes));
        }
        ChunkStep::Send(Bytes::from(bytes))
    }
}

/// The remembered answer as an OpenAI chat completion, or as its stream.
fn remembered(model: &str, text: &str, stream: bool) -> Answer {
    let id = "chatcmpl-memo";
    if stream {
        let chunk = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
        return Answer {
            status: 200,
            content_type: "text/event-stream",
            body: AnswerBody::Whole(Bytes::from(format!("data: {chunk}\n\ndata: [DONE]\n\n"))),
            usage: None,
        };
    }
    let body = json!({"id": id, "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}});
    Answer {
        status: 200,
        content_type: "application/json",
        body: AnswerBody::Whole(Bytes::from(body.to_string())),
        usage: None,
    }
}
