//! A simulated GPU inference server, one per mock process, so that a gateway
//! can be benchmarked routing by queue length, KV-cache use and prefix-cache
//! affinity, as llm-d and the Gateway API Inference Extension route.
//!
//! It is continuous batching reduced to what a router can observe:
//! - a request needs one of `slots` batch slots and KV room for its prompt
//!   plus its whole output; lacking either, it waits in a FIFO queue;
//! - prefill costs `prefill_us_per_token` for each prompt token that the
//!   prefix cache misses, and yields the first token;
//! - every later token takes one decode step of `decode_ms` plus
//!   `decode_ms_per_batch` per running sequence, so a busy server streams
//!   slower;
//! - the prefix cache remembers the chained hashes of whole prompt blocks
//!   of `prefix_block_tokens` (a token being 4 bytes of text), least
//!   recently used first out, as many blocks as the KV cache holds.
//!
//! Nothing here is random: the same arrivals get the same timings.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::text::BYTES_PER_TOKEN;

/// The simulated server's size and speed: the `--gpu-*` flags, or the `gpu`
/// field of `/mock/config`, where fields left out take these defaults.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuSim {
    /// Sequences decoded together (vLLM's `max_num_seqs`); others wait.
    pub slots: u32,
    /// KV-cache capacity in tokens, shared by the running sequences.
    pub kv_tokens: u32,
    /// Prefill time per prompt token missed by the prefix cache, in microseconds.
    pub prefill_us_per_token: f64,
    /// Decode step of a lone sequence, in milliseconds.
    pub decode_ms: f64,
    /// What each running sequence adds to a decode step, in milliseconds.
    pub decode_ms_per_batch: f64,
    /// Tokens per prefix-cache block (vLLM's block size); only whole blocks are cached.
    pub prefix_block_tokens: u32,
}

impl GpuSim {
    /// Roughly an 8B model on one data-center GPU, scaled down so that a
    /// laptop benchmark fills the cache.
    pub const DEFAULT: GpuSim = GpuSim {
        slots: 16,
        kv_tokens: 65_536,
        prefill_us_per_token: 50.0,
        decode_ms: 10.0,
        decode_ms_per_batch: 0.5,
        prefix_block_tokens: 16,
    };

    /// Accepts sizes of at least 1 and finite, non-negative times.
    pub(crate) fn check(self) -> Result<Self, String> {
        let sizes = [
            ("slots", self.slots),
            ("kv_tokens", self.kv_tokens),
            ("prefix_block_tokens", self.prefix_block_tokens),
        ];
        for (name, value) in sizes {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let times = [
            ("prefill_us_per_token", self.prefill_us_per_token),
            ("decode_ms", self.decode_ms),
            ("decode_ms_per_batch", self.decode_ms_per_batch),
        ];
        for (name, value) in times {
            check_time(value).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(self)
    }

    fn prefill(&self, tokens: u32) -> Duration {
        millis(self.prefill_us_per_token * f64::from(tokens) / 1e3)
    }

    fn decode_step(&self, running: u32) -> Duration {
        millis(self.decode_ms + self.decode_ms_per_batch * f64::from(running))
    }

    /// Blocks the prefix cache remembers: as many as the KV cache holds.
    fn cache_blocks(&self) -> usize {
        (self.kv_tokens / self.prefix_block_tokens).max(1) as usize
    }
}

impl Default for GpuSim {
    fn default() -> Self {
        GpuSim::DEFAULT
    }
}

/// A time setting: finite and not negative.
pub(crate) fn check_time(v: f64) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number >= 0"))
    }
}

/// Rounded to the nanosecond, so equal settings give equal durations.
fn millis(ms: f64) -> Duration {
    // Float-to-int casts saturate: absurd settings wait ~584 years, not panic.
    Duration::from_nanos((ms * 1e6).round() as u64)
}

/// The simulated server of one mock process. It is state, not config: its
/// queue, batch and cache survive `POST /mock/config`, which only changes
/// its limits.
pub(crate) struct Gpu {
    server: Mutex<Server>,
}

struct Server {
    /// The newest config's limits; `None` (simulation off) admits everyone.
    sim: Option<GpuSim>,
    running: u32,
    /// KV tokens reserved by the running sequences.
    kv_used: u64,
    queue: VecDeque<Waiter>,
    next_place: u64,
    prefix: PrefixCache,
    prefix_stats: PrefixStats,
}

/// Prefix-cache use since the mock started, in prompt tokens, as vLLM
/// counts `prefix_cache_queries` and `prefix_cache_hits`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PrefixStats {
    pub(crate) queries: u64,
    pub(crate) hits: u64,
}

/// A snapshot for `/metrics`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GpuLoad {
    pub(crate) running: u32,
    pub(crate) waiting: u64,
    pub(crate) kv_used: u64,
    /// The limits in force, `None` while the simulation is off.
    pub(crate) sim: Option<GpuSim>,
    pub(crate) prefix: PrefixStats,
}

impl GpuLoad {
    /// Reserved KV tokens as a fraction of the capacity (at most 1, even
    /// right after the capacity shrank).
    pub(crate) fn kv_usage(&self) -> f64 {
        self.sim.map_or(0.0, |sim| {
            (self.kv_used as f64 / f64::from(sim.kv_tokens)).min(1.0)
        })
    }

    /// Busy batch slots as a fraction of all of them.
    pub(crate) fn slot_usage(&self) -> f64 {
        self.sim.map_or(0.0, |sim| {
            (f64::from(self.running) / f64::from(sim.slots)).min(1.0)
        })
    }
}

impl Gpu {
    pub(crate) fn new(sim: Option<GpuSim>) -> Arc<Self> {
        Arc::new(Gpu {
            server: Mutex::new(Server {
                sim,
                running: 0,
                kv_used: 0,
                queue: VecDeque::new(),
                next_place: 0,
                prefix: PrefixCache::new(sim.unwrap_or_default()),
                prefix_stats: PrefixStats::default(),
            }),
        })
    }

    /// Takes a new config's limits; larger ones admit waiting requests at once.
    pub(crate) fn configure(self: &Arc<Self>, sim: Option<GpuSim>) {
        {
            let mut server = self.lock();
            if let Some(sim) = sim {
                server.prefix.resize(sim);
            }
            server.sim = sim;
        }
        self.admit_waiting();
    }

    /// A request with this prompt (its text, for the prefix cache) that
    /// will generate `output_tokens`, timed by `sim`.
    pub(crate) fn job(
        self: &Arc<Self>,
        sim: GpuSim,
        prompt: &[u8],
        prompt_tokens: u32,
        output_tokens: u32,
    ) -> Job {
        Job {
            gpu: Arc::clone(self),
            request: Request {
                sim,
                blocks: block_hashes(prompt, sim.prefix_block_tokens),
                prompt_tokens: prompt_tokens.max(1),
                output_tokens,
            },
        }
    }

    pub(crate) fn load(&self) -> GpuLoad {
        let server = self.lock();
        GpuLoad {
            running: server.running,
            waiting: server.queue.len() as u64,
            kv_used: server.kv_used,
            sim: server.sim,
            prefix: server.prefix_stats,
        }
    }

    /// Starts waiting requests from the head of the queue while they fit.
    fn admit_waiting(self: &Arc<Self>) {
        let admitted: Vec<(oneshot::Sender<Sequence>, Sequence)> = {
            let mut server = self.lock();
            let mut admitted = Vec::new();
            while server
                .queue
                .front()
                .is_some_and(|w| server.fits(&w.request))
            {
                let waiter = server.queue.pop_front().expect("the front was just seen");
                let sequence = server.start(self, &waiter.request);
                admitted.push((waiter.tx, sequence));
            }
            admitted
        };
        // Sent with the lock released: a sequence whose waiter has just gone
        // comes back and drops here, freeing its slot for the next one.
        for (tx, sequence) in admitted {
            let _ = tx.send(sequence);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Server> {
        // Every change is a few plain assignments: a panic between them is
        // not expected, and would at worst skew the simulated counts.
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Server {
    /// KV tokens a request holds while it runs: its prompt and whole output,
    /// cut to the capacity so that a request larger than the cache still
    /// runs, alone.
    fn reservation(&self, request: &Request) -> u64 {
        let want = u64::from(request.prompt_tokens) + u64::from(request.output_tokens);
        self.sim
            .map_or(want, |sim| want.min(u64::from(sim.kv_tokens)))
    }

    fn fits(&self, request: &Request) -> bool {
        self.sim.is_none_or(|sim| {
            self.running < sim.slots
                && self.kv_used + self.reservation(request) <= u64::from(sim.kv_tokens)
        })
    }

    /// Takes a slot and KV room for `request`, and looks its prompt up in
    /// the prefix cache.
    fn start(&mut self, gpu: &Arc<Gpu>, request: &Request) -> Sequence {
        let kv = self.reservation(request);
        self.running += 1;
        self.kv_used += kv;
        let sim = request.sim;
        let hit_blocks = u32::try_from(self.prefix.reuse(&request.blocks)).unwrap_or(u32::MAX);
        // Like vLLM, a fully cached prompt still computes its last token,
        // which yields the first output token.
        let cached = hit_blocks
            .saturating_mul(sim.prefix_block_tokens)
            .min(request.prompt_tokens - 1);
        self.prefix_stats.queries += u64::from(request.prompt_tokens);
        self.prefix_stats.hits += u64::from(cached);
        Sequence {
            gpu: Arc::clone(gpu),
            kv,
            sim,
            prefill: sim.prefill(request.prompt_tokens - cached),
        }
    }
}

/// What the server needs to know of a request.
struct Request {
    /// The timings of the config the request arrived under.
    sim: GpuSim,
    /// Chained hashes of the prompt's whole blocks.
    blocks: Vec<u64>,
    prompt_tokens: u32,
    output_tokens: u32,
}

/// A request on its way to the GPU.
pub(crate) struct Job {
    gpu: Arc<Gpu>,
    request: Request,
}

impl Job {
    /// Waits, first come first served, for a slot and KV room, then starts
    /// the sequence. Dropping the future gives up the place in the queue.
    pub(crate) async fn admit(self) -> Sequence {
        let Job { gpu, request } = self;
        let (id, rx) = {
            let mut server = gpu.lock();
            // Nobody overtakes a waiting request, even one that would fit.
            if server.queue.is_empty() && server.fits(&request) {
                return server.start(&gpu, &request);
            }
            let id = server.next_place;
            server.next_place += 1;
            let (tx, rx) = oneshot::channel();
            server.queue.push_back(Waiter { id, request, tx });
            (id, rx)
        };
        let mut place = Place { gpu, id, rx };
        (&mut place.rx)
            .await
            .expect("a waiter leaves the queue admitted, or with its place dropped")
    }
}

/// A request in the queue, and where its sequence goes once admitted.
struct Waiter {
    id: u64,
    request: Request,
    tx: oneshot::Sender<Sequence>,
}

/// A place in the queue, given up when dropped before admission.
struct Place {
    gpu: Arc<Gpu>,
    id: u64,
    rx: oneshot::Receiver<Sequence>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let left = {
            let mut server = self.gpu.lock();
            // Places are numbered in arrival order, so the queue is sorted.
            match server.queue.binary_search_by_key(&self.id, |w| w.id) {
                Ok(i) => server.queue.remove(i).is_some(),
                Err(_) => false,
            }
        };
        // A head that did not fit may have held back others that do.
        if left {
            self.gpu.admit_waiting();
        }
        // A sequence sent just before the drop is dropped with `rx`, after
        // this, and frees its slot the usual way.
    }
}

/// A running request: it holds a batch slot and its KV reservation until
/// dropped, when its answer ends or its client goes away.
pub(crate) struct Sequence {
    gpu: Arc<Gpu>,
    kv: u64,
    sim: GpuSim,
    prefill: Duration,
}

impl Sequence {
    /// From admission to the first token.
    pub(crate) fn prefill(&self) -> Duration {
        self.prefill
    }

    /// Time to the next token, with the batch as it is now.
    pub(crate) fn decode_step(&self) -> Duration {
        let running = self.gpu.lock().running;
        self.sim.decode_step(running)
    }
}

impl Drop for Sequence {
    fn drop(&mut self) {
        {
            let mut server = self.gpu.lock();
            server.running -= 1;
            server.kv_used -= self.kv;
        }
        self.gpu.admit_waiting();
    }
}

/// Hash of each whole block of `prompt`, each chained to the one before, so
/// that a block matches only after the same prefix, as in vLLM. Tokens are
/// approximated as [`BYTES_PER_TOKEN`] bytes of text.
fn block_hashes(prompt: &[u8], block_tokens: u32) -> Vec<u64> {
    let block_bytes = block_tokens as usize * BYTES_PER_TOKEN;
    let mut parent = 0u64;
    prompt
        .chunks_exact(block_bytes)
        .map(|block| {
            let mut hasher = DefaultHasher::new();
            parent.hash(&mut hasher);
            block.hash(&mut hasher);
            parent = hasher.finish();
            parent
        })
        .collect()
}

/// Recently used block hashes, bounded, least recently used dropped first.
struct PrefixCache {
    /// The block size the hashes were made with.
    block_tokens: u32,
    capacity: usize,
    /// Bumped on every use, so ages are unique.
    clock: u64,
    last_use: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
}

impl PrefixCache {
    fn new(sim: GpuSim) -> Self {
        PrefixCache {
            block_tokens: sim.prefix_block_tokens,
            capacity: sim.cache_blocks(),
            clock: 0,
            last_use: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Follows a new config: another block size makes every hash useless.
    fn resize(&mut self, sim: GpuSim) {
        if sim.prefix_block_tokens != self.block_tokens {
            *self = PrefixCache::new(sim);
        } else {
            self.capacity = sim.cache_blocks();
            self.evict();
        }
    }

    /// How many leading blocks were cached; then all of them are, as just used.
    fn reuse(&mut self, blocks: &[u64]) -> usize {
        let hits = blocks
            .iter()
            .take_while(|h| self.last_use.contains_key(h))
            .count();
        // Last block first, so a prompt's leading blocks are the most recent:
        // eviction eats tails before the shared prefixes they hang from.
        for &hash in blocks.iter().rev() {
            self.clock += 1;
            if let Some(old) = self.last_use.insert(hash, self.clock) {
                self.by_age.remove(&old);
            }
            self.by_age.insert(self.clock, hash);
        }
        self.evict();
        hits
    }

    fn evict(&mut self) {
        while self.last_use.len() > self.capacity {
            let Some((_, hash)) = self.by_age.pop_first() else {
                break;
            };
            self.last_use.remove(&hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(slots: u32, kv_tokens: u32) -> GpuSim {
        GpuSim {
            slots,
            kv_tokens,
            prefill_us_per_token: 1000.0,
            decode_ms: 10.0,
            decode_ms_per_batch: 5.0,
            prefix_block_tokens: 4,
        }
    }

    /// A job of `prompt` (text) generating `output` tokens.
    fn job(gpu: &Arc<Gpu>, prompt: &str, output: u32) -> Job {
        let sim = gpu.load().sim.unwrap();
        let tokens = crate::text::estimate_tokens(prompt.len(), 0);
        gpu.job(sim, prompt.as_bytes(), tokens, output)
    }

    /// Starts admitting `job` in the background; the handle yields the sequence.
    fn queue(job: Job) -> tokio::task::JoinHandle<Sequence> {
        tokio::spawn(job.admit())
    }

    /// Lets spawned admissions reach the queue.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_makes_the_next_request_wait() {
        let gpu = Gpu::new(Some(sim(1, 1000)));
        let first = job(&gpu, "hi", 5).admit().await;
        let second = queue(job(&gpu, "hi", 5));
        settle().await;
        let load = gpu.load();
        assert_eq!((load.running, load.waiting), (1, 1));
        assert!(!second.is_finished());
        assert_eq!(load.slot_usage(), 1.0);

        drop(first);
        let second = second.await.unwrap();
        let load = gpu.load();
        assert_eq!((load.running, load.waiting), (1, 0));
        drop(second);
        assert_eq!(gpu.load().running, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn too_little_kv_makes_a_request_wait_with_slots_free() {
        // 1 prompt token + 60 output tokens each: two do not fit in 100.
        let gpu = Gpu::new(Some(sim(8, 100)));
        let first = job(&gpu, "abcd", 60).admit().await;
        assert_eq!(gpu.load().kv_used, 61);
        assert_eq!(gpu.load().kv_usage(), 0.61);
        let second = queue(job(&gpu, "abcd", 60));
        settle().await;
        assert_eq!((gpu.load().running, gpu.load().waiting), (1, 1));
        drop(first);
        drop(second.await.unwrap());
        assert_eq!(gpu.load().kv_used, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_first_come_first_served() {
        let gpu = Gpu::new(Some(sim(4, 100)));
        let running = job(&gpu, "abcd", 50).admit().await;
        // Too big to join now, and it holds back the small one behind it.
        let big = queue(job(&gpu, "abcd", 60));
        settle().await;
        let small = queue(job(&gpu, "abcd", 1));
        settle().await;
        assert_eq!(gpu.load().waiting, 2);
        assert!(!small.is_finished());
        // Once the head leaves, the small one fits beside the running one.
        big.abort();
        let small = small.await.unwrap();
        assert_eq!((gpu.load().running, gpu.load().waiting), (2, 0));
        drop((running, small));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_cache_runs_alone() {
        let gpu = Gpu::new(Some(sim(4, 10)));
        let huge = job(&gpu, "abcd", 500).admit().await;
        assert_eq!(gpu.load().kv_usage(), 1.0);
        let next = queue(job(&gpu, "abcd", 1));
        settle().await;
        assert_eq!(gpu.load().waiting, 1);
        drop(huge);
        drop(next.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn leaving_the_queue_or_the_batch_frees_the_place_at_once() {
        let gpu = Gpu::new(Some(sim(1, 1000)));
        let first = job(&gpu, "hi", 5).admit().await;
        let gone = queue(job(&gpu, "hi", 5));
        settle().await;
        let third = queue(job(&gpu, "hi", 5));
        settle().await;
        assert_eq!(gpu.load().waiting, 2);
        gone.abort();
        settle().await;
        assert_eq!(gpu.load().waiting, 1);
        // A cancelled sequence gives its slot to the next in line.
        drop(first);
        let third = third.await.unwrap();
        assert_eq!((gpu.load().running, gpu.load().waiting), (1, 0));
        drop(third);
        assert_eq!((gpu.load().running, gpu.load().kv_used), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_prefix_skips_its_prefill() {
        let gpu = Gpu::new(Some(sim(4, 1000)));
        // 16 bytes per block; 102 bytes are 26 tokens.
        let system = "You are a helpful assistant. ".repeat(3);
        let first_prompt = format!("{system}Tell me a joke.");
        let second_prompt = format!("{system}What is the capital of France?");
        let first = job(&gpu, &first_prompt, 1).admit().await;
        assert_eq!(first_prompt.len(), 102);
        assert_eq!(first.prefill(), Duration::from_millis(26));
        drop(first);

        let second = job(&gpu, &second_prompt, 1).admit().await;
        // The 87 shared bytes hold 5 whole blocks: 20 tokens cost nothing.
        assert_eq!(second_prompt.len(), 117);
        assert_eq!(second.prefill(), Duration::from_millis(30 - 20));
        drop(second);

        let same = job(&gpu, &second_prompt, 1).admit().await;
        // Every whole block (28 tokens) is cached; the last token is computed.
        assert_eq!(same.prefill(), Duration::from_millis(2));
        drop(same);
        assert_eq!(
            gpu.load().prefix,
            PrefixStats {
                queries: 26 + 30 + 30,
                hits: 20 + 28
            }
        );

        // The same text after another first block shares nothing.
        let shifted = job(&gpu, &format!("XXXX{second_prompt}"), 1).admit().await;
        assert_eq!(shifted.prefill(), Duration::from_millis(31));
    }

    #[test]
    fn the_prefix_cache_is_bounded_and_keeps_prefixes_longest() {
        // 4 blocks of 4 tokens.
        let mut cache = PrefixCache::new(sim(1, 16));
        let a = block_hashes(b"aaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbcccccccccccccccc", 4);
        let b = block_hashes(b"xxxxxxxxxxxxxxxxyyyyyyyyyyyyyyyyzzzzzzzzzzzzzzzz", 4);
        assert_eq!((a.len(), b.len()), (3, 3));
        assert_eq!(cache.reuse(&a), 0);
        assert_eq!(cache.reuse(&a), 3);
        assert_eq!(cache.reuse(&b), 0);
        // b pushed out a's last two blocks, its first stays.
        assert_eq!(cache.last_use.len(), 4);
        assert_eq!(cache.reuse(&a), 1);
        // A new block size forgets everything.
        cache.resize(GpuSim {
            prefix_block_tokens: 8,
            ..sim(1, 16)
        });
        assert!(cache.last_use.is_empty());
        assert_eq!(cache.capacity, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn decode_slows_as_the_batch_grows() {
        let gpu = Gpu::new(Some(sim(4, 1000)));
        let one = job(&gpu, "hi", 5).admit().await;
        assert_eq!(one.decode_step(), Duration::from_millis(15));
        let two = job(&gpu, "hi", 5).admit().await;
        assert_eq!(one.decode_step(), Duration::from_millis(20));
        assert_eq!(two.decode_step(), Duration::from_millis(20));
        drop(two);
        assert_eq!(one.decode_step(), Duration::from_millis(15));
    }

    #[tokio::test(start_paused = true)]
    async fn new_limits_admit_waiting_requests() {
        let gpu = Gpu::new(Some(sim(1, 1000)));
        let first = job(&gpu, "hi", 5).admit().await;
        let second = queue(job(&gpu, "hi", 5));
        settle().await;
        gpu.configure(Some(sim(2, 1000)));
        let second = second.await.unwrap();
        assert_eq!(gpu.load().running, 2);
        let third = queue(job(&gpu, "hi", 5));
        settle().await;
        assert_eq!(gpu.load().waiting, 1);
        // Switched off, the server has no limits.
        gpu.configure(None);
        let third = third.await.unwrap();
        assert_eq!(gpu.load().running, 3);
        assert_eq!(gpu.load().kv_usage(), 0.0);
        drop((first, second, third));
    }

    #[test]
    fn checks_and_durations() {
        assert_eq!(GpuSim::DEFAULT.check(), Ok(GpuSim::DEFAULT));
        for bad in [
            GpuSim {
                slots: 0,
                ..GpuSim::DEFAULT
            },
            GpuSim {
                prefix_block_tokens: 0,
                ..GpuSim::DEFAULT
            },
            GpuSim {
                decode_ms: -1.0,
                ..GpuSim::DEFAULT
            },
            GpuSim {
                prefill_us_per_token: f64::NAN,
                ..GpuSim::DEFAULT
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        let s = sim(1, 1);
        assert_eq!(s.prefill(3), Duration::from_millis(3));
        assert_eq!(s.decode_step(0), Duration::from_millis(10));
        assert_eq!(millis(0.0000004), Duration::ZERO);
        assert_eq!(millis(1e300), Duration::from_nanos(u64::MAX));
    }
}
