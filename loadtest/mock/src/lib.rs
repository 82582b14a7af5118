//! Mock model providers for Tollgate's demo, end-to-end tests and benchmarks.
//!
//! A mock speaks a provider's wire format exactly (OpenAI and Azure OpenAI
//! paths, vLLM's extra endpoints, Anthropic Messages, Gemini, Triton's
//! generate extension) with tunable latency, pacing, errors and dropped
//! streams, and records what it received under `/mock/requests` and
//! `/mock/stats`. `GET`/`POST /mock/config` read and change its behaviour
//! while it runs. A simulated GPU server ([`GpuSim`]) can pace generation
//! and drive the vLLM and Triton metrics with a real queue, KV cache and
//! prefix cache.

mod anthropic;
mod auth;
mod body;
mod cli;
mod config;
mod control;
mod errors;
mod gemini;
mod gpu;
mod openai;
mod prompt;
mod record;
mod router;
mod server;
mod state;
mod stream;
mod text;
mod triton;
mod vllm;

pub use cli::{run_foreground, MockArgs};
pub use config::{MockConfig, MockKind, UnknownKind, DEFAULT_MODEL};
pub use gpu::GpuSim;
pub use server::{bind, serve, spawn, MockHandle, MockServer};
