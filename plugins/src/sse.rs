//! Server-Sent Events for every provider stream: a parser fed network chunks as they arrive,
//! following the WHATWG event-stream rules, and the encoder the gateway writes events with.
//!
//! Decisions beyond the spec:
//! - Text is decoded as UTF-8 with invalid bytes replaced by U+FFFD, which is what the spec's
//!   stream decoding does; only events with invalid bytes pay for a copy.
//! - `retry:` is parsed (ASCII digits only, as the spec says) and kept for [`SseParser::retry`];
//!   it is a stream setting, not part of an event.
//! - [`SseParser::finish`] is lenient: the spec drops an event that no blank line ended, but
//!   some upstreams end the stream by closing the connection, so the pending event is
//!   dispatched, its unterminated last line included. A stream cut mid-line thus shows up as
//!   a final event whose data is truncated.

use bytes::BufMut;
use std::time::Duration;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event, borrowed for the duration of the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` type; `None` when the event had none (EventSource calls that "message").
    pub event: Option<&'a str>,
    /// The `data:` lines, joined with `\n`.
    pub data: &'a str,
    /// The last event ID: as with EventSource's `lastEventId`, an `id:` line holds for the
    /// events after it until another changes it. `None` while empty.
    pub id: Option<&'a str>,
}

/// Incremental event-stream parser for one stream. Its buffers are reused from event to event,
/// and an event whose data is a single line inside the fed chunk is handed out without a copy.
#[derive(Debug)]
pub struct SseParser {
    /// The start of a line whose end has not arrived yet.
    carry: Vec<u8>,
    /// The last chunk ended in CR: an LF opening the next one belongs to the same line end.
    after_cr: bool,
    /// Leading BOM bytes matched so far; `None` once past the start of the stream.
    bom: Option<usize>,
    fields: Fields,
}

/// The event being built, and the state that outlives events.
#[derive(Debug, Default)]
struct Fields {
    /// Data lines so far, except a first line still inside the chunk being fed.
    data: Vec<u8>,
    /// Any data line seen: `data:` with an empty value still makes an event.
    has_data: bool,
    event: Vec<u8>,
    id: Vec<u8>,
    retry: Option<Duration>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        SseParser {
            carry: Vec::new(),
            after_cr: false,
            bom: Some(0),
            fields: Fields::default(),
        }
    }

    /// Parses the next chunk of the stream, calling `on_event` once per event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event<'_>)) {
        let mut rest = chunk;
        if let Some(matched) = self.bom {
            let n = rest
                .iter()
                .zip(&BOM[matched..])
                .take_while(|(a, b)| a == b)
                .count();
            if matched + n == BOM.len() {
                rest = &rest[n..];
            } else if n == rest.len() {
                // The chunk ended inside what may still be a BOM.
                self.bom = Some(matched + n);
                return;
            } else {
                // Not a BOM after all: bytes held back from earlier chunks start the first line.
                self.carry.extend_from_slice(&BOM[..matched]);
            }
            self.bom = None;
        }
        if rest.is_empty() {
            return;
        }
        if std::mem::take(&mut self.after_cr) && rest[0] == b'\n' {
            rest = &rest[1..];
        }

        if !self.carry.is_empty() {
            let Some(end) = line_end(rest) else {
                self.carry.extend_from_slice(rest);
                return;
            };
            self.carry.extend_from_slice(&rest[..end]);
            (rest, self.after_cr) = past_line_end(rest, end);
            let mut first_data = None;
            self.fields
                .line(&self.carry, &mut first_data, &mut on_event);
            self.fields.keep(first_data);
            self.carry.clear();
        }

        // A first data line stays a slice of the chunk until the event is dispatched or the
        // chunk runs out.
        let mut first_data = None;
        while let Some(end) = line_end(rest) {
            let line = &rest[..end];
            (rest, self.after_cr) = past_line_end(rest, end);
            self.fields.line(line, &mut first_data, &mut on_event);
        }
        self.carry.extend_from_slice(rest);
        self.fields.keep(first_data);
    }

    /// Ends the stream: dispatches a pending event that has data (see the module notes), then
    /// leaves the parser as new, buffers kept, for another stream.
    pub fn finish(&mut self, mut on_event: impl FnMut(Event<'_>)) {
        if !self.carry.is_empty() {
            let mut first_data = None;
            self.fields
                .line(&self.carry, &mut first_data, &mut on_event);
            self.fields.keep(first_data);
        }
        self.fields.dispatch(None, &mut on_event);
        self.carry.clear();
        self.after_cr = false;
        self.bom = Some(0);
        self.fields.id.clear();
        self.fields.retry = None;
    }

    /// The reconnection time from the last valid `retry:` line.
    pub fn retry(&self) -> Option<Duration> {
        self.fields.retry
    }

    /// Bytes held between chunks (an unfinished line, the data of an unfinished event), so that
    /// a caller can cap a stream that never ends a line or an event.
    pub fn buffered(&self) -> usize {
        self.carry.len() + self.fields.data.len()
    }
}

impl Fields {
    /// Applies one line. `first_data` holds the event's first data line while it is still a
    /// slice of the input.
    fn line<'l>(
        &mut self,
        line: &'l [u8],
        first_data: &mut Option<&'l [u8]>,
        on_event: &mut impl FnMut(Event<'_>),
    ) {
        if line.is_empty() {
            return self.dispatch(first_data.take(), on_event);
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return, // a comment
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"data" if !self.has_data => {
                self.has_data = true;
                *first_data = Some(value);
            }
            b"data" => {
                self.keep(first_data.take());
                self.data.push(b'\n');
                self.data.extend_from_slice(value);
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // The spec ignores an id with NUL in it.
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.extend_from_slice(value);
            }
            b"retry" => {
                if let Some(ms) = digits(value) {
                    self.retry = Some(Duration::from_millis(ms));
                }
            }
            _ => {}
        }
    }

    /// Moves a first data line that is still a slice of the input into the buffer.
    fn keep(&mut self, first_data: Option<&[u8]>) {
        if let Some(first) = first_data {
            self.data.extend_from_slice(first);
        }
    }

    fn dispatch(&mut self, first_data: Option<&[u8]>, on_event: &mut impl FnMut(Event<'_>)) {
        if self.has_data {
            let data = String::from_utf8_lossy(first_data.unwrap_or(&self.data));
            let event = String::from_utf8_lossy(&self.event);
            let id = String::from_utf8_lossy(&self.id);
            on_event(Event {
                event: non_empty(&event),
                data: &data,
                id: non_empty(&id),
            });
        }
        self.data.clear();
        self.has_data = false;
        self.event.clear();
    }
}

fn line_end(bytes: &[u8]) -> Option<usize> {
    memchr::memchr2(b'\n', b'\r', bytes)
}

/// What follows the line end at `end`, and whether that line end was a CR closing the input
/// (its LF, if any, is yet to come).
fn past_line_end(bytes: &[u8], end: usize) -> (&[u8], bool) {
    match bytes[end..] {
        [b'\r', b'\n', ..] => (&bytes[end + 2..], false),
        [b'\r'] => (&[], true),
        _ => (&bytes[end + 1..], false),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// A base-ten number of ASCII digits only; `None` otherwise or on overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Writes one event: `event: <type>` when there is one, a `data: ` line per line of `data`,
/// then the blank line that dispatches it. Any line end in `data` (LF, CR or CRLF) starts a
/// new data line, so a reader gets `data` back with its line ends as LF. A line end in `event`
/// would break the stream, so the type is cut there.
pub fn encode_data(out: &mut impl BufMut, event: Option<&str>, data: &str) {
    if let Some(event) = event.and_then(|e| e.split(['\r', '\n']).next()) {
        if !event.is_empty() {
            out.put_slice(b"event: ");
            out.put_slice(event.as_bytes());
            out.put_u8(b'\n');
        }
    }
    let mut rest = data.as_bytes();
    loop {
        let end = line_end(rest);
        out.put_slice(b"data: ");
        out.put_slice(&rest[..end.unwrap_or(rest.len())]);
        out.put_u8(b'\n');
        match end {
            Some(end) => rest = past_line_end(rest, end).0,
            None => break,
        }
    }
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        event: Option<String>,
        data: String,
        id: Option<String>,
    }

    fn ev(event: Option<&str>, data: &str, id: Option<&str>) -> Owned {
        Owned {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: id.map(str::to_owned),
        }
    }

    fn data(data: &str) -> Owned {
        ev(None, data, None)
    }

    fn collect(out: &mut Vec<Owned>) -> impl FnMut(Event<'_>) + '_ {
        |e| out.push(ev(e.event, e.data, e.id))
    }

    /// Feeds the chunks in order (without finishing) and returns the events.
    fn parse_chunks(chunks: &[&[u8]]) -> Vec<Owned> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for chunk in chunks {
            p.feed(chunk, collect(&mut out));
        }
        out
    }

    /// Feeds `stream` cut at `cuts` (ascending offsets), then finishes.
    fn parse_split(stream: &[u8], cuts: &[usize]) -> Vec<Owned> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            p.feed(&stream[at..cut], collect(&mut out));
            at = cut;
        }
        p.finish(collect(&mut out));
        out
    }

    fn parse(stream: &[u8]) -> Vec<Owned> {
        parse_split(stream, &[])
    }

    const OPENAI: &[u8] = b"\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9t\xc3\xa9\"},\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\n\
data: [DONE]\n\n";

    const ANTHROPIC: &[u8] = b"\
event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    /// Gemini's `alt=sse` frames events with CRLF.
    const GEMINI: &[u8] = b"\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"}}]}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" there\"}],\"role\":\"model\"},\"finishReason\":\"STOP\"}]}\r\n\r\n";

    /// Ends by closing the connection, with no blank line after the last event.
    const TRITON: &[u8] = b"\
data: {\"model_name\":\"llama\",\"text_output\":\"Hi\"}\n\n\
data: {\"model_name\":\"llama\",\"text_output\":\" there\"}\n";

    /// Everything else the rules allow, mixed: BOM, CR-only lines, comments, ids, retry,
    /// multi-line data, fields without a colon, unknown fields, events without data.
    const MIXED: &[u8] = b"\xEF\xBB\xBF: hello\r\
retry: 2500\r\n\
id: 7\n\
event: update\r\
data:first\r\n\
data: second\n\
data\n\
unknown: field\n\
\n\
event: nothing\n\
\r\n\
data:  two spaces\r\r\
id\n\
data: \xff\xfe bad \xc3\n\n\
:\n\
data: tail";

    fn fixtures() -> [&'static [u8]; 5] {
        [OPENAI, ANTHROPIC, GEMINI, TRITON, MIXED]
    }

    #[test]
    fn each_line_end_style() {
        let want = vec![ev(Some("e"), "a\nb", None), data("c")];
        for eol in ["\n", "\r", "\r\n"] {
            let stream =
                format!("event: e{eol}data: a{eol}data: b{eol}{eol}data: c{eol}{eol}").into_bytes();
            assert_eq!(parse_chunks(&[&stream]), want, "{eol:?}");
        }
        let mixed = b"event: e\rdata: a\r\ndata: b\n\r\ndata: c\r\r";
        assert_eq!(parse_chunks(&[mixed]), want);
    }

    #[test]
    fn cr_at_chunk_end_and_lf_at_next_start_are_one_line_end() {
        let got = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(got, vec![data("a\nb")]);
        // The CR waits across empty chunks too.
        let got = parse_chunks(&[b"data: a\r", b"", b"\n", b"data: b\r\n\r\n"]);
        assert_eq!(got, vec![data("a\nb")]);
        // A CR then a CR is two line ends: a blank line.
        assert_eq!(parse_chunks(&[b"data: a\r", b"\r"]), vec![data("a")]);
        // The LF after a CR is swallowed only once.
        assert_eq!(parse_chunks(&[b"data: a\r", b"\n\n"]), vec![data("a")]);
        // A carried line that ends in CR at the chunk end.
        let got = parse_chunks(&[b"da", b"ta: a\r", b"\n", b"\r\n"]);
        assert_eq!(got, vec![data("a")]);
    }

    #[test]
    fn comments_are_ignored() {
        let got = parse_chunks(&[b": keep-alive\n\n:\ndata: x\n: mid-event\n\n"]);
        assert_eq!(got, vec![data("x")]);
    }

    #[test]
    fn one_optional_space_after_the_colon() {
        let got = parse_chunks(&[b"data:x\n\ndata: x\n\ndata:  x\n\ndata:\tx\n\ndata:x:y\n\n"]);
        let want: Vec<_> = ["x", "x", " x", "\tx", "x:y"].map(data).into();
        assert_eq!(got, want);
    }

    #[test]
    fn data_lines_join_with_lf_and_an_empty_data_line_counts() {
        let got = parse_chunks(&[b"data: a\ndata:\ndata: b\n\ndata\n\ndata\ndata\n\n"]);
        assert_eq!(got, vec![data("a\n\nb"), data(""), data("\n")]);
    }

    #[test]
    fn no_data_no_event() {
        let got = parse_chunks(&[b"event: ping\n\nid: 1\n\nretry: 5\n\n\n\n: c\n\n"]);
        assert_eq!(got, vec![]);
        // The event type went with the blank line; the id stays.
        assert_eq!(
            parse_chunks(&[b"event: x\nid: 1\n\ndata: d\n\n"]),
            vec![ev(None, "d", Some("1"))]
        );
    }

    #[test]
    fn event_and_id() {
        let got = parse_chunks(&[
            b"event: a\nid: 1\ndata: x\n\ndata: y\n\nevent: b\nid\ndata: z\n\n",
            b"id: 2\0\ndata: w\n\nevent: c\nevent: d\nunknown: u\nID: 9\ndata: v\n\n",
        ]);
        assert_eq!(
            got,
            vec![
                ev(Some("a"), "x", Some("1")),
                ev(None, "y", Some("1")),
                ev(Some("b"), "z", None),
                ev(None, "w", None),
                ev(Some("d"), "v", None),
            ]
        );
    }

    #[test]
    fn retry_takes_digits_only() {
        let mut p = SseParser::new();
        assert_eq!(p.retry(), None);
        let lines: [(&[u8], Option<u64>); 6] = [
            (b"retry: 3000\n", Some(3000)),
            (b"retry: 12x\n", Some(3000)),
            (b"retry:\n", Some(3000)),
            (b"retry: -1\n", Some(3000)),
            (b"retry: 99999999999999999999999\n", Some(3000)),
            (b"retry:0\n", Some(0)),
        ];
        for (line, want) in lines {
            p.feed(line, |_| panic!("no event"));
            assert_eq!(p.retry(), want.map(Duration::from_millis), "{line:?}");
        }
    }

    #[test]
    fn several_events_in_one_chunk() {
        let got = parse_chunks(&[b"data: 1\n\ndata: 2\n\nevent: e\ndata: 3\n\ndata: 4"]);
        assert_eq!(got, vec![data("1"), data("2"), ev(Some("e"), "3", None)]);
    }

    #[test]
    fn one_event_in_single_bytes() {
        let stream = b"event: e\r\nid: 5\r\ndata: {\"a\":1}\r\ndata: two\r\n\r\n";
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(
            parse_chunks(&chunks),
            vec![ev(Some("e"), "{\"a\":1}\ntwo", Some("5"))]
        );
    }

    #[test]
    fn bom_only_at_the_very_start() {
        assert_eq!(parse_chunks(&[b"\xEF\xBB\xBFdata: a\n\n"]), vec![data("a")]);
        let split: [&[u8]; 4] = [b"\xEF", b"", b"\xBB", b"\xBFdata: a\n\n"];
        assert_eq!(parse_chunks(&split), vec![data("a")]);
        // A second BOM is part of the field name, which is then unknown.
        let twice = b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n";
        assert_eq!(parse_chunks(&[twice]), vec![data("b")]);
        // A BOM's first bytes and then something else are content.
        let got = parse_chunks(&[b"\xEF", b"\xBB", b"data: a\n\ndata: b\n\n"]);
        assert_eq!(got, vec![data("b")]);
        let got = parse_chunks(&[b"\xEF\xBB", b"\ndata: b\n\n"]);
        assert_eq!(got, vec![data("b")]);
        let got = parse_split(b"data\xEF\xBB\xBF: x\n\ndata: \xEF\xBB\xBFy\n\n", &[]);
        assert_eq!(got, vec![data("\u{FEFF}y")]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let got = parse_chunks(&[
            b"event: \xffe\nid: \xc3\ndata: a\xc3\n",
            b"data: \xe2\x82\n\n",
        ]);
        assert_eq!(
            got,
            vec![ev(
                Some("\u{FFFD}e"),
                "a\u{FFFD}\n\u{FFFD}",
                Some("\u{FFFD}")
            )]
        );
    }

    #[test]
    fn finish_dispatches_a_pending_event() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: a\n\nevent: e\ndata: b\n", collect(&mut out));
        assert_eq!(out, vec![data("a")]);
        p.finish(collect(&mut out));
        assert_eq!(out, vec![data("a"), ev(Some("e"), "b", None)]);

        // An unterminated last line counts.
        assert_eq!(parse(b"data: a\ndata: b"), vec![data("a\nb")]);
        assert_eq!(parse(b"data: [DONE]"), vec![data("[DONE]")]);
    }

    #[test]
    fn finish_without_a_pending_event() {
        for stream in [
            &b""[..],
            b"data: a\n\n",
            b"data: a\n\nevent: e\n",
            b"data: a\n\nid: 3",
            b"data: a\n\n: comment",
            b"data: a\r\n\r",
        ] {
            let want = if stream.is_empty() {
                vec![]
            } else {
                vec![data("a")]
            };
            assert_eq!(parse(stream), want, "{:?}", String::from_utf8_lossy(stream));
        }
    }

    #[test]
    fn finish_leaves_the_parser_as_new() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(
            b"\xEF\xBB\xBFretry: 10\nid: 1\nevent: e\ndata: a\r",
            collect(&mut out),
        );
        p.finish(collect(&mut out));
        assert_eq!(p.retry(), None);
        assert_eq!(p.buffered(), 0);
        // A new stream: its BOM is skipped, and the old CR does not eat its first LF.
        p.feed(b"\xEF\xBB\xBF\ndata: b\n\n", collect(&mut out));
        assert_eq!(out, vec![ev(Some("e"), "a", Some("1")), data("b")]);
    }

    #[test]
    fn buffered_counts_what_waits_for_more_input() {
        let mut p = SseParser::new();
        p.feed(b"data: abc\ndata: de", |_| panic!("no event"));
        assert_eq!(p.buffered(), "abc".len() + "data: de".len());
        p.feed(b"\n\n", |_| {});
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn openai_stream() {
        let got = parse(OPENAI);
        assert_eq!(got.len(), 5);
        assert!(got.iter().all(|e| e.event.is_none() && e.id.is_none()));
        assert_eq!(got[4].data, "[DONE]");
        let text: String = got[..4]
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(&e.data).unwrap())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "Hello été");
    }

    #[test]
    fn anthropic_stream() {
        let got = parse(ANTHROPIC);
        let types: Vec<_> = got.iter().map(|e| e.event.as_deref().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for e in &got {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v["type"], e.event.as_deref().unwrap());
        }
    }

    #[test]
    fn gemini_triton_and_mixed_streams() {
        assert_eq!(parse(GEMINI).len(), 2);
        let triton = parse(TRITON);
        assert_eq!(triton.len(), 2);
        assert!(triton[1].data.contains("\" there\""));
        assert_eq!(
            parse(MIXED),
            vec![
                ev(Some("update"), "first\nsecond\n", Some("7")),
                ev(None, " two spaces", Some("7")),
                ev(None, "\u{FFFD}\u{FFFD} bad \u{FFFD}", None),
                data("tail"),
            ]
        );
        let mut p = SseParser::new();
        p.feed(MIXED, |_| {});
        assert_eq!(p.retry(), Some(Duration::from_millis(2500)));
    }

    #[test]
    fn whole_chunk_events_borrow_the_chunk() {
        let mut p = SseParser::new();
        let range = OPENAI.as_ptr_range();
        let mut seen = 0;
        p.feed(OPENAI, |e| {
            assert!(range.contains(&e.data.as_ptr()));
            seen += 1;
        });
        assert_eq!(seen, 5);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for stream in fixtures() {
            let whole = parse(stream);
            assert!(!whole.is_empty());
            for cut in 0..=stream.len() {
                assert_eq!(parse_split(stream, &[cut]), whole, "cut at {cut}");
            }
            for a in 0..=stream.len().min(120) {
                for b in a..=stream.len().min(120) {
                    assert_eq!(parse_split(stream, &[a, b]), whole, "cuts at {a}, {b}");
                }
            }
            let singles: Vec<usize> = (0..=stream.len()).collect();
            assert_eq!(parse_split(stream, &singles), whole);
        }
    }

    fn random_cuts(rng: &mut fastrand::Rng, len: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..rng.usize(0..12)).map(|_| rng.usize(0..=len)).collect();
        cuts.sort_unstable();
        cuts
    }

    #[test]
    fn random_splits_give_the_same_events() {
        let mut rng = fastrand::Rng::with_seed(0x5EE5);
        for stream in fixtures() {
            let whole = parse(stream);
            for _ in 0..2000 {
                let cuts = random_cuts(&mut rng, stream.len());
                assert_eq!(parse_split(stream, &cuts), whole, "cuts at {cuts:?}");
            }
        }
    }

    /// An independent reading of the rules for whole input: decode the stream first, then
    /// split it into lines and fields as text.
    fn reference(stream: &[u8]) -> Vec<Owned> {
        let text = String::from_utf8_lossy(stream);
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
        let text = text.replace("\r\n", "\n").replace('\r', "\n");
        let (mut out, mut event, mut id) = (Vec::new(), String::new(), String::new());
        let mut data: Option<String> = None;
        // The unterminated tail is a line too (the lenient finish), then the end dispatches.
        for line in text.split('\n').chain([""]) {
            if line.is_empty() {
                if let Some(data) = data.take() {
                    let some = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
                    out.push(Owned {
                        event: some(&event),
                        data,
                        id: some(&id),
                    });
                }
                event.clear();
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match name {
                "data" => match &mut data {
                    Some(d) => *d = format!("{d}\n{value}"),
                    None => data = Some(value.to_owned()),
                },
                "event" => event = value.to_owned(),
                "id" if !value.contains('\0') => id = value.to_owned(),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn fixtures_match_the_reference() {
        for stream in fixtures() {
            assert_eq!(parse(stream), reference(stream));
        }
    }

    #[test]
    fn random_bytes_in_random_chunks_match_the_reference() {
        const PIECES: &[&[u8]] = &[
            b"\r",
            b"\n",
            b"\r\n",
            b":",
            b" ",
            b"data",
            b"event",
            b"id",
            b"retry",
            b"data: ",
            b"event: ",
            b"x",
            b"{\"k\":1}",
            b"\xc3\xa9",
            b"\xEF\xBB\xBF",
            b"\xEF\xBB",
            b"\xff",
            b"\xc3",
            b"\0",
            b"9",
        ];
        let mut rng = fastrand::Rng::with_seed(0xC0FFEE);
        for _ in 0..20_000 {
            let mut stream = Vec::new();
            for _ in 0..rng.usize(0..40) {
                if rng.u8(..) < 20 {
                    stream.push(rng.u8(..));
                } else {
                    stream.extend_from_slice(PIECES[rng.usize(..PIECES.len())]);
                }
            }
            let cuts = random_cuts(&mut rng, stream.len());
            let want = reference(&stream);
            assert_eq!(
                parse_split(&stream, &cuts),
                want,
                "{stream:?} cut at {cuts:?}"
            );
        }
    }

    #[test]
    fn encode_writes_one_well_formed_event() {
        let mut out = Vec::new();
        encode_data(&mut out, Some("message_start"), "{\"a\":1}");
        encode_data(&mut out, None, "one\ntwo\r\nthree\rfour\n");
        encode_data(&mut out, Some(""), "");
        encode_data(&mut out, Some("bad\nevent: injected"), "x");
        let want = "event: message_start\ndata: {\"a\":1}\n\n\
                    data: one\ndata: two\ndata: three\ndata: four\ndata: \n\n\
                    data: \n\n\
                    event: bad\ndata: x\n\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);

        let mut buf = bytes::BytesMut::new();
        encode_data(&mut buf, None, "[DONE]");
        assert_eq!(&buf[..], b"data: [DONE]\n\n");
    }

    #[test]
    fn encoded_events_parse_back() {
        const CHARS: &[char] = &['a', ' ', ':', '\n', '\r', 'é', '{', '"', '\u{FEFF}'];
        let mut rng = fastrand::Rng::with_seed(7);
        let text = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(0..12))
                .map(|_| CHARS[rng.usize(..CHARS.len())])
                .collect()
        };
        for _ in 0..2000 {
            let events: Vec<(Option<String>, String)> = (0..rng.usize(1..5))
                .map(|_| {
                    let event = rng.bool().then(|| text(&mut rng).replace(['\r', '\n'], ""));
                    (event, text(&mut rng))
                })
                .collect();
            let mut stream = Vec::new();
            for (event, data) in &events {
                encode_data(&mut stream, event.as_deref(), data);
            }
            let want: Vec<Owned> = events
                .iter()
                .map(|(event, data)| Owned {
                    event: event.clone().filter(|e| !e.is_empty()),
                    data: data.replace("\r\n", "\n").replace('\r', "\n"),
                    id: None,
                })
                .collect();
            let cuts = random_cuts(&mut rng, stream.len());
            assert_eq!(parse_split(&stream, &cuts), want);
        }
    }

    mod allocations {
        use super::*;
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        /// Counts this thread's allocations, so the test below sees only its own.
        struct Counting;

        thread_local! {
            static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
        }

        // SAFETY: every call is passed straight to the system allocator.
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                ALLOCATIONS.with(|n| n.set(n.get() + 1));
                unsafe { System.alloc(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                ALLOCATIONS.with(|n| n.set(n.get() + 1));
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static COUNTING: Counting = Counting;

        #[test]
        fn buffers_are_reused_across_events() {
            let mut p = SseParser::new();
            let mut bytes = 0;
            let mut run = |p: &mut SseParser| {
                for stream in [OPENAI, ANTHROPIC, GEMINI] {
                    p.feed(stream, |e| bytes += e.data.len());
                    for chunk in stream.chunks(7) {
                        p.feed(chunk, |e| bytes += e.data.len());
                    }
                }
            };
            // The first pass grows the buffers to what these streams need.
            run(&mut p);
            let before = ALLOCATIONS.with(Cell::get);
            for _ in 0..10 {
                run(&mut p);
            }
            assert_eq!(ALLOCATIONS.with(Cell::get), before);
            assert!(bytes > 0);
        }
    }
}
