//! Latency percentiles per model and provider, from HDR histograms: what `GET /admin/stats`
//! shows, exact to three significant digits where Prometheus buckets are coarse.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Microseconds, up to an hour: longer requests are clamped to it.
const HIGHEST_US: u64 = 3_600_000_000;

struct Latencies {
    total: Histogram<u64>,
    first_token: Histogram<u64>,
}

impl Latencies {
    fn new() -> Latencies {
        let histogram =
            || Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("static bounds are valid");
        Latencies {
            total: histogram(),
            first_token: histogram(),
        }
    }
}

/// Per model, then provider; a short lock per answered request.
#[derive(Default)]
pub struct LatencyStats {
    by_route: Mutex<BTreeMap<String, BTreeMap<String, Latencies>>>,
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, HIGHEST_US)
}

fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |us: u64| us as f64 / 1e3;
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

impl LatencyStats {
    pub fn record(
        &self,
        model: &str,
        provider: &str,
        total: Duration,
        first_token: Option<Duration>,
    ) {
        let mut by_route = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        // Names are allocated once per route, not per request.
        if !by_route
            .get(model)
            .is_some_and(|p| p.contains_key(provider))
        {
            by_route
                .entry(model.to_string())
                .or_default()
                .insert(provider.to_string(), Latencies::new());
        }
        let latencies = by_route
            .get_mut(model)
            .and_then(|p| p.get_mut(provider))
            .expect("inserted above");
        latencies.total.saturating_record(micros(total));
        if let Some(ttft) = first_token {
            latencies.first_token.saturating_record(micros(ttft));
        }
    }

    /// `{"routes":[{"model","provider","requests","latency_ms":{p50,p90,p99,max},
    /// "time_to_first_token_ms":{…}}]}`, in model then provider order.
    pub fn to_json(&self) -> Value {
        let by_route = self.by_route.lock().unwrap_or_else(|e| e.into_inner());
        let routes: Vec<Value> = by_route
            .iter()
            .flat_map(|(model, providers)| providers.iter().map(move |(p, l)| (model, p, l)))
            .map(|(model, provider, l)| {
                json!({
                    "model": model,
                    "provider": provider,
                    "requests": l.total.len(),
                    "latency_ms": percentiles(&l.total),
                    "time_to_first_token_ms": percentiles(&l.first_token),
                })
            })
            .collect();
        json!({ "routes": routes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_per_model_and_provider() {
        let stats = LatencyStats::default();
        for ms in 1..=100 {
            stats.record(
                "m",
                "p",
                Duration::from_millis(ms),
                Some(Duration::from_millis(ms / 2 + 1)),
            );
        }
        stats.record("m", "q", Duration::from_secs(7200), None);
        let v = stats.to_json();
        let routes = v["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2);
        let p = &routes[0];
        assert_eq!(
            (p["model"].as_str(), p["provider"].as_str()),
            (Some("m"), Some("p"))
        );
        assert_eq!(p["requests"], 100);
        let p50 = p["latency_ms"]["p50"].as_f64().unwrap();
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        let p99 = p["latency_ms"]["p99"].as_f64().unwrap();
        assert!((98.9..=99.1).contains(&p99), "{p99}");
        assert!(p["time_to_first_token_ms"]["max"].as_f64().unwrap() <= 51.1);
        // Clamped to the hour, counted once, with no first token.
        let q = &routes[1];
        assert_eq!(q["requests"], 1);
        assert!((q["latency_ms"]["max"].as_f64().unwrap() - 3_600_000.0).abs() < 3_600.0);
        assert_eq!(q["time_to_first_token_ms"]["p50"], 0.0);
    }
}
