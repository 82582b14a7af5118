//! The `x-ratelimit-*` response headers, in OpenAI's names and duration format.

use std::time::Duration;

/// One per-minute limit as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub limit: u64,
    /// What is left once the current request is counted.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// The windows reported for one request: per dimension, the tightest of its subjects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<Window>,
    pub tokens: Option<Window>,
}

impl RateHeaders {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, for the windows present.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::with_capacity(6);
        if let Some(w) = self.requests {
            pairs.push(("x-ratelimit-limit-requests", w.limit.to_string()));
            pairs.push(("x-ratelimit-remaining-requests", w.remaining.to_string()));
            pairs.push(("x-ratelimit-reset-requests", openai_duration(w.reset)));
        }
        if let Some(w) = self.tokens {
            pairs.push(("x-ratelimit-limit-tokens", w.limit.to_string()));
            pairs.push(("x-ratelimit-remaining-tokens", w.remaining.to_string()));
            pairs.push(("x-ratelimit-reset-tokens", openai_duration(w.reset)));
        }
        pairs
    }
}

/// A duration as OpenAI writes reset times: `"0s"`, `"17ms"` below a second, else whole
/// seconds as `"1s"`, `"6m0s"`, `"1h2m3s"`. Rounded up, so that waiting that long is always
/// enough: 1 µs reads `"1ms"`, 1.2 s reads `"2s"`.
pub fn openai_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let s = d.as_nanos().div_ceil(1_000_000_000);
    let (h, m, s) = (s / 3_600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_openai_writes_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "1ms"),
            (Duration::from_micros(16_200), "17ms"),
            (Duration::from_micros(998_001), "999ms"),
            (Duration::from_micros(999_400), "1s"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(1_200), "2s"),
            (Duration::from_secs(59), "59s"),
            (Duration::from_secs(360), "6m0s"),
            (Duration::from_secs(3_723), "1h2m3s"),
            (Duration::from_secs(86_400), "24h0m0s"),
        ];
        for (d, text) in cases {
            assert_eq!(openai_duration(d), text, "{d:?}");
        }
    }

    #[test]
    fn pairs_name_only_the_windows_present() {
        let headers = RateHeaders {
            requests: None,
            tokens: Some(Window {
                limit: 1_000,
                remaining: 250,
                reset: Duration::from_secs(45),
            }),
        };
        assert_eq!(
            headers.to_pairs(),
            [
                ("x-ratelimit-limit-tokens", "1000".to_owned()),
                ("x-ratelimit-remaining-tokens", "250".to_owned()),
                ("x-ratelimit-reset-tokens", "45s".to_owned()),
            ]
        );
        assert!(RateHeaders::default().to_pairs().is_empty());
    }
}
