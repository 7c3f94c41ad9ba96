//! What this OSD knows of the PGs it is the primary of — whether each is active for the
//! current map and why not, its object count, its scrub results — for the beacons to carry to
//! the mons (`cairn status`, `cairn pg ls`, health). Kept in memory: a new primary learns
//! the numbers again when it activates and scrubs.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use cairn_common::maps::OsdMap;
use cairn_common::placement::{all_pgs, pg_acting, primary, PgId};
use cairn_common::proto::PgReport;

#[derive(Clone, Debug, Default)]
pub struct PgRecord {
    /// The map epoch the PG was last activated for (0 = never).
    pub active_epoch: u64,
    /// Why the last activation failed (cleared when one succeeds).
    pub blocked: String,
    pub objects: u64,
    pub scrub_errors: u64,
    pub scrubbing: bool,
    /// When this OSD last scrubbed (deep-scrubbed) the PG; 0 when it has not, which the
    /// mons show as the newest stamp any primary reported.
    pub last_scrub_ms: u64,
    pub last_deep_scrub_ms: u64,
    /// For scheduling only, when the PG was never scrubbed here: the time its intervals run
    /// from, spread over the interval so PGs do not all fall due at once. Never reported.
    pub light_due_base_ms: u64,
    pub deep_due_base_ms: u64,
    /// Object copies (shards) still to bring in line: in the activation under way, then in
    /// the background.
    pub recovery_left: u64,
    /// Some of those copies go to a member that held nothing of the PG.
    pub backfilling: bool,
    /// Of those copies, the ones an OSD outside the PG still holds up to date.
    pub misplaced_left: u64,
    /// How the last activation chose the objects to compare across members, and how many.
    pub compared_by: ComparedBy,
    pub objects_compared: u64,
}

/// How an activation chose the objects to compare across the PG's members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ComparedBy {
    /// The PG has not been activated here.
    #[default]
    NotYet,
    /// From the logs: only objects changed since the newest entry every member holds.
    Log,
    /// Every member listed every object (the logs could not tell: backfill).
    Listing,
}

#[derive(Default)]
pub struct PgRecords {
    all: Mutex<HashMap<PgId, PgRecord>>,
    /// Woken when a PG's state as `cairn pg stat` shows it changes (see `PgRecord::shown`),
    /// so that a beacon tells the mons before the next interval.
    pub state_changed: Notify,
}

impl PgRecord {
    /// What of the record decides the PG's state in `cairn pg stat` (active, peering,
    /// recovering or clean, backfilling, scrubbing, inconsistent); not counts that move with
    /// every object.
    fn shown(&self) -> (u64, bool, bool, bool, bool, bool, bool) {
        (
            self.active_epoch,
            self.blocked.is_empty(),
            self.recovery_left == 0,
            self.misplaced_left == 0,
            self.backfilling,
            self.scrubbing,
            self.scrub_errors == 0,
        )
    }
}

impl PgRecords {
    /// Changes the record of `pg`, creating it on first use.
    pub fn update<T>(&self, pg: PgId, change: impl FnOnce(&mut PgRecord) -> T) -> T {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let record = all.entry(pg).or_default();
        let before = record.shown();
        let out = change(record);
        if record.shown() != before {
            self.state_changed.notify_one();
        }
        out
    }

    pub fn get(&self, pg: PgId) -> Option<PgRecord> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        all.get(&pg).cloned()
    }

    /// Reports of the PGs OSD `me` is the primary of in `osdmap`. A PG not activated for
    /// this epoch yet reports inactive, with the last reason it could not activate.
    pub fn reports(&self, me: u32, osdmap: &OsdMap) -> Vec<PgReport> {
        let all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (id, pool) in &osdmap.pools {
            for pg in all_pgs(*id, pool) {
                if primary(&pg_acting(osdmap, pool, pg)) != Some(me) {
                    continue;
                }
                let r = all.get(&pg).cloned().unwrap_or_default();
                let active = r.active_epoch == osdmap.epoch;
                let blocked = match (active, r.blocked.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => format!("bringing members in line for epoch {}", osdmap.epoch),
                    (false, false) => r.blocked,
                };
                out.push(PgReport {
                    pool: pg.pool,
                    pg: pg.seed,
                    osdmap_epoch: osdmap.epoch,
                    active,
                    blocked,
                    objects: r.objects,
                    scrub_errors: r.scrub_errors,
                    scrubbing: r.scrubbing,
                    last_scrub_ms: r.last_scrub_ms,
                    last_deep_scrub_ms: r.last_deep_scrub_ms,
                    recovery_left: r.recovery_left,
                    backfilling: r.backfilling,
                    misplaced_left: r.misplaced_left,
                });
            }
        }
        out
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn notified(records: &PgRecords) -> bool {
        records.state_changed.notified().now_or_never().is_some()
    }

    #[test]
    fn a_change_of_shown_state_wakes_the_beacon_and_a_count_does_not() {
        let records = PgRecords::default();
        let pg = PgId { pool: 1, seed: 0 };
        records.update(pg, |r| r.objects = 10);
        assert!(!notified(&records), "an object count is not a state");
        records.update(pg, |r| r.active_epoch = 7);
        assert!(notified(&records), "activation");
        records.update(pg, |r| r.recovery_left = 5);
        assert!(notified(&records), "recovering");
        records.update(pg, |r| r.recovery_left = 4);
        assert!(!notified(&records), "progress within recovery");
        records.update(pg, |r| r.recovery_left = 0);
        assert!(notified(&records), "clean");
        records.update(pg, |r| r.scrub_errors = 2);
        assert!(notified(&records), "inconsistent");
    }
}
