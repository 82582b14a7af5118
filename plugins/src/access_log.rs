//! One JSON line per request for the `tollgate::access` log target: who called what, where it
//! went, how it ended. Never the body, never a credential.

use crate::Settlement;
use serde_json::json;

pub struct AccessLog;

impl AccessLog {
    pub fn line(s: &Settlement) -> String {
        json!({
            "request_id": s.request_id,
            "method": s.method,
            "path": s.path,
            "key": s.key_id,
            "team": s.team,
            "model": s.model,
            "provider": s.provider,
            "upstream_model": s.upstream_model,
            "status": s.status,
            "attempts": s.attempts,
            "duration_ms": (s.duration.as_secs_f64() * 1e3 * 1e3).round() / 1e3,
            "overhead_us": s.overhead.as_micros() as u64,
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_json_line_with_the_outcome() {
        let line = AccessLog::line(&Settlement {
            request_id: "r1",
            started_at: std::time::SystemTime::UNIX_EPOCH,
            method: "POST",
            path: "/v1/chat/completions",
            key_id: Some("app"),
            team: Some("support"),
            project: None,
            tags: None,
            model: Some("support"),
            provider: Some("openai"),
            upstream_model: Some("gpt-4o"),
            status: 200,
            attempts: 2,
            duration: Duration::from_micros(12_345),
            time_to_first_token: None,
            overhead: Duration::from_micros(150),
            cache: "off",
            metered: None,
        });
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["key"], "app");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["overhead_us"], 150);
    }
}
