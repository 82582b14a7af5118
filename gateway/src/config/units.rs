//! Human units in config files: durations ("250ms", "2s", "10m") and byte sizes ("8MiB").
//! Errors say what was expected, never what was found: a misplaced value may be a secret.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;
use std::time::Duration;

/// Parses "250ms", "2s", "1.5s", "10m", "1h" (a bare number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| "invalid duration (expected e.g. 250ms, 2s, 10m)".to_string())?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {:?} (expected ms, s, m or h)",
                other.chars().take(4).collect::<String>()
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err("invalid duration (expected a finite, positive time)".into());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses "8MiB", "64KiB", "1GiB", "500KB", "1MB" or a bare number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| "invalid size (expected e.g. 8MiB, 512KiB)".to_string())?;
    let factor: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "invalid size unit {:?} (expected B, KiB, MiB, GiB, KB, MB or GB)",
                other.chars().take(4).collect::<String>()
            ))
        }
    };
    let bytes = value * factor;
    if !bytes.is_finite() || bytes < 0.0 {
        return Err("invalid size (expected a finite, positive amount)".into());
    }
    Ok(bytes as u64)
}

/// Accepts a string in units or a plain number, for serde fields.
struct UnitVisitor<T> {
    parse: fn(&str) -> Result<T, String>,
    expecting: &'static str,
}

impl<T> Visitor<'_> for UnitVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
}

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(UnitVisitor {
        parse: parse_duration,
        expecting: "a duration such as 250ms, 2s or 10m",
    })
}

pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

pub fn de_opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(UnitVisitor {
        parse: parse_bytes,
        expecting: "a size such as 8MiB or 512KiB",
    })
    .map(Some)
}

/// Formats a duration the way a config author would write it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 != 0 || ms == 0 {
        format!("{ms}ms")
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("8MiB").unwrap(), 8 * 1024 * 1024);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65536);
        assert_eq!(parse_bytes("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_bytes("1024").unwrap(), 1024);
        assert!(parse_bytes("8 furlongs").is_err());
    }
}
