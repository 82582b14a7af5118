//! Tollgate: an OpenAI-compatible AI gateway on Pingora.

pub mod admin;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod drain;
pub mod error;
pub mod health;
pub mod idle;
pub mod ledger;
pub mod metering;
pub mod metrics;
pub mod periodic;
pub mod pipeline;
pub mod providers;
pub mod proxy;
pub mod router;
pub mod scrape;
pub mod secret;
pub mod server;
pub mod stats;
pub mod tokens;
pub mod upstream;
