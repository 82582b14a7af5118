//! `${VAR}` and `${VAR:-default}` expansion in config string values.
//!
//! Expansion runs on parsed YAML scalars rather than on the raw text, so a value can never
//! change the document's structure, and every expanded value is remembered so error messages
//! can redact it (expanded values are usually secrets).

use serde_yaml::Value;

/// What expansion substituted, so errors can be scrubbed of it.
#[derive(Default)]
pub struct Expansions {
    values: Vec<String>,
}

impl Expansions {
    /// Replaces every substituted value in `message` with `***`.
    pub fn redact(&self, message: &str) -> String {
        let mut out = message.to_string();
        for value in &self.values {
            // Very short values (a port, "true") would garble messages and are not secrets.
            if value.len() >= 4 {
                out = out.replace(value.as_str(), "***");
            }
        }
        out
    }
}

/// Expands references in every string of `value`; `path` names the location for errors.
pub fn expand(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Expansions,
) -> Result<(), (String, String)> {
    match value {
        Value::String(text) if text.contains("${") => {
            let whole_reference = text.starts_with("${") && text.find('}') == Some(text.len() - 1);
            let expanded = expand_str(text, lookup, found).map_err(|e| (join(path), e))?;
            // `threads: ${THREADS}` should yield a number, not the string "4".
            *value = if whole_reference {
                serde_yaml::from_str::<Value>(&expanded)
                    .ok()
                    .filter(|v| !matches!(v, Value::Mapping(_) | Value::Sequence(_)))
                    .unwrap_or(Value::String(expanded))
            } else {
                Value::String(expanded)
            };
            Ok(())
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                expand(item, path, lookup, found)?;
                path.pop();
            }
            Ok(())
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(match key {
                    Value::String(k) => format!(".{k}"),
                    other => format!(".{}", serde_yaml::to_string(other).unwrap_or_default()),
                });
                expand(item, path, lookup, found)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn join(path: &[String]) -> String {
    path.concat().trim_start_matches('.').to_string()
}

fn expand_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    found: &mut Expansions,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // Never quote the value: a broken reference is often the secret itself.
        let end = after
            .find('}')
            .ok_or("unterminated ${...} reference (a `}` is missing)")?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(
                "invalid environment variable name in a ${...} reference (letters, digits and _ only)"
                    .into(),
            );
        }
        let value = match (lookup(name), default) {
            (Some(v), _) => v,
            (None, Some(d)) => d.to_string(),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set (use ${{{name}:-default}} for a default)"
            ))
            }
        };
        found.values.push(value.clone());
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, vars: &[(&str, &str)]) -> Result<Value, (String, String)> {
        let mut value: Value = serde_yaml::from_str(yaml).unwrap();
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        expand(
            &mut value,
            &mut Vec::new(),
            &lookup,
            &mut Expansions::default(),
        )?;
        Ok(value)
    }

    #[test]
    fn expands_defaults_and_types() {
        let v = run(
            "a: ${KEY}\nb: x-${KEY}-y\nc: ${MISSING:-fallback}\nn: ${NUM}\ne: ${EMPTY:-}",
            &[("KEY", "sk-123"), ("NUM", "4")],
        )
        .unwrap();
        assert_eq!(v["a"], Value::String("sk-123".into()));
        assert_eq!(v["b"], Value::String("x-sk-123-y".into()));
        assert_eq!(v["c"], Value::String("fallback".into()));
        assert_eq!(v["n"], Value::Number(4.into()));
        assert_eq!(v["e"], Value::Null);
    }

    #[test]
    fn unset_variable_names_it_and_its_path() {
        let (path, message) = run("providers:\n  - api_key: ${OPENAI_KEY}", &[]).unwrap_err();
        assert_eq!(path, "providers[0].api_key");
        assert!(message.contains("OPENAI_KEY is not set"), "{message}");
    }

    #[test]
    fn broken_references_never_quote_the_value() {
        for yaml in [
            "k: ${sk-live-abcdef0123456789",
            "k: ${sk-live-abcdef0123456789}",
            "k: x${sk-live-abcdef0123456789:-y}",
        ] {
            let (path, message) = run(yaml, &[]).unwrap_err();
            assert_eq!(path, "k");
            assert!(!message.contains("abcdef"), "{message}");
        }
    }

    #[test]
    fn redacts_expanded_values() {
        let mut found = Expansions::default();
        let mut value: Value = serde_yaml::from_str("k: ${S}").unwrap();
        expand(
            &mut value,
            &mut Vec::new(),
            &|_| Some("sk-very-secret".into()),
            &mut found,
        )
        .unwrap();
        assert_eq!(
            found.redact("invalid value: string \"sk-very-secret\""),
            "invalid value: string \"***\""
        );
    }
}
