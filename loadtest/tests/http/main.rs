//! The mock over real loopback HTTP.

mod binary;
mod client;
mod openai;
mod streams;
