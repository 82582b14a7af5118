//! From the file model to the runtime model: every section validated (one file per section
//! below), every error located. `build` only assembles; the types it builds live with their
//! concern.

mod keys;
mod models;
mod providers;
mod server;

use crate::catalog::{Catalog, ModelFacts, Prices, Tokenizer};
use crate::config::file::FileConfig;
use crate::config::runtime::{KeyTable, Runtime};
use crate::config::ConfigError;
use crate::providers::Provider;
use crate::router::geo::{resident, Geo};
use crate::router::Model;
use keys::{build_key, build_quota};
use models::build_model;
use providers::build_provider;
use server::{build_cache, build_ledger, build_server, build_shared_state};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

/// Validation context: every error names the file and the key path.
pub(super) struct Ctx<'a> {
    pub file: &'a str,
}

impl Ctx<'_> {
    pub fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            path: path.into(),
            message: message.into(),
        }
    }
}

pub fn build(
    file_name: &str,
    source: &Path,
    file: FileConfig,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigError> {
    let cx = Ctx { file: file_name };
    let server = build_server(&cx, file.server)?;

    let mut providers: Vec<Arc<Provider>> = Vec::new();
    for (i, section) in file.providers.into_iter().enumerate() {
        let path = format!("providers[{i}]");
        if providers.iter().any(|p| p.name == section.name) {
            return Err(cx.err(
                format!("{path}.name"),
                format!("duplicate provider name {:?}", section.name),
            ));
        }
        providers.push(Arc::new(build_provider(&cx, &path, section, previous)?));
    }

    let mut catalog = Catalog::default();
    for (name, entry) in file.catalog {
        let at = format!("catalog.{name}");
        let base = catalog.get(&name).copied();
        let tokenizer = match entry.tokenizer.as_deref() {
            None => base.map_or(Tokenizer::Cl100k, |b| b.tokenizer),
            Some(t) => Tokenizer::parse(t).ok_or_else(|| {
                cx.err(
                    format!("{at}.tokenizer"),
                    format!("unknown tokenizer {t:?} (known: o200k_base, cl100k_base)"),
                )
            })?,
        };
        if entry.context_window == Some(0) {
            return Err(cx.err(format!("{at}.context_window"), "must be more than 0"));
        }
        let prices = match entry.price_per_mtok {
            Some(p) => {
                if [p.input, p.output, p.cached_input.unwrap_or(0.0)]
                    .iter()
                    .any(|v| !v.is_finite() || *v < 0.0)
                {
                    return Err(cx.err(
                        format!("{at}.price_per_mtok"),
                        "prices must be numbers >= 0",
                    ));
                }
                Some(Prices {
                    input: p.input,
                    cached_input: p.cached_input,
                    output: p.output,
                })
            }
            None => base.and_then(|b| b.prices),
        };
        catalog.insert(
            name,
            ModelFacts {
                context_window: entry.context_window.or(base.and_then(|b| b.context_window)),
                tokenizer,
                prices,
            },
        );
    }

    let mut models: Vec<Arc<Model>> = Vec::new();
    let mut model_index = HashMap::new();
    for (i, section) in file.models.into_iter().enumerate() {
        let path = format!("models[{i}]");
        if model_index.contains_key(&section.name) {
            return Err(cx.err(
                format!("{path}.name"),
                format!("duplicate model name {:?}", section.name),
            ));
        }
        let model = build_model(&cx, &path, section, &providers, &catalog)?;
        model_index.insert(model.name.clone(), models.len());
        models.push(Arc::new(model));
    }

    let keys = if file.keys.is_empty() {
        None
    } else {
        let mut by_hash = HashMap::new();
        let mut ids = HashSet::new();
        for (i, section) in file.keys.into_iter().enumerate() {
            let path = format!("keys[{i}]");
            if !ids.insert(section.id.clone()) {
                return Err(cx.err(
                    format!("{path}.id"),
                    format!("duplicate key id {:?}", section.id),
                ));
            }
            let (hash, key) = build_key(&cx, &path, section, &model_index)?;
            if by_hash.insert(hash, Arc::new(key)).is_some() {
                return Err(cx.err(path, "the same key appears twice"));
            }
        }
        Some(KeyTable { by_hash })
    };

    let mut warnings = Vec::new();
    for (i, model) in models.iter().enumerate() {
        if let Some(residency) = &model.residency {
            for (j, t) in model.targets.iter().enumerate() {
                if !resident(t.provider.region.as_deref(), residency) {
                    warnings.push(format!(
                        "{file_name}: models[{i}].targets[{j}]: provider {:?} ({}) is outside the model's residency [{}]; it will never be used",
                        t.provider.name,
                        t.provider.region.as_deref().unwrap_or("no region"),
                        residency.join(", ")
                    ));
                }
            }
        }
    }
    let mut ranges = Vec::new();
    for (cidr, region) in file.geo.client_regions {
        let net = cidr.parse::<ipnet::IpNet>().map_err(|_| {
            cx.err(
                format!("geo.client_regions.{cidr}"),
                "expected an address range such as 10.1.0.0/16",
            )
        })?;
        ranges.push((net, region));
    }
    let mut plugin_sections = Vec::new();
    for (name, section) in file.plugins.other {
        let Some(name) = name.as_str() else {
            return Err(cx.err("plugins", "expected plugin names as keys"));
        };
        plugin_sections.push((name.to_string(), section));
    }
    let geo = Geo::new(
        ranges,
        file.geo.nearest.into_iter().collect(),
        server.region.clone(),
    );

    let ledger = file
        .plugins
        .ledger
        .map(|l| build_ledger(&cx, l))
        .transpose()?;
    let shared_state = file
        .plugins
        .shared_state
        .map(|s| build_shared_state(&cx, s))
        .transpose()?;
    let cache = file
        .plugins
        .cache
        .map(|c| build_cache(&cx, c, shared_state.is_some()))
        .transpose()?;
    let mut teams = HashMap::new();
    for (name, team) in file.teams {
        let path = format!("teams.{name}");
        if let Some(quota) = build_quota(&cx, &path, team.limits, team.budget)? {
            teams.insert(name, quota);
        }
    }

    Ok(Runtime {
        source: source.to_path_buf(),
        loaded_at: SystemTime::now(),
        server,
        providers,
        models,
        model_index,
        keys,
        access_log: file.plugins.access_log == Some(true),
        plugin_sections,
        ledger,
        cache,
        teams,
        shared_state,
        geo,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::server::DEFAULT_SHARED_STATE_TIMEOUT;
    use super::*;
    use crate::router::gpu::Scoring;
    use crate::router::Strategy;
    use std::time::Duration;
    use tollgate_plugins::limits::FailurePolicy;

    fn build_text(text: &str) -> Result<Runtime, ConfigError> {
        let file = crate::config::parse("t.yaml", text, &|name| {
            (name == "UP_KEY").then(|| "sk-up-secret".to_string())
        })?;
        build("t.yaml", Path::new("t.yaml"), file, None)
    }

    fn build_err(text: &str) -> ConfigError {
        match build_text(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn load_metrics_and_scoring() {
        let rt = build_text(
            "providers:\n  - { name: gpu, kind: triton, endpoints: [\"127.0.0.1:8000\"], load_metrics: { port: 8002, every: 100ms } }\nmodels:\n  - name: m\n    strategy: gpu-aware\n    scoring: { prefix_weight: 5, max_waiting: 10 }\n    targets: [{ provider: gpu, model: llama }]\n",
        )
        .unwrap();
        let metrics = rt.providers[0].load_metrics.clone().unwrap();
        assert_eq!(
            (metrics.path.as_str(), metrics.port, metrics.every),
            ("/metrics", Some(8002), Duration::from_millis(100))
        );
        let model = rt.model("m").unwrap();
        assert_eq!(model.strategy, Strategy::GpuAware);
        assert_eq!(model.scoring.prefix_weight, 5.0);
        assert_eq!(model.scoring.max_waiting, 10.0);
        assert_eq!(model.scoring.queue_weight, Scoring::default().queue_weight);

        let err = build_err(&format!(
            "{BASE}  - name: b\n    strategy: gpu-aware\n    scoring: {{ max_kv_cache: 2 }}\n    targets: [{{ provider: openai, model: x }}]\n"
        ));
        assert_eq!(err.path, "models[1].scoring");
        let err = build_err(
            "providers:\n  - { name: o, kind: openai, base_url: \"http://127.0.0.1:1\", load_metrics: {} }\n",
        );
        assert_eq!(err.path, "providers[0].load_metrics");
    }

    #[test]
    fn limits_budgets_teams_and_shared_state() {
        let rt = build_text(&format!(
            "{BASE}keys:\n  - {{ id: k, key: sk-1, team: red, limits: {{ rpm: 5, tpm: 900 }}, budget: {{ usd_per_day: 0.5 }} }}\n  - {{ id: free, key: sk-2 }}\nteams:\n  red: {{ budget: {{ usd_per_month: 20 }} }}\n  blue: {{}}\nplugins:\n  shared_state: {{ redis: \"redis://:hunter2@10.0.0.9:6379/2\", on_error: fail_closed }}\n  ledger: {{ path: /tmp/u.db, queue: 10 }}\n"
        ))
        .unwrap();
        let keys = rt.keys.as_ref().unwrap();
        let quota = keys.find("sk-1").unwrap().quota.clone().unwrap();
        assert_eq!(
            (quota.rpm, quota.tpm, quota.usd_per_day),
            (Some(5), Some(900), Some(0.5))
        );
        assert!(keys.find("sk-2").unwrap().quota.is_none());
        assert_eq!(rt.teams["red"].usd_per_month, Some(20.0));
        assert!(
            !rt.teams.contains_key("blue"),
            "a team without limits needs no state"
        );
        let shared = rt.shared_state.as_ref().unwrap();
        assert_eq!(shared.on_error, FailurePolicy::Closed);
        assert_eq!(shared.timeout, DEFAULT_SHARED_STATE_TIMEOUT);
        assert_eq!(rt.ledger.as_ref().unwrap().queue, 10);
        // The Redis URL may hold a password: the admin view never shows it.
        let shown = rt.redacted_json().to_string();
        assert!(
            !shown.contains("hunter2") && shown.contains("fail_closed"),
            "{shown}"
        );

        for (extra, path) in [
            (
                "keys:\n  - { id: k, key: x, limits: { rpm: 0 } }\n",
                "keys[0].limits.rpm",
            ),
            (
                "keys:\n  - { id: k, key: x, budget: { usd_per_day: -1 } }\n",
                "keys[0].budget.usd_per_day",
            ),
            (
                "teams:\n  red: { limits: { tpm: 0 } }\n",
                "teams.red.limits.tpm",
            ),
            (
                "plugins:\n  shared_state: { redis: \"127.0.0.1:6379\" }\n",
                "plugins.shared_state.redis",
            ),
            (
                "plugins:\n  shared_state: { redis: \"redis://h\", on_error: maybe }\n",
                "plugins.shared_state.on_error",
            ),
            (
                "plugins:\n  ledger: { path: u.db, queue: 0 }\n",
                "plugins.ledger.queue",
            ),
        ] {
            assert_eq!(build_err(&format!("{BASE}{extra}")).path, path, "{extra}");
        }
    }

    const BASE: &str = r#"
providers:
  - { name: openai, kind: openai, base_url: "http://127.0.0.1:9001", api_key: "${UP_KEY}" }
  - { name: llama-gpu, kind: vllm, endpoints: ["127.0.0.1:9002", "127.0.0.1:9003"] }
models:
  - name: a
    targets: [{ provider: openai, model: gpt-4o }]
"#;

    #[test]
    fn valid_config_builds() {
        let rt = build_text(&format!(
            "{BASE}  - name: b\n    targets: [{{ provider: llama-gpu, model: llama }}, {{ provider: openai, model: gpt-4o }}]\n    retry: {{ attempts: 2, on: [connect, \"429\"] }}\nkeys:\n  - {{ id: k1, key: sk-virtual, models: [a] }}\n"
        ))
        .unwrap();
        let b = rt.model("b").unwrap();
        assert_eq!(b.targets.len(), 2);
        assert_eq!(b.retry.attempts, 2);
        assert!(b.retry.on.connect && b.retry.on.status(429) && !b.retry.on.status(500));
        assert_eq!(rt.model("a").unwrap().retry.attempts, 3);
        let key = rt.keys.as_ref().unwrap().find("sk-virtual").unwrap();
        assert!(key.allows("a") && !key.allows("b"));
        assert!(rt.keys.as_ref().unwrap().find("sk-other").is_none());
        assert_eq!(rt.providers[1].pool.endpoints().len(), 2);
    }

    #[test]
    fn unknown_provider_is_located() {
        let err = build_err(&format!(
            "{BASE}  - name: b\n    targets: [{{ provider: opneai, model: x }}]\n"
        ));
        assert_eq!(
            err.to_string(),
            r#"t.yaml: models[1].targets[0].provider: unknown provider "opneai" (known: openai, llama-gpu)"#
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = build_err(&format!("{BASE}    stratgy: fallback\n"));
        assert_eq!(err.path, "models[0].stratgy");
        assert!(err.message.contains("unknown field `stratgy`"), "{err}");
    }

    #[test]
    fn type_errors_never_echo_secrets() {
        let err = build_err("server:\n  threads: ${UP_KEY}\n");
        assert_eq!(err.path, "server.threads");
        assert!(!err.to_string().contains("sk-up-secret"), "{err}");
    }

    #[test]
    fn public_admin_needs_token() {
        let err = build_err("server:\n  admin_listen: 0.0.0.0:9090\n");
        assert_eq!(err.path, "server.admin_token");
        build_text("server:\n  admin_listen: 0.0.0.0:9090\n  admin_token: t0ken\n").unwrap();
    }

    #[test]
    fn key_and_model_checks() {
        let err = build_err(&format!("{BASE}keys:\n  - {{ id: k, key_sha256: abc }}\n"));
        assert_eq!(err.path, "keys[0].key_sha256");
        let err = build_err(&format!(
            "{BASE}keys:\n  - {{ id: k, key: x, models: [zz] }}\n"
        ));
        assert_eq!(err.path, "keys[0].models[0]");
        let err = build_err(&format!("{BASE}    strategy: fastest\n"));
        assert!(err.message.contains("unknown strategy"), "{err}");
    }

    #[test]
    fn admin_json_redacts_secrets() {
        let rt = build_text(BASE).unwrap();
        let text = rt.redacted_json().to_string();
        assert!(!text.contains("sk-up-secret"));
        assert!(text.contains("***redacted***"));
    }

    #[test]
    fn a_reload_never_opens_what_was_closed_by_accident() {
        let keyed =
            format!("server:\n  admin_token: t0ken\n{BASE}keys:\n  - {{ id: k, key: sk-1 }}\n");
        let running = build_text(&keyed).unwrap();
        let successor = |text: &str| {
            let mut new = build_text(text).unwrap();
            new.succeed(&running, "t.yaml")
        };
        successor(&keyed).unwrap();
        let no_keys = successor(&format!("server:\n  admin_token: t0ken\n{BASE}")).unwrap_err();
        assert_eq!(no_keys.path, "keys");
        assert!(no_keys.message.contains("open_data_plane"), "{no_keys}");
        successor(&format!(
            "server:\n  admin_token: t0ken\n  open_data_plane: true\n{BASE}"
        ))
        .unwrap();
        let no_token =
            successor(&format!("{BASE}keys:\n  - {{ id: k, key: sk-1 }}\n")).unwrap_err();
        assert_eq!(no_token.path, "server.admin_token");
        successor(&format!(
            "server:\n  open_admin: true\n{BASE}keys:\n  - {{ id: k, key: sk-1 }}\n"
        ))
        .unwrap();

        // The admin API keeps the listener it has; its token must suit that one.
        let public = build_text(&format!(
            "server:\n  admin_listen: 0.0.0.0:9090\n  admin_token: t0ken\n{BASE}"
        ))
        .unwrap();
        let mut moved = build_text(&format!(
            "server:\n  admin_listen: 127.0.0.1:9191\n  open_admin: true\n{BASE}"
        ))
        .unwrap();
        let err = moved.succeed(&public, "t.yaml").unwrap_err();
        assert!(err.message.contains("0.0.0.0:9090"), "{err}");
        let mut kept = build_text(&format!(
            "server:\n  admin_listen: 127.0.0.1:9191\n  admin_token: other\n{BASE}"
        ))
        .unwrap();
        kept.succeed(&public, "t.yaml").unwrap();
        assert_eq!(kept.server.admin_listen, public.server.admin_listen);
    }

    #[test]
    fn an_empty_document_is_an_error() {
        for text in ["", "\n", "# only a comment\n", "~\n"] {
            let err = build_text(text).err().expect("an error");
            assert!(err.message.contains("empty"), "{err}");
        }
    }

    #[test]
    fn errors_never_quote_a_misplaced_value() {
        for text in [
            "server:\n  threads: \"sk-live-0123456789\"\n".to_string(),
            "server:\n  shutdown_grace: sk-live-0123456789\n".to_string(),
            "server:\n  max_body_bytes: 12sk-live-0123456789\n".to_string(),
            format!("{BASE}keys:\n  - {{ id: k, key: [\"sk-live-0123456789\"] }}\n"),
        ] {
            let err = build_err(&text);
            assert!(!err.to_string().contains("0123456789"), "{err}");
            assert!(!err.path.is_empty(), "the key is named: {err}");
        }
    }
}
