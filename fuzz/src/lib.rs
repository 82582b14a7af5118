//! Helpers shared by the fuzz targets in `fuzz_targets/`.

/// Splits a fuzz input into cut offsets and the payload they cut.
///
/// Layout: one byte `n` (taken modulo 16), then `n` little-endian `u16`s, then the payload.
/// Each `u16` is taken modulo `payload.len() + 1`, and the offsets come back sorted, so any
/// input is valid. A seed file can be made from a plain stream by prefixing one zero byte.
pub fn take_cuts(input: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = input.split_first() else {
        return (Vec::new(), input);
    };
    let n = usize::from(n % 16).min(rest.len() / 2);
    let (raw, payload) = rest.split_at(2 * n);
    let mut cuts: Vec<usize> = raw
        .chunks_exact(2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])) % (payload.len() + 1))
        .collect();
    cuts.sort_unstable();
    (cuts, payload)
}

/// `payload` cut at the (sorted) offsets: the chunks, empty ones included.
pub fn chunks<'a>(payload: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut at = 0;
    for &cut in cuts {
        out.push(&payload[at..cut]);
        at = cut;
    }
    out.push(&payload[at..]);
    out
}

/// An owned copy of one SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

impl From<tollgate_plugins::sse::Event<'_>> for OwnedEvent {
    fn from(e: tollgate_plugins::sse::Event<'_>) -> Self {
        OwnedEvent {
            event: e.event.map(str::to_owned),
            data: e.data.to_owned(),
            id: e.id.map(str::to_owned),
        }
    }
}

/// Every event of a whole stream, the lenient `finish` included.
pub fn sse_events(stream: &[u8]) -> Vec<OwnedEvent> {
    let mut parser = tollgate_plugins::sse::SseParser::new();
    let mut out = Vec::new();
    parser.feed(stream, |e| out.push(e.into()));
    parser.finish(|e| out.push(e.into()));
    out
}
