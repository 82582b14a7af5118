//! The usage ledger's life in the gateway: opened at startup, closed once the requests of a
//! graceful shutdown have finished, and read by `GET /admin/usage`.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntGauge;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tollgate_plugins::ledger::{parse_time, GroupBy, Ledger, UsageQuery};

/// How long the last batch may take to commit when the process ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the ledger waits at the end for requests whose tasks are being dropped to settle.
const SETTLE_WAIT: Duration = Duration::from_millis(500);

/// Commits the ledger's queue when the gateway stops. Pingora ends a graceful shutdown by
/// dropping every service's tasks once the grace period (in which requests finish and
/// settle) is over, then exits the process without running destructors: this service's task
/// is the one place that sees that moment.
pub struct LedgerCloser {
    pub ledger: Arc<Ledger>,
    /// Requests not settled yet: those dropped with their tasks settle as they go.
    pub in_flight: IntGauge,
}

/// Closes the ledger when dropped.
struct CloseOnDrop(Arc<Ledger>, IntGauge);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // The data plane's tasks are dropped at the same moment, on another thread: their
        // requests settle into the ledger on the way.
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        while self.1.get() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.0.close(CLOSE_TIMEOUT);
        log::info!(
            "ledger closed: {} rows written, {} overflowed",
            self.0.written(),
            self.0.overflowed()
        );
    }
}

#[async_trait]
impl BackgroundService for LedgerCloser {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let _close = CloseOnDrop(self.ledger.clone(), self.in_flight.clone());
        std::future::pending::<()>().await;
    }
}

/// `GET /admin/usage?group_by=…&since=…&until=…`: a status and a JSON body.
pub async fn report(ledger: Option<&Arc<Ledger>>, query: Option<&str>) -> (u16, serde_json::Value) {
    let Some(ledger) = ledger else {
        return invalid(
            "ledger_disabled",
            "No usage ledger is configured (plugins.ledger.path).",
            None,
        );
    };
    let mut group_by = GroupBy::Key;
    let (mut since, mut until) = (None, None);
    for (name, value) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        let value = percent_decode(value);
        match name {
            "group_by" => match GroupBy::parse(&value) {
                Some(g) => group_by = g,
                None => {
                    return invalid(
                        "invalid_group_by",
                        "group_by must be one of team, project, key, model, provider.",
                        Some("group_by"),
                    )
                }
            },
            "since" | "until" => {
                let Some(at) = parse_time(&value) else {
                    return invalid(
                        "invalid_time",
                        &format!("{name} must be an RFC 3339 time or unix seconds."),
                        Some(name),
                    );
                };
                if name == "since" {
                    since = Some(at);
                } else {
                    until = Some(at);
                }
            }
            _ => {}
        }
    }
    let query = UsageQuery {
        group_by,
        since,
        until,
    };
    let ledger = ledger.clone();
    match tokio::task::spawn_blocking(move || ledger.usage(&query)).await {
        Ok(Ok(report)) => (200, report.to_json(group_by, since, until)),
        Ok(Err(e)) => {
            log::error!("usage report: {e}");
            server_error()
        }
        Err(e) => {
            log::error!("usage report: {e}");
            server_error()
        }
    }
}

fn invalid(code: &str, message: &str, param: Option<&str>) -> (u16, serde_json::Value) {
    (
        400,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}),
    )
}

fn server_error() -> (u16, serde_json::Value) {
    (
        500,
        json!({"error": {"message": "The usage ledger could not be read.", "type": "api_error", "param": null, "code": "ledger_unavailable"}}),
    )
}

/// `%XX` decoding for query values. A `+` stays a `+`: no value here holds spaces, and an
/// RFC 3339 offset typed into a URL as `+02:00` should mean what it says.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escaped {
            Some(b) => {
                out.push(b as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            percent_decode("2026-11-25T00:00:00%2B02:00"),
            "2026-11-25T00:00:00+02:00"
        );
        assert_eq!(percent_decode("a+b%zz%4"), "a+b%zz%4");
        assert_eq!(percent_decode("%41"), "A");
    }
}
