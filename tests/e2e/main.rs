//! End-to-end tests: the real `tollgate` binary, mock providers as separate processes, and
//! plain HTTP over loopback.

mod harness;

mod bad_input;
mod cache;
mod cli;
mod context;
mod errors;
mod failover;
mod faults;
mod geo;
mod gpu;
mod hardening;
mod k6;
mod ledger;
mod limits;
mod metering;
mod providers;
mod relay;
mod reload;
mod routing;
mod scripted;
mod sdk;
mod security;
mod tls;
mod translate;
