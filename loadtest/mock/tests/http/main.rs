//! The mock over real loopback HTTP.

mod anthropic;
mod binary;
mod client;
mod control;
mod gemini;
mod gpu;
mod openai;
mod streams;
mod triton;
