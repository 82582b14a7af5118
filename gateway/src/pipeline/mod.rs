//! The request pipeline (DESIGN §11.1): every concern that is not routing or translation is a
//! [`Plugin`], run by the proxy core at fixed points of each request without the core naming
//! any of them.
//!
//! The phases, and the order plugins run in — decided here and nowhere else
//! ([`Pipeline::for_runtime`]):
//!
//! ```text
//! on_request   before routing: limits (key and team reservations), cache (a hit answers),
//!              then a custom build's plugins in the order their sections appear under
//!              `plugins:`
//!              each may answer, refuse, rewrite the body, or narrow the eligible targets
//! on_attempt   before each upstream attempt: limits (the provider's own quota)
//!              each may pass the target over; `attempt_failed` follows an attempt that
//!              failed before anything reached the client
//! on_chunk     each chunk in the client's format, before it leaves: a custom build's plugins
//!              each may rewrite it, hold it back (send nothing now) or end the stream
//! watch_chunk  then each chunk as it leaves, read only: cache (records a miss's answer)
//! settle       once per request however it ended, in reverse order:
//!              access log → ledger → custom plugins → cache (stores a complete answer)
//!              → limits (reservations reconciled; this may wait on Redis, so it comes last)
//! ```
//!
//! A plugin names the phases it takes part in ([`Phases`]) and is called in those only.
//! It keeps what it needs across one request's phases in its [`Held`] slot; the core
//! never looks inside. A slot is dropped with the request, so a plugin that must give
//! something back (a reservation) can do it from the slot's destructor as a last resort.

mod access_log;
mod cache;
mod coalesce;
mod extensions;
mod ledger;
mod limits;
mod quota;

use crate::config::runtime::Key;
use crate::config::Runtime;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::providers::chat::Usage;
use crate::providers::Operation;
use crate::proxy::request::RequestHead;
use crate::router::{Model, Target};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use std::any::Any;
use std::sync::Arc;
use tollgate_plugins::ledger::Ledger;
use tollgate_plugins::limits::Limiter;
use tollgate_plugins::Settlement;

pub use access_log::AccessLogPlugin;
pub use cache::{CacheEngine, CachePlugin, CacheStore};
pub use coalesce::Flights;
pub use extensions::{Extensions, PluginFactory};
pub use ledger::LedgerPlugin;
pub use limits::LimitsPlugin;

/// What `on_request` decided.
pub enum Verdict {
    /// On to the next plugin, then routing.
    Continue,
    /// Answer the client now; no upstream is called and later plugins do not run.
    Answer(Answer),
}

/// An answer a plugin gives instead of an upstream's.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: AnswerBody,
    /// The tokens the answer stands for, billed at no cost (a cached answer's).
    pub usage: Option<Usage>,
}

pub enum AnswerBody {
    Whole(Bytes),
    /// Sent chunk by chunk as it comes; an error ends it with one error event in the
    /// client's format.
    Stream(Box<dyn AnswerStream>),
}

/// The chunks of an answer a plugin streams.
#[async_trait]
pub trait AnswerStream: Send {
    /// The next chunk; `None` at the answer's end.
    async fn next(&mut self) -> Option<Result<Bytes, GatewayError>>;
}

/// What `on_chunk` does with a chunk on its way to the client.
pub enum ChunkStep {
    /// Send these bytes (the chunk, rewritten, or nothing for now).
    Send(Bytes),
    /// Send these bytes, then end the stream: nothing after them reaches the client.
    End(Bytes),
}

/// What is known of a request when the request phase runs.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    pub runtime: &'a Runtime,
    pub key: Option<&'a Key>,
    pub model: &'a Model,
    pub op: Operation,
    pub head: &'a RequestHead,
    pub headers: &'a http::HeaderMap,
    pub request_id: &'a str,
}

/// One request as the request phase sees it, before routing.
pub struct Request<'a> {
    pub facts: RequestFacts<'a>,
    body: Bytes,
    rewritten: bool,
    eligible: Vec<bool>,
    marks: &'a mut Marks,
}

/// What plugins leave on a request for the core to show: response headers, and what the
/// cache made of it.
#[derive(Debug, Default)]
pub struct Marks {
    /// Added to the client's response, whatever it turns out to be.
    pub headers: Vec<(&'static str, String)>,
    pub cache: CacheResult,
}

/// What a cache made of a request: the `cache` label of `tollgate_requests_total` and of
/// the ledger's row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheResult {
    /// No cache looked at the request.
    #[default]
    Off,
    Hit,
    Miss,
    Bypass,
    Coalesced,
}

impl CacheResult {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Off => "off",
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
            CacheResult::Coalesced => "coalesced",
        }
    }
}

impl<'a> Request<'a> {
    /// The request body as it will be routed (a rewrite by an earlier plugin included).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Replaces the body; the core parses it again before routing.
    pub fn rewrite(&mut self, body: Bytes) {
        self.body = body;
        self.rewritten = true;
    }

    /// Rules out the model's target at `index` (in `model.targets` order), failover included.
    pub fn exclude_target(&mut self, index: usize) {
        if let Some(eligible) = self.eligible.get_mut(index) {
            *eligible = false;
        }
    }

    /// Whether the model's target at `index` may still be tried.
    pub fn is_eligible(&self, index: usize) -> bool {
        self.eligible.get(index).copied().unwrap_or(false)
    }

    /// Headers for the client's response, whatever it turns out to be.
    pub fn add_response_headers(&mut self, headers: Vec<(&'static str, String)>) {
        if self.marks.headers.is_empty() {
            self.marks.headers = headers;
        } else {
            self.marks.headers.extend(headers);
        }
    }

    /// What a cache made of the request.
    pub fn set_cache_result(&mut self, result: CacheResult) {
        self.marks.cache = result;
    }
}

/// One upstream attempt, as `on_attempt` sees it.
pub struct Attempt<'a> {
    pub model: &'a Model,
    pub target: &'a Target,
    pub op: Operation,
    pub head: &'a RequestHead,
    pub body_len: usize,
    pub request_id: &'a str,
}

/// The phases a plugin takes part in. The pipeline calls a plugin in these only, so a phase
/// no plugin uses costs nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    /// `on_request`.
    pub const REQUEST: Phases = Phases(1);
    /// `on_attempt` and `attempt_failed`.
    pub const ATTEMPT: Phases = Phases(1 << 1);
    /// `on_chunk`: may rewrite the answer, so the answer is re-framed (chunked).
    pub const CHUNK: Phases = Phases(1 << 2);
    /// `watch_chunk`: reads the answer as it leaves, changing nothing.
    pub const WATCH: Phases = Phases(1 << 5);
    /// `settle_now`, called at the end of every request.
    pub const SETTLE: Phases = Phases(1 << 3);
    /// `settle`, awaited at the end of a request that reaches it; `settle_now` still serves
    /// a request dropped before.
    pub const SETTLE_WAITS: Phases = Phases(1 << 4);

    pub fn has(self, phase: Phases) -> bool {
        self.0 & phase.0 == phase.0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;

    fn bitor(self, other: Phases) -> Phases {
        Phases(self.0 | other.0)
    }
}

/// A plugin's state for one request, kept between its phases.
#[derive(Default)]
pub struct Held(Option<Box<dyn Any + Send + Sync>>);

impl Held {
    /// The plugin's state, created on first use.
    pub fn get_or_default<T: Any + Send + Sync + Default>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|held| held.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        self.0
            .as_mut()
            .and_then(|held| held.downcast_mut())
            .expect("the slot holds a T")
    }

    /// The plugin's state, when it has any.
    pub fn get<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.0.as_mut().and_then(|held| held.downcast_mut())
    }
}

/// One concern of every request. A plugin names the phases it takes part in and writes
/// those methods; the others have defaults that do nothing and are never called.
#[async_trait]
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    fn phases(&self) -> Phases;

    /// Before routing. An error answers the client with it (a refusal, a block).
    async fn on_request(
        &self,
        _request: &mut Request<'_>,
        _held: &mut Held,
    ) -> Result<Verdict, GatewayError> {
        Ok(Verdict::Continue)
    }

    /// Before each attempt. An error passes this target over; the request goes on to the
    /// next, and answers with the error only if no attempt is made at all.
    async fn on_attempt(
        &self,
        _attempt: &Attempt<'_>,
        _held: &mut Held,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// The attempt this plugin last let through failed before anything reached the client.
    async fn attempt_failed(&self, _held: &mut Held) {}

    /// Each chunk of the answer in the client's format, before it leaves; `last` for the
    /// answer's final bytes.
    fn on_chunk(&self, chunk: Bytes, _last: bool, _held: &mut Held) -> ChunkStep {
        ChunkStep::Send(chunk)
    }

    /// Each chunk of the answer as it leaves, after every `on_chunk`, with the answer's
    /// status; `last` once the answer is complete (a cut answer never sees it).
    fn watch_chunk(&self, _status: u16, _chunk: &Bytes, _last: bool, _held: &mut Held) {}

    /// Once per request, after the last byte or the disconnect, for a plugin that must wait
    /// there (on Redis, say): `Phases::SETTLE_WAITS`.
    async fn settle(&self, _outcome: &Settlement<'_>, _held: &mut Held) {}

    /// Once per request without waiting: at its end for `Phases::SETTLE`, and for
    /// `Phases::SETTLE_WAITS` from the destructor of a request that never reached its end (a
    /// panic, a task dropped at shutdown).
    fn settle_now(&self, _outcome: &Settlement<'_>, _held: &mut Held) {}
}

/// What plugins are built from that lives as long as the process (not one config).
pub struct Engines {
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    pub ledger: Option<Arc<Ledger>>,
    /// The answer cache's store and flights, when the config at startup had a cache.
    pub cache: Option<CacheEngine>,
    /// The plugins a custom build adds.
    pub extensions: Extensions,
}

/// The plugins of one config snapshot, in the order they run.
pub struct Pipeline {
    plugins: Vec<Arc<dyn Plugin>>,
    /// Each plugin's phases, read once.
    phases: Vec<Phases>,
    /// Any plugin's.
    any: Phases,
}

impl Pipeline {
    /// The one place the order is decided.
    pub fn for_runtime(rt: &Runtime, engines: &Engines) -> Pipeline {
        let mut plugins: Vec<Arc<dyn Plugin>> = vec![Arc::new(LimitsPlugin::new(
            engines.limiter.clone(),
            engines.metrics.clone(),
        ))];
        if let (Some(engine), Some(settings)) = (&engines.cache, rt.cache) {
            plugins.push(Arc::new(CachePlugin::new(
                engine.clone(),
                engines.metrics.clone(),
                settings,
            )));
        }
        match engines.extensions.build(rt) {
            Ok(extensions) => plugins.extend(extensions),
            // Checked before the config was swapped in; a failure now leaves the plugin out.
            Err(e) => log::error!("{e}"),
        }
        if let Some(ledger) = &engines.ledger {
            plugins.push(Arc::new(LedgerPlugin::new(ledger.clone())));
        }
        if rt.access_log {
            plugins.push(Arc::new(AccessLogPlugin));
        }
        Pipeline::new(plugins)
    }

    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Pipeline {
        let phases: Vec<Phases> = plugins.iter().map(|p| p.phases()).collect();
        let any = phases.iter().fold(Phases::default(), |any, p| any | *p);
        Pipeline {
            plugins,
            phases,
            any,
        }
    }

    /// The plugins that take part in `phase`, each with its slot.
    fn taking_part<'p, 'h>(
        &'p self,
        phase: Phases,
        held: &'h mut [Held],
    ) -> impl DoubleEndedIterator<Item = (&'p Arc<dyn Plugin>, &'h mut Held)> {
        self.plugins
            .iter()
            .zip(&self.phases)
            .zip(held)
            .filter(move |((_, phases), _)| phases.has(phase))
            .map(|((plugin, _), held)| (plugin, held))
    }

    /// An empty slot per plugin, for one request.
    pub fn slots(&self) -> Vec<Held> {
        self.plugins.iter().map(|_| Held::default()).collect()
    }

    /// Runs `on_request` in order; the first answer or error ends it.
    pub async fn on_request(
        &self,
        request: &mut Request<'_>,
        held: &mut [Held],
    ) -> Result<Verdict, GatewayError> {
        if !self.any.has(Phases::REQUEST) {
            return Ok(Verdict::Continue);
        }
        for (plugin, held) in self.taking_part(Phases::REQUEST, held) {
            if let Verdict::Answer(answer) = plugin.on_request(request, held).await? {
                return Ok(Verdict::Answer(answer));
            }
        }
        Ok(Verdict::Continue)
    }

    /// Runs `on_attempt` in order; on a refusal, the plugins that already agreed are told
    /// the attempt will not happen.
    pub async fn on_attempt(
        &self,
        attempt: &Attempt<'_>,
        held: &mut [Held],
    ) -> Result<(), GatewayError> {
        if !self.any.has(Phases::ATTEMPT) {
            return Ok(());
        }
        for i in 0..self.plugins.len() {
            if !self.phases[i].has(Phases::ATTEMPT) {
                continue;
            }
            if let Err(refusal) = self.plugins[i].on_attempt(attempt, &mut held[i]).await {
                for (plugin, held) in self.taking_part(Phases::ATTEMPT, &mut held[..i]) {
                    plugin.attempt_failed(held).await;
                }
                return Err(refusal);
            }
        }
        Ok(())
    }

    pub async fn attempt_failed(&self, held: &mut [Held]) {
        for (plugin, held) in self.taking_part(Phases::ATTEMPT, held) {
            plugin.attempt_failed(held).await;
        }
    }

    /// Whether any plugin looks at the answer's chunks (else the relay skips the phase).
    pub fn sees_chunks(&self) -> bool {
        self.any.has(Phases::CHUNK) || self.any.has(Phases::WATCH)
    }

    /// Whether any plugin may rewrite the answer's chunks (so its length is not known).
    pub fn rewrites_chunks(&self) -> bool {
        self.any.has(Phases::CHUNK)
    }

    /// Runs `on_chunk` in order: each plugin sees what the one before let through. `None`
    /// unless a plugin ended the stream.
    pub fn on_chunk(
        &self,
        status: u16,
        mut chunk: Bytes,
        last: bool,
        held: &mut [Held],
    ) -> (Bytes, bool) {
        let mut ended = false;
        for (plugin, held) in self.taking_part(Phases::CHUNK, held) {
            match plugin.on_chunk(chunk, last, held) {
                ChunkStep::Send(bytes) => chunk = bytes,
                ChunkStep::End(bytes) => {
                    chunk = bytes;
                    ended = true;
                    break;
                }
            }
        }
        // An answer a plugin ended is not complete: watchers never see it end.
        for (plugin, held) in self.taking_part(Phases::WATCH, held) {
            plugin.watch_chunk(status, &chunk, last && !ended, held);
        }
        (chunk, ended)
    }

    /// Settles every plugin, in reverse order.
    pub async fn settle(&self, outcome: &Settlement<'_>, held: &mut [Held]) {
        let plugins = self.plugins.iter().zip(&self.phases).zip(held).rev();
        for ((plugin, phases), held) in plugins {
            if phases.has(Phases::SETTLE_WAITS) {
                plugin.settle(outcome, held).await;
            } else if phases.has(Phases::SETTLE) {
                plugin.settle_now(outcome, held);
            }
        }
    }

    /// Settles every plugin without waiting, in reverse order.
    pub fn settle_now(&self, outcome: &Settlement<'_>, held: &mut [Held]) {
        let plugins = self.plugins.iter().zip(&self.phases).zip(held).rev();
        for ((plugin, phases), held) in plugins {
            if phases.has(Phases::SETTLE) || phases.has(Phases::SETTLE_WAITS) {
                plugin.settle_now(outcome, held);
            }
        }
    }
}

/// The pipeline of the config snapshot in force, built once per snapshot.
pub struct Pipelines {
    engines: Engines,
    current: ArcSwapOption<(Arc<Runtime>, Arc<Pipeline>)>,
}

impl Pipelines {
    pub fn new(engines: Engines) -> Pipelines {
        Pipelines {
            engines,
            current: ArcSwapOption::empty(),
        }
    }

    pub fn for_runtime(&self, rt: &Arc<Runtime>) -> Arc<Pipeline> {
        if let Some(current) = self.current.load().as_ref() {
            if Arc::ptr_eq(&current.0, rt) {
                return current.1.clone();
            }
        }
        let pipeline = Arc::new(Pipeline::for_runtime(rt, &self.engines));
        self.current
            .store(Some(Arc::new((rt.clone(), pipeline.clone()))));
        pipeline
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.engines.metrics
    }
}

impl<'a> Request<'a> {
    pub fn new(facts: RequestFacts<'a>, body: Bytes, marks: &'a mut Marks) -> Request<'a> {
        Request {
            eligible: vec![true; facts.model.targets.len()],
            facts,
            body,
            rewritten: false,
            marks,
        }
    }

    /// The body to route, whether a plugin rewrote it, and the targets left eligible.
    pub fn into_parts(self) -> (Bytes, bool, Vec<bool>) {
        (self.body, self.rewritten, self.eligible)
    }
}
