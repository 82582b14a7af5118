//! The config file model: exactly what YAML may say, nothing validated beyond shape.
//! Unknown keys are errors, so a typo never silently changes behaviour.

use super::units::{de_opt_bytes, de_opt_duration};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub providers: Vec<ProviderSection>,
    #[serde(default)]
    pub models: Vec<ModelSection>,
    #[serde(default)]
    pub keys: Vec<KeySection>,
    /// Limits and budgets shared by every key of a team.
    #[serde(default)]
    pub teams: std::collections::BTreeMap<String, TeamSection>,
    #[serde(default)]
    pub plugins: PluginsSection,
    #[serde(default)]
    pub geo: GeoSection,
    /// Facts about upstream models, merged over the built-in catalog.
    #[serde(default)]
    pub catalog: std::collections::BTreeMap<String, CatalogEntry>,
}

/// Where clients are, and which regions are near each other.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoSection {
    /// Client address ranges → region, when the client sends no `x-tollgate-region`.
    #[serde(default)]
    pub client_regions: std::collections::BTreeMap<String, String>,
    /// Region → the other regions from nearest to farthest, for `strategy: geo`.
    #[serde(default)]
    pub nearest: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub context_window: Option<u64>,
    pub tokenizer: Option<String>,
    pub price_per_mtok: Option<PriceSection>,
}

/// USD per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub input: f64,
    pub cached_input: Option<f64>,
    pub output: f64,
}

/// The built-in plugins' sections, and any other: the section of a plugin a custom build adds
/// (checked against that build's plugins, not here).
#[derive(Debug, Default, Deserialize)]
pub struct PluginsSection {
    /// One JSON line per request on the `tollgate::access` log target.
    pub access_log: Option<bool>,
    /// The usage ledger: one SQLite row per request.
    pub ledger: Option<LedgerSection>,
    /// Where limits and budgets live when several replicas share them.
    pub shared_state: Option<SharedStateSection>,
    /// Answers to repeated requests, from memory.
    pub cache: Option<CacheSection>,
    #[serde(flatten)]
    pub other: serde_yaml::Mapping,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// `exact`.
    pub mode: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ttl: Option<Duration>,
    /// The in-memory store's bound.
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub max_bytes: Option<u64>,
    /// `memory`.
    pub store: Option<String>,
    /// Who shares entries: key | team | project | global.
    pub scope: Option<String>,
    /// Identical requests in flight share one upstream call.
    pub coalesce: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedStateSection {
    /// `redis://[user][:password@]host[:port][/db]`
    pub redis: String,
    /// What admission does when Redis does not answer: fail_open | fail_closed.
    pub on_error: Option<String>,
    /// How long one Redis call may take.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
}

/// Requests and tokens per minute.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// USD per UTC calendar day and month.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSection {
    pub limits: Option<LimitsSection>,
    pub budget: Option<BudgetSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    pub path: String,
    /// Rows waiting for the writer at most; beyond, rows are counted as overflow.
    pub queue: Option<usize>,
    /// Rows per transaction at most.
    pub batch: Option<usize>,
    /// How long the writer gathers a batch.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub flush_every: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default)]
    pub listen: Option<OneOrMany>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub region: Option<String>,
    pub threads: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub shutdown_grace: Option<Duration>,
    /// How long one write to a client may wait for the client to read.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub client_write_timeout: Option<Duration>,
    /// How long the gateway waits for the next piece of a request body.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub client_body_timeout: Option<Duration>,
    /// How long a new client connection may take to send its first bytes.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub client_idle_timeout: Option<Duration>,
    pub h2c: Option<bool>,
    /// The data plane serves requests without a virtual key on purpose: a reload may then
    /// drop every key.
    pub open_data_plane: Option<bool>,
    /// The admin API needs no token on purpose: a reload may then drop the token.
    pub open_admin: Option<bool>,
}

/// `listen: "0.0.0.0:8080"` or `listen: ["0.0.0.0:8080", "[::]:8080"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    pub name: String,
    pub kind: String,
    pub base_url: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub discovery: Option<DiscoverySection>,
    pub api_key: Option<String>,
    /// Azure OpenAI's `api-version` query parameter.
    pub api_version: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// Time constant of the endpoints' peak-EWMA latency.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ewma_decay: Option<Duration>,
    pub outlier: Option<OutlierSection>,
    pub health_check: Option<HealthCheckSection>,
    /// The provider's own quota: the gateway routes elsewhere rather than exceed it.
    pub limits: Option<LimitsSection>,
    /// GPU servers' Prometheus metrics, for `gpu-aware` and `least-loaded` routing.
    pub load_metrics: Option<LoadMetricsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadMetricsSection {
    pub path: Option<String>,
    /// When the metrics listen apart from the API (Triton: 8002).
    pub port: Option<u16>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub every: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
}

/// How `gpu-aware` weighs what the GPU servers report.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoringSection {
    pub queue_weight: Option<f64>,
    pub kv_cache_weight: Option<f64>,
    pub prefix_weight: Option<f64>,
    pub lora_weight: Option<f64>,
    /// Endpoints with more waiting requests are left out (unless all are).
    pub max_waiting: Option<f64>,
    /// Endpoints with more KV-cache use are left out (unless all are).
    pub max_kv_cache: Option<f64>,
}

/// A pool that follows a DNS name (a Kubernetes headless service has one address per pod).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// `name:port`
    pub dns: String,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub every: Option<Duration>,
    /// `http` (default) or `https`.
    pub scheme: Option<String>,
}

/// Passive ejection after consecutive failures.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSection {
    pub consecutive_failures: Option<u32>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ejection: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_ejection: Option<Duration>,
}

/// Active health checks: `GET path` on every endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    pub path: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub every: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSection {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub connect: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub first_token: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub idle: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub total: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    pub strategy: Option<String>,
    pub targets: Vec<TargetSection>,
    pub retry: Option<RetrySection>,
    /// What to do with prompts that do not fit: reject | overflow_to_larger | truncate_middle.
    pub context: Option<String>,
    /// Regions this model's traffic may never leave, failover included.
    pub residency: Option<Vec<String>>,
    /// The first rule whose conditions all hold limits the request to its targets.
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    /// Weights and thresholds of `strategy: gpu-aware`.
    pub scoring: Option<ScoringSection>,
    /// Below this fraction of its healthy endpoints not ejected, the model routes to ejected
    /// ones too (Envoy's panic threshold); 0 turns it off.
    pub panic_threshold: Option<f64>,
    /// `off`: the answer cache leaves this model's requests alone.
    pub cache: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub when: ConditionSection,
    /// Targets by provider name or upstream model name.
    #[serde(rename = "use")]
    pub use_targets: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSection {
    pub prompt_tokens_below: Option<u64>,
    pub prompt_tokens_above: Option<u64>,
    /// Request headers that must have exactly these values.
    #[serde(default)]
    pub header: std::collections::BTreeMap<String, String>,
    /// A regular expression the last user message must match.
    pub last_user_matches: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub provider: String,
    pub model: String,
    /// Share of traffic under `strategy: weighted`.
    pub weight: Option<u32>,
    /// `max_tokens` for providers that require one (Anthropic) when the client sets none.
    pub max_tokens_default: Option<u64>,
    /// How chat turns become Triton's `text_input`: plain | llama3 | chatml.
    pub prompt_template: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    pub attempts: Option<u32>,
    pub on: Option<Vec<String>>,
    /// Base of the exponential backoff between attempts (full jitter).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub backoff: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_backoff: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    pub id: String,
    /// Hex sha256 of the key: the file never needs to hold the key itself.
    pub key_sha256: Option<String>,
    /// The key in clear (usually `${ENV}`); hashed at load and never shown again.
    pub key: Option<String>,
    pub team: Option<String>,
    pub project: Option<String>,
    pub models: Option<Vec<String>>,
    /// Regions this key's traffic may never leave.
    pub residency: Option<Vec<String>>,
    pub limits: Option<LimitsSection>,
    pub budget: Option<BudgetSection>,
}
