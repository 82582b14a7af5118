//! SSE parse-and-meter throughput: a passthrough stream fed to `StreamMeter` one event per
//! network chunk, as a provider delivers it, then finished. Throughput is in upstream bytes,
//! so `thrpt:` reads as MB/s on one core.
//!
//! - `sse-only`: the SSE framing alone (the floor any metering pays);
//! - `openai/observe`: a client that asked for usage, bytes untouched, usage read;
//! - `openai/strip-usage`: a client that did not ask: the usage-only chunk left out;
//! - `vllm/running-usage`: usage on every chunk (`continuous_usage_stats`), set to `null`
//!   for a client that did not ask;
//! - `anthropic/observe`: an Anthropic client's stream passed through.
//!
//! Each stream holds 200 one-token content chunks between its framing events.
//! Run: `cargo bench -p tollgate-benches --bench metering`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tollgate::metering::{StreamMeter, StreamWire, UsageShown};
use tollgate_plugins::sse::SseParser;

const DELTAS: usize = 200;

fn chunk(text: &str, usage: Option<usize>) -> String {
    let usage = match usage {
        Some(n) => format!(
            r#"{{"prompt_tokens":312,"completion_tokens":{n},"total_tokens":{}}}"#,
            312 + n
        ),
        None => "null".into(),
    };
    format!(
        "data: {{\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_eb9dce56a8\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":{usage}}}\n\n"
    )
}

fn openai_stream(running_usage: bool) -> Vec<Bytes> {
    let mut chunks: Vec<String> = (0..DELTAS)
        .map(|i| chunk(" token", running_usage.then_some(i + 1)))
        .collect();
    chunks.push(
        "data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":312,\"completion_tokens\":200,\"total_tokens\":512,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n".into(),
    );
    chunks.push("data: [DONE]\n\n".into());
    chunks.into_iter().map(Bytes::from).collect()
}

fn anthropic_stream() -> Vec<Bytes> {
    let mut chunks = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-20250514\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":312,\"output_tokens\":1}}}\n\n".to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
    ];
    for _ in 0..DELTAS {
        chunks.push("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" token\"}}\n\n".to_string());
    }
    chunks.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
            .to_string(),
    );
    chunks.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":200}}\n\n".to_string());
    chunks.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
    chunks.into_iter().map(Bytes::from).collect()
}

fn meter(chunks: &[Bytes], wire: StreamWire, shown: Option<UsageShown>) -> usize {
    let mut meter = StreamMeter::new(wire, shown);
    let mut out = 0;
    for c in chunks {
        out += meter.chunk(c.clone()).len();
    }
    out += meter.finish().len();
    black_box(meter.into_counter());
    out
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("metering");
    group.measurement_time(Duration::from_secs(4));
    let openai = openai_stream(false);
    let vllm = openai_stream(true);
    let anthropic = anthropic_stream();
    let hidden = UsageShown {
        final_chunk: false,
        running: false,
    };
    let size = |chunks: &[Bytes]| chunks.iter().map(Bytes::len).sum::<usize>() as u64;

    group.throughput(Throughput::Bytes(size(&openai)));
    group.bench_function("sse-only", |b| {
        b.iter(|| {
            let mut sse = SseParser::new();
            let mut events = 0;
            for c in &openai {
                sse.feed(black_box(c), |_| events += 1);
            }
            sse.finish(|_| events += 1);
            events
        })
    });
    group.bench_function("openai/observe", |b| {
        b.iter(|| meter(black_box(&openai), StreamWire::OpenAi, None))
    });
    group.bench_function("openai/strip-usage", |b| {
        b.iter(|| meter(black_box(&openai), StreamWire::OpenAi, Some(hidden)))
    });
    group.throughput(Throughput::Bytes(size(&vllm)));
    group.bench_function("vllm/running-usage", |b| {
        b.iter(|| meter(black_box(&vllm), StreamWire::OpenAi, Some(hidden)))
    });
    group.throughput(Throughput::Bytes(size(&anthropic)));
    group.bench_function("anthropic/observe", |b| {
        b.iter(|| meter(black_box(&anthropic), StreamWire::Anthropic, None))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
