//! `tollgate::providers::transcode::StreamTranscoder`, built the way `proxy::relay::relay`
//! builds one (`Dialect::stream(chat)` and a `ClientStream` renderer), for every upstream
//! dialect and both client formats, fed arbitrary bytes in arbitrary chunks, then finished.
//!
//! Input layout: `[dialect][client][n][n × u16 cut][upstream bytes]` (see
//! `tollgate_fuzz::take_cuts` for the cuts).
//! - dialect: `% 4` picks OpenAI, Anthropic, Gemini, Triton; for Triton `/ 4 % 3` picks the
//!   prompt template and `/ 12 % 2` the tokenizer.
//! - client: `% 3` picks OpenAI without usage, OpenAI with `include_usage`, Anthropic;
//!   `/ 3 % 2` sets the request's `max_tokens`.
//!
//! Asserts: no panic; the client output is the same whichever way the input was cut; it is
//! UTF-8, and a well-formed stream in the client's format (the rules of
//! `assert_well_formed` in gateway/src/providers/transcode.rs's tests: every `data:` is a
//! JSON object or OpenAI's final `[DONE]`, OpenAI chunks carry `usage` iff it was asked for,
//! Anthropic events are named by their type, start with `message_start`, and open, fill and
//! close content blocks in order, an error ends the stream, a normal Anthropic stream ends
//! with `message_stop`); usage totals add up.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;
use tollgate::catalog::Tokenizer;
use tollgate::providers::chat::ChatRequest;
use tollgate::providers::openai_format::StreamRenderer;
use tollgate::providers::transcode::{ClientStream, StreamTranscoder};
use tollgate::providers::triton::PromptTemplate;
use tollgate::providers::{anthropic_format, ClientFormat, Dialect};
use tollgate_fuzz::{chunks, sse_events, take_cuts};

#[derive(Clone, Copy, Debug)]
enum Client {
    OpenAi { include_usage: bool },
    Anthropic,
}

fn base_request() -> &'static ChatRequest {
    static CHAT: OnceLock<ChatRequest> = OnceLock::new();
    CHAT.get_or_init(|| {
        let body = br#"{"model":"virtual-model","messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":"What is the weather in Paris?"}]}"#;
        ClientFormat::OpenAi
            .parse_request(body)
            .expect("the base request parses")
    })
}

/// As `relay()` builds it, with a fixed clock and a fixed RNG so outputs compare.
fn transcoder(dialect: Dialect, client: Client, chat: &ChatRequest) -> StreamTranscoder {
    fastrand::seed(0x70_11_6a_7e);
    let client = match client {
        Client::OpenAi { include_usage } => {
            assert_eq!(include_usage, chat.include_usage);
            ClientStream::OpenAi(StreamRenderer::new(
                &chat.model,
                1_700_000_000,
                include_usage,
            ))
        }
        Client::Anthropic => {
            ClientStream::Anthropic(anthropic_format::StreamRenderer::new(&chat.model))
        }
    };
    StreamTranscoder::new(dialect.stream(chat), client)
}

fn run(dialect: Dialect, client: Client, chat: &ChatRequest, pieces: &[&[u8]]) -> Vec<u8> {
    let mut t = transcoder(dialect, client, chat);
    let mut out = BytesMut::new();
    let mut fed = 0;
    for piece in pieces {
        out.extend_from_slice(&t.chunk(piece));
        fed += piece.len();
        assert!(t.buffered() <= fed);
    }
    out.extend_from_slice(&t.finish());
    // Settling reads what the counter saw; it must not panic either.
    let _ = t.counter.settle_by_length(64);
    out.to_vec()
}

fn u64_at(v: &Value, key: &str, text: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a u64: {v}\nin {text}"))
}

/// gateway/src/providers/transcode.rs `assert_well_formed`, plus usage arithmetic.
fn assert_well_formed(client: Client, output: &[u8]) {
    let text = std::str::from_utf8(output).expect("client output is UTF-8");
    assert!(output.ends_with(b"\n\n"), "unterminated: {text}");
    let events = sse_events(output);
    assert!(!events.is_empty(), "no events: {text}");
    let mut open: Option<u64> = None;
    let mut blocks = 0;
    for (i, e) in events.iter().enumerate() {
        let (name, data) = (&e.event, &e.data);
        let last = i + 1 == events.len();
        if data == "[DONE]" {
            assert!(matches!(client, Client::OpenAi { .. }) && last, "{text}");
            continue;
        }
        let v: Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}\nin {text}"));
        assert!(v.is_object(), "{text}");
        let error = match client {
            Client::OpenAi { include_usage } => {
                assert_eq!(name, &None, "{text}");
                let error = v.get("error").is_some();
                if !error {
                    assert_eq!(v["object"], "chat.completion.chunk", "{text}");
                    assert_eq!(v.get("usage").is_some(), include_usage, "{text}");
                    let u = &v["usage"];
                    if u.is_object() {
                        let (p, c) = (
                            u64_at(u, "prompt_tokens", text),
                            u64_at(u, "completion_tokens", text),
                        );
                        assert_eq!(
                            Some(u64_at(u, "total_tokens", text)),
                            p.checked_add(c),
                            "{text}"
                        );
                    }
                }
                error
            }
            Client::Anthropic => {
                let kind = v["type"].as_str();
                assert_eq!(name.as_deref(), kind, "{text}");
                assert_eq!(i == 0, kind == Some("message_start"), "{text}");
                let index = v["index"].as_u64();
                match kind {
                    Some("content_block_start") => {
                        assert_eq!((open, index), (None, Some(blocks)), "{text}");
                        open = index;
                        blocks += 1;
                    }
                    Some("content_block_delta") => assert_eq!(open, index, "{text}"),
                    Some("content_block_stop") => {
                        assert_eq!(open, index, "{text}");
                        open = None;
                    }
                    Some("message_delta") => {
                        assert_eq!(open, None, "{text}");
                        let u = &v["usage"];
                        for key in ["input_tokens", "cache_read_input_tokens", "output_tokens"] {
                            u64_at(u, key, text);
                        }
                    }
                    _ => {}
                }
                kind == Some("error")
            }
        };
        assert!(!error || last, "an error ends the stream: {text}");
        if last && !error {
            let end = match client {
                Client::OpenAi { .. } => false,
                Client::Anthropic => v["type"] == "message_stop",
            };
            assert!(end, "stream ends early: {text}");
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let [sel, client_byte, rest @ ..] = input else {
        return;
    };
    let (cuts, stream) = take_cuts(rest);
    let dialect = match sel % 4 {
        0 => Dialect::OpenAi,
        1 => Dialect::Anthropic,
        2 => Dialect::Gemini,
        _ => Dialect::Triton {
            template: [
                PromptTemplate::Plain,
                PromptTemplate::Llama3,
                PromptTemplate::ChatMl,
            ][usize::from(sel / 4 % 3)],
            tokenizer: [Tokenizer::Cl100k, Tokenizer::O200k][usize::from(sel / 12 % 2)],
        },
    };
    let client = match client_byte % 3 {
        0 => Client::OpenAi {
            include_usage: false,
        },
        1 => Client::OpenAi {
            include_usage: true,
        },
        _ => Client::Anthropic,
    };
    let mut chat = base_request().clone();
    chat.stream = true;
    chat.include_usage = matches!(
        client,
        Client::OpenAi {
            include_usage: true
        }
    );
    chat.max_tokens = (client_byte / 3 % 2 == 1).then_some(16);

    let whole = run(dialect, client, &chat, &[stream]);
    assert_well_formed(client, &whole);
    let split = run(dialect, client, &chat, &chunks(stream, &cuts));
    assert!(
        split == whole,
        "output depends on the cuts {cuts:?}:\nwhole: {}\nsplit: {}",
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&split)
    );
});
