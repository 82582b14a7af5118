//! The access log as a plugin: one JSON line per request (`plugins.access_log: true`).

use super::{Held, Phases, Plugin};
use async_trait::async_trait;
use tollgate_plugins::access_log::AccessLog;
use tollgate_plugins::Settlement;

pub struct AccessLogPlugin;

#[async_trait]
impl Plugin for AccessLogPlugin {
    fn name(&self) -> &'static str {
        "access_log"
    }

    fn phases(&self) -> Phases {
        Phases::SETTLE
    }

    fn settle_now(&self, outcome: &Settlement<'_>, _held: &mut Held) {
        log::info!(target: "tollgate::access", "{}", AccessLog::line(outcome));
    }
}
