//! A provider's event stream re-spoken in the client's format as it arrives: SSE framing is
//! parsed once, the provider adapter turns events into the gateway's stream events, and the
//! client renderer writes them out.

use super::chat::StreamEvent;
use super::openai_format::StreamRenderer;
use super::{anthropic, anthropic_format, gemini, openai_upstream, triton};
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
    fn on_event(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
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
}

impl StreamTranscoder {
    pub fn new(upstream: UpstreamStream, client: ClientStream) -> StreamTranscoder {
        StreamTranscoder {
            sse: SseParser::new(),
            events: Vec::new(),
            upstream,
            client,
        }
    }

    fn drain(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        for event in self.events.drain(..) {
            self.client.render(event, &mut out);
        }
        out
    }

    /// Client bytes for one upstream chunk (often empty: events may span chunks).
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

    /// (upstream trace, expected client output, include_usage)
    const GOLDEN: &[(&str, &str, &str, bool)] = &[
        (
            "anthropic basic",
            include_str!("../../../tests/golden/anthropic_basic.sse"),
            include_str!("../../../tests/golden/anthropic_basic.openai.sse"),
            true,
        ),
        (
            "anthropic tool use",
            include_str!("../../../tests/golden/anthropic_tool_use.sse"),
            include_str!("../../../tests/golden/anthropic_tool_use.openai.sse"),
            false,
        ),
    ];

    fn transcoder(name: &str, include_usage: bool) -> StreamTranscoder {
        let upstream = match name.split(' ').next() {
            Some("anthropic") => UpstreamStream::Anthropic(Default::default()),
            other => panic!("no upstream for {other:?}"),
        };
        StreamTranscoder::new(
            upstream,
            ClientStream::OpenAi(StreamRenderer::new("", 0, include_usage)),
        )
    }

    fn run(name: &str, include_usage: bool, chunks: &[&[u8]]) -> String {
        let mut t = transcoder(name, include_usage);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&t.chunk(chunk));
        }
        out.extend_from_slice(&t.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn golden_traces_translate_to_the_expected_client_output() {
        for (name, trace, expected, usage) in GOLDEN {
            assert_eq!(run(name, *usage, &[trace.as_bytes()]), *expected, "{name}");
        }
    }

    #[test]
    fn any_split_of_a_golden_trace_gives_the_same_output() {
        for (name, trace, expected, usage) in GOLDEN {
            let bytes = trace.as_bytes();
            for at in 0..=bytes.len() {
                let (a, b) = bytes.split_at(at);
                assert_eq!(
                    run(name, *usage, &[a, b]),
                    *expected,
                    "{name} split at {at}"
                );
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                run(name, *usage, &singles),
                *expected,
                "{name} byte by byte"
            );
        }
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet: &[&[u8]] = &[
            b"event: ",
            b"data: ",
            b"\n",
            b"\r\n",
            b"{",
            b"}",
            b"\"type\":",
            b"\"message_start\"",
            b"\"content_block_delta\"",
            b"\"delta\":{\"type\":\"text_delta\",\"text\":\"x\"}",
            b"\"input_json_delta\"",
            b"\"index\":1",
            b",",
            b"\xff",
            b"null",
        ];
        for _ in 0..2_000 {
            let mut input = Vec::new();
            for _ in 0..rng.usize(0..60) {
                input.extend_from_slice(alphabet[rng.usize(..alphabet.len())]);
            }
            let mut t = transcoder("anthropic", rng.bool());
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (a, b) = rest.split_at(rng.usize(0..=rest.len()));
                t.chunk(a);
                rest = b;
            }
            t.finish();
        }
    }
}
