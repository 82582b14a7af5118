//! The engines behind the gateway's plugins, free of HTTP and of the gateway's own types:
//! limits and budgets, the usage ledger, the access log line, the SSE parser. The gateway's
//! request pipeline (`tollgate::pipeline`) runs them at the phases of a request.

pub mod access_log;
pub mod cache;
pub mod ledger;
pub mod limits;
pub mod sse;

use std::time::{Duration, SystemTime};

/// Token usage, normalised: `input` counts every prompt token, cached ones included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
}

/// What a request consumed, as metered.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metered {
    pub usage: Usage,
    /// Counted with the tokenizer because the upstream reported no usage.
    pub estimated: bool,
    pub cost_usd: f64,
}

/// How one data-plane request ended, as plugins see it in the settle phase.
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    pub request_id: &'a str,
    /// When the request arrived.
    pub started_at: SystemTime,
    pub method: &'a str,
    pub path: &'a str,
    /// The virtual key's id, when the gateway has keys.
    pub key_id: Option<&'a str>,
    pub team: Option<&'a str>,
    pub project: Option<&'a str>,
    /// The client's `x-tollgate-tags`, as sent.
    pub tags: Option<&'a str>,
    /// The model the client asked for.
    pub model: Option<&'a str>,
    /// The provider that answered, and the model name it was sent.
    pub provider: Option<&'a str>,
    pub upstream_model: Option<&'a str>,
    /// The status sent to the client (0 when none could be sent).
    pub status: u16,
    pub attempts: u32,
    pub duration: Duration,
    /// Time to the first token: the response header for a whole answer, the first chunk
    /// for a stream.
    pub time_to_first_token: Option<Duration>,
    /// Time inside the gateway, upstream waiting excluded.
    pub overhead: Duration,
    /// `hit`, `miss`, `bypass`, or `off` when no cache is configured.
    pub cache: &'a str,
    /// Tokens and cost, when an upstream answered.
    pub metered: Option<Metered>,
}
