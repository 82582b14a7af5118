//! The shared store: entries in Redis (`plugins.shared_state.redis`), so every replica answers
//! what any of them stored. Each call is bounded by the shared state's timeout; a failure is
//! the caller's to count, never the request's to suffer.

use super::CacheKey;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The longest wait between two reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

pub struct RedisStore {
    client: Client,
    connection: OnceCell<ConnectionManager>,
    timeout: Duration,
}

/// Why a call to the shared store failed: never the URL, which may hold a password.
#[derive(Debug)]
pub enum StoreError {
    Redis(String),
    Timeout(Duration),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            StoreError::Redis(kind) => write!(f, "the cache's Redis failed ({kind})"),
            StoreError::Timeout(t) => write!(f, "the cache's Redis gave no answer within {t:?}"),
        }
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> StoreError {
        // The kind only: a message may quote the URL.
        StoreError::Redis(format!("{:?}", e.kind()))
    }
}

fn redis_key(key: &CacheKey) -> String {
    let mut name = String::with_capacity(15 + 64);
    name.push_str("tollgate:cache:");
    for byte in key.0 {
        name.push_str(&format!("{byte:02x}"));
    }
    name
}

impl RedisStore {
    /// A store on `url`; connects on first use. An invalid URL is refused here.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            client: Client::open(url)?,
            connection: OnceCell::new(),
            timeout,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let manager = self
            .connection
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_max_delay(MAX_RECONNECT_DELAY);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(manager.clone())
    }

    /// The entry under `key`, if any (Redis expires them).
    pub async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, StoreError> {
        let call = async {
            let mut connection = self.connection().await?;
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(redis_key(key))
                .query_async(&mut connection)
                .await?;
            Ok(value)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn put(&self, key: &CacheKey, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let call = async {
            let mut connection = self.connection().await?;
            let _: () = redis::cmd("SET")
                .arg(redis_key(key))
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async(&mut connection)
                .await?;
            Ok(())
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_hex() {
        let name = redis_key(&CacheKey([0xab; 32]));
        assert_eq!(name.len(), 15 + 64);
        assert!(name.starts_with("tollgate:cache:abab"));
    }

    #[test]
    fn errors_never_quote_the_url() {
        let Err(e) = RedisStore::new("redis://:hunter2@", Duration::from_secs(1)) else {
            return;
        };
        assert!(!e.to_string().contains("hunter2"));
    }
}
