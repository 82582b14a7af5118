//! Providers: a configured provider (`Provider`: its kind, endpoints pool, credentials,
//! timeouts, quota) and, per kind, its adapter modules: pure functions between the gateway's
//! chat model and the upstream's wire format (request in, request out; chunk in, chunks out).

pub mod anthropic;
pub mod anthropic_format;
pub mod chat;
pub mod gemini;
pub mod openai_compat;
pub mod openai_format;
pub mod openai_upstream;
pub mod transcode;
pub mod triton;
pub mod usage;

use crate::catalog::Tokenizer;
use crate::secret::Secret;
use crate::upstream::state::OutlierPolicy;
use crate::upstream::{Endpoint, Pool};
use chat::{ChatRequest, ChatResponse};
use pingora::http::RequestHeader;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tollgate_plugins::limits::Quota;
use transcode::UpstreamStream;
use triton::PromptTemplate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Openai,
    AzureOpenai,
    Vllm,
    Ollama,
    Anthropic,
    Gemini,
    Triton,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::Openai,
        ProviderKind::AzureOpenai,
        ProviderKind::Vllm,
        ProviderKind::Ollama,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Triton,
    ];

    /// The wire format it speaks. Everything else a kind is asked is answered from this or
    /// below, each by one exhaustive match: a new kind cannot slip through a catch-all.
    pub fn wire(self) -> Wire {
        match self {
            ProviderKind::Openai
            | ProviderKind::AzureOpenai
            | ProviderKind::Vllm
            | ProviderKind::Ollama => Wire::OpenAi,
            ProviderKind::Anthropic => Wire::Anthropic,
            ProviderKind::Gemini => Wire::Gemini,
            ProviderKind::Triton => Wire::Triton,
        }
    }

    /// Takes OpenAI's wire format as it is (only the model name changes).
    pub fn speaks_openai(self) -> bool {
        self.wire() == Wire::OpenAi
    }

    /// Whether a stream can report its running usage on every chunk (vLLM's
    /// `stream_options.continuous_usage_stats`), so that a stream cut short is still billed
    /// from the provider's own count.
    pub fn reports_running_usage(self) -> bool {
        match self {
            ProviderKind::Vllm => true,
            ProviderKind::Openai
            | ProviderKind::AzureOpenai
            | ProviderKind::Ollama
            | ProviderKind::Anthropic
            | ProviderKind::Gemini
            | ProviderKind::Triton => false,
        }
    }

    /// The header its API key goes in, and the scheme before the key.
    pub fn credential_header(self) -> (&'static str, &'static str) {
        match self {
            ProviderKind::Openai | ProviderKind::Vllm | ProviderKind::Ollama => {
                ("authorization", "Bearer ")
            }
            ProviderKind::AzureOpenai => ("api-key", ""),
            ProviderKind::Anthropic => ("x-api-key", ""),
            ProviderKind::Gemini => ("x-goog-api-key", ""),
            // Triton has no auth of its own; a key is for a proxy in front of it.
            ProviderKind::Triton => ("authorization", "Bearer "),
        }
    }

    /// Whether this kind can serve `op` at all.
    pub fn supports(self, op: Operation) -> bool {
        self.speaks_openai() || matches!(op, Operation::ChatCompletions | Operation::Messages)
    }

    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::AzureOpenai => "azure-openai",
            ProviderKind::Vllm => "vllm",
            ProviderKind::Ollama => "ollama",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Triton => "triton",
        }
    }

    pub fn parse(text: &str) -> Option<ProviderKind> {
        Self::ALL.into_iter().find(|k| k.name() == text)
    }
}

/// The wire formats providers speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI's chat completions, completions and embeddings.
    OpenAi,
    Anthropic,
    Gemini,
    Triton,
}

impl Wire {
    /// Whether its answers carry the provider's own usage; without it, the gateway counts
    /// the tokens itself and marks them estimated.
    pub fn reports_usage(self) -> bool {
        match self {
            Wire::OpenAi | Wire::Anthropic | Wire::Gemini => true,
            Wire::Triton => false,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How long each phase of an upstream exchange may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Until the response header (for a non-stream request, the whole generation).
    pub first_token: Duration,
    /// Between two body chunks.
    pub idle: Duration,
    /// The whole exchange, relay included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_token: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// The provider's own rate limits, which the gateway keeps under by routing elsewhere.
    pub quota: Option<Quota>,
    pub pool: Arc<Pool>,
    pub api_key: Option<Secret>,
    pub api_version: Option<String>,
    pub region: Option<String>,
    pub timeouts: Timeouts,
    pub outlier: OutlierPolicy,
    pub health_check: Option<HealthCheck>,
    /// Where and how often its servers' own load is read.
    pub load_metrics: Option<LoadMetrics>,
}

/// Scraping a GPU server's Prometheus metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadMetrics {
    pub path: String,
    /// Another port than the endpoint's (Triton serves metrics on 8002).
    pub port: Option<u16>,
    pub every: Duration,
    pub timeout: Duration,
}

impl LoadMetrics {
    /// A scrape older than this reads as unknown, not as idle.
    pub fn fresh_for(&self) -> Duration {
        self.every * 3 + self.timeout
    }
}

/// Active health checking of a provider's endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub every: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

impl ProviderKind {
    /// What a health check asks for when the config names no path.
    pub fn default_health_path(self) -> &'static str {
        match self {
            ProviderKind::Vllm => "/health",
            ProviderKind::Ollama => "/api/version",
            ProviderKind::Openai | ProviderKind::AzureOpenai | ProviderKind::Anthropic => {
                "/v1/models"
            }
            ProviderKind::Gemini => "/v1beta/models",
            ProviderKind::Triton => "/v2/health/ready",
        }
    }
}

/// A JSON `POST` to `path` on `endpoint`, with the headers every provider needs; the caller
/// adds the credential in the provider's own header.
pub(crate) fn json_post(
    endpoint: &Endpoint,
    path: &str,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let mut req = RequestHeader::build("POST", path.as_bytes(), Some(6))?;
    req.insert_header("host", &endpoint.authority)?;
    req.insert_header("content-type", "application/json")?;
    req.insert_header("content-length", body_len.to_string())?;
    req.insert_header(
        "user-agent",
        concat!("tollgate/", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(req)
}

/// A model or deployment name as one path segment: anything outside the unreserved set is
/// escaped, so a `/` or space in it cannot change the route.
pub(crate) fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The provider's API key, when it has one, in the header its kind expects.
fn insert_credential(req: &mut RequestHeader, provider: &Provider) -> pingora::Result<()> {
    if let Some(key) = &provider.api_key {
        let (header, scheme) = provider.kind.credential_header();
        req.insert_header(header, format!("{scheme}{}", key.expose()))?;
    }
    Ok(())
}

/// The upstream request header for one attempt, in the provider's own dialect.
pub fn request_header(
    provider: &Provider,
    endpoint: &Endpoint,
    op: Operation,
    upstream_model: &str,
    stream: bool,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    match provider.kind.wire() {
        Wire::Anthropic => anthropic::request_header(provider, endpoint, body_len),
        Wire::Gemini => {
            gemini::request_header(provider, endpoint, upstream_model, stream, body_len)
        }
        Wire::Triton => {
            triton::request_header(provider, endpoint, upstream_model, stream, body_len)
        }
        Wire::OpenAi => {
            openai_compat::request_header(provider, endpoint, op, upstream_model, body_len)
        }
    }
}

/// The wire format a client speaks; answers go back in it whatever the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFormat {
    OpenAi,
    Anthropic,
}

impl ClientFormat {
    pub fn for_op(op: Operation) -> ClientFormat {
        match op {
            Operation::Messages => ClientFormat::Anthropic,
            _ => ClientFormat::OpenAi,
        }
    }

    /// The client's request in the gateway's chat model.
    pub fn parse_request(self, body: &[u8]) -> Result<ChatRequest, crate::error::GatewayError> {
        match self {
            ClientFormat::OpenAi => openai_format::parse_request(body),
            ClientFormat::Anthropic => anthropic_format::parse_request(body),
        }
    }

    /// Whether a provider of `kind` answers in this format already (bytes pass through).
    pub fn native_to(self, kind: ProviderKind) -> bool {
        match self {
            ClientFormat::OpenAi => kind.wire() == Wire::OpenAi,
            ClientFormat::Anthropic => kind.wire() == Wire::Anthropic,
        }
    }
}

/// How a provider answers, for translating it into the client's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    Gemini,
    Triton {
        template: PromptTemplate,
        tokenizer: Tokenizer,
    },
}

/// What a translation needs to know of its target: the model name sent upstream, and what
/// that model's kind wants beside it.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamModel<'a> {
    pub name: &'a str,
    /// `max_tokens` for providers that require one when the client sets none.
    pub max_tokens_default: u64,
    /// How chat turns become a Triton prompt.
    pub prompt_template: PromptTemplate,
    /// How the gateway counts the model's tokens.
    pub tokenizer: Tokenizer,
}

impl Dialect {
    pub fn wire(self) -> Wire {
        match self {
            Dialect::OpenAi => Wire::OpenAi,
            Dialect::Anthropic => Wire::Anthropic,
            Dialect::Gemini => Wire::Gemini,
            Dialect::Triton { .. } => Wire::Triton,
        }
    }

    /// The request body for `upstream` in this dialect, and the dialect to read answers in.
    pub fn translate(
        kind: ProviderKind,
        chat: &ChatRequest,
        upstream: UpstreamModel<'_>,
    ) -> (Dialect, serde_json::Value) {
        match kind.wire() {
            Wire::Anthropic => (
                Dialect::Anthropic,
                anthropic::request_body(chat, upstream.name, upstream.max_tokens_default),
            ),
            Wire::Gemini => (Dialect::Gemini, gemini::request_body(chat)),
            Wire::Triton => (
                Dialect::Triton {
                    template: upstream.prompt_template,
                    tokenizer: upstream.tokenizer,
                },
                triton::request_body(chat, upstream.prompt_template),
            ),
            Wire::OpenAi => (
                Dialect::OpenAi,
                openai_upstream::request_body(chat, upstream.name),
            ),
        }
    }

    /// A whole answer in the gateway's model.
    pub fn parse_response(self, body: &[u8], chat: &ChatRequest) -> Result<ChatResponse, String> {
        match self {
            Dialect::OpenAi => openai_upstream::parse_response(body),
            Dialect::Anthropic => anthropic::parse_response(body),
            Dialect::Gemini => gemini::parse_response(body),
            Dialect::Triton {
                template,
                tokenizer,
            } => triton::parse_response(body, chat, template, tokenizer),
        }
    }

    /// An error body's message and OpenAI error type.
    pub fn error_message(self, body: &[u8]) -> Option<(String, String)> {
        match self {
            Dialect::OpenAi => openai_upstream::error_message(body),
            Dialect::Anthropic => anthropic::error_message(body),
            Dialect::Gemini => gemini::error_message(body),
            Dialect::Triton { .. } => triton::error_message(body),
        }
    }

    /// The parser for this dialect's stream events.
    pub fn stream(self, chat: &ChatRequest) -> UpstreamStream {
        match self {
            Dialect::OpenAi => UpstreamStream::OpenAi(Default::default()),
            Dialect::Anthropic => UpstreamStream::Anthropic(Default::default()),
            Dialect::Gemini => UpstreamStream::Gemini(Default::default()),
            Dialect::Triton {
                template,
                tokenizer,
            } => {
                let input = crate::tokens::estimate(tokenizer, &template.render(chat));
                UpstreamStream::Triton(triton::StreamParser::new(input, chat.max_tokens, tokenizer))
            }
        }
    }
}

/// The API operation a client called; each adapter maps it to its own path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API, for Anthropic-format clients.
    Messages,
}

impl Operation {
    pub fn from_path(path: &str) -> Option<Operation> {
        match path {
            "/v1/chat/completions" => Some(Operation::ChatCompletions),
            "/v1/completions" => Some(Operation::Completions),
            "/v1/embeddings" => Some(Operation::Embeddings),
            "/v1/messages" => Some(Operation::Messages),
            _ => None,
        }
    }
}

/// Fixtures for the adapters' header tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Provider, ProviderKind, Timeouts};
    use crate::secret::Secret;
    use crate::upstream::{Endpoint, Pool};
    use pingora::http::RequestHeader;
    use std::sync::Arc;
    use std::time::Duration;

    /// A provider of `kind` with one endpoint at `base`, holding `key`.
    pub fn provider(
        kind: ProviderKind,
        base: &str,
        key: Option<&str>,
    ) -> (Provider, Arc<Endpoint>) {
        let endpoint = Arc::new(
            Endpoint::parse(base, Duration::from_secs(1), Duration::from_secs(10)).unwrap(),
        );
        let provider = Provider {
            name: "p".into(),
            kind,
            quota: None,
            pool: Arc::new(Pool::fixed(vec![endpoint.clone()])),
            api_key: key.map(|k| Secret::new(k.into())),
            api_version: None,
            region: None,
            timeouts: Timeouts::default(),
            outlier: Default::default(),
            health_check: None,
            load_metrics: None,
        };
        (provider, endpoint)
    }

    /// A request header's value as text.
    pub fn header(req: &RequestHeader, name: &str) -> Option<String> {
        req.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
}
