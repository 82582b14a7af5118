//! The answer cache's engine: request keys and the in-memory store. What an entry holds is the
//! gateway's business (an answer it can render in any client format); here it is bytes.
//!
//! A key is the SHA-256 of the tenant's scope id, the virtual model and the request
//! canonicalised: its JSON object with keys sorted and the fields that do not change the
//! answer left out (`stream`, `stream_options`, `user`, `metadata`), so a streamed and a
//! whole request for the same prompt share an entry.

mod memory;
mod redis;

pub use self::redis::{RedisStore, StoreError};
pub use memory::MemoryStore;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Top-level request fields that do not change the answer.
const IGNORED_FIELDS: [&str; 4] = ["stream", "stream_options", "user", "metadata"];

/// A cache entry's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// The key of a request body for `scope` and `model`; `None` when the body is not a JSON
    /// object (such a request is never cached).
    pub fn of(scope: &str, model: &str, body: &[u8]) -> Option<CacheKey> {
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        for field in IGNORED_FIELDS {
            fields.remove(field);
        }
        let mut hash = Hashing(Sha256::new());
        for part in [scope.as_bytes(), model.as_bytes()] {
            hash.0.update((part.len() as u64).to_le_bytes());
            hash.0.update(part);
        }
        // serde_json's map is ordered by key: the canonical form is its serialization,
        // hashed as it is written rather than kept.
        serde_json::to_writer(&mut hash, &fields).ok()?;
        Some(CacheKey(hash.0.finalize().into()))
    }
}

/// A writer that hashes what it is given.
struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_order_streaming_and_user_but_not_the_prompt() {
        let a = br#"{"model":"m","messages":[{"role":"user","content":"What is Kubernetes?"}],"temperature":0}"#;
        let b = br#"{"temperature":0,"stream":true,"stream_options":{"include_usage":true},"user":"u1","messages":[{"content":"What is Kubernetes?","role":"user"}],"model":"m"}"#;
        let other = br#"{"model":"m","messages":[{"role":"user","content":"What is Kubernetez?"}],"temperature":0}"#;
        assert_eq!(CacheKey::of("t", "m", a), CacheKey::of("t", "m", b));
        assert_ne!(CacheKey::of("t", "m", a), CacheKey::of("t", "m", other));
        assert!(CacheKey::of("t", "m", a).is_some());
    }

    #[test]
    fn scopes_and_models_never_share_keys() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
        let key = CacheKey::of("team-a", "m", body);
        assert_ne!(key, CacheKey::of("team-b", "m", body));
        assert_ne!(key, CacheKey::of("team-a", "n", body));
        // The lengths are hashed too: no two (scope, model) pairs run together.
        assert_ne!(CacheKey::of("ab", "c", body), CacheKey::of("a", "bc", body));
    }

    #[test]
    fn only_json_objects_have_keys() {
        for body in [&b"[1,2]"[..], b"\"x\"", b"not json", b""] {
            assert_eq!(CacheKey::of("", "m", body), None);
        }
    }
}
