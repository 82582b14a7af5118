//! One upstream attempt, driven with pingora-core's pooled `Connector` from inside the
//! request phase: the gateway owns its attempts, so bodies of any size are replayed byte-exact
//! on failover (Pingora's own retry buffer stops at 64 KiB) and each attempt can send a
//! differently translated body.

use crate::providers::{self, Operation, Provider};
use crate::router::RetryOn;
use crate::upstream::Endpoint;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::sync::Arc;
use std::time::{Duration, Instant};

const STALE_RETRIES: usize = 3;

/// Why an attempt did not produce a response worth relaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, unreachable, unresolved, TLS handshake failed).
    Connect(String),
    /// Connect, first byte or a deadline ran out.
    Timeout(String),
    /// The upstream answered with a status that may be retried elsewhere (429, 5xx), or
    /// refused the gateway's credential (401, 403).
    Status(u16),
    /// The connection broke after the request was sent.
    Reset(String),
}

impl Failure {
    /// The label used in metrics and in client-facing summaries.
    pub fn kind(&self) -> String {
        match self {
            Failure::Connect(_) => "connect".into(),
            Failure::Timeout(_) => "timeout".into(),
            Failure::Status(429) => "429".into(),
            Failure::Status(401 | 403) => "auth".into(),
            Failure::Status(s) if *s >= 500 => "5xx".into(),
            Failure::Status(s) => s.to_string(),
            Failure::Reset(_) => "reset".into(),
        }
    }

    /// Whether the next attempt may follow this failure.
    pub fn retryable(&self, on: &RetryOn) -> bool {
        match self {
            Failure::Connect(_) => on.connect,
            Failure::Timeout(_) => on.timeout,
            // Only retryable statuses and credential refusals become failures; a refusal
            // always moves on, since another target may hold a working credential.
            Failure::Status(_) => true,
            Failure::Reset(_) => on.status_5xx,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Failure::Connect(d) => format!("connect error ({d})"),
            Failure::Timeout(d) => format!("timed out ({d})"),
            Failure::Status(s @ (401 | 403)) => {
                format!("HTTP {s} (the provider refused the gateway's credential)")
            }
            Failure::Status(s) => format!("HTTP {s}"),
            Failure::Reset(d) => format!("connection reset ({d})"),
        }
    }
}

/// A live upstream response whose header has arrived and whose body is still to be read.
pub struct UpstreamResponse {
    pub session: HttpSession,
    pub peer: Arc<HttpPeer>,
    /// Time spent waiting on the upstream until the header arrived.
    pub waited: Duration,
}

impl UpstreamResponse {
    pub fn header(&self) -> &ResponseHeader {
        self.session
            .response_header()
            .expect("header read before construction")
    }
}

/// Longest cooldown a `retry-after` can impose, whatever the upstream says.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// How long the upstream asks us to wait: `retry-after-ms`, else `retry-after` in seconds or
/// as an HTTP date.
pub fn retry_after(header: &ResponseHeader, now: std::time::SystemTime) -> Option<Duration> {
    let value = |name: &str| {
        header
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let wait = if let Some(ms) = value("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Duration::try_from_secs_f64(ms / 1000.0).ok()?
    } else {
        let text = value("retry-after")?;
        match text.parse::<u64>() {
            Ok(secs) => Duration::from_secs(secs),
            Err(_) => httpdate::parse_http_date(text)
                .ok()?
                .duration_since(now)
                .ok()?,
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// One attempt's upstream request: its body translated for the target, the target's model
/// name, and the attempt's deadline.
pub struct Call<'a> {
    pub op: Operation,
    /// The client asked for a stream (some providers have separate stream paths).
    pub stream: bool,
    pub body: Bytes,
    pub upstream_model: &'a str,
    pub deadline: Instant,
}

/// Connects, sends, and waits for the response header, within the provider's timeouts.
pub async fn send(
    connector: &Connector,
    provider: &Provider,
    endpoint: &Endpoint,
    call: &Call<'_>,
) -> Result<UpstreamResponse, Failure> {
    let started = Instant::now();
    let peer = endpoint
        .peer()
        // The host name stays in the logs: a client's error names no internal host.
        .ok_or_else(|| Failure::Connect("the endpoint's address did not resolve".into()))?;
    let req = providers::request_header(
        provider,
        endpoint,
        call.op,
        call.upstream_model,
        call.stream,
        call.body.len(),
    )
    .map_err(|e| Failure::Connect(e.to_string()))?;

    let budget =
        |phase: Duration| phase.min(call.deadline.saturating_duration_since(Instant::now()));
    // A pooled connection may have been closed by the server while idle; that costs a fresh
    // connection, not an attempt (nothing reached the model).
    for _ in 0..STALE_RETRIES {
        let connect = budget(provider.timeouts.connect * 2);
        let (mut session, reused) =
            match pingora::time::timeout(connect, connector.get_http_session(&*peer)).await {
                Err(_) => return Err(Failure::Timeout("connect".into())),
                Ok(Err(e)) if matches!(e.etype(), ErrorType::ConnectTimedout) => {
                    return Err(Failure::Timeout("connect".into()))
                }
                Ok(Err(e)) => return Err(Failure::Connect(e.etype().as_str().to_lowercase())),
                Ok(Ok(pair)) => pair,
            };
        let exchange = async {
            session.write_request_header(Box::new(req.clone())).await?;
            session.write_request_body(call.body.clone(), true).await?;
            session.finish_request_body().await?;
            session.read_response_header().await
        };
        match pingora::time::timeout(budget(provider.timeouts.first_token), exchange).await {
            Err(_) => {
                session.shutdown().await;
                return Err(Failure::Timeout("no response header in time".into()));
            }
            Ok(Err(_)) if reused => continue,
            Ok(Err(e)) => return Err(Failure::Reset(e.etype().as_str().to_lowercase())),
            Ok(Ok(())) => {
                return Ok(UpstreamResponse {
                    session,
                    peer,
                    waited: started.elapsed(),
                })
            }
        }
    }
    Err(Failure::Connect("pooled connections kept failing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn header(pairs: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(429, None).unwrap();
        for (k, v) in pairs {
            h.insert_header(k.to_string(), v.to_string()).unwrap();
        }
        h
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        assert_eq!(retry_after(&header(&[]), now), None);
        assert_eq!(
            retry_after(&header(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(
                &header(&[("retry-after", "2"), ("retry-after-ms", "1500")]),
                now
            ),
            Some(Duration::from_millis(1500))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let d = retry_after(&header(&[("retry-after", &date)]), now).unwrap();
        assert!(
            d > Duration::from_secs(28) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(retry_after(&header(&[("retry-after", "soon")]), now), None);
        assert_eq!(
            retry_after(&header(&[("retry-after", "99999")]), now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_on_decides_what_moves_on() {
        let only_connect = RetryOn {
            connect: true,
            timeout: false,
            status_429: false,
            status_5xx: false,
        };
        assert!(Failure::Connect("refused".into()).retryable(&only_connect));
        assert!(!Failure::Timeout("connect".into()).retryable(&only_connect));
        assert!(!Failure::Reset("eof".into()).retryable(&only_connect));
        assert!(Failure::Status(401).retryable(&only_connect));
        assert_eq!(Failure::Status(503).kind(), "5xx");
        assert_eq!(Failure::Status(429).kind(), "429");
        assert_eq!(Failure::Status(403).kind(), "auth");
        assert!(Failure::Status(401).describe().contains("credential"));
    }
}
