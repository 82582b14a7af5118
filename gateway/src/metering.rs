//! Metering: the tokens each answer used, as its provider reported them (counted with the
//! tokenizer when it reported none), and what they cost.

use crate::catalog::Prices;
use crate::providers::chat::Usage;
use crate::providers::transcode::UpstreamStream;
use crate::providers::usage::UsageCounter;
use crate::providers::{anthropic, openai_upstream, ProviderKind, Wire};
use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use serde_json::Value;
use tollgate_plugins::sse::{encode_data, SseParser};
use tollgate_plugins::Metered;

/// The wire format of a stream that passes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamWire {
    /// `chat.completion.chunk` (or legacy completion) events.
    OpenAi,
    /// Messages API events.
    Anthropic,
}

/// What one event says about usage: found cheaply, without parsing events that hold none.
struct UsageProbe<'a> {
    usage: Usage,
    /// Its output count is final (all but Anthropic's `message_start`).
    output_final: bool,
    /// The `usage` value's text, borrowed from the event.
    raw: &'a str,
    /// The event holds nothing but usage (OpenAI's final chunk: `"choices": []`).
    usage_only: bool,
}

impl StreamWire {
    fn probe<'a>(self, data: &'a str, previous: Usage) -> Option<UsageProbe<'a>> {
        // Almost every event of a stream carries no usage (or `"usage": null`): it costs one
        // substring search.
        if !has_usage_object(data) {
            return None;
        }
        match self {
            StreamWire::OpenAi => {
                #[derive(serde::Deserialize)]
                struct Chunk<'a> {
                    #[serde(borrow)]
                    usage: Option<&'a RawValue>,
                    choices: Option<Vec<serde::de::IgnoredAny>>,
                }
                let chunk: Chunk = serde_json::from_str(data).ok()?;
                let raw = chunk.usage?;
                let value: Value = serde_json::from_str(raw.get()).ok()?;
                value.is_object().then(|| UsageProbe {
                    usage: openai_upstream::usage(&value),
                    output_final: true,
                    raw: raw.get(),
                    usage_only: chunk.choices.is_none_or(|c| c.is_empty()),
                })
            }
            StreamWire::Anthropic => {
                #[derive(serde::Deserialize)]
                struct Message<'a> {
                    #[serde(borrow)]
                    usage: Option<&'a RawValue>,
                }
                #[derive(serde::Deserialize)]
                struct Event<'a> {
                    #[serde(borrow)]
                    usage: Option<&'a RawValue>,
                    #[serde(borrow)]
                    message: Option<Message<'a>>,
                }
                let event: Event = serde_json::from_str(data).ok()?;
                // `message_start` counts the prompt and one output token; the output is
                // final only in `message_delta`.
                let output_final = event.usage.is_some();
                let raw = event.usage.or(event.message.and_then(|m| m.usage))?;
                let value: Value = serde_json::from_str(raw.get()).ok()?;
                value.is_object().then(|| UsageProbe {
                    usage: anthropic::usage(&value, previous),
                    output_final,
                    raw: raw.get(),
                    usage_only: false,
                })
            }
        }
    }

    fn parser(self) -> UpstreamStream {
        match self {
            StreamWire::OpenAi => UpstreamStream::OpenAi(Default::default()),
            StreamWire::Anthropic => UpstreamStream::Anthropic(Default::default()),
        }
    }
}

/// Whether a `"usage"` key in `data` is followed by an object.
fn has_usage_object(data: &str) -> bool {
    const KEY: &str = "\"usage\"";
    memchr::memmem::find_iter(data.as_bytes(), KEY).any(|at| {
        let rest = data[at + KEY.len()..].trim_start();
        rest.strip_prefix(':')
            .is_some_and(|value| value.trim_start().starts_with('{'))
    })
}

/// Which of the usage reports the gateway asked for the client wants to see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageShown {
    /// The final usage-only chunk (`include_usage`).
    pub final_chunk: bool,
    /// The running usage on content chunks (`continuous_usage_stats`).
    pub running: bool,
}

/// Watches a stream that passes through in the client's own format for its usage. When the
/// gateway asked for usage reports the client did not, its events are re-framed without them:
/// the usage-only chunk left out, running usage set to `null`.
///
/// Only events that mention `usage` are parsed. Until a final usage report arrives, the
/// stream's bytes are kept, so that one that never reports is still counted, with the
/// tokenizer.
pub struct StreamMeter {
    sse: SseParser,
    wire: StreamWire,
    reported: Option<Report>,
    /// The stream so far while no final usage has been reported (up to `MAX_METERED_BODY`).
    kept: BytesMut,
    /// `None`: the bytes pass untouched.
    shown: Option<UsageShown>,
}

/// The last usage a stream reported.
#[derive(Clone, Copy, Debug)]
struct Report {
    usage: Usage,
    output_final: bool,
}

impl StreamMeter {
    pub fn new(wire: StreamWire, shown: Option<UsageShown>) -> StreamMeter {
        StreamMeter {
            sse: SseParser::new(),
            wire,
            reported: None,
            kept: BytesMut::new(),
            shown,
        }
    }

    /// The bytes to send the client for one upstream chunk.
    pub fn chunk(&mut self, data: Bytes) -> Bytes {
        let output_final = self.reported.is_some_and(|r| r.output_final);
        if !output_final && self.kept.len() + data.len() <= MAX_METERED_BODY {
            self.kept.extend_from_slice(&data);
        }
        let (wire, reported) = (self.wire, &mut self.reported);
        let Some(shown) = self.shown else {
            self.sse.feed(&data, |event| {
                Self::observe(wire, reported, event.data);
            });
            return data;
        };
        let mut out = BytesMut::with_capacity(data.len());
        self.sse.feed(&data, |event| {
            Self::rewrite(wire, reported, shown, &event, &mut out)
        });
        out.freeze()
    }

    /// Bytes of an unfinished event held between chunks.
    pub fn buffered(&self) -> usize {
        self.sse.buffered()
    }

    /// Whether the client gets other bytes than the upstream sent (usage reports removed).
    pub fn rewrites(&self) -> bool {
        self.shown.is_some()
    }

    /// What is left once the upstream ended: an event the upstream never terminated.
    pub fn finish(&mut self) -> Bytes {
        let (wire, reported, shown) = (self.wire, &mut self.reported, self.shown);
        let mut out = BytesMut::new();
        self.sse.finish(|event| match shown {
            Some(shown) => Self::rewrite(wire, reported, shown, &event, &mut out),
            None => {
                Self::observe(wire, reported, event.data);
            }
        });
        out.freeze()
    }

    /// What the stream said about its usage: the last final report, or else the text it
    /// carried (and the prompt's count, when it was reported).
    pub fn into_counter(self) -> UsageCounter {
        let mut counter = UsageCounter::default();
        match self.reported {
            Some(report) if report.output_final => counter.report(report.usage),
            provisional => {
                if let Some(report) = provisional {
                    counter.report_prompt(report.usage);
                }
                let (mut parser, mut events) = (self.wire.parser(), Vec::new());
                let mut sse = SseParser::new();
                let mut read = |event: tollgate_plugins::sse::Event<'_>| {
                    parser.on_event(event.data, &mut events);
                    for e in events.drain(..) {
                        counter.observe(&e);
                    }
                };
                sse.feed(&self.kept, &mut read);
                sse.finish(&mut read);
            }
        }
        counter
    }

    fn observe<'a>(
        wire: StreamWire,
        reported: &mut Option<Report>,
        data: &'a str,
    ) -> Option<UsageProbe<'a>> {
        let previous = reported.map(|r| r.usage).unwrap_or_default();
        let probe = wire.probe(data, previous)?;
        *reported = Some(Report {
            usage: probe.usage,
            output_final: probe.output_final,
        });
        Some(probe)
    }

    fn rewrite(
        wire: StreamWire,
        reported: &mut Option<Report>,
        shown: UsageShown,
        event: &tollgate_plugins::sse::Event<'_>,
        out: &mut BytesMut,
    ) {
        match Self::observe(wire, reported, event.data) {
            Some(probe) if probe.usage_only && !shown.final_chunk => {}
            Some(probe) if !probe.usage_only && !shown.running => {
                encode_data(out, event.event, &with_null(event.data, probe.raw))
            }
            _ => encode_data(out, event.event, event.data),
        }
    }
}

/// `data` with `value` (a slice of it) replaced by `null`, every other byte kept.
fn with_null(data: &str, value: &str) -> String {
    // The value borrows from `data`, so its address gives its position.
    let start = value.as_ptr() as usize - data.as_ptr() as usize;
    format!("{}null{}", &data[..start], &data[start + value.len()..])
}

/// The largest whole answer kept to read its usage from.
pub const MAX_METERED_BODY: usize = 16 * 1024 * 1024;

/// The usage in a whole (non-stream) answer of a provider of `kind`.
pub fn body_usage(kind: ProviderKind, body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<Value>,
    }
    let usage = serde_json::from_slice::<WithUsage>(body).ok()?.usage?;
    if !usage.is_object() {
        return None;
    }
    match kind.wire() {
        Wire::Anthropic => Some(anthropic::usage(&usage, Usage::default())),
        Wire::OpenAi => Some(openai_upstream::usage(&usage)),
        // Translated whole, never passed through: their usage is read by their adapter.
        Wire::Gemini | Wire::Triton => None,
    }
}

/// The generated text in a whole answer that cannot be read as JSON (cut short) or reports no
/// usage: every string value of a `content`, `text` or `arguments` key, up to the end of the
/// bytes, escapes left as they are (an estimate needs no more).
pub fn partial_texts(body: &[u8]) -> String {
    let mut out = String::new();
    for key in [&b"\"content\""[..], b"\"text\"", b"\"arguments\""] {
        for at in memchr::memmem::find_iter(body, key) {
            let rest = trim_start(&body[at + key.len()..]);
            let Some(rest) = rest.strip_prefix(b":") else {
                continue;
            };
            let Some(value) = trim_start(rest).strip_prefix(b"\"") else {
                continue;
            };
            let mut end = 0;
            while end < value.len() && value[end] != b'"' {
                end += if value[end] == b'\\' { 2 } else { 1 };
            }
            out.push_str(&String::from_utf8_lossy(&value[..end.min(value.len())]));
        }
    }
    out
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[skip..]
}

/// USD for `usage` at `prices`; cached prompt tokens at the cached price where there is one.
pub fn cost(prices: Option<Prices>, usage: Usage) -> f64 {
    let Some(p) = prices else {
        return 0.0;
    };
    let cached = usage.cached_input.min(usage.input);
    let fresh = usage.input - cached;
    (fresh as f64 * p.input
        + cached as f64 * p.cached_input.unwrap_or(p.input)
        + usage.output as f64 * p.output)
        / 1e6
}

/// The metered outcome of an answer.
pub fn metered(usage: Usage, estimated: bool, prices: Option<Prices>) -> Metered {
    Metered {
        usage,
        estimated,
        cost_usd: cost(prices, usage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Tokenizer;
    use crate::tokens::{self, PromptSize};

    const CHUNKS: [&str; 4] = [
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":" world"},"finish_reason":null}],"usage":null}"#,
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
        r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":4}}}"#,
    ];

    fn stream_bytes() -> Vec<u8> {
        let mut wire = String::new();
        for chunk in CHUNKS {
            wire.push_str(&format!("data: {chunk}\n\n"));
        }
        wire.push_str("data: [DONE]\n\n");
        wire.into_bytes()
    }

    /// Feeds `wire` in pieces of `step` bytes; returns what the client got.
    fn run(meter: &mut StreamMeter, wire: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            out.extend_from_slice(&meter.chunk(Bytes::copy_from_slice(piece)));
        }
        out.extend_from_slice(&meter.finish());
        out
    }

    const REPORTED: Usage = Usage {
        input: 12,
        cached_input: 4,
        output: 2,
    };

    #[test]
    fn passthrough_is_byte_exact_and_reads_the_usage() {
        let wire = stream_bytes();
        for step in [1, 7, wire.len()] {
            let mut meter = StreamMeter::new(StreamWire::OpenAi, None);
            assert_eq!(run(&mut meter, &wire, step), wire);
            assert_eq!(
                meter.into_counter().settle(b"{}", Tokenizer::O200k),
                (REPORTED, false)
            );
        }
    }

    #[test]
    fn strips_only_the_usage_chunk_and_still_meters() {
        let wire = stream_bytes();
        for step in [1, 13, wire.len()] {
            let mut meter = StreamMeter::new(StreamWire::OpenAi, Some(HIDDEN));
            let out = String::from_utf8(run(&mut meter, &wire, step)).unwrap();
            let expected: String = CHUNKS[..3]
                .iter()
                .map(|c| format!("data: {c}\n\n"))
                .chain(["data: [DONE]\n\n".to_string()])
                .collect();
            assert_eq!(out, expected);
            assert_eq!(
                meter.into_counter().settle(b"{}", Tokenizer::O200k).0,
                REPORTED
            );
        }
    }

    const HIDDEN: UsageShown = UsageShown {
        final_chunk: false,
        running: false,
    };

    #[test]
    fn running_usage_is_metered_and_nulled_unless_asked_for() {
        let chunks = [
            r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":null}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        ];
        let wire: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        let nulled = |c: &str| {
            c.replace(
                r#""usage":{"prompt_tokens":3,"completion_tokens":1}"#,
                r#""usage":null"#,
            )
            .replace(
                r#""usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
                r#""usage":null}"#,
            )
        };
        for (shown, expected) in [
            (None, wire.clone()),
            (
                Some(HIDDEN),
                format!(
                    "data: {}\n\ndata: {}\n\n",
                    nulled(chunks[0]),
                    nulled(chunks[1])
                ),
            ),
            (
                Some(UsageShown {
                    final_chunk: true,
                    running: false,
                }),
                format!(
                    "data: {}\n\ndata: {}\n\ndata: {}\n\n",
                    nulled(chunks[0]),
                    nulled(chunks[1]),
                    chunks[2]
                ),
            ),
            (
                Some(UsageShown {
                    final_chunk: true,
                    running: true,
                }),
                wire.clone(),
            ),
        ] {
            let mut meter = StreamMeter::new(StreamWire::OpenAi, shown);
            let out = String::from_utf8(run(&mut meter, wire.as_bytes(), 5)).unwrap();
            assert_eq!(out, expected, "{shown:?}");
            assert_eq!(
                meter.into_counter().settle(b"{}", Tokenizer::O200k).0,
                Usage {
                    input: 3,
                    cached_input: 0,
                    output: 2
                }
            );
        }
        // Cut after the first chunk: the running usage is the provider's count so far.
        let mut meter = StreamMeter::new(StreamWire::OpenAi, Some(HIDDEN));
        run(&mut meter, format!("data: {}\n\n", chunks[0]).as_bytes(), 7);
        assert_eq!(
            meter.into_counter().settle(b"{}", Tokenizer::O200k),
            (
                Usage {
                    input: 3,
                    cached_input: 0,
                    output: 1
                },
                false
            )
        );
    }

    #[test]
    fn anthropic_stream_usage_from_start_and_delta() {
        let wire = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":9}}\n\n",
        );
        let mut meter = StreamMeter::new(StreamWire::Anthropic, None);
        assert_eq!(run(&mut meter, wire.as_bytes(), 11), wire.as_bytes());
        assert_eq!(
            meter.into_counter().settle(b"{}", Tokenizer::Cl100k),
            (
                Usage {
                    input: 25,
                    cached_input: 5,
                    output: 9
                },
                false
            )
        );
    }

    #[test]
    fn an_anthropic_stream_cut_before_its_final_count_bills_what_it_relayed() {
        let delta = |text: &str| {
            format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n")
        };
        let wire = format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"usage\":{{\"input_tokens\":20,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}}}}\n\n{}{}",
            delta("The quick brown fox jumps"),
            delta(" over the lazy dog again and again"),
        );
        let mut meter = StreamMeter::new(StreamWire::Anthropic, None);
        run(&mut meter, wire.as_bytes(), 17);
        let (usage, estimated) = meter.into_counter().settle(b"{}", Tokenizer::Cl100k);
        assert!(estimated);
        assert_eq!(
            (usage.input, usage.cached_input),
            (25, 5),
            "the provider's prompt count"
        );
        let text = "The quick brown fox jumps over the lazy dog again and again";
        assert_eq!(usage.output, tokens::count(Tokenizer::Cl100k, text));
    }

    #[test]
    fn a_stream_cut_short_is_estimated_from_what_was_generated() {
        let wire = stream_bytes();
        let cut = wire.len() - 200;
        let mut meter = StreamMeter::new(StreamWire::OpenAi, None);
        run(&mut meter, &wire[..cut], 9);
        let body =
            br#"{"model":"m","messages":[{"role":"user","content":"Say hello to the world"}]}"#;
        let (usage, estimated) = meter.into_counter().settle(body, Tokenizer::O200k);
        assert!(estimated);
        assert_eq!(usage.output, tokens::count(Tokenizer::O200k, "Hello world"));
        let prompt = PromptSize::from_body(body).unwrap().exact(Tokenizer::O200k);
        assert_eq!(usage.input, prompt);
    }

    #[test]
    fn cut_answers_still_show_their_text() {
        let cut = br#"{"id":"x","choices":[{"message":{"role":"assistant","content":"Hello \"wor"#;
        assert_eq!(partial_texts(cut), r#"Hello \"wor"#);
        let anthropic = br#"{"content":[{"type":"text","text":"Hi there"},{"type":"tool_use","input":{}}],"usage":"#;
        assert_eq!(partial_texts(anthropic), "Hi there");
        let tool = br#"{"choices":[{"message":{"content":null,"tool_calls":[{"function":{"arguments":"{\"a\":1}"}}]}}]}"#;
        assert_eq!(partial_texts(tool), r#"{\"a\":1}"#);
        assert_eq!(partial_texts(br#"{"content" : "x\"#), "x\\");
    }

    #[test]
    fn only_usage_objects_are_worth_parsing() {
        assert!(has_usage_object(r#"{"usage":{"prompt_tokens":1}}"#));
        assert!(has_usage_object(
            r#"{"content":"\"usage\"","usage" : {"x":1}}"#
        ));
        assert!(!has_usage_object(r#"{"choices":[],"usage":null}"#));
        assert!(!has_usage_object(r#"{"delta":{"content":"the usage of"}}"#));
    }

    #[test]
    fn whole_body_usage_by_kind() {
        let openai = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        assert_eq!(
            body_usage(ProviderKind::Openai, openai),
            Some(Usage {
                input: 7,
                cached_input: 0,
                output: 3
            })
        );
        let embeddings =
            br#"{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(body_usage(ProviderKind::Vllm, embeddings).unwrap().input, 8);
        let anthropic = br#"{"id":"m","content":[],"usage":{"input_tokens":10,"cache_creation_input_tokens":2,"output_tokens":4}}"#;
        assert_eq!(
            body_usage(ProviderKind::Anthropic, anthropic),
            Some(Usage {
                input: 12,
                cached_input: 0,
                output: 4
            })
        );
        assert_eq!(body_usage(ProviderKind::Openai, br#"{"usage":null}"#), None);
        assert_eq!(body_usage(ProviderKind::Openai, b"not json"), None);
    }

    #[test]
    fn cost_prices_cached_tokens_apart() {
        let prices = Prices {
            input: 2.5,
            cached_input: Some(1.25),
            output: 10.0,
        };
        let usage = Usage {
            input: 1_000_000,
            cached_input: 400_000,
            output: 100_000,
        };
        assert!((cost(Some(prices), usage) - (1.5 + 0.5 + 1.0)).abs() < 1e-9);
        let no_cached_price = Prices {
            cached_input: None,
            ..prices
        };
        assert!((cost(Some(no_cached_price), usage) - 3.5).abs() < 1e-9);
        assert_eq!(cost(None, usage), 0.0);
    }
}
