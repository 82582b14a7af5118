//! The Redis store: buckets and budgets shared by every replica that points at one Redis
//! (a single server or a primary; not Redis Cluster, whose slots would split an admission's
//! keys). One script call per admission and one per settle, each all-or-nothing on the
//! server, on the server's clock, so replicas with skewed clocks still agree.
//!
//! Keys: `tollgate:rate:{scope}:{id}:{requests|tokens}` holds a bucket's TAT, kept a minute
//! past full; `tollgate:usd:{scope}:{id}:{day|month}:{instance}` holds micro-dollars spent,
//! kept a day past the period's end.

use super::admission::{Check, Evaluation, Hold, Limit, Outcome, Reading, Reservation};
use super::{Demand, Dimension, LimitsError, Period, Scope, SharedStateHealth};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, FromRedisValue, RedisError, Script, ScriptInvocation};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Both scripts start with the shared GCRA and calendar functions; tests call them alone.
#[cfg(test)]
pub(super) const LIB: &str = include_str!("lib.lua");
const ADMIT: &str = concat!(include_str!("lib.lua"), include_str!("admit.lua"));
const SETTLE: &str = concat!(include_str!("lib.lua"), include_str!("settle.lua"));

/// The longest wait between reconnection attempts while Redis is away: how late the store
/// may notice that it is back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// At most one failure warning per this long: an outage logs a line every few seconds, not
/// one per request.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub(super) struct SharedStore {
    client: Client,
    /// Made on first use, inside the caller's runtime (the manager spawns its tasks there),
    /// so a limiter can be built before any runtime or Redis is up.
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
    admit: Script,
    settle: Script,
    health: Health,
    /// The URL with its password masked, for logs.
    target: String,
}

/// Why one call to Redis gave no usable answer.
enum Failure {
    Redis(RedisError),
    Timeout(Duration),
    Malformed(usize),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Redis(e) => write!(f, "{e}"),
            Failure::Timeout(limit) => write!(f, "no answer within {limit:?}"),
            Failure::Malformed(len) => write!(f, "unexpected reply of {len} values"),
        }
    }
}

impl SharedStore {
    pub fn new(url: &str, timeout: Duration) -> Result<SharedStore, LimitsError> {
        let target = redact(url);
        let client = Client::open(url).map_err(|e| LimitsError::InvalidUrl {
            url: target.clone(),
            reason: e.to_string(),
        })?;
        Ok(SharedStore {
            client,
            connection: OnceCell::new(),
            timeout,
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
            health: Health::default(),
            target,
        })
    }

    /// The store's answer to `checks`, or `None` when Redis gave none in time (counted and
    /// logged here).
    pub async fn evaluate(&self, checks: &[Check<'_>]) -> Option<Evaluation> {
        let mut invocation = self.admit.prepare_invoke();
        for check in checks {
            match check.limit {
                Limit::Rate {
                    dimension,
                    gcra,
                    amount,
                } => invocation
                    .key(rate_key(check.scope, check.id, dimension))
                    .arg("r")
                    .arg(gcra.limit())
                    .arg(amount.least)
                    .arg(amount.most),
                Limit::Budget {
                    period,
                    limit,
                    amount,
                    ..
                } => invocation
                    .key(budget_key(check.scope, check.id, period))
                    .arg(match period {
                        Period::Day => "d",
                        Period::Month => "m",
                    })
                    .arg(limit)
                    .arg(amount.least)
                    .arg(amount.most),
            };
        }
        let reply = self.call::<Vec<i64>>(&invocation).await;
        let evaluation = reply.and_then(|reply| parse_evaluation(&reply, checks));
        self.health.record(evaluation, &self.target)
    }

    pub async fn settle(&self, reservations: &[Reservation], actual: Demand) {
        let mut invocation = self.settle.prepare_invoke();
        let mut pending = false;
        for reservation in reservations {
            let extra = reservation.hold.extra(actual);
            if extra == 0 {
                continue;
            }
            pending = true;
            let (scope, id) = (reservation.scope, reservation.id.as_str());
            match reservation.hold {
                Hold::Tokens { gcra, .. } => invocation
                    .key(rate_key(scope, id, Dimension::Tokens))
                    .arg("r")
                    .arg(gcra.limit())
                    .arg(extra),
                Hold::Usd {
                    period, instance, ..
                } => invocation
                    .key(format!("{}:{instance}", budget_key(scope, id, period)))
                    .arg("b")
                    .arg(0)
                    .arg(extra),
            };
        }
        if pending {
            // settle.lua answers 1.
            let reply = self.call::<i64>(&invocation).await;
            self.health.record(reply, &self.target);
        }
    }

    pub fn health(&self) -> SharedStateHealth {
        SharedStateHealth {
            up: self.health.up.load(Ordering::Relaxed),
            errors: self.health.errors.load(Ordering::Relaxed),
        }
    }

    /// One script call (EVALSHA; EVAL's load on NOSCRIPT), connecting if need be, all within
    /// the timeout.
    async fn call<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Failure> {
        let call = async {
            let mut connection = self.connection().await?;
            invocation.invoke_async(&mut connection).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(reply) => reply.map_err(Failure::Redis),
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        let manager = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_max_delay(MAX_RECONNECT_DELAY);
                // Lazy: connects on the first command, and reconnects in the background
                // after a failure.
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(manager.clone())
    }
}

fn rate_key(scope: Scope, id: &str, dimension: Dimension) -> String {
    format!(
        "tollgate:rate:{}:{id}:{}",
        scope.as_str(),
        dimension.as_str()
    )
}

/// A budget's key without its period instance, which the admit script appends.
fn budget_key(scope: Scope, id: &str, period: Period) -> String {
    format!("tollgate:usd:{}:{id}:{}", scope.as_str(), period.as_str())
}

/// Reads admit.lua's reply: five numbers, then three per check.
fn parse_evaluation(reply: &[i64], checks: &[Check]) -> Result<Evaluation, Failure> {
    let malformed = || Failure::Malformed(reply.len());
    let ([admitted, refused, wait, day, month], triples) =
        reply.split_first_chunk::<5>().ok_or_else(malformed)?;
    if triples.len() != 3 * checks.len() {
        return Err(malformed());
    }
    let count = |x: i64| u64::try_from(x).unwrap_or(0);
    let taken = triples.chunks_exact(3).map(|t| count(t[2])).collect();
    let readings = checks
        .iter()
        .zip(triples.chunks_exact(3))
        .map(|(check, pair)| match check.limit {
            Limit::Rate { .. } => Reading::Rate {
                remaining: count(pair[0]),
                reset_us: count(pair[1]),
            },
            Limit::Budget { .. } => Reading::Budget {
                spent: count(pair[0]),
            },
        })
        .collect();
    let outcome = match (admitted, usize::try_from(*refused)) {
        (1, Ok(0)) => Outcome::Admitted {
            day: *day,
            month: *month,
            taken,
        },
        (0, Ok(check)) if (1..=checks.len()).contains(&check) => Outcome::Refused {
            check: check - 1,
            wait_us: count(*wait),
        },
        _ => return Err(malformed()),
    };
    Ok(Evaluation { readings, outcome })
}

/// Whether the last call succeeded, how many failed in all, and the warnings' pace.
struct Health {
    up: AtomicBool,
    errors: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl Default for Health {
    /// Up until a call fails: nothing has gone wrong before the first one.
    fn default() -> Self {
        Health {
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            last_warning: Mutex::new(None),
            unlogged: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn record<T>(&self, result: Result<T, Failure>, target: &str) -> Option<T> {
        match result {
            Ok(value) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    log::info!("limits: Redis at {target} answers again");
                }
                Some(value)
            }
            Err(failure) => {
                self.up.store(false, Ordering::Relaxed);
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.warn(target, &failure);
                None
            }
        }
    }

    fn warn(&self, target: &str, failure: &Failure) {
        let now = Instant::now();
        let mut last = self
            .last_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        log::warn!(
            "limits: Redis at {target} failed: {failure} ({unlogged} earlier failures not logged)"
        );
    }
}

/// `url` with the password of its user info, if any, replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_keep_the_rest() {
        let cases = [
            ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
            ("rediss://app:p@ss:w@cache/1", "rediss://app:***@cache/1"),
            ("redis://app@cache", "redis://app@cache"),
            ("redis://cache:6379", "redis://cache:6379"),
            ("redis://cache/0?x=a@b:c", "redis://cache/0?x=a@b:c"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact(url), shown);
        }
    }

    #[test]
    fn invalid_urls_are_refused_without_their_password() {
        let Err(e) = SharedStore::new("http://u:hunter2@cache", Duration::from_millis(50)) else {
            panic!("an http URL is no Redis URL");
        };
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn replies_of_the_wrong_shape_are_failures() {
        assert!(parse_evaluation(&[1, 0, 0], &[]).is_err());
        assert!(parse_evaluation(&[0, 1, 5, 0, 0], &[]).is_err());
        assert!(parse_evaluation(&[1, 0, 0, 3, 4], &[]).is_ok());
    }
}
