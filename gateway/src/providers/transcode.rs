//! A provider's event stream re-spoken in the client's format as it arrives: SSE framing is
//! parsed once, the provider adapter turns events into the gateway's stream events, and the
//! client renderer writes them out.

use super::chat::StreamEvent;
use super::openai_format::StreamRenderer;
use super::usage::UsageCounter;
use super::{anthropic, anthropic_format, gemini, openai_upstream, triton, Wire};
use bytes::{Bytes, BytesMut};
use tollgate_plugins::sse::SseParser;

/// The provider side of a translated stream.
pub enum UpstreamStream {
    OpenAi(openai_upstream::ChunkParser),
    Anthropic(anthropic::StreamParser),
    Gemini(gemini::StreamParser),
    Triton(triton::StreamParser),
}

impl UpstreamStream {
    pub fn wire(&self) -> Wire {
        match self {
            UpstreamStream::OpenAi(_) => Wire::OpenAi,
            UpstreamStream::Anthropic(_) => Wire::Anthropic,
            UpstreamStream::Gemini(_) => Wire::Gemini,
            UpstreamStream::Triton(_) => Wire::Triton,
        }
    }

    pub fn on_event(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        match self {
            UpstreamStream::OpenAi(p) => p.on_event(data, out),
            UpstreamStream::Anthropic(p) => p.on_event(data, out),
            UpstreamStream::Gemini(p) => p.on_event(data, out),
            UpstreamStream::Triton(p) => p.on_event(data, out),
        }
    }

    /// Streams that end by closing (Triton's) say how they ended only now.
    fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if let UpstreamStream::Triton(p) = self {
            p.finish(out);
        }
    }
}

/// The client side of a translated stream.
pub enum ClientStream {
    OpenAi(StreamRenderer),
    Anthropic(anthropic_format::StreamRenderer),
}

impl ClientStream {
    fn render(&mut self, event: StreamEvent, out: &mut BytesMut) {
        match self {
            ClientStream::OpenAi(r) => r.render(event, out),
            ClientStream::Anthropic(r) => r.render(event, out),
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        match self {
            ClientStream::OpenAi(r) => r.finish(out),
            ClientStream::Anthropic(r) => r.finish(out),
        }
    }
}

pub struct StreamTranscoder {
    sse: SseParser,
    events: Vec<StreamEvent>,
    upstream: UpstreamStream,
    client: ClientStream,
    pub counter: UsageCounter,
}

impl StreamTranscoder {
    pub fn new(upstream: UpstreamStream, client: ClientStream) -> StreamTranscoder {
        let counter = UsageCounter::for_wire(upstream.wire());
        StreamTranscoder {
            sse: SseParser::new(),
            events: Vec::new(),
            upstream,
            client,
            counter,
        }
    }

    fn drain(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        for event in self.events.drain(..) {
            self.counter.observe(&event);
            self.client.render(event, &mut out);
        }
        out
    }

    /// Client bytes for one upstream chunk (often empty: events may span chunks).
    /// Bytes of an unfinished upstream event held between chunks.
    pub fn buffered(&self) -> usize {
        self.sse.buffered()
    }

    pub fn chunk(&mut self, data: &[u8]) -> Bytes {
        let (upstream, events) = (&mut self.upstream, &mut self.events);
        self.sse
            .feed(data, |event| upstream.on_event(event.data, events));
        self.drain().freeze()
    }

    /// The client's last bytes once the upstream ended.
    pub fn finish(&mut self) -> Bytes {
        let (upstream, events) = (&mut self.upstream, &mut self.events);
        self.sse
            .finish(|event| upstream.on_event(event.data, events));
        self.upstream.finish(&mut self.events);
        let mut out = self.drain();
        self.client.finish(&mut out);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Tokenizer;
    use crate::tokens;
    use serde_json::Value;
    use tollgate_plugins::sse::Event;

    /// The wire formats an upstream trace or a client output is written in.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Dialect {
        OpenAi,
        Anthropic,
        Gemini,
        Triton,
    }

    const UPSTREAMS: [Dialect; 4] = [
        Dialect::OpenAi,
        Dialect::Anthropic,
        Dialect::Gemini,
        Dialect::Triton,
    ];

    #[derive(Clone, Copy, Debug)]
    enum Client {
        OpenAi { include_usage: bool },
        Anthropic,
    }

    impl Client {
        fn dialect(self) -> Dialect {
            match self {
                Client::OpenAi { .. } => Dialect::OpenAi,
                Client::Anthropic => Dialect::Anthropic,
            }
        }
    }

    /// Triton reports no usage: what the gateway estimated for the prompt when it built the
    /// request body, and the request's `max_tokens`.
    const TRITON_INPUT_TOKENS: u64 = 21;
    const TRITON_MAX_TOKENS: Option<u64> = Some(64);

    struct Golden {
        name: &'static str,
        upstream: Dialect,
        trace: &'static str,
        client: Client,
        expected: &'static str,
    }

    /// `tests/golden/NAME.sse`, an upstream trace, must become `NAME.openai.sse` or
    /// `NAME.anthropic.sse`, as the client's dialect says.
    macro_rules! golden {
        ($name:literal, $upstream:expr, $client:expr, $output:literal) => {
            Golden {
                name: $name,
                upstream: $upstream,
                trace: include_str!(concat!("../../../tests/golden/", $name, ".sse")),
                client: $client,
                expected: include_str!(concat!("../../../tests/golden/", $name, $output)),
            }
        };
    }

    const GOLDEN: &[Golden] = &[
        golden!(
            "anthropic_basic",
            Dialect::Anthropic,
            Client::OpenAi {
                include_usage: true
            },
            ".openai.sse"
        ),
        // CRLF framing.
        golden!(
            "anthropic_tool_use",
            Dialect::Anthropic,
            Client::OpenAi {
                include_usage: false
            },
            ".openai.sse"
        ),
        // CRLF framing, cumulative usageMetadata with thinking tokens, STOP.
        golden!(
            "gemini_text",
            Dialect::Gemini,
            Client::OpenAi {
                include_usage: true
            },
            ".openai.sse"
        ),
        // Text, then two calls with whole args in one chunk; Gemini says STOP.
        golden!(
            "gemini_function_call",
            Dialect::Gemini,
            Client::OpenAi {
                include_usage: false
            },
            ".openai.sse"
        ),
        // One `text_output` per token, no terminator, no blank line after the last event.
        golden!(
            "triton_stream",
            Dialect::Triton,
            Client::OpenAi {
                include_usage: true
            },
            ".openai.sse"
        ),
        // Role chunk, content, finish, usage chunk with `choices: []` (cached prompt), [DONE].
        golden!(
            "openai_text",
            Dialect::OpenAi,
            Client::Anthropic,
            ".anthropic.sse"
        ),
        // Text, then two calls whose arguments arrive in fragments.
        golden!(
            "openai_tool_call",
            Dialect::OpenAi,
            Client::Anthropic,
            ".anthropic.sse"
        ),
    ];

    fn transcoder(upstream: Dialect, client: Client) -> StreamTranscoder {
        let upstream = match upstream {
            Dialect::OpenAi => UpstreamStream::OpenAi(Default::default()),
            Dialect::Anthropic => UpstreamStream::Anthropic(Default::default()),
            Dialect::Gemini => UpstreamStream::Gemini(Default::default()),
            Dialect::Triton => UpstreamStream::Triton(triton::StreamParser::new(
                TRITON_INPUT_TOKENS,
                TRITON_MAX_TOKENS,
                Tokenizer::Cl100k,
            )),
        };
        let client = match client {
            Client::OpenAi { include_usage } => {
                ClientStream::OpenAi(StreamRenderer::new("", 0, include_usage))
            }
            Client::Anthropic => ClientStream::Anthropic(anthropic_format::StreamRenderer::new("")),
        };
        StreamTranscoder::new(upstream, client)
    }

    fn run(upstream: Dialect, client: Client, chunks: &[&[u8]]) -> String {
        let mut t = transcoder(upstream, client);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&t.chunk(chunk));
        }
        out.extend_from_slice(&t.finish());
        String::from_utf8(out).unwrap()
    }

    /// The (event type, data) of each event of an event stream.
    fn events(stream: &[u8]) -> Vec<(Option<String>, String)> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let mut push = |e: Event<'_>| out.push((e.event.map(str::to_string), e.data.to_string()));
        parser.feed(stream, &mut push);
        parser.finish(&mut push);
        out
    }

    /// What a stream says, read by the dialect's own rules: its text, and its tool calls as
    /// (name, arguments as JSON) in the order they began.
    #[derive(Debug, Default, PartialEq)]
    struct Transcript {
        text: String,
        calls: Vec<(String, Value)>,
    }

    fn transcript(dialect: Dialect, stream: &[u8]) -> Transcript {
        let mut text = String::new();
        // (the dialect's key for the call, name, argument text so far)
        let mut calls: Vec<(u64, String, String)> = Vec::new();
        let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
        for (_, data) in events(stream) {
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            match dialect {
                Dialect::OpenAi => {
                    let delta = &v["choices"][0]["delta"];
                    text.push_str(delta["content"].as_str().unwrap_or(""));
                    for call in delta["tool_calls"].as_array().into_iter().flatten() {
                        let key = call["index"].as_u64().unwrap();
                        let fragment = str_of(&call["function"]["arguments"]);
                        match calls.iter_mut().find(|c| c.0 == key) {
                            Some(c) => c.2.push_str(&fragment),
                            None => calls.push((key, str_of(&call["function"]["name"]), fragment)),
                        }
                    }
                }
                Dialect::Anthropic => {
                    let index = v["index"].as_u64().unwrap_or(0);
                    match (v["type"].as_str(), &v["delta"]) {
                        (Some("content_block_start"), _)
                            if v["content_block"]["type"] == "tool_use" =>
                        {
                            calls.push((index, str_of(&v["content_block"]["name"]), String::new()));
                        }
                        (Some("content_block_delta"), delta) if delta["type"] == "text_delta" => {
                            text.push_str(delta["text"].as_str().unwrap());
                        }
                        (Some("content_block_delta"), delta)
                            if delta["type"] == "input_json_delta" =>
                        {
                            let call = calls.iter_mut().find(|c| c.0 == index).unwrap();
                            call.2.push_str(delta["partial_json"].as_str().unwrap());
                        }
                        _ => {}
                    }
                }
                Dialect::Gemini => {
                    let parts = v["candidates"][0]["content"]["parts"].as_array();
                    for part in parts.into_iter().flatten() {
                        text.push_str(part["text"].as_str().unwrap_or(""));
                        if let Some(call) = part.get("functionCall") {
                            let key = calls.len() as u64;
                            calls.push((key, str_of(&call["name"]), call["args"].to_string()));
                        }
                    }
                }
                Dialect::Triton => text.push_str(v["text_output"].as_str().unwrap_or("")),
            }
        }
        let calls = calls
            .into_iter()
            .map(|(_, name, arguments)| (name, serde_json::from_str(&arguments).unwrap()))
            .collect();
        Transcript { text, calls }
    }

    /// Checks that `output` is a well-formed stream in `client`'s dialect, whatever the input
    /// was: every event's data is a JSON object (or OpenAI's `[DONE]`), the stream ends the
    /// way the dialect ends one or with an error, and Anthropic events are named by their type
    /// and open, fill and close content blocks in order.
    fn assert_well_formed(client: Client, output: &[u8]) {
        let text = String::from_utf8_lossy(output);
        assert!(output.ends_with(b"\n\n"), "unterminated: {text}");
        let events = events(output);
        let mut open: Option<u64> = None;
        let mut blocks = 0;
        for (i, (name, data)) in events.iter().enumerate() {
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
                        Some("message_delta") => assert_eq!(open, None, "{text}"),
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

    /// Usage as the tests compare it: (prompt tokens, cached ones included; cached prompt
    /// tokens; completion tokens).
    type Counts = (u64, u64, u64);

    /// How the stream ended, read from `client`'s output: the finish reason in the client's
    /// words, and the usage when the output carries one.
    fn ending(client: Client, output: &[u8]) -> (String, Option<Counts>) {
        let mut finish = String::new();
        let mut usage = None;
        let n = |v: &Value| v.as_u64().unwrap();
        for (_, data) in events(output) {
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            match client {
                Client::OpenAi { .. } => {
                    if let Some(reason) = v["choices"][0]["finish_reason"].as_str() {
                        finish = reason.to_string();
                    }
                    let u = &v["usage"];
                    if u.is_object() {
                        assert_eq!(
                            n(&u["total_tokens"]),
                            n(&u["prompt_tokens"]) + n(&u["completion_tokens"])
                        );
                        usage = Some((
                            n(&u["prompt_tokens"]),
                            n(&u["prompt_tokens_details"]["cached_tokens"]),
                            n(&u["completion_tokens"]),
                        ));
                    }
                }
                Client::Anthropic if v["type"] == "message_delta" => {
                    finish = v["delta"]["stop_reason"].as_str().unwrap().to_string();
                    let u = &v["usage"];
                    // Anthropic's `input_tokens` leaves cached tokens out.
                    let cached = n(&u["cache_read_input_tokens"]);
                    usage = Some((
                        n(&u["input_tokens"]) + cached,
                        cached,
                        n(&u["output_tokens"]),
                    ));
                }
                Client::Anthropic => {}
            }
        }
        (finish, usage)
    }

    #[test]
    fn golden_traces_translate_to_the_expected_client_output() {
        for g in GOLDEN {
            assert_eq!(
                run(g.upstream, g.client, &[g.trace.as_bytes()]),
                g.expected,
                "{}",
                g.name
            );
        }
    }

    #[test]
    fn any_split_of_a_golden_trace_gives_the_same_output() {
        for g in GOLDEN {
            let bytes = g.trace.as_bytes();
            for at in 0..=bytes.len() {
                let (a, b) = bytes.split_at(at);
                assert_eq!(
                    run(g.upstream, g.client, &[a, b]),
                    g.expected,
                    "{} split at {at}",
                    g.name
                );
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                run(g.upstream, g.client, &singles),
                g.expected,
                "{} byte by byte",
                g.name
            );
        }
    }

    /// The pinned outputs, read back by the client dialect's rules, carry the trace's text and
    /// tool calls (arguments compared as JSON: Gemini's are re-serialised).
    #[test]
    fn golden_outputs_are_well_formed_and_say_what_their_traces_said() {
        for g in GOLDEN {
            assert_well_formed(g.client, g.expected.as_bytes());
            let said = transcript(g.upstream, g.trace.as_bytes());
            assert!(!said.text.is_empty(), "{}", g.name);
            assert_eq!(
                transcript(g.client.dialect(), g.expected.as_bytes()),
                said,
                "{}",
                g.name
            );
        }
        let calls = |name: &str| {
            let g = GOLDEN.iter().find(|g| g.name == name).unwrap();
            transcript(g.client.dialect(), g.expected.as_bytes()).calls
        };
        let weather = |location: &str| {
            (
                "get_weather".to_string(),
                serde_json::json!({"location": location, "unit": "celsius"}),
            )
        };
        assert_eq!(
            calls("gemini_function_call"),
            [weather("Paris, FR"), weather("Tokyo, JP")]
        );
        let weather = |city: &str| {
            (
                "get_weather".to_string(),
                serde_json::json!({"city": city, "unit": "celsius"}),
            )
        };
        assert_eq!(
            calls("openai_tool_call"),
            [weather("Paris"), weather("Tokyo")]
        );
    }

    /// The finish reason and usage each pinned output ends with, worked out from its trace.
    #[test]
    fn golden_outputs_end_with_the_traces_finish_and_usage() {
        let triton = GOLDEN.iter().find(|g| g.name == "triton_stream").unwrap();
        // Triton reports no usage: the gateway counts what was generated.
        let generated = transcript(Dialect::Triton, triton.trace.as_bytes()).text;
        let triton_output = tokens::count(Tokenizer::Cl100k, &generated);
        assert!(
            triton_output < TRITON_MAX_TOKENS.unwrap(),
            "so it ends with stop"
        );
        let expected: &[(&str, &str, Option<Counts>)] = &[
            // message_start's input_tokens, message_delta's cumulative output_tokens.
            ("anthropic_basic", "stop", Some((11, 0, 6))),
            ("anthropic_tool_use", "tool_calls", None),
            // Thinking tokens (112) count as completion tokens: 27 + 112.
            ("gemini_text", "stop", Some((9, 0, 139))),
            // Gemini says STOP after calling functions.
            ("gemini_function_call", "tool_calls", None),
            (
                "triton_stream",
                "stop",
                Some((TRITON_INPUT_TOKENS, 0, triton_output)),
            ),
            ("openai_text", "end_turn", Some((1056, 1024, 13))),
            ("openai_tool_call", "tool_use", Some((84, 0, 52))),
        ];
        assert_eq!(expected.len(), GOLDEN.len());
        for (g, (name, finish, usage)) in GOLDEN.iter().zip(expected) {
            assert_eq!(g.name, *name);
            assert_eq!(
                ending(g.client, g.expected.as_bytes()),
                (finish.to_string(), *usage),
                "{name}"
            );
        }
    }

    /// Pieces of every dialect's events, for random input.
    const ALPHABET: &[&[u8]] = &[
        b"event: ",
        b"data: ",
        b"data:",
        b"\n",
        b"\r\n",
        b"\r",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b"\xff",
        b"\xe2\x80",
        b"null",
        b"[DONE]",
        b"\"type\":",
        b"\"message_start\"",
        b"\"content_block_start\"",
        b"\"content_block_delta\"",
        b"\"content_block_stop\"",
        b"\"message_delta\"",
        b"\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}",
        b"\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\"}",
        b"\"input_json_delta\"",
        b"\"index\":1",
        b"\"id\":\"c\"",
        b"\"choices\":[{\"index\":0,\"delta\":{\"content\":\"y\"}}]",
        b"\"choices\":[]",
        b"\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}",
        b"\"finish_reason\":\"stop\"",
        b"\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}",
        b"\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"z\"}]}",
        b"{\"functionCall\":{\"name\":\"g\",\"args\":{\"a\":1}}}",
        b"\"finishReason\":\"STOP\"",
        b"\"usageMetadata\":{\"promptTokenCount\":2}",
        b"\"model_name\":\"m\"",
        b"\"text_output\":\"t\"",
        b"\"error\":\"e\"",
        b"\"error\":{\"message\":\"m\"}",
    ];

    /// A golden trace with a few random cuts, insertions, splices and bad bytes.
    fn mutated_trace(rng: &mut fastrand::Rng) -> Vec<u8> {
        let pick = |rng: &mut fastrand::Rng| GOLDEN[rng.usize(..GOLDEN.len())].trace.as_bytes();
        let mut bytes = pick(rng).to_vec();
        for _ in 0..rng.usize(1..6) {
            let at = rng.usize(0..=bytes.len());
            match rng.u8(0..4) {
                0 => {
                    let end = rng.usize(at..=bytes.len().min(at + 40));
                    bytes.drain(at..end);
                }
                1 => {
                    let piece = ALPHABET[rng.usize(..ALPHABET.len())];
                    bytes.splice(at..at, piece.iter().copied());
                }
                2 => {
                    let other = pick(rng);
                    let from = rng.usize(0..=other.len());
                    let end = rng.usize(from..=other.len().min(from + 300));
                    bytes.splice(at..at, other[from..end].iter().copied());
                }
                _ => {
                    if at < bytes.len() {
                        bytes[at] = rng.u8(..);
                    }
                }
            }
        }
        bytes
    }

    /// Every upstream parser with every client renderer, on random input (pieces of events,
    /// and golden traces damaged at random) cut into random chunks: nothing panics and the
    /// client always gets a well-formed stream.
    #[test]
    fn arbitrary_input_never_panics() {
        let mut combination = 0;
        for upstream in UPSTREAMS {
            for anthropic_client in [false, true] {
                combination += 1;
                let mut rng = fastrand::Rng::with_seed(7 + combination);
                for round in 0..1_000 {
                    let input = if round % 2 == 0 {
                        let mut input = Vec::new();
                        for _ in 0..rng.usize(0..60) {
                            input.extend_from_slice(ALPHABET[rng.usize(..ALPHABET.len())]);
                        }
                        input
                    } else {
                        mutated_trace(&mut rng)
                    };
                    let client = if anthropic_client {
                        Client::Anthropic
                    } else {
                        Client::OpenAi {
                            include_usage: rng.bool(),
                        }
                    };
                    let mut t = transcoder(upstream, client);
                    let mut out = Vec::new();
                    let mut rest = &input[..];
                    while !rest.is_empty() {
                        let (a, b) = rest.split_at(rng.usize(0..=rest.len()));
                        out.extend_from_slice(&t.chunk(a));
                        rest = b;
                    }
                    out.extend_from_slice(&t.finish());
                    assert_well_formed(client, &out);
                }
            }
        }
    }
}
