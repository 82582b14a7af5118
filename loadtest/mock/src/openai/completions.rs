//! `POST /v1/completions`, the legacy text completion API.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use super::request::{CompletionRequest, Input};
use super::{invalid_json, missing, stream_usage, unix_now, StreamUsage, Usage};
use crate::body::{json, sse_json, MockResponse, SSE_DONE};
use crate::config::MockConfig;
use crate::state::{ReportedUsage, Shared};
use crate::stream::{self, Plan, StreamFormat};
use crate::text::{cap_tokens, completion_text, estimate_tokens, new_id, token_piece, Finish};

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    cfg: &MockConfig,
    body: &[u8],
    deployment: Option<String>,
) -> MockResponse {
    let running = shared.start_running();
    let req: CompletionRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return invalid_json(&e),
    };
    let gen = req.generation();
    // Azure paths name the model by their deployment.
    let Some(model) = req.model.or(deployment) else {
        return missing("model");
    };
    let prompt_tokens = req
        .prompt
        .as_ref()
        .map_or_else(|| estimate_tokens(0, 0), |p| p.tokens());
    let (tokens, finish) = cap_tokens(cfg.completion_tokens, gen.token_limit);
    let usage = Usage::new(prompt_tokens, tokens);
    let chunks = TextChunks {
        id: new_id("cmpl-"),
        created: unix_now(),
        model,
        include_usage: gen.include_usage,
        finish,
        usage,
    };
    let plan = Plan::generation(shared, cfg, tokens, prompt_tokens, || {
        req.prompt.as_ref().map(Input::bytes).unwrap_or_default()
    });
    if gen.stream {
        return stream::start(shared, chunks, plan, running);
    }
    plan.whole_answer().await;
    shared.stats.report_usage(usage.reported());
    let text = completion_text(tokens);
    let choice = TextChoice {
        text: &text,
        index: 0,
        logprobs: (),
        finish_reason: Some(finish.as_str()),
    };
    json(StatusCode::OK, &chunks.object(&[choice], Some(Some(usage))))
}

/// A `text_completion` object: the whole answer or one stream chunk.
#[derive(Serialize)]
struct TextCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [TextChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: StreamUsage,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    text: &'a str,
    index: u32,
    /// Always null.
    logprobs: (),
    finish_reason: Option<&'static str>,
}

/// Renders the `text_completion` objects of one answer.
struct TextChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    finish: Finish,
    usage: Usage,
}

impl TextChunks {
    fn object<'a>(
        &'a self,
        choices: &'a [TextChoice<'a>],
        usage: StreamUsage,
    ) -> TextCompletion<'a> {
        TextCompletion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        }
    }

    fn choice_event(&self, text: &str, finish_reason: Option<&'static str>) -> Bytes {
        let choice = TextChoice {
            text,
            index: 0,
            logprobs: (),
            finish_reason,
        };
        sse_json(&self.object(&[choice], stream_usage(self.include_usage, None)))
    }
}

impl StreamFormat for TextChunks {
    fn token(&self, i: u32, out: &mut Vec<Bytes>) {
        out.push(self.choice_event(token_piece(i), None));
    }

    fn closing(&self, out: &mut Vec<Bytes>) {
        out.push(self.choice_event("", Some(self.finish.as_str())));
        if self.include_usage {
            out.push(sse_json(&self.object(&[], Some(Some(self.usage)))));
        }
        out.push(Bytes::from_static(SSE_DONE));
    }

    fn reported_usage(&self, _delivered: u32, completed: bool) -> Option<ReportedUsage> {
        (completed && self.include_usage).then(|| self.usage.reported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        serde_json::from_str(text.strip_prefix("data: ").unwrap().trim_end()).unwrap()
    }

    #[tokio::test]
    async fn chunk_shapes() {
        let c = TextChunks {
            id: "cmpl-x".into(),
            created: 7,
            model: "m".into(),
            include_usage: true,
            finish: Finish::Length,
            usage: Usage::new(2, 3),
        };
        let events = stream::collect(&c, 1).await;
        // No opening: 1 token, finish, usage, [DONE]
        assert_eq!(events.len(), 4);
        assert_eq!(
            parse(&events[0]),
            json!({"id": "cmpl-x", "object": "text_completion", "created": 7, "model": "m",
                   "choices": [{"text": "Hello", "index": 0, "logprobs": null, "finish_reason": null}],
                   "usage": null})
        );
        assert_eq!(parse(&events[1])["choices"][0]["finish_reason"], "length");
        let usage = parse(&events[2]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["total_tokens"], 5);
        assert_eq!(&events[3][..], SSE_DONE);
    }
}
