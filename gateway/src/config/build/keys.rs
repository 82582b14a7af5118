//! `keys:` and the limits and budgets of keys and teams.

use super::Ctx;
use crate::config::file::{BudgetSection, KeySection, LimitsSection};
use crate::config::runtime::{sha256, Key};
use crate::config::ConfigError;
use std::collections::HashMap;
use tollgate_plugins::limits::Quota;

/// A subject's limits and budgets; `None` when it has none.
pub(super) fn build_quota(
    cx: &Ctx,
    path: &str,
    limits: Option<LimitsSection>,
    budget: Option<BudgetSection>,
) -> Result<Option<Quota>, ConfigError> {
    let limits = limits.unwrap_or(LimitsSection {
        rpm: None,
        tpm: None,
    });
    for (name, value) in [("rpm", limits.rpm), ("tpm", limits.tpm)] {
        if value == Some(0) {
            return Err(cx.err(format!("{path}.limits.{name}"), "must be at least 1"));
        }
    }
    let budget = budget.unwrap_or(BudgetSection {
        usd_per_day: None,
        usd_per_month: None,
    });
    for (name, value) in [
        ("usd_per_day", budget.usd_per_day),
        ("usd_per_month", budget.usd_per_month),
    ] {
        if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(cx.err(
                format!("{path}.budget.{name}"),
                "expected a number of dollars, zero or more",
            ));
        }
    }
    let quota = Quota {
        rpm: limits.rpm,
        tpm: limits.tpm,
        usd_per_day: budget.usd_per_day,
        usd_per_month: budget.usd_per_month,
    };
    Ok((quota != Quota::default()).then_some(quota))
}

pub(super) fn build_key(
    cx: &Ctx,
    path: &str,
    s: KeySection,
    models: &HashMap<String, usize>,
) -> Result<([u8; 32], Key), ConfigError> {
    let hash = match (s.key_sha256, s.key) {
        (Some(hex_hash), None) => {
            let bytes = hex::decode(hex_hash.trim()).ok().filter(|b| b.len() == 32);
            let bytes = bytes.ok_or_else(|| {
                cx.err(
                    format!("{path}.key_sha256"),
                    "expected 64 hex characters (sha256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`)",
                )
            })?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes);
            hash
        }
        (None, Some(clear)) if !clear.is_empty() => sha256(clear.as_bytes()),
        (None, Some(_)) => return Err(cx.err(format!("{path}.key"), "must not be empty")),
        (Some(_), Some(_)) => return Err(cx.err(path, "give key_sha256 or key, not both")),
        (None, None) => return Err(cx.err(path, "missing key_sha256 (or key)")),
    };
    let allowed = match s.models {
        None => None,
        Some(list) => {
            for (i, m) in list.iter().enumerate() {
                if !models.contains_key(m) {
                    let mut known: Vec<&String> = models.keys().collect();
                    known.sort();
                    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                    return Err(cx.err(
                        format!("{path}.models[{i}]"),
                        format!("unknown model {m:?} (known: {})", known.join(", ")),
                    ));
                }
            }
            Some(list.into_iter().collect())
        }
    };
    let quota = build_quota(cx, path, s.limits, s.budget)?;
    Ok((
        hash,
        Key {
            id: s.id,
            team: s.team,
            project: s.project,
            models: allowed,
            residency: s.residency,
            quota,
        },
    ))
}
