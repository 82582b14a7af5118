//! The in-memory store: least recently used entries go first once the entries' bytes pass
//! the bound; an entry past its time to live is never answered and is dropped when met.

use super::CacheKey;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What an entry costs beside its value: its key, times and bookkeeping.
const ENTRY_OVERHEAD: usize = 96;

pub struct MemoryStore {
    max_bytes: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<CacheKey, Entry>,
    /// Use order: the smallest tick was used longest ago.
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
    bytes: usize,
}

struct Entry {
    value: Arc<[u8]>,
    expires: Instant,
    used: u64,
}

impl Lru {
    fn touch(&mut self, key: CacheKey) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(entry) = self.entries.get_mut(&key) {
            self.order.remove(&entry.used);
            entry.used = tick;
            self.order.insert(tick, key);
        }
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.used);
            self.bytes -= entry.value.len() + ENTRY_OVERHEAD;
        }
    }
}

impl MemoryStore {
    pub fn new(max_bytes: usize) -> MemoryStore {
        MemoryStore {
            max_bytes,
            inner: Mutex::new(Lru::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Every change leaves the map, the order and the byte count consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live entry under `key`, if any.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<Arc<[u8]>> {
        let mut lru = self.lock();
        let entry = lru.entries.get(key)?;
        if entry.expires <= now {
            lru.remove(key);
            return None;
        }
        let value = entry.value.clone();
        lru.touch(*key);
        Some(value)
    }

    /// Stores `value` under `key` for `ttl`, evicting the least recently used entries to stay
    /// within the bound. A value larger than the whole store is not kept.
    pub fn put(&self, key: CacheKey, value: Arc<[u8]>, ttl: Duration, now: Instant) {
        let size = value.len() + ENTRY_OVERHEAD;
        if size > self.max_bytes {
            return;
        }
        let mut lru = self.lock();
        lru.remove(&key);
        while lru.bytes + size > self.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            if let Some(entry) = lru.entries.remove(&oldest) {
                lru.bytes -= entry.value.len() + ENTRY_OVERHEAD;
            }
        }
        lru.tick += 1;
        let used = lru.tick;
        lru.order.insert(used, key);
        lru.bytes += size;
        lru.entries.insert(
            key,
            Entry {
                value,
                expires: now + ttl,
                used,
            },
        );
    }

    /// Bytes held, bookkeeping included.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn entries(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    fn value(len: usize) -> Arc<[u8]> {
        vec![7u8; len].into()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn answers_what_it_holds_until_it_expires() {
        let store = MemoryStore::new(10_000);
        let now = Instant::now();
        store.put(key(1), value(10), Duration::from_secs(60), now);
        assert_eq!(store.get(&key(1), now).unwrap().len(), 10);
        assert!(store.get(&key(2), now).is_none());
        assert!(store.get(&key(1), now + Duration::from_secs(61)).is_none());
        assert_eq!(
            (store.entries(), store.bytes()),
            (0, 0),
            "expired entries go"
        );
    }

    #[test]
    fn the_least_recently_used_go_first_and_bytes_stay_bounded() {
        let size = 100 + ENTRY_OVERHEAD;
        let store = MemoryStore::new(3 * size);
        let now = Instant::now();
        for n in 1..=3 {
            store.put(key(n), value(100), HOUR, now);
        }
        // 1 is used, so 2 is now the least recently used.
        assert!(store.get(&key(1), now).is_some());
        store.put(key(4), value(100), HOUR, now);
        assert!(store.get(&key(2), now).is_none());
        for n in [1, 3, 4] {
            assert!(store.get(&key(n), now).is_some(), "{n}");
        }
        assert_eq!(store.bytes(), 3 * size);
        // Replacing an entry does not count it twice; a value larger than the store is
        // not kept and evicts nothing.
        store.put(key(4), value(100), HOUR, now);
        assert_eq!((store.entries(), store.bytes()), (3, 3 * size));
        store.put(key(9), value(10 * size), HOUR, now);
        assert_eq!(store.entries(), 3);
    }
}
