//! The mock over real loopback HTTP.

mod anthropic;
mod binary;
mod client;
mod control;
mod gemini;
mod openai;
mod streams;
mod triton;
