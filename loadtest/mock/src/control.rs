//! `GET` and `POST /mock/config`: changing a running mock's behaviour, so a
//! test can make one replica slow, failing or unhealthy, then recover it.

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::body::{json, MockResponse};
use crate::config::{
    check_error_rate, check_error_status, check_kv_cache_usage, check_tokens_per_sec, MockConfig,
};
use crate::errors::invalid_param;
use crate::gpu::GpuSim;
use crate::state::Shared;

/// A validated change to the adjustable fields of a [`MockConfig`];
/// `None` keeps a field as it is.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ConfigPatch {
    latency_ms: Option<u64>,
    ttft_ms: Option<u64>,
    tokens_per_sec: Option<f64>,
    completion_tokens: Option<u32>,
    error_rate: Option<f64>,
    error_status: Option<u16>,
    retry_after_secs: Option<u64>,
    healthy: Option<bool>,
    waiting: Option<u32>,
    stamp_chunks: Option<bool>,
    /// `Some(None)` (JSON null) removes the limit.
    drop_after_chunks: Option<Option<u32>>,
    /// `Some(None)` (JSON null) stops injecting in-stream errors.
    error_event_after_chunks: Option<Option<u32>>,
    /// `Some(None)` (JSON null) reports the real KV-cache usage again.
    kv_cache_usage: Option<Option<f64>>,
    /// Replaces the whole simulation; `Some(None)` (JSON null) switches it off.
    gpu: Option<Option<GpuSim>>,
    lora_adapters: Option<Vec<String>>,
}

/// Why a patch was rejected, and the field at fault when there is one.
#[derive(Debug, PartialEq)]
pub(crate) struct PatchError {
    message: String,
    param: Option<String>,
}

impl PatchError {
    fn field(name: &str, message: String) -> Self {
        PatchError {
            message,
            param: Some(name.to_owned()),
        }
    }
}

impl ConfigPatch {
    /// Parses a JSON object of any subset of the adjustable fields. Unknown
    /// fields, wrong types (null included, except for the `*_after_chunks`
    /// limits, `kv_cache_usage` and `gpu`) and out-of-range values reject
    /// the whole patch. A `gpu` object's missing fields take their defaults.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, PatchError> {
        let fields: Map<String, Value> = serde_json::from_slice(body).map_err(|e| PatchError {
            message: format!("The body must be a JSON object of config fields: {e}."),
            param: None,
        })?;
        let mut patch = ConfigPatch::default();
        for (name, value) in fields {
            let name = name.as_str();
            match name {
                "latency_ms" => patch.latency_ms = Some(typed(name, value)?),
                "ttft_ms" => patch.ttft_ms = Some(typed(name, value)?),
                "tokens_per_sec" => {
                    patch.tokens_per_sec = Some(checked(name, value, check_tokens_per_sec)?);
                }
                "completion_tokens" => patch.completion_tokens = Some(typed(name, value)?),
                "error_rate" => patch.error_rate = Some(checked(name, value, check_error_rate)?),
                "error_status" => {
                    patch.error_status = Some(checked(name, value, check_error_status)?);
                }
                "retry_after_secs" => patch.retry_after_secs = Some(typed(name, value)?),
                "healthy" => patch.healthy = Some(typed(name, value)?),
                "stamp_chunks" => patch.stamp_chunks = Some(typed(name, value)?),
                "waiting" => patch.waiting = Some(typed(name, value)?),
                "drop_after_chunks" => patch.drop_after_chunks = Some(typed(name, value)?),
                "error_event_after_chunks" => {
                    patch.error_event_after_chunks = Some(typed(name, value)?);
                }
                "kv_cache_usage" => {
                    patch.kv_cache_usage = Some(nullable(name, value, check_kv_cache_usage)?);
                }
                "gpu" => patch.gpu = Some(nullable(name, value, GpuSim::check)?),
                "lora_adapters" => patch.lora_adapters = Some(typed(name, value)?),
                _ => {
                    return Err(PatchError::field(
                        name,
                        format!("Unknown config field '{name}' (GET /mock/config lists them)."),
                    ))
                }
            }
        }
        Ok(patch)
    }

    /// `cfg` with this patch's fields replaced.
    pub(crate) fn apply(&self, cfg: &MockConfig) -> MockConfig {
        fn set<T: Copy>(field: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *field = value;
            }
        }
        let mut next = cfg.clone();
        set(&mut next.latency_ms, self.latency_ms);
        set(&mut next.ttft_ms, self.ttft_ms);
        set(&mut next.tokens_per_sec, self.tokens_per_sec);
        set(&mut next.completion_tokens, self.completion_tokens);
        set(&mut next.error_rate, self.error_rate);
        set(&mut next.error_status, self.error_status);
        set(&mut next.retry_after_secs, self.retry_after_secs);
        set(&mut next.healthy, self.healthy);
        set(&mut next.waiting, self.waiting);
        set(&mut next.stamp_chunks, self.stamp_chunks);
        set(&mut next.drop_after_chunks, self.drop_after_chunks);
        set(
            &mut next.error_event_after_chunks,
            self.error_event_after_chunks,
        );
        set(&mut next.kv_cache_usage, self.kv_cache_usage);
        set(&mut next.gpu, self.gpu);
        if let Some(adapters) = &self.lora_adapters {
            next.lora_adapters = adapters.clone();
        }
        next
    }
}

fn typed<T: DeserializeOwned>(name: &str, value: Value) -> Result<T, PatchError> {
    serde_json::from_value(value)
        .map_err(|e| PatchError::field(name, format!("Invalid value for '{name}': {e}.")))
}

fn checked<T: DeserializeOwned>(
    name: &str,
    value: Value,
    check: fn(T) -> Result<T, String>,
) -> Result<T, PatchError> {
    check(typed(name, value)?)
        .map_err(|e| PatchError::field(name, format!("Invalid value for '{name}': {e}.")))
}

/// A value to check, or null.
fn nullable<T: DeserializeOwned>(
    name: &str,
    value: Value,
    check: fn(T) -> Result<T, String>,
) -> Result<Option<T>, PatchError> {
    match value {
        Value::Null => Ok(None),
        value => checked(name, value, check).map(Some),
    }
}

/// The adjustable fields, exactly the shape `POST` accepts, so a test can
/// post back what it read.
fn behaviour(cfg: &MockConfig) -> Value {
    json!({
        "latency_ms": cfg.latency_ms,
        "ttft_ms": cfg.ttft_ms,
        "tokens_per_sec": cfg.tokens_per_sec,
        "completion_tokens": cfg.completion_tokens,
        "error_rate": cfg.error_rate,
        "error_status": cfg.error_status,
        "retry_after_secs": cfg.retry_after_secs,
        "healthy": cfg.healthy,
        "waiting": cfg.waiting,
        "stamp_chunks": cfg.stamp_chunks,
        "drop_after_chunks": cfg.drop_after_chunks,
        "error_event_after_chunks": cfg.error_event_after_chunks,
        "kv_cache_usage": cfg.kv_cache_usage,
        "gpu": cfg.gpu,
        "lora_adapters": cfg.lora_adapters,
    })
}

/// `GET /mock/config`.
pub(crate) fn get(cfg: &MockConfig) -> MockResponse {
    json(StatusCode::OK, &behaviour(cfg))
}

/// `POST /mock/config`: applies the patch and answers the whole new config.
pub(crate) fn post(shared: &Shared, body: &[u8]) -> MockResponse {
    match ConfigPatch::parse(body) {
        Ok(patch) => json(StatusCode::OK, &behaviour(&shared.update(&patch))),
        Err(e) => invalid_param(&e.message, e.param.as_deref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ConfigPatch, PatchError> {
        ConfigPatch::parse(body.as_bytes())
    }

    /// The field a rejected patch blames.
    fn blamed(body: &str) -> Option<String> {
        parse(body).unwrap_err().param
    }

    #[test]
    fn parses_every_field() {
        let patch = parse(
            r#"{"latency_ms": 5, "ttft_ms": 6, "tokens_per_sec": 2.5, "completion_tokens": 3,
                "error_rate": 1, "error_status": 503, "retry_after_secs": 9,
                "healthy": false, "waiting": 4, "stamp_chunks": true, "drop_after_chunks": 2,
                "error_event_after_chunks": 7, "kv_cache_usage": 0.5,
                "gpu": {"slots": 3, "decode_ms": 1.5}, "lora_adapters": ["sql"]}"#,
        )
        .unwrap();
        assert_eq!(
            patch,
            ConfigPatch {
                latency_ms: Some(5),
                ttft_ms: Some(6),
                tokens_per_sec: Some(2.5),
                completion_tokens: Some(3),
                error_rate: Some(1.0),
                error_status: Some(503),
                retry_after_secs: Some(9),
                healthy: Some(false),
                waiting: Some(4),
                stamp_chunks: Some(true),
                drop_after_chunks: Some(Some(2)),
                error_event_after_chunks: Some(Some(7)),
                kv_cache_usage: Some(Some(0.5)),
                gpu: Some(Some(GpuSim {
                    slots: 3,
                    decode_ms: 1.5,
                    ..GpuSim::DEFAULT
                })),
                lora_adapters: Some(vec!["sql".into()]),
            }
        );
        assert_eq!(parse("{}").unwrap(), ConfigPatch::default());
    }

    #[test]
    fn null_clears_the_optional_fields_only() {
        let patch = parse(
            r#"{"drop_after_chunks": null, "error_event_after_chunks": null,
                "kv_cache_usage": null, "gpu": null}"#,
        )
        .unwrap();
        assert_eq!(patch.drop_after_chunks, Some(None));
        assert_eq!(patch.error_event_after_chunks, Some(None));
        assert_eq!(patch.kv_cache_usage, Some(None));
        assert_eq!(patch.gpu, Some(None));
        assert_eq!(
            blamed(r#"{"latency_ms": null}"#).as_deref(),
            Some("latency_ms")
        );
    }

    #[test]
    fn rejects_unknown_fields_and_wrong_types() {
        let err = parse(r#"{"latency_ms": 5, "latency": 5}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("latency"));
        assert!(err.message.contains("'latency'"), "{}", err.message);
        let err = parse(r#"{"latency_ms": "slow"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("latency_ms"));
        assert!(err.message.contains("'latency_ms'"), "{}", err.message);
        assert_eq!(blamed(r#"{"healthy": "yes"}"#).as_deref(), Some("healthy"));
        assert_eq!(blamed(r#"{"waiting": -1}"#).as_deref(), Some("waiting"));
        assert_eq!(blamed(r#"{"ttft_ms": 1.5}"#).as_deref(), Some("ttft_ms"));
        for body in ["", "[]", "5", "{nope"] {
            assert_eq!(blamed(body), None, "{body:?}");
        }
    }

    #[test]
    fn validates_ranges_as_the_cli_does() {
        for (body, field) in [
            (r#"{"error_rate": 1.5}"#, "error_rate"),
            (r#"{"error_rate": -0.1}"#, "error_rate"),
            (r#"{"tokens_per_sec": -1}"#, "tokens_per_sec"),
            (r#"{"error_status": 200}"#, "error_status"),
            (r#"{"error_status": 600}"#, "error_status"),
            (r#"{"error_status": 70000}"#, "error_status"),
            (r#"{"kv_cache_usage": 1.5}"#, "kv_cache_usage"),
            (r#"{"kv_cache_usage": "full"}"#, "kv_cache_usage"),
            (r#"{"gpu": {"slots": 0}}"#, "gpu"),
            (r#"{"gpu": {"decode_ms": -1}}"#, "gpu"),
            (r#"{"gpu": {"slot": 4}}"#, "gpu"),
            (r#"{"gpu": 4}"#, "gpu"),
        ] {
            assert_eq!(blamed(body).as_deref(), Some(field), "{body}");
        }
        assert!(parse(r#"{"error_rate": 0, "tokens_per_sec": 0, "error_status": 400}"#).is_ok());
    }

    #[test]
    fn apply_changes_only_the_given_fields() {
        let before = MockConfig {
            drop_after_chunks: Some(3),
            api_key: Some("k".into()),
            ..MockConfig::default()
        };
        let after = parse(r#"{"latency_ms": 250, "healthy": false}"#)
            .unwrap()
            .apply(&before);
        assert_eq!(after.latency_ms, 250);
        assert!(!after.healthy);
        assert_eq!(after.drop_after_chunks, Some(3));
        assert_eq!(after.api_key.as_deref(), Some("k"));
        assert_eq!(after.completion_tokens, before.completion_tokens);

        let cleared = parse(r#"{"drop_after_chunks": null}"#)
            .unwrap()
            .apply(&after);
        assert_eq!(cleared.drop_after_chunks, None);

        let simulated = parse(r#"{"gpu": {"slots": 2}}"#).unwrap().apply(&before);
        assert_eq!(simulated.gpu.map(|g| g.slots), Some(2));
        let off = parse(r#"{"gpu": null}"#).unwrap().apply(&simulated);
        assert_eq!(off.gpu, None);
    }

    #[test]
    fn behaviour_round_trips_as_a_patch() {
        let cfg = MockConfig {
            tokens_per_sec: 12.5,
            drop_after_chunks: Some(1),
            error_event_after_chunks: Some(4),
            kv_cache_usage: Some(0.75),
            gpu: Some(GpuSim {
                slots: 5,
                prefill_us_per_token: 0.5,
                ..GpuSim::DEFAULT
            }),
            ..MockConfig::default()
        };
        let shown = behaviour(&cfg);
        let patch = ConfigPatch::parse(shown.to_string().as_bytes()).unwrap();
        assert_eq!(behaviour(&patch.apply(&MockConfig::default())), shown);
    }
}
