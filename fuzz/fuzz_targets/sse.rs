//! `tollgate_plugins::sse::SseParser` fed a stream cut at fuzzer-chosen offsets.
//!
//! Asserts: no panic; the events (and `retry`) are the same as when the whole stream is fed
//! at once; both match an independent whole-text reading of the WHATWG rules (the one the
//! module's unit tests use); `buffered()` never exceeds the bytes fed since the chunk in which
//! the last event was dispatched; `finish` leaves nothing buffered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::{chunks, sse_events, take_cuts, OwnedEvent};
use tollgate_plugins::sse::SseParser;

/// Decode the whole stream first, then split it into lines and fields as text; the
/// unterminated tail is a line too, and the end dispatches (the parser's lenient `finish`).
fn reference(stream: &[u8]) -> Vec<OwnedEvent> {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let (mut out, mut event, mut id) = (Vec::new(), String::new(), String::new());
    let mut data: Option<String> = None;
    for line in text.split('\n').chain([""]) {
        if line.is_empty() {
            if let Some(data) = data.take() {
                let some = |s: &String| Some(s.clone()).filter(|s| !s.is_empty());
                out.push(OwnedEvent {
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
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "event" => event = value.to_owned(),
            "id" if !value.contains('\0') => id = value.to_owned(),
            _ => {}
        }
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let (cuts, stream) = take_cuts(input);

    // The whole stream at once.
    let mut whole_parser = SseParser::new();
    let mut whole = Vec::new();
    whole_parser.feed(stream, |e| whole.push(OwnedEvent::from(e)));
    assert!(whole_parser.buffered() <= stream.len());
    let whole_retry = whole_parser.retry();
    whole_parser.finish(|e| whole.push(OwnedEvent::from(e)));
    assert_eq!(whole_parser.buffered(), 0);
    assert_eq!(whole_parser.retry(), None);

    // Cut into chunks.
    let mut parser = SseParser::new();
    let mut split: Vec<OwnedEvent> = Vec::new();
    // Bytes fed since the start of the chunk that dispatched the latest event.
    let mut since_dispatch = 0usize;
    for chunk in chunks(stream, &cuts) {
        let before = split.len();
        parser.feed(chunk, |e| split.push(OwnedEvent::from(e)));
        since_dispatch = if split.len() > before {
            chunk.len()
        } else {
            since_dispatch + chunk.len()
        };
        assert!(
            parser.buffered() <= since_dispatch,
            "buffered {} > {since_dispatch} bytes fed since the last dispatch",
            parser.buffered()
        );
    }
    assert_eq!(
        parser.retry(),
        whole_retry,
        "retry differs with cuts {cuts:?}"
    );
    parser.finish(|e| split.push(OwnedEvent::from(e)));
    assert_eq!(parser.buffered(), 0);
    assert_eq!(split, whole, "events differ with cuts {cuts:?}");

    // The same parser, reused for a second stream, reads it as a fresh one.
    let mut again = Vec::new();
    parser.feed(stream, |e| again.push(OwnedEvent::from(e)));
    parser.finish(|e| again.push(OwnedEvent::from(e)));
    assert_eq!(again, whole, "a reused parser differs");

    assert_eq!(
        whole,
        reference(stream),
        "parser and reference reading differ"
    );
    debug_assert_eq!(sse_events(stream), whole);
});
