//! A provider's endpoints and how one is picked for an attempt.
//!
//! Round-robin for now; the routing issue replaces `pick` with P2C over peak-EWMA and health,
//! keeping this signature.

use super::endpoint::Endpoint;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Pool {
    pub endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Pool {
        Pool {
            endpoints,
            next: AtomicUsize::new(fastrand::usize(..usize::MAX / 2)),
        }
    }

    /// The next endpoint in rotation that `skip` does not exclude.
    pub fn pick(&self, skip: impl Fn(&Arc<Endpoint>) -> bool) -> Option<Arc<Endpoint>> {
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.endpoints[(start + i) % n])
            .find(|e| !skip(e))
            .cloned()
    }

    pub fn same_as(&self, other: &Pool) -> bool {
        self.endpoints.len() == other.endpoints.len()
            && self
                .endpoints
                .iter()
                .zip(&other.endpoints)
                .all(|(a, b)| a.same_as(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(n: usize) -> Pool {
        Pool::new(
            (0..n)
                .map(|i| {
                    Arc::new(
                        Endpoint::parse(&format!("127.0.0.1:{}", 9000 + i), Duration::from_secs(1))
                            .unwrap(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn rotates_and_skips() {
        let p = pool(3);
        let picks: Vec<u16> = (0..6).map(|_| p.pick(|_| false).unwrap().port).collect();
        for port in 9000..9003 {
            assert_eq!(picks.iter().filter(|&&x| x == port).count(), 2);
        }
        let only = p.pick(|e| e.port != 9001).unwrap();
        assert_eq!(only.port, 9001);
        assert!(p.pick(|_| true).is_none());
    }
}
