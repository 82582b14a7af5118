//! Request coalescing: a request identical to one in flight (same cache key, same client
//! format and mode) waits for it instead of calling upstream. A joiner gets the answer's
//! chunks sent so far, then the rest as they arrive. A leader that fails before its first
//! chunk releases every waiter to make its own attempts; one that fails later ends each
//! joiner's answer with an error, as its own client's.

use super::AnswerStream;
use crate::error::GatewayError;
use crate::providers::ClientFormat;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;
use tollgate_plugins::cache::CacheKey;

/// The most requests that may wait on one flight; more go upstream on their own.
const MAX_WAITERS: usize = 1024;
/// The most answer bytes a flight keeps for late joiners; a longer answer is not shared.
const MAX_FLIGHT_BYTES: usize = 4 * 1024 * 1024;

/// Requests in flight by key: one per process.
#[derive(Default)]
pub struct Flights {
    flights: Mutex<HashMap<CacheKey, Arc<Flight>>>,
}

/// One upstream answer in the air, shared by its waiters.
pub struct Flight {
    format: ClientFormat,
    stream: bool,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    chunks: Vec<Bytes>,
    bytes: usize,
    end: Option<End>,
    waiters: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    Failed,
}

/// What a request is to the flight for its key.
pub enum Role {
    /// It calls upstream, and shares what comes back.
    Lead(Arc<Flight>),
    /// It waits for the leader (counted among the waiters until dropped).
    Join(FlightReader),
    /// It goes alone: the flight in the air speaks another format or mode, or is full.
    Alone,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change leaves the state whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Flights {
    pub fn lead_or_join(&self, key: CacheKey, format: ClientFormat, stream: bool) -> Role {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(&key) {
            if flight.format != format || flight.stream != stream {
                return Role::Alone;
            }
            let mut state = lock(&flight.state);
            if state.end.is_some() || state.waiters >= MAX_WAITERS {
                return Role::Alone;
            }
            state.waiters += 1;
            drop(state);
            return Role::Join(FlightReader {
                flight: flight.clone(),
                next: 0,
            });
        }
        let flight = Arc::new(Flight {
            format,
            stream,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        flights.insert(key, flight.clone());
        Role::Lead(flight)
    }

    /// The leader's answer ended, `complete` or not: its waiters are told, and the key is
    /// free for the next request.
    pub fn land(&self, key: &CacheKey, flight: &Arc<Flight>, complete: bool) {
        let mut flights = lock(&self.flights);
        if flights.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
        drop(flights);
        flight.end(if complete { End::Complete } else { End::Failed });
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

impl Flight {
    fn end(&self, end: End) {
        let mut state = lock(&self.state);
        state.end.get_or_insert(end);
        drop(state);
        self.changed.notify_waiters();
    }

    /// A chunk of the leader's answer, for its waiters.
    pub fn push(&self, chunk: &Bytes) {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return;
        }
        if state.bytes + chunk.len() > MAX_FLIGHT_BYTES {
            // Too long to keep for late joiners: those waiting end as if it failed.
            state.end = Some(End::Failed);
        } else {
            state.bytes += chunk.len();
            state.chunks.push(chunk.clone());
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

/// A waiter's copy of the leader's answer.
pub struct FlightReader {
    flight: Arc<Flight>,
    next: usize,
}

impl FlightReader {
    /// Waits for the leader's first chunk. `None` when the leader failed first (the waiter
    /// makes its own attempts).
    pub async fn joined(self) -> Option<FlightReader> {
        let flight = self.flight.clone();
        loop {
            let changed = flight.changed.notified();
            {
                let state = lock(&flight.state);
                if !state.chunks.is_empty() && state.end != Some(End::Failed) {
                    return Some(self);
                }
                if state.end.is_some() {
                    return None;
                }
            }
            changed.await;
        }
    }
}

impl Drop for FlightReader {
    fn drop(&mut self) {
        let mut state = lock(&self.flight.state);
        state.waiters = state.waiters.saturating_sub(1);
    }
}

#[async_trait]
impl AnswerStream for FlightReader {
    async fn next(&mut self) -> Option<Result<Bytes, GatewayError>> {
        loop {
            let changed = self.flight.changed.notified();
            {
                let state = lock(&self.flight.state);
                if let Some(chunk) = state.chunks.get(self.next) {
                    self.next += 1;
                    return Some(Ok(chunk.clone()));
                }
                match state.end {
                    Some(End::Complete) => return None,
                    Some(End::Failed) => {
                        return Some(Err(GatewayError::UpstreamFailed(
                            "the request this one shared failed mid-answer".into(),
                        )))
                    }
                    None => {}
                }
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(mut reader: FlightReader) -> (Vec<Bytes>, bool) {
        let mut chunks = Vec::new();
        while let Some(chunk) = reader.next().await {
            match chunk {
                Ok(chunk) => chunks.push(chunk),
                Err(_) => return (chunks, false),
            }
        }
        (chunks, true)
    }

    #[tokio::test]
    async fn joiners_get_what_was_sent_then_the_rest() {
        let flights = Flights::default();
        let key = CacheKey([1; 32]);
        let Role::Lead(lead) = flights.lead_or_join(key, ClientFormat::OpenAi, true) else {
            panic!("the first leads");
        };
        lead.push(&Bytes::from_static(b"a"));
        let Role::Join(waiting) = flights.lead_or_join(key, ClientFormat::OpenAi, true) else {
            panic!("the second joins");
        };
        assert!(matches!(
            flights.lead_or_join(key, ClientFormat::OpenAi, false),
            Role::Alone
        ));
        let reader = waiting.joined().await.expect("the leader has begun");
        let joiner = tokio::spawn(drain(reader));
        lead.push(&Bytes::from_static(b"b"));
        flights.land(&key, &lead, true);
        let (chunks, complete) = joiner.await.unwrap();
        assert_eq!(chunks, [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(complete);
        assert_eq!(flights.in_flight(), 0);
        assert!(matches!(
            flights.lead_or_join(key, ClientFormat::OpenAi, true),
            Role::Lead(_)
        ));
    }

    #[tokio::test]
    async fn a_leader_that_fails_first_releases_its_waiters() {
        let flights = Flights::default();
        let key = CacheKey([2; 32]);
        let Role::Lead(lead) = flights.lead_or_join(key, ClientFormat::Anthropic, false) else {
            panic!("the first leads");
        };
        let Role::Join(waiting) = flights.lead_or_join(key, ClientFormat::Anthropic, false) else {
            panic!("the second joins");
        };
        let waiter = tokio::spawn(waiting.joined());
        flights.land(&key, &lead, false);
        assert!(waiter.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_leader_that_fails_midway_ends_its_joiners_with_an_error() {
        let flights = Flights::default();
        let key = CacheKey([3; 32]);
        let Role::Lead(lead) = flights.lead_or_join(key, ClientFormat::OpenAi, true) else {
            panic!("the first leads");
        };
        let Role::Join(waiting) = flights.lead_or_join(key, ClientFormat::OpenAi, true) else {
            panic!("the second joins");
        };
        lead.push(&Bytes::from_static(b"a"));
        let reader = waiting.joined().await.unwrap();
        flights.land(&key, &lead, false);
        let (chunks, complete) = drain(reader).await;
        assert_eq!(chunks.len(), 1);
        assert!(!complete);
    }

    #[tokio::test]
    async fn waiters_are_counted_until_they_leave() {
        let flights = Flights::default();
        let key = CacheKey([4; 32]);
        let Role::Lead(lead) = flights.lead_or_join(key, ClientFormat::OpenAi, true) else {
            panic!("the first leads");
        };
        let joined: Vec<Role> = (0..3)
            .map(|_| flights.lead_or_join(key, ClientFormat::OpenAi, true))
            .collect();
        assert_eq!(lock(&lead.state).waiters, 3);
        drop(joined);
        assert_eq!(lock(&lead.state).waiters, 0);
    }
}
