//! Request/response plugins. The gateway runs the configured plugins, in config order, at
//! each phase they take part in; each plugin is one small type with one job.

pub mod access_log;
pub mod sse;

use std::time::Duration;

/// How one data-plane request ended, as plugins see it in the settle phase.
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The virtual key's id, when the gateway has keys.
    pub key_id: Option<&'a str>,
    /// The model the client asked for.
    pub model: Option<&'a str>,
    /// The provider that answered, and the model name it was sent.
    pub provider: Option<&'a str>,
    pub upstream_model: Option<&'a str>,
    /// The status sent to the client (0 when none could be sent).
    pub status: u16,
    pub attempts: u32,
    pub duration: Duration,
    /// Time inside the gateway, upstream waiting excluded.
    pub overhead: Duration,
}

pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Called once per request after the response ended (or failed).
    fn settle(&self, outcome: &Settlement);
}
