//! The answer cache as a plugin (DESIGN §11.2, exact matches, in memory). Before routing, a
//! request whose key holds an answer is answered from it, in the client's format and mode
//! (whole or streamed, OpenAI or Anthropic), whatever format and mode stored it. Otherwise
//! the answer is watched as it leaves and, once complete and successful, read back into the
//! gateway's chat model and stored with the usage the request was metered at.

use super::coalesce::{Flight, Flights, Role};
use super::{Answer, AnswerBody, CacheResult, Held, Phases, Plugin, Request, Verdict};
use crate::config::runtime::{CacheScope, CacheSettings, Key};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::providers::chat::{ChatResponse, FinishReason, StreamEvent, ToolCall, Usage};
use crate::providers::transcode::UpstreamStream;
use crate::providers::{anthropic, anthropic_format, openai_format, openai_upstream, ClientFormat};
use crate::providers::{Operation, Wire};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tollgate_plugins::cache::{CacheKey, MemoryStore, RedisStore, StoreError};
use tollgate_plugins::sse::SseParser;
use tollgate_plugins::Settlement;

/// Answers larger than this are not cached: kept whole while they stream, they would weigh
/// on every request's memory.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

pub struct CachePlugin {
    store: CacheStore,
    flights: Arc<Flights>,
    metrics: Arc<Metrics>,
    settings: CacheSettings,
}

/// What the cache keeps for the life of the process: its store and the requests in flight.
#[derive(Clone)]
pub struct CacheEngine {
    pub store: CacheStore,
    pub flights: Arc<Flights>,
}

/// Where the entries live; made once per process.
#[derive(Clone)]
pub enum CacheStore {
    Memory(Arc<MemoryStore>),
    /// Shared by every replica.
    Redis(Arc<RedisStore>),
}

/// A cached answer: what the chat model needs to render it in any client format.
#[derive(Serialize, Deserialize)]
struct Cached {
    id: String,
    model: String,
    text: String,
    /// `(id, name, arguments)` of each tool call.
    tool_calls: Vec<(String, String, String)>,
    finish: String,
    /// Input, cached input and output tokens, as the request that stored it was metered.
    usage: [u64; 3],
}

/// A miss being recorded: the answer as it leaves, to store once it has ended well.
struct Recording {
    key: CacheKey,
    format: ClientFormat,
    stream: bool,
    answer: BytesMut,
    complete: bool,
    too_large: bool,
    /// The flight this request leads, until it lands.
    flight: Option<(Arc<Flights>, Arc<Flight>)>,
}

impl Recording {
    fn land(&mut self, complete: bool) {
        if let Some((flights, flight)) = self.flight.take() {
            flights.land(&self.key, &flight, complete);
        }
    }
}

impl Drop for Recording {
    /// However the request ended, its waiters are never left waiting.
    fn drop(&mut self) {
        self.land(false);
    }
}

impl CachePlugin {
    pub fn new(engine: CacheEngine, metrics: Arc<Metrics>, settings: CacheSettings) -> Self {
        CachePlugin {
            store: engine.store,
            flights: engine.flights,
            metrics,
            settings,
        }
    }

    /// Leads the flight for `key`, or joins it: `Err` with the joiner's answer.
    async fn take_off(
        &self,
        key: CacheKey,
        format: ClientFormat,
        stream: bool,
    ) -> Result<Option<(Arc<Flights>, Arc<Flight>)>, Answer> {
        let led = |flight| Ok(Some((self.flights.clone(), flight)));
        match self.flights.lead_or_join(key, format, stream) {
            Role::Lead(flight) => led(flight),
            Role::Alone => Ok(None),
            Role::Join(waiting) => match waiting.joined().await {
                Some(reader) => Err(Answer {
                    status: 200,
                    content_type: content_type(stream),
                    body: AnswerBody::Stream(Box::new(reader)),
                    usage: None,
                }),
                // The leader failed first: this request tries on its own, leading if it can.
                None => match self.flights.lead_or_join(key, format, stream) {
                    Role::Lead(flight) => led(flight),
                    Role::Join(_) | Role::Alone => Ok(None),
                },
            },
        }
    }

    fn count(&self, request: &mut Request<'_>, result: CacheResult) {
        self.metrics
            .cache_requests
            .with_label_values(&[result.as_str()])
            .inc();
        request.set_cache_result(result);
        request.add_response_headers(vec![("x-tollgate-cache", result.as_str().to_string())]);
    }

    /// The entry under `key`.
    async fn get(&self, key: &CacheKey) -> Result<Option<Cached>, StoreError> {
        let bytes = match &self.store {
            CacheStore::Memory(store) => store.get(key, Instant::now()).map(|b| b.to_vec()),
            CacheStore::Redis(store) => store.get(key).await?,
        };
        Ok(bytes.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    fn failed(&self, op: &str, e: &StoreError) {
        log::warn!("answer cache: {op}: {e}");
        self.metrics.cache_errors.with_label_values(&[op]).inc();
    }

    /// The entry a complete, successful answer makes; `None` for any other.
    fn entry(&self, outcome: &Settlement<'_>, held: &mut Held) -> Option<(CacheKey, Vec<u8>)> {
        let recording = held.get::<Option<Recording>>()?.take()?;
        if outcome.status != 200 || !recording.complete || recording.too_large {
            return None;
        }
        let answer = read_answer(&recording)?;
        let usage = outcome.metered.map_or(answer.usage, |m| m.usage);
        let cached = Cached {
            id: answer.id,
            model: answer.model,
            text: answer.text,
            tool_calls: answer
                .tool_calls
                .into_iter()
                .map(|c| (c.id, c.name, c.arguments))
                .collect(),
            finish: answer.finish.openai().to_string(),
            usage: [usage.input, usage.cached_input, usage.output],
        };
        Some((recording.key, serde_json::to_vec(&cached).ok()?))
    }

    /// The tenant whose entries the request may use: never another's.
    fn scope_id(&self, key: Option<&Key>) -> String {
        let Some(key) = key else {
            // No keys configured: one tenant.
            return String::new();
        };
        // A team or project scope falls back to the key when the key has none.
        let (kind, id) = match self.settings.scope {
            CacheScope::Global => return String::new(),
            CacheScope::Key => ("key", &key.id),
            CacheScope::Team => key
                .team
                .as_ref()
                .map_or(("key", &key.id), |team| ("team", team)),
            CacheScope::Project => key
                .project
                .as_ref()
                .map_or(("key", &key.id), |project| ("project", project)),
        };
        format!("{kind}:{id}")
    }
}

#[async_trait]
impl Plugin for CachePlugin {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn phases(&self) -> Phases {
        match self.store {
            CacheStore::Memory(_) => Phases::REQUEST | Phases::WATCH | Phases::SETTLE,
            CacheStore::Redis(_) => Phases::REQUEST | Phases::WATCH | Phases::SETTLE_WAITS,
        }
    }

    async fn on_request(
        &self,
        request: &mut Request<'_>,
        held: &mut Held,
    ) -> Result<Verdict, GatewayError> {
        let facts = request.facts;
        if !facts.model.cache {
            return Ok(Verdict::Continue);
        }
        let format = match facts.op {
            Operation::ChatCompletions => ClientFormat::OpenAi,
            Operation::Messages => ClientFormat::Anthropic,
            Operation::Completions | Operation::Embeddings => return Ok(Verdict::Continue),
        };
        let control = facts
            .headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>();
        let no_store = control.iter().any(|d| d == "no-store");
        let no_cache = control.iter().any(|d| d == "no-cache");
        let key = CacheKey::of(&self.scope_id(facts.key), &facts.model.name, request.body());
        let (Some(key), false, 1) = (key, no_store, facts.head.choices) else {
            self.count(request, CacheResult::Bypass);
            return Ok(Verdict::Continue);
        };
        if !no_cache {
            let found = match self.get(&key).await {
                Ok(found) => found,
                Err(e) => {
                    // Skipped, never failed for: the request goes upstream, unrecorded.
                    self.failed("get", &e);
                    self.count(request, CacheResult::Bypass);
                    return Ok(Verdict::Continue);
                }
            };
            if let Some(cached) = found {
                self.count(request, CacheResult::Hit);
                let include_usage = facts.head.include_usage;
                return Ok(Verdict::Answer(render(
                    &cached,
                    format,
                    facts.head.stream,
                    include_usage,
                )));
            }
        }
        let flight = if self.settings.coalesce && !no_cache {
            match self.take_off(key, format, facts.head.stream).await {
                Ok(flight) => flight,
                Err(shared) => {
                    self.count(request, CacheResult::Coalesced);
                    return Ok(Verdict::Answer(shared));
                }
            }
        } else {
            None
        };
        let result = if no_cache {
            CacheResult::Bypass
        } else {
            CacheResult::Miss
        };
        self.count(request, result);
        *held.get_or_default::<Option<Recording>>() = Some(Recording {
            key,
            format,
            stream: facts.head.stream,
            answer: BytesMut::new(),
            complete: false,
            too_large: false,
            flight,
        });
        Ok(Verdict::Continue)
    }

    fn watch_chunk(&self, status: u16, chunk: &Bytes, last: bool, held: &mut Held) {
        let Some(Some(recording)) = held.get::<Option<Recording>>() else {
            return;
        };
        if status != 200 {
            // An error is no answer to share: the waiters try on their own.
            recording.land(false);
        } else if let Some((_, flight)) = &recording.flight {
            flight.push(chunk);
            if last {
                recording.land(true);
            }
        }
        if recording.answer.len() + chunk.len() > MAX_ANSWER_BYTES {
            recording.too_large = true;
            recording.answer = BytesMut::new();
        }
        if !recording.too_large {
            recording.answer.extend_from_slice(chunk);
        }
        recording.complete |= last;
    }

    async fn settle(&self, outcome: &Settlement<'_>, held: &mut Held) {
        let (CacheStore::Redis(store), Some((key, value))) =
            (&self.store, self.entry(outcome, held))
        else {
            return;
        };
        if let Err(e) = store.put(&key, &value, self.settings.ttl).await {
            self.failed("put", &e);
        }
    }

    fn settle_now(&self, outcome: &Settlement<'_>, held: &mut Held) {
        // The shared store is written only by `settle`: a request dropped before it is not
        // worth a wait.
        let CacheStore::Memory(store) = &self.store else {
            return;
        };
        if let Some((key, value)) = self.entry(outcome, held) {
            store.put(key, value.into(), self.settings.ttl, Instant::now());
            self.metrics.cache_bytes.set(store.bytes() as i64);
            self.metrics.cache_entries.set(store.entries() as i64);
        }
    }
}

/// The recorded answer in the chat model; `None` unless it is a complete, successful one.
fn read_answer(recording: &Recording) -> Option<ChatResponse> {
    let wire = match recording.format {
        ClientFormat::OpenAi => Wire::OpenAi,
        ClientFormat::Anthropic => Wire::Anthropic,
    };
    if !recording.stream {
        return match wire {
            Wire::Anthropic => anthropic::parse_response(&recording.answer).ok(),
            Wire::OpenAi | Wire::Gemini | Wire::Triton => {
                openai_upstream::parse_response(&recording.answer).ok()
            }
        };
    }
    let mut parser = match wire {
        Wire::Anthropic => UpstreamStream::Anthropic(Default::default()),
        Wire::OpenAi | Wire::Gemini | Wire::Triton => UpstreamStream::OpenAi(Default::default()),
    };
    let mut events = Vec::new();
    let mut sse = SseParser::new();
    let mut on_event =
        |event: tollgate_plugins::sse::Event<'_>| parser.on_event(event.data, &mut events);
    sse.feed(&recording.answer, &mut on_event);
    sse.finish(&mut on_event);
    let mut answer = ChatResponse {
        id: String::new(),
        model: String::new(),
        text: String::new(),
        tool_calls: Vec::new(),
        finish: FinishReason::Stop,
        usage: Usage::default(),
    };
    let mut finished = false;
    for event in events {
        match event {
            StreamEvent::Start { id, model } => {
                answer.id = id;
                answer.model = model;
            }
            StreamEvent::Text(text) => answer.text.push_str(&text),
            StreamEvent::ToolCallStart { index, id, name } => {
                if index != answer.tool_calls.len() {
                    return None;
                }
                answer.tool_calls.push(ToolCall {
                    id,
                    name,
                    arguments: String::new(),
                });
            }
            StreamEvent::ToolCallArguments { index, fragment } => answer
                .tool_calls
                .get_mut(index)?
                .arguments
                .push_str(&fragment),
            StreamEvent::Finish(reason) => {
                answer.finish = reason;
                finished = true;
            }
            StreamEvent::Usage(usage) => answer.usage = usage,
            StreamEvent::Error { .. } => return None,
        }
    }
    finished.then_some(answer)
}

fn finish_reason(name: &str) -> FinishReason {
    match name {
        "length" => FinishReason::Length,
        "tool_calls" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// A cached answer in the client's format and mode.
fn render(cached: &Cached, format: ClientFormat, stream: bool, include_usage: bool) -> Answer {
    let [input, cached_input, output] = cached.usage;
    let usage = Usage {
        input,
        cached_input,
        output,
    };
    let answer = ChatResponse {
        id: cached.id.clone(),
        model: cached.model.clone(),
        text: cached.text.clone(),
        tool_calls: cached
            .tool_calls
            .iter()
            .map(|(id, name, arguments)| ToolCall {
                id: id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            })
            .collect(),
        finish: finish_reason(&cached.finish),
        usage,
    };
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = match (format, stream) {
        (ClientFormat::OpenAi, false) => {
            Bytes::from(openai_format::render_response(&answer, created).to_string())
        }
        (ClientFormat::Anthropic, false) => {
            Bytes::from(anthropic_format::render_response(&answer, &answer.model).to_string())
        }
        (ClientFormat::OpenAi, true) => {
            let mut renderer =
                openai_format::StreamRenderer::new(&answer.model, created, include_usage);
            let mut out = BytesMut::new();
            for event in stream_events(&answer) {
                renderer.render(event, &mut out);
            }
            renderer.finish(&mut out);
            out.freeze()
        }
        (ClientFormat::Anthropic, true) => {
            let mut renderer = anthropic_format::StreamRenderer::new(&answer.model);
            let mut out = BytesMut::new();
            for event in stream_events(&answer) {
                renderer.render(event, &mut out);
            }
            renderer.finish(&mut out);
            out.freeze()
        }
    };
    Answer {
        status: 200,
        content_type: content_type(stream),
        body: AnswerBody::Whole(body),
        usage: Some(usage),
    }
}

fn content_type(stream: bool) -> &'static str {
    if stream {
        "text/event-stream"
    } else {
        "application/json"
    }
}

/// A whole answer as the events of its stream.
fn stream_events(answer: &ChatResponse) -> Vec<StreamEvent> {
    let mut events = vec![StreamEvent::Start {
        id: answer.id.clone(),
        model: answer.model.clone(),
    }];
    if !answer.text.is_empty() {
        events.push(StreamEvent::Text(answer.text.clone()));
    }
    for (index, call) in answer.tool_calls.iter().enumerate() {
        events.push(StreamEvent::ToolCallStart {
            index,
            id: call.id.clone(),
            name: call.name.clone(),
        });
        events.push(StreamEvent::ToolCallArguments {
            index,
            fragment: call.arguments.clone(),
        });
    }
    events.push(StreamEvent::Finish(answer.finish));
    events.push(StreamEvent::Usage(answer.usage));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached() -> Cached {
        Cached {
            id: "chatcmpl-1".into(),
            model: "gpt-4o".into(),
            text: "Hello there".into(),
            tool_calls: vec![(
                "call_1".into(),
                "weather".into(),
                r#"{"city":"Paris"}"#.into(),
            )],
            finish: "tool_calls".into(),
            usage: [12, 4, 7],
        }
    }

    #[test]
    fn an_answer_rendered_in_any_format_and_mode_reads_back_the_same() {
        for format in [ClientFormat::OpenAi, ClientFormat::Anthropic] {
            for stream in [false, true] {
                let rendered = render(&cached(), format, stream, true);
                let recording = Recording {
                    key: CacheKey([0; 32]),
                    format,
                    stream,
                    answer: match &rendered.body {
                        AnswerBody::Whole(body) => BytesMut::from(&body[..]),
                        AnswerBody::Stream(_) => panic!("a cached answer is whole"),
                    },
                    complete: true,
                    too_large: false,
                    flight: None,
                };
                let answer = read_answer(&recording)
                    .unwrap_or_else(|| panic!("{format:?} stream={stream}: unreadable"));
                let what = format!("{format:?} stream={stream}");
                assert_eq!(answer.text, "Hello there", "{what}");
                assert_eq!(answer.tool_calls.len(), 1, "{what}");
                assert_eq!(answer.tool_calls[0].name, "weather", "{what}");
                assert_eq!(
                    answer.tool_calls[0].arguments, r#"{"city":"Paris"}"#,
                    "{what}"
                );
                assert_eq!(answer.finish, FinishReason::ToolCalls, "{what}");
                assert_eq!(rendered.usage.map(|u| u.output), Some(7), "{what}");
            }
        }
    }

    #[test]
    fn a_stream_without_its_finish_or_with_an_error_is_not_an_answer() {
        let AnswerBody::Whole(full) = render(&cached(), ClientFormat::OpenAi, true, false).body
        else {
            panic!("a cached answer is whole");
        };
        let text = std::str::from_utf8(&full).unwrap();
        let cut = text.find("\"finish_reason\":\"tool_calls\"").unwrap();
        let cut = &text[..text[..cut].rfind("data: ").unwrap()];
        let error = format!("{cut}data: {{\"error\":{{\"message\":\"boom\"}}}}\n\n");
        for answer in [cut.to_string(), error] {
            let recording = Recording {
                key: CacheKey([0; 32]),
                format: ClientFormat::OpenAi,
                stream: true,
                answer: BytesMut::from(answer.as_bytes()),
                complete: true,
                too_large: false,
                flight: None,
            };
            assert!(read_answer(&recording).is_none(), "{answer}");
        }
    }
}
