//! The cost of re-speaking a provider's stream in the client's format, per upstream chunk:
//! each adapter's `StreamTranscoder` fed a realistic stream one event per network chunk, as
//! a provider delivers it, then finished.
//!
//! Each stream is the dialect's framing events around 200 one-token text deltas:
//! - `anthropic->openai`: message_start, content_block_start, ping, 200 text_delta events,
//!   content_block_stop, message_delta, message_stop (206 chunks), to an OpenAI client
//!   with `include_usage`;
//! - `gemini->openai`: 200 `streamGenerateContent?alt=sse` chunks with cumulative
//!   usageMetadata, the last with finishReason STOP (200 chunks), to an OpenAI client;
//! - `triton->openai`: 200 `generate_stream` `text_output` events and no terminator
//!   (200 chunks), to an OpenAI client; `finish` counts the output with cl100k;
//! - `openai->anthropic`: a role chunk, 200 content chunks, the finish chunk, the usage chunk
//!   and `[DONE]` (204 chunks), to an Anthropic client.
//!
//! Run: `cargo bench -p tollgate-benches --bench translate`. Ids read `translate/FROM->TO`;
//! `time:` is the estimate for the whole stream and `thrpt:` is in upstream chunks per
//! second, so the cost per chunk is `time` / chunks or 1 / `thrpt`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use std::hint::black_box;
use std::time::Duration;
use tollgate::catalog::Tokenizer;
use tollgate::providers::transcode::{ClientStream, StreamTranscoder, UpstreamStream};
use tollgate::providers::{anthropic_format, openai_format, triton};

/// Text deltas per stream.
const DELTAS: usize = 200;

/// What a Triton prompt was estimated at when the request body was built.
const TRITON_INPUT_TOKENS: u64 = 312;

/// One token of generated text, as a model streams them.
fn token(i: usize) -> &'static str {
    const WORDS: [&str; 16] = [
        " The",
        " gateway",
        " routes",
        " each",
        " request",
        " to",
        " the",
        " least",
        " loaded",
        " endpoint",
        ",",
        " then",
        " streams",
        " tokens",
        " back",
        ".",
    ];
    WORDS[i % WORDS.len()]
}

/// `data: JSON` events, one per chunk; `event` names them as Anthropic does.
fn frame(event: Option<&str>, data: &str) -> Vec<u8> {
    match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n").into_bytes(),
        None => format!("data: {data}\n\n").into_bytes(),
    }
}

fn anthropic_stream() -> Vec<Vec<u8>> {
    let mut chunks = vec![
        frame(
            Some("message_start"),
            &json!({"type": "message_start", "message": {
                "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
                "content": [], "model": "claude-sonnet-4-20250514", "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 312, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1}}})
            .to_string(),
        ),
        frame(
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        frame(Some("ping"), r#"{"type": "ping"}"#),
    ];
    for i in 0..DELTAS {
        let data = json!({"type": "content_block_delta", "index": 0,
                          "delta": {"type": "text_delta", "text": token(i)}});
        chunks.push(frame(Some("content_block_delta"), &data.to_string()));
    }
    chunks.push(frame(
        Some("content_block_stop"),
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    chunks.push(frame(
        Some("message_delta"),
        &json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": DELTAS}})
        .to_string(),
    ));
    chunks.push(frame(Some("message_stop"), r#"{"type":"message_stop"}"#));
    chunks
}

fn gemini_stream() -> Vec<Vec<u8>> {
    (0..DELTAS)
        .map(|i| {
            let mut candidate = json!({"content": {"parts": [{"text": token(i)}], "role": "model"},
                                       "index": 0});
            let mut usage = json!({"promptTokenCount": 312, "totalTokenCount": 312 + i + 1});
            if i + 1 == DELTAS {
                candidate["finishReason"] = json!("STOP");
                usage["candidatesTokenCount"] = json!(DELTAS);
            }
            let data = json!({"candidates": [candidate], "usageMetadata": usage,
                              "modelVersion": "gemini-2.5-flash",
                              "responseId": "x2VCaPzKBq6g1PIP4qWf8Ag"});
            frame(None, &data.to_string())
        })
        .collect()
}

fn triton_stream() -> Vec<Vec<u8>> {
    (0..DELTAS)
        .map(|i| {
            let data = json!({"model_name": "vllm_model", "model_version": "1",
                              "text_output": token(i)});
            frame(None, &data.to_string())
        })
        .collect()
}

fn openai_stream() -> Vec<Vec<u8>> {
    let chunk = |choices: serde_json::Value, usage: serde_json::Value| {
        let data = json!({"id": "chatcmpl-BfX2kR9pQ7sLmN4vT8wY1zA3cD5eF",
                          "object": "chat.completion.chunk", "created": 1749132000,
                          "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_07871e2ad8",
                          "choices": choices, "usage": usage});
        frame(None, &data.to_string())
    };
    let delta = |delta: serde_json::Value, finish: serde_json::Value| json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
    let mut chunks = vec![chunk(
        delta(json!({"role": "assistant", "content": ""}), json!(null)),
        json!(null),
    )];
    for i in 0..DELTAS {
        chunks.push(chunk(
            delta(json!({"content": token(i)}), json!(null)),
            json!(null),
        ));
    }
    chunks.push(chunk(delta(json!({}), json!("stop")), json!(null)));
    chunks.push(chunk(
        json!([]),
        json!({"prompt_tokens": 312, "completion_tokens": DELTAS, "total_tokens": 312 + DELTAS,
               "prompt_tokens_details": {"cached_tokens": 0}}),
    ));
    chunks.push(frame(None, "[DONE]"));
    chunks
}

/// One adapter: its name, a fresh transcoder per stream, and the stream.
struct Adapter {
    name: &'static str,
    new: fn() -> StreamTranscoder,
    chunks: Vec<Vec<u8>>,
}

fn openai_client() -> ClientStream {
    ClientStream::OpenAi(openai_format::StreamRenderer::new(
        "gpt-4o", 1749132000, true,
    ))
}

fn adapters() -> Vec<Adapter> {
    vec![
        Adapter {
            name: "anthropic->openai",
            new: || {
                StreamTranscoder::new(
                    UpstreamStream::Anthropic(Default::default()),
                    openai_client(),
                )
            },
            chunks: anthropic_stream(),
        },
        Adapter {
            name: "gemini->openai",
            new: || {
                StreamTranscoder::new(UpstreamStream::Gemini(Default::default()), openai_client())
            },
            chunks: gemini_stream(),
        },
        Adapter {
            name: "triton->openai",
            new: || {
                StreamTranscoder::new(
                    UpstreamStream::Triton(triton::StreamParser::new(
                        TRITON_INPUT_TOKENS,
                        Some(1024),
                        Tokenizer::Cl100k,
                    )),
                    openai_client(),
                )
            },
            chunks: triton_stream(),
        },
        Adapter {
            name: "openai->anthropic",
            new: || {
                StreamTranscoder::new(
                    UpstreamStream::OpenAi(Default::default()),
                    ClientStream::Anthropic(anthropic_format::StreamRenderer::new("gpt-4o")),
                )
            },
            chunks: openai_stream(),
        },
    ]
}

/// The whole stream through a fresh transcoder; the client bytes it wrote.
fn translate(adapter: &Adapter) -> usize {
    let mut t = (adapter.new)();
    let mut written = 0;
    for chunk in &adapter.chunks {
        written += black_box(t.chunk(black_box(chunk))).len();
    }
    written + black_box(t.finish()).len()
}

/// A check before timing: the client got every delta, the end of the stream and the usage.
fn check(adapter: &Adapter) {
    let mut t = (adapter.new)();
    let mut out = Vec::new();
    for chunk in &adapter.chunks {
        out.extend_from_slice(&t.chunk(chunk));
    }
    out.extend_from_slice(&t.finish());
    let out = String::from_utf8(out).expect("client output is UTF-8");
    // The OpenAI client's role chunk opens with `"content":""` too.
    let (delta, deltas, end, usage) = if adapter.name.ends_with("->openai") {
        (
            "{\"content\":",
            DELTAS + 1,
            "data: [DONE]\n\n",
            "\"prompt_tokens\":",
        )
    } else {
        (
            "\"type\":\"text_delta\"",
            DELTAS,
            "data: {\"type\":\"message_stop\"}\n\n",
            "\"input_tokens\":312",
        )
    };
    assert_eq!(out.matches(delta).count(), deltas, "{}", adapter.name);
    assert!(out.ends_with(end), "{}: no end", adapter.name);
    assert!(out.contains(usage), "{}: no usage", adapter.name);
}

fn translation(c: &mut Criterion) {
    // Triton's usage is counted at the end of the stream: build the encoder before timing.
    tollgate::tokens::warm_up();
    let mut group = c.benchmark_group("translate");
    for adapter in adapters() {
        check(&adapter);
        group.throughput(Throughput::Elements(adapter.chunks.len() as u64));
        group.bench_function(adapter.name, |b| b.iter(|| translate(&adapter)));
    }
    group.finish();
}

fn config() -> Criterion {
    // 4 ids at about 3 s each; a stream takes under a millisecond, so 50 samples fit in 2 s.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = translation
}
criterion_main!(benches);
