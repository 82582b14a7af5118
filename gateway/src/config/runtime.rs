//! The validated runtime model: everything a request needs, resolved and checked once per
//! (re)load, so the hot path never parses or validates config.

use super::ConfigError;
use crate::providers::Provider;
use crate::router::geo::Geo;
use crate::router::Model;
use crate::secret::Secret;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tollgate_plugins::ledger::LedgerConfig;
use tollgate_plugins::limits::{FailurePolicy, Quota};

pub struct Runtime {
    pub source: PathBuf,
    pub loaded_at: SystemTime,
    pub server: ServerSettings,
    pub providers: Vec<Arc<Provider>>,
    /// In file order, for listings.
    pub models: Vec<Arc<Model>>,
    pub(super) model_index: HashMap<String, usize>,
    /// `None`: no keys configured, the data plane is open.
    pub keys: Option<KeyTable>,
    /// `plugins.access_log`: one JSON line per request.
    pub access_log: bool,
    /// The other sections under `plugins:`, in file order: plugins a custom build adds.
    pub plugin_sections: Vec<(String, serde_yaml::Value)>,
    /// Opened once at startup: a change takes effect on restart.
    pub ledger: Option<LedgerConfig>,
    /// `plugins.cache`; its store is made once at startup (`max_bytes` takes effect on
    /// restart).
    pub cache: Option<CacheSettings>,
    /// Limits and budgets of each team that has any.
    pub teams: HashMap<String, Quota>,
    /// Connected once at startup: a change takes effect on restart.
    pub shared_state: Option<SharedState>,
    pub geo: Geo,
    /// Things that load but look wrong (a target outside its model's residency, say).
    pub warnings: Vec<String>,
}

/// Limits and budgets kept in Redis, shared by every replica.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedState {
    /// May hold a password.
    pub redis: Secret,
    pub on_error: FailurePolicy,
    pub timeout: Duration,
}

pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub region: Option<String>,
    pub threads: usize,
    pub max_body_bytes: u64,
    pub shutdown_grace: Duration,
    /// How long one write to a client may wait for it to read: a client that stops reading
    /// frees its upstream, its place in flight and its reservations.
    pub client_write_timeout: Duration,
    /// How long the gateway waits for the next piece of a request body (408 after).
    pub client_body_timeout: Duration,
    /// How long a new connection may take to send its first bytes.
    pub client_idle_timeout: Duration,
    /// Whether the listeners also take cleartext HTTP/2 from clients that know to send it.
    pub h2c: bool,
    /// The file says the data plane is open (no keys) on purpose.
    pub open_data_plane: bool,
    /// The file says the admin API needs no token on purpose.
    pub open_admin: bool,
}

pub struct Key {
    pub id: String,
    pub team: Option<String>,
    pub project: Option<String>,
    /// `None`: every model.
    pub models: Option<HashSet<String>>,
    /// Regions this key's traffic may never leave.
    pub residency: Option<Vec<String>>,
    /// Its own limits and budgets.
    pub quota: Option<Quota>,
}

impl Key {
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

pub struct KeyTable {
    pub(super) by_hash: HashMap<[u8; 32], Arc<Key>>,
}

impl KeyTable {
    pub fn find(&self, presented: &str) -> Option<&Arc<Key>> {
        self.by_hash.get(&sha256(presented.as_bytes()))
    }

    pub fn count(&self) -> usize {
        self.by_hash.len()
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Runtime {
    /// Checks `self`, loaded from `file`, as the successor of the running config: a reload
    /// never opens the data plane or the admin API by accident (a truncated file, an unset
    /// variable), and the listeners stay the ones bound at start.
    pub fn succeed(&mut self, running: &Runtime, file: &str) -> Result<(), ConfigError> {
        let refuse = |path: &str, message: String| ConfigError {
            file: file.to_string(),
            path: path.to_string(),
            message,
        };
        if running.keys.is_some() && self.keys.is_none() && !self.server.open_data_plane {
            return Err(refuse(
                "keys",
                "the new config has no keys, which would let anyone use the data plane; \
                 set server.open_data_plane: true to do that on purpose"
                    .into(),
            ));
        }
        // Addresses take effect on restart: the admin API keeps the listener it has.
        self.server.listen = running.server.listen.clone();
        self.server.admin_listen = running.server.admin_listen;
        if self.server.admin_token.is_none() {
            if !self.server.admin_listen.ip().is_loopback() {
                return Err(refuse(
                    "server.admin_token",
                    format!(
                        "required: the admin API listens on {}, which is not a loopback address",
                        self.server.admin_listen
                    ),
                ));
            }
            if running.server.admin_token.is_some() && !self.server.open_admin {
                return Err(refuse(
                    "server.admin_token",
                    "the new config has no admin token, which would open the admin API; \
                     set server.open_admin: true to do that on purpose"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.model_index.get(name).map(|&i| &self.models[i])
    }
}

/// The answer cache's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheSettings {
    pub ttl: Duration,
    pub max_bytes: u64,
    pub scope: CacheScope,
    /// Where entries live: this process's memory, or Redis for every replica.
    pub shared: bool,
    /// Identical requests in flight share one upstream call.
    pub coalesce: bool,
}

/// Who shares cache entries: tenants never share them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheScope {
    Key,
    Team,
    Project,
    Global,
}

impl CacheScope {
    pub fn name(self) -> &'static str {
        match self {
            CacheScope::Key => "key",
            CacheScope::Team => "team",
            CacheScope::Project => "project",
            CacheScope::Global => "global",
        }
    }
}
