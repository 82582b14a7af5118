//! Plugins compiled into a custom build beside the built-in ones. Each is configured by its
//! own section under `plugins:`; a build's `main` hands their factories to `cli::main`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use tollgate::pipeline::{Extensions, Phases, Plugin, PluginFactory};
//!
//! struct Noop;
//! impl Plugin for Noop {
//!     fn name(&self) -> &'static str {
//!         "noop"
//!     }
//!     fn phases(&self) -> Phases {
//!         Phases::default()
//!     }
//! }
//!
//! struct NoopFactory;
//! impl PluginFactory for NoopFactory {
//!     fn name(&self) -> &'static str {
//!         "noop"
//!     }
//!     fn build(&self, _section: &serde_yaml::Value) -> Result<Arc<dyn Plugin>, String> {
//!         Ok(Arc::new(Noop))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     tollgate::cli::main(Extensions::new(vec![Arc::new(NoopFactory)]))
//! }
//! ```

use super::Plugin;
use crate::config::{ConfigError, Runtime};
use std::sync::Arc;

/// Makes one kind of plugin from its config section.
pub trait PluginFactory: Send + Sync {
    /// Its section under `plugins:`.
    fn name(&self) -> &'static str;

    /// The plugin for one config, from its section; an error says what is wrong with the
    /// section (the gateway adds where it is).
    fn build(&self, section: &serde_yaml::Value) -> Result<Arc<dyn Plugin>, String>;
}

/// The plugin factories of a build, beyond the built-in plugins.
#[derive(Clone, Default)]
pub struct Extensions {
    factories: Vec<Arc<dyn PluginFactory>>,
}

impl Extensions {
    pub fn new(factories: Vec<Arc<dyn PluginFactory>>) -> Extensions {
        Extensions { factories }
    }

    /// The plugins a config turns on with sections of their own, in the file's order.
    pub fn build(&self, rt: &Runtime) -> Result<Vec<Arc<dyn Plugin>>, ConfigError> {
        let located = |name: &str, message: String| ConfigError {
            file: rt.source.display().to_string(),
            path: format!("plugins.{name}"),
            message,
        };
        rt.plugin_sections
            .iter()
            .map(|(name, section)| {
                let factory = self
                    .factories
                    .iter()
                    .find(|f| f.name() == name)
                    .ok_or_else(|| located(name, self.unknown()))?;
                factory
                    .build(section)
                    .map_err(|message| located(name, message))
            })
            .collect()
    }

    /// Validates a config's plugin sections as `build` would, for `check` and reloads.
    pub fn check(&self, rt: &Runtime) -> Result<(), ConfigError> {
        self.build(rt).map(drop)
    }

    fn unknown(&self) -> String {
        let mut known = vec!["access_log", "cache", "ledger", "shared_state"];
        known.extend(self.factories.iter().map(|f| f.name()));
        format!("unknown plugin (known: {})", known.join(", "))
    }
}
