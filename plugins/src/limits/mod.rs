//! Request and token rate limits and USD budgets, per API key, team or provider, enforced in
//! this process ([`Limiter::in_process`]) or across gateway replicas through Redis
//! ([`Limiter::redis`]).
//!
//! # Lifecycle
//!
//! [`Limiter::admit`] checks one request against every subject it counts for (typically its
//! key and its team, or one provider) and, if all pass, reserves what the request may use:
//! one request, and tokens and dollars as its [`Ask`] says — at most `most`, and never less
//! than `least`. A request with an output cap asks for exactly its worst case; one without
//! asks for a default output it can do without, so it reserves what fits, down to its
//! prompt, and settle reconciles. Admission is all-or-nothing: either every check passes and
//! every reservation is applied, or nothing changes; when several checks fail, the refusal
//! names the one with the longest wait. [`Limiter::settle`] reconciles the [`Grant`] with
//! what the request really used. Reservations are what keep concurrent requests honest: a
//! request in flight already counts against every limit it was admitted under.
//!
//! # Rates
//!
//! Requests per minute and tokens per minute are token buckets kept by GCRA (one
//! "theoretical arrival time" per bucket): a bucket holds up to the per-minute limit and
//! refills at the limit per 60 s, continuously. An admission takes 1 request and as many
//! tokens of its ask as the bucket holds, at least `least.tokens`; when those do not fit, it
//! is refused with `retry_after` = the time until they would. An ask whose least is larger
//! than a whole tpm can never fit: [`Refusal::TooLarge`]. Settle gives the bucket back
//! `reserved - actual` tokens (never beyond full), or charges `actual - reserved` more, even
//! into debt, which later admissions then wait out. Requests are not given back.
//!
//! # Budgets
//!
//! USD per UTC calendar day and per UTC calendar month, counted in whole micro-dollars per
//! period instance. An admission reserves as much of its ask as is left of the budget,
//! outstanding reservations included, and at least `least.usd`: it passes only when that
//! fits, so spending overshoots a budget only by what a request without an output cap used
//! beyond its reservation. An ask whose least is larger than the whole budget can never fit:
//! [`Refusal::OverBudget`]. A refusal's `retry_after` runs to the start of the next UTC day
//! or month. Settle adds `actual - reserved` to the period instance the grant reserved in,
//! even if another one has begun since.
//!
//! # Headers
//!
//! For each dimension, a grant's [`RateHeaders`] report the subject (among those with that
//! limit) with the least remaining once this request is counted: its limit, what remains
//! and the time until its bucket is full again. A rate refusal carries the refusing
//! subject's windows as they stand.
//!
//! # Stores
//!
//! In process, one mutex guards a map of buckets and spending, held for one admission and
//! never across an await; buckets full again and budgets with nothing spent this period are
//! dropped whenever the map has doubled since the last sweep. The `now` passed to `admit`
//! and `settle` is the clock.
//!
//! With Redis, each admit and each settle is one script call (EVALSHA), atomic on the
//! server and timed by the server's clock (`now` is ignored), so replicas with skewed
//! clocks agree. Each call is bounded by the limiter's timeout; on an error or timeout,
//! [`FailurePolicy::Open`] admits with an empty grant (whose settle does nothing) and
//! [`FailurePolicy::Closed`] refuses with [`Refusal::Unavailable`]. Failures are counted,
//! logged (at most one warning per 10 s, without the URL's password) and reported by
//! [`Limiter::shared_state`]. The connection is made on first use and remade in the
//! background, so Redis need not be up when the limiter is built; admit and settle must run
//! inside a tokio runtime.

mod admission;
mod calendar;
mod gcra;
mod headers;
mod memory;
mod shared;

#[cfg(test)]
mod redis_tests;
#[cfg(test)]
mod tests;

pub use headers::{openai_duration, RateHeaders, Window};

use admission::{conclude, plan, Reservation};
use memory::MemoryStore;
use shared::SharedStore;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The limits of one subject; `None` is no limit. A dollar limit that is negative or NaN
/// reads as zero: nothing may be spent.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quota {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// USD per UTC calendar day.
    pub usd_per_day: Option<f64>,
    /// USD per UTC calendar month.
    pub usd_per_month: Option<f64>,
}

/// What kind of thing a subject is; subjects of different scopes never share state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Key,
    Team,
    Provider,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Team => "team",
            Scope::Provider => "provider",
        }
    }

    fn index(self) -> usize {
        match self {
            Scope::Key => 0,
            Scope::Team => 1,
            Scope::Provider => 2,
        }
    }
}

/// One thing a request counts against, with its limits. The subjects of one admission
/// should be distinct.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub scope: Scope,
    pub id: &'a str,
    pub quota: &'a Quota,
}

/// What one request reserves at admission, or really used at settle. Negative or NaN
/// dollars count as zero.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Demand {
    pub tokens: u64,
    pub usd: f64,
}

/// What an admission asks to reserve: as much of `most` as fits, and at least `least`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ask {
    pub least: Demand,
    pub most: Demand,
}

/// Exactly the demand, or nothing.
impl From<Demand> for Ask {
    fn from(demand: Demand) -> Ask {
        Ask {
            least: demand,
            most: demand,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    Tokens,
}

impl Dimension {
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
        }
    }
}

/// A budget's UTC calendar period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// An admitted request's reservations, to hand back to [`Limiter::settle`] once it ends.
/// Dropping a grant unsettled leaves its reservations in place (tokens refill with time;
/// dollars stay spent).
#[derive(Debug)]
pub struct Grant {
    reservations: Vec<Reservation>,
    pub headers: RateHeaders,
}

impl Grant {
    /// Nothing reserved: no subject had a limit, or the shared store failed open.
    fn empty() -> Grant {
        Grant {
            reservations: Vec::new(),
            headers: RateHeaders::default(),
        }
    }
}

/// Why a request was not admitted. Nothing was reserved.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// A per-minute limit: `retry_after` is the time until this demand would fit.
    Rate {
        scope: Scope,
        id: String,
        dimension: Dimension,
        retry_after: Duration,
        headers: RateHeaders,
    },
    /// A demand larger than the whole limit (or any demand against a limit of zero): it can
    /// never pass.
    TooLarge {
        scope: Scope,
        id: String,
        dimension: Dimension,
        limit: u64,
        requested: u64,
    },
    /// A request whose least cost is more than a whole budget: it can never pass.
    OverBudget {
        scope: Scope,
        id: String,
        period: Period,
        limit_usd: f64,
        requested_usd: f64,
    },
    /// A budget spent: `retry_after` runs to the start of the next UTC day or month.
    Budget {
        scope: Scope,
        id: String,
        period: Period,
        limit_usd: f64,
        spent_usd: f64,
        retry_after: Duration,
    },
    /// The shared store did not answer and the policy is [`FailurePolicy::Closed`].
    Unavailable,
}

/// What admission does when the shared store does not answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Admit, unlimited: availability over enforcement.
    Open,
    /// Refuse with [`Refusal::Unavailable`]: enforcement over availability.
    Closed,
}

/// The shared store's state, for health endpoints and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedStateHealth {
    /// The last call succeeded (true before the first call).
    pub up: bool,
    /// Calls failed since the limiter was built.
    pub errors: u64,
}

#[derive(Debug)]
pub enum LimitsError {
    /// The Redis URL does not parse; `url` has its password masked.
    InvalidUrl { url: String, reason: String },
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitsError::InvalidUrl { url, reason } => {
                write!(f, "invalid Redis URL {url}: {reason}")
            }
        }
    }
}

impl std::error::Error for LimitsError {}

/// Enforces quotas; share one per process (it is `Send + Sync`).
pub struct Limiter {
    store: Store,
}

enum Store {
    Memory(MemoryStore),
    Shared {
        /// Boxed: a Redis client and scripts outweigh the in-process map many times over.
        store: Box<SharedStore>,
        policy: FailurePolicy,
    },
}

impl Limiter {
    /// Limits enforced by this process alone.
    pub fn in_process() -> Limiter {
        Limiter {
            store: Store::Memory(MemoryStore::default()),
        }
    }

    /// Limits shared through the Redis at `url` (`redis://[user][:password@]host[:port][/db]`).
    /// Does not connect: the first call does.
    /// Each call is bounded by `timeout`; `policy` says what admission does when one fails.
    pub fn redis(
        url: &str,
        policy: FailurePolicy,
        timeout: Duration,
    ) -> Result<Limiter, LimitsError> {
        Ok(Limiter {
            store: Store::Shared {
                store: Box::new(SharedStore::new(url, timeout)?),
                policy,
            },
        })
    }

    /// Admits one request against every subject, reserving what `ask` says, or refuses it
    /// and changes nothing. `now` is the clock in process; Redis uses its own.
    pub async fn admit(
        &self,
        subjects: &[Subject<'_>],
        ask: impl Into<Ask>,
        now: SystemTime,
    ) -> Result<Grant, Refusal> {
        let checks = plan(subjects, ask.into())?;
        if checks.is_empty() {
            return Ok(Grant::empty());
        }
        let evaluation = match &self.store {
            Store::Memory(store) => store.evaluate(&checks, now),
            Store::Shared { store, policy } => match store.evaluate(&checks).await {
                Some(evaluation) => evaluation,
                None => {
                    return match policy {
                        FailurePolicy::Open => Ok(Grant::empty()),
                        FailurePolicy::Closed => Err(Refusal::Unavailable),
                    }
                }
            },
        };
        conclude(&checks, evaluation)
    }

    /// Reconciles a grant with what its request really used. Best effort with Redis: a
    /// failed call is counted and logged, and the reservations stand.
    pub async fn settle(&self, grant: Grant, actual: Demand, now: SystemTime) {
        if grant.reservations.is_empty() {
            return;
        }
        match &self.store {
            Store::Memory(store) => store.settle(&grant.reservations, actual, now),
            Store::Shared { store, .. } => store.settle(&grant.reservations, actual).await,
        }
    }

    /// Settles without waiting, for a request that ends where nothing can be awaited (a
    /// panic, a task dropped at shutdown): in process at once; with Redis on a task of the
    /// current runtime, when one is still running, else the reservations stand.
    pub fn settle_detached(self: &Arc<Self>, grant: Grant, actual: Demand, now: SystemTime) {
        if grant.reservations.is_empty() {
            return;
        }
        match &self.store {
            Store::Memory(store) => store.settle(&grant.reservations, actual, now),
            Store::Shared { .. } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let limiter = self.clone();
                    runtime.spawn(async move { limiter.settle(grant, actual, now).await });
                }
            }
        }
    }

    /// `None` in process; the Redis connection's health otherwise.
    pub fn shared_state(&self) -> Option<SharedStateHealth> {
        match &self.store {
            Store::Memory(_) => None,
            Store::Shared { store, .. } => Some(store.health()),
        }
    }
}
