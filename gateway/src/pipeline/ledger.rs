//! Metering → the usage ledger, as a plugin: one row per request that reached a configured
//! model with a valid key. Unknown paths, models and keys are counted in metrics, not billed.

use super::{Held, Phases, Plugin};
use async_trait::async_trait;
use std::sync::Arc;
use tollgate_plugins::ledger::Ledger;
use tollgate_plugins::Settlement;

pub struct LedgerPlugin {
    /// Lives as long as the process, across reloads.
    ledger: Arc<Ledger>,
}

impl LedgerPlugin {
    pub fn new(ledger: Arc<Ledger>) -> LedgerPlugin {
        LedgerPlugin { ledger }
    }
}

#[async_trait]
impl Plugin for LedgerPlugin {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn phases(&self) -> Phases {
        Phases::SETTLE
    }

    fn settle_now(&self, outcome: &Settlement<'_>, _held: &mut Held) {
        if outcome.model.is_some() {
            // Queued for the ledger's writer: nothing here waits.
            self.ledger.settle(outcome);
        }
    }
}
