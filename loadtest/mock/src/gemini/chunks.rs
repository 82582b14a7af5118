//! Gemini's wire shapes: an answer whole or as CRLF-framed stream chunks,
//! and `google.rpc.Status` error bodies.

use std::borrow::Cow;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use crate::body::{json, sse_json_crlf, MockResponse};
use crate::stream::StreamFormat;
use crate::text::{
    completion_text, token_piece, Answer, Finish, ToolArgs, TOOL_ARGS, TOOL_ARGS_TOKENS,
};

/// A `google.rpc.Status` error: `{"error":{"code","message","status"}}`.
pub(crate) fn error(status: StatusCode, message: &str) -> MockResponse {
    let rpc_status = match status.as_u16() {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500.. => "INTERNAL",
        _ => "INVALID_ARGUMENT",
    };
    json(
        status,
        &ErrorBody {
            error: RpcStatus {
                code: status.as_u16(),
                message,
                status: rpc_status,
            },
        },
    )
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: RpcStatus<'a>,
}

#[derive(Serialize)]
struct RpcStatus<'a> {
    code: u16,
    message: &'a str,
    status: &'static str,
}

/// One answer, rendered whole or as stream chunks.
pub(super) struct Chunks {
    pub(super) model: String,
    pub(super) prompt_tokens: u32,
    pub(super) answer: Answer,
}

impl Chunks {
    /// Paced steps of the stream: one per token, or the whole call at once.
    pub(super) fn steps(&self) -> u32 {
        match self.answer {
            Answer::Text { tokens, .. } => tokens,
            Answer::ToolCall { .. } => 1,
        }
    }

    fn response<'a>(
        &'a self,
        part: ResponsePart<'a>,
        finish_reason: Option<&'static str>,
        candidates_tokens: u32,
    ) -> Response<'a> {
        Response {
            candidates: [Candidate {
                content: CandidateContent {
                    role: "model",
                    parts: [part],
                },
                finish_reason,
                index: 0,
            }],
            usage_metadata: UsageMetadata {
                prompt_token_count: self.prompt_tokens,
                candidates_token_count: candidates_tokens,
                total_token_count: self.prompt_tokens.saturating_add(candidates_tokens),
            },
            model_version: &self.model,
        }
    }

    fn call<'a>(&'a self, name: &'a str) -> Response<'a> {
        let part = ResponsePart::FunctionCall {
            function_call: FunctionCall {
                name,
                args: TOOL_ARGS,
            },
        };
        self.response(part, Some("STOP"), TOOL_ARGS_TOKENS)
    }

    /// The non-stream answer.
    pub(super) fn whole(&self) -> Response<'_> {
        match &self.answer {
            &Answer::Text { tokens, finish } => {
                let part = ResponsePart::Text {
                    text: completion_text(tokens).into(),
                };
                self.response(part, Some(finish_reason(finish)), tokens)
            }
            Answer::ToolCall { name } => self.call(name),
        }
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "STOP",
        Finish::Length => "MAX_TOKENS",
    }
}

impl StreamFormat for Chunks {
    /// One chunk per token, usage cumulative so far; the last chunk also
    /// carries the finish reason.
    fn token(&self, i: u32, out: &mut Vec<Bytes>) {
        let response = match &self.answer {
            &Answer::Text { tokens, finish } => {
                let last = i + 1 == tokens;
                let part = ResponsePart::Text {
                    text: token_piece(i).into(),
                };
                self.response(part, last.then(|| finish_reason(finish)), i + 1)
            }
            Answer::ToolCall { name } => self.call(name),
        };
        out.push(sse_json_crlf(&response));
    }

    /// Only an empty answer still owes its finishing chunk here.
    fn closing(&self, out: &mut Vec<Bytes>) {
        if let Answer::Text { tokens: 0, finish } = self.answer {
            let part = ResponsePart::Text { text: "".into() };
            out.push(sse_json_crlf(&self.response(
                part,
                Some(finish_reason(finish)),
                0,
            )));
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Response<'a> {
    candidates: [Candidate<'a>; 1],
    usage_metadata: UsageMetadata,
    model_version: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    content: CandidateContent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    index: u32,
}

#[derive(Serialize)]
struct CandidateContent<'a> {
    role: &'static str,
    parts: [ResponsePart<'a>; 1],
}

#[derive(Serialize)]
#[serde(untagged)]
enum ResponsePart<'a> {
    Text {
        text: Cow<'a, str>,
    },
    FunctionCall {
        #[serde(rename = "functionCall")]
        function_call: FunctionCall<'a>,
    },
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    args: ToolArgs,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u32,
    candidates_token_count: u32,
    total_token_count: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};

    fn chunks(answer: Answer) -> Chunks {
        Chunks {
            model: "gemini-test".into(),
            prompt_tokens: 10,
            answer,
        }
    }

    /// The JSON of each event, checking the CRLF framing.
    async fn run(chunks: &Chunks, steps: u32) -> Vec<Value> {
        stream::collect(chunks, steps)
            .await
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let data = text
                    .strip_prefix("data: ")
                    .and_then(|t| t.strip_suffix("\r\n\r\n"))
                    .unwrap_or_else(|| panic!("not one CRLF event: {text:?}"));
                assert!(!data.contains('\n') && !data.contains('\r'));
                serde_json::from_str(data).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn stream_chunks_carry_cumulative_usage() {
        let c = chunks(Answer::Text {
            tokens: 3,
            finish: Finish::Length,
        });
        let events = run(&c, 3).await;
        assert_eq!(events.len(), 3);
        let text: String = events
            .iter()
            .map(|e| {
                e["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(text, "Hello from the");
        for (i, e) in (1..).zip(&events) {
            assert_eq!(
                e["usageMetadata"],
                json!({"promptTokenCount": 10, "candidatesTokenCount": i, "totalTokenCount": 10 + i})
            );
            assert_eq!(e["modelVersion"], "gemini-test");
            assert_eq!(e["candidates"][0]["content"]["role"], "model");
        }
        assert!(events[1]["candidates"][0].get("finishReason").is_none());
        assert_eq!(events[2]["candidates"][0]["finishReason"], "MAX_TOKENS");
    }

    #[tokio::test]
    async fn empty_and_tool_streams_still_finish() {
        let empty = run(
            &chunks(Answer::Text {
                tokens: 0,
                finish: Finish::Length,
            }),
            0,
        )
        .await;
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0]["candidates"][0]["finishReason"], "MAX_TOKENS");
        assert_eq!(empty[0]["usageMetadata"]["candidatesTokenCount"], 0);

        let tool = chunks(Answer::ToolCall { name: "f".into() });
        assert_eq!(tool.steps(), 1);
        let call = run(&tool, 1).await;
        assert_eq!(call.len(), 1);
        assert_eq!(
            call[0]["candidates"][0],
            json!({"content": {"role": "model", "parts": [
                       {"functionCall": {"name": "f", "args": {"location": "Paris"}}}]},
                   "finishReason": "STOP", "index": 0})
        );
    }

    #[test]
    fn whole_answer() {
        let c = chunks(Answer::Text {
            tokens: 2,
            finish: Finish::Stop,
        });
        assert_eq!(
            serde_json::to_value(c.whole()).unwrap(),
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello from"}]},
                                   "finishReason": "STOP", "index": 0}],
                   "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2,
                                     "totalTokenCount": 12},
                   "modelVersion": "gemini-test"})
        );
    }

    #[tokio::test]
    async fn error_statuses() {
        for (status, name) in [
            (400, "INVALID_ARGUMENT"),
            (403, "PERMISSION_DENIED"),
            (429, "RESOURCE_EXHAUSTED"),
            (500, "INTERNAL"),
            (503, "UNAVAILABLE"),
        ] {
            let resp = error(StatusCode::from_u16(status).unwrap(), "m");
            assert_eq!(resp.status(), status);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                json!({"error": {"code": status, "message": "m", "status": name}})
            );
        }
    }
}
