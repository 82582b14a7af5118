//! The mock over real loopback HTTP.

mod binary;
mod client;
mod control;
mod openai;
mod streams;
