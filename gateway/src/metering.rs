//! Metering: the tokens each answer used, as its provider reported them (counted with the
//! tokenizer when it reported none), and what they cost.

use crate::catalog::{Prices, Tokenizer};
use crate::providers::chat::{StreamEvent, Usage};
use crate::providers::transcode::UpstreamStream;
use crate::providers::{anthropic, openai_upstream, ProviderKind};
use crate::tokens::{self, PromptSize};
use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use serde_json::Value;
use tollgate_plugins::sse::{encode_data, SseParser};
use tollgate_plugins::Metered;

/// What an answer has said about its usage so far.
#[derive(Debug, Default)]
pub struct UsageCounter {
    reported: Option<Usage>,
    /// Text and tool-call arguments generated so far, for an estimate when no usage comes.
    generated: String,
    /// The provider never reports usage (Triton): its figures are the gateway's own count.
    estimated_by_adapter: bool,
}

impl UsageCounter {
    pub fn estimated_by_adapter() -> UsageCounter {
        UsageCounter {
            estimated_by_adapter: true,
            ..UsageCounter::default()
        }
    }

    pub fn observe(&mut self, event: &StreamEvent) {
        match event {
            StreamEvent::Usage(usage) => self.report(*usage),
            // Once the provider has counted, its figures are the truth; keep no text.
            StreamEvent::Text(text) if self.reported.is_none() => self.generated.push_str(text),
            StreamEvent::ToolCallArguments { fragment, .. } if self.reported.is_none() => {
                self.generated.push_str(fragment)
            }
            _ => {}
        }
    }

    /// Usage is cumulative: the last report counts.
    pub fn report(&mut self, usage: Usage) {
        self.reported = Some(usage);
        self.generated = String::new();
    }

    /// The usage to bill: the provider's report, else an estimate of the prompt (counted
    /// from the request body) and of what was generated.
    pub fn settle(&self, request_body: &[u8], tokenizer: Tokenizer) -> (Usage, bool) {
        if let Some(usage) = self.reported {
            return (usage, self.estimated_by_adapter);
        }
        let input = PromptSize::from_body(request_body).map_or(0, |p| p.exact(tokenizer));
        let output = tokens::count(tokenizer, &self.generated);
        (
            Usage {
                input,
                cached_input: 0,
                output,
            },
            true,
        )
    }
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
pub struct StreamMeter {
    sse: SseParser,
    parser: UpstreamStream,
    events: Vec<StreamEvent>,
    pub counter: UsageCounter,
    /// `None`: the bytes pass untouched.
    shown: Option<UsageShown>,
}

impl StreamMeter {
    pub fn new(parser: UpstreamStream, shown: Option<UsageShown>) -> StreamMeter {
        StreamMeter {
            sse: SseParser::new(),
            parser,
            events: Vec::new(),
            counter: UsageCounter::default(),
            shown,
        }
    }

    /// The bytes to send the client for one upstream chunk.
    pub fn chunk(&mut self, data: Bytes) -> Bytes {
        let (parser, events, counter) = (&mut self.parser, &mut self.events, &mut self.counter);
        let Some(shown) = self.shown else {
            self.sse.feed(&data, |event| {
                Self::observe(parser, events, counter, event.data);
            });
            return data;
        };
        let mut out = BytesMut::with_capacity(data.len());
        self.sse.feed(&data, |event| {
            Self::rewrite(parser, events, counter, shown, &event, &mut out)
        });
        out.freeze()
    }

    /// What is left once the upstream ended: an event the upstream never terminated.
    pub fn finish(&mut self) -> Bytes {
        let (parser, events, counter) = (&mut self.parser, &mut self.events, &mut self.counter);
        let mut out = BytesMut::new();
        let shown = self.shown;
        self.sse.finish(|event| match shown {
            Some(shown) => Self::rewrite(parser, events, counter, shown, &event, &mut out),
            None => {
                Self::observe(parser, events, counter, event.data);
            }
        });
        out.freeze()
    }

    /// Feeds one event to the meter; returns (it held only usage, it held usage).
    fn observe(
        parser: &mut UpstreamStream,
        events: &mut Vec<StreamEvent>,
        counter: &mut UsageCounter,
        data: &str,
    ) -> (bool, bool) {
        parser.on_event(data, events);
        let usage_only = matches!(events.as_slice(), [StreamEvent::Usage(_)]);
        let has_usage = events.iter().any(|e| matches!(e, StreamEvent::Usage(_)));
        for e in events.drain(..) {
            counter.observe(&e);
        }
        (usage_only, has_usage)
    }

    fn rewrite(
        parser: &mut UpstreamStream,
        events: &mut Vec<StreamEvent>,
        counter: &mut UsageCounter,
        shown: UsageShown,
        event: &tollgate_plugins::sse::Event<'_>,
        out: &mut BytesMut,
    ) {
        match Self::observe(parser, events, counter, event.data) {
            (true, _) if !shown.final_chunk => {}
            (false, true) if !shown.running => match without_usage(event.data) {
                Some(data) => encode_data(out, event.event, &data),
                None => encode_data(out, event.event, event.data),
            },
            _ => encode_data(out, event.event, event.data),
        }
    }
}

/// A chunk's JSON with its `usage` value replaced by `null`, every other byte kept.
fn without_usage(data: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct UsageSpan<'a> {
        #[serde(borrow)]
        usage: Option<&'a RawValue>,
    }
    let raw = serde_json::from_str::<UsageSpan>(data).ok()?.usage?.get();
    // The raw value borrows from `data`, so its address gives its position.
    let start = raw.as_ptr() as usize - data.as_ptr() as usize;
    Some(format!(
        "{}null{}",
        &data[..start],
        &data[start + raw.len()..]
    ))
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
    Some(match kind {
        ProviderKind::Anthropic => anthropic::usage(&usage, Usage::default()),
        _ => openai_upstream::usage(&usage),
    })
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
            let mut meter = StreamMeter::new(UpstreamStream::OpenAi(Default::default()), None);
            assert_eq!(run(&mut meter, &wire, step), wire);
            assert_eq!(
                meter.counter.settle(b"{}", Tokenizer::O200k),
                (REPORTED, false)
            );
        }
    }

    #[test]
    fn strips_only_the_usage_chunk_and_still_meters() {
        let wire = stream_bytes();
        for step in [1, 13, wire.len()] {
            let mut meter =
                StreamMeter::new(UpstreamStream::OpenAi(Default::default()), Some(HIDDEN));
            let out = String::from_utf8(run(&mut meter, &wire, step)).unwrap();
            let expected: String = CHUNKS[..3]
                .iter()
                .map(|c| format!("data: {c}\n\n"))
                .chain(["data: [DONE]\n\n".to_string()])
                .collect();
            assert_eq!(out, expected);
            assert_eq!(meter.counter.settle(b"{}", Tokenizer::O200k).0, REPORTED);
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
            let mut meter = StreamMeter::new(UpstreamStream::OpenAi(Default::default()), shown);
            let out = String::from_utf8(run(&mut meter, wire.as_bytes(), 5)).unwrap();
            assert_eq!(out, expected, "{shown:?}");
            assert_eq!(
                meter.counter.settle(b"{}", Tokenizer::O200k).0,
                Usage {
                    input: 3,
                    cached_input: 0,
                    output: 2
                }
            );
        }
        // Cut after the first chunk: the running usage is the provider's count so far.
        let mut meter = StreamMeter::new(UpstreamStream::OpenAi(Default::default()), Some(HIDDEN));
        run(&mut meter, format!("data: {}\n\n", chunks[0]).as_bytes(), 7);
        assert_eq!(
            meter.counter.settle(b"{}", Tokenizer::O200k),
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
        let mut meter = StreamMeter::new(UpstreamStream::Anthropic(Default::default()), None);
        assert_eq!(run(&mut meter, wire.as_bytes(), 11), wire.as_bytes());
        assert_eq!(
            meter.counter.settle(b"{}", Tokenizer::Cl100k),
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
    fn a_stream_cut_short_is_estimated_from_what_was_generated() {
        let wire = stream_bytes();
        let cut = wire.len() - 200;
        let mut meter = StreamMeter::new(UpstreamStream::OpenAi(Default::default()), None);
        run(&mut meter, &wire[..cut], 9);
        let body =
            br#"{"model":"m","messages":[{"role":"user","content":"Say hello to the world"}]}"#;
        let (usage, estimated) = meter.counter.settle(body, Tokenizer::O200k);
        assert!(estimated);
        assert_eq!(usage.output, tokens::count(Tokenizer::O200k, "Hello world"));
        let prompt = PromptSize::from_body(body).unwrap().exact(Tokenizer::O200k);
        assert_eq!(usage.input, prompt);
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
