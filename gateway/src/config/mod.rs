//! Configuration: the YAML file model (`file`), `${ENV}` expansion (`env`), the validated
//! runtime model (`runtime`) that requests read through one `ArcSwap`, `build` from the one
//! to the other (a file per section), and `render` for summaries and `/admin/config`.

mod build;
pub mod env;
pub mod file;
mod render;
pub mod runtime;
pub mod units;

pub use build::build;
pub use runtime::Runtime;

use std::fmt;
use std::path::Path;

/// A config problem, located: the file, the key path, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads, expands, parses and validates a config file. `previous` lets unchanged providers
/// keep their pools (and so their state) across a reload.
pub fn load(path: &Path, previous: Option<&Runtime>) -> Result<Runtime, ConfigError> {
    let file_name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file_name.clone(),
        path: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    let lookup = |name: &str| std::env::var(name).ok();
    let file = parse(&file_name, &text, &lookup)?;
    build(&file_name, path, file, previous)
}

/// A deserializer's message without the string values it quotes (`invalid type: string
/// "…", expected u64`): a value in the wrong place may be a secret.
fn without_strings(message: &str) -> String {
    static QUOTED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"string "(?:[^"\\]|\\.)*""#).expect("a valid pattern")
    });
    QUOTED.replace_all(message, "a string").into_owned()
}

/// Parses config text into the file model, expanding `${VAR}` references through `lookup`.
pub fn parse(
    file_name: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<file::FileConfig, ConfigError> {
    let located = |path: String, message: String| ConfigError {
        file: file_name.to_string(),
        path,
        message,
    };
    let mut value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| located(String::new(), e.to_string()))?;
    // Most often a file caught mid-write: running on it would drop every model and key.
    if value.is_null() {
        return Err(located(
            String::new(),
            "the config is empty (expected at least providers and models)".into(),
        ));
    }
    let mut expansions = env::Expansions::default();
    env::expand(&mut value, &mut Vec::new(), lookup, &mut expansions)
        .map_err(|(path, message)| located(path, message))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        located(
            path,
            without_strings(&expansions.redact(&e.into_inner().to_string())),
        )
    })
}

#[cfg(test)]
mod layering {
    use std::path::Path;

    /// The non-test code of a source file or of every file below a folder.
    fn sources(path: &Path) -> Vec<(String, String)> {
        if path.is_dir() {
            let mut all = Vec::new();
            for entry in std::fs::read_dir(path).unwrap() {
                all.extend(sources(&entry.unwrap().path()));
            }
            return all;
        }
        let text = std::fs::read_to_string(path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
        vec![(path.display().to_string(), code)]
    }

    /// What `config` builds never imports it back (nor the layers above), and usage metering
    /// sits above the adapters: no import circles.
    #[test]
    fn what_config_builds_never_imports_config() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let below: [(&str, &[&str]); 6] = [
            (
                "providers",
                &[
                    "crate::config",
                    "crate::router",
                    "crate::metering",
                    "crate::proxy",
                ],
            ),
            (
                "upstream",
                &["crate::config", "crate::router", "crate::proxy"],
            ),
            (
                "router",
                &["crate::config", "crate::proxy", "crate::pipeline"],
            ),
            (
                "catalog.rs",
                &["crate::config", "crate::router", "crate::providers"],
            ),
            (
                "tokens.rs",
                &["crate::config", "crate::router", "crate::providers"],
            ),
            (
                "metering.rs",
                &["crate::config", "crate::router", "crate::proxy"],
            ),
        ];
        for (module, forbidden) in below {
            for (file, code) in sources(&src.join(module)) {
                for import in forbidden {
                    assert!(!code.contains(import), "{file} uses {import}");
                }
            }
        }
    }
}
