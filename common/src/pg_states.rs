//! PG states as the OSD map implies them: a PG with every member up is `active+clean`, one
//! missing members but at `min_size` or above is `active+undersized+degraded`, one below
//! `min_size` is `undersized+degraded+inactive` (it refuses ops). Recovery states come from
//! the OSDs with the self-healing work; until then these are the map's view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::maps::OsdMap;
use crate::placement::{all_pgs, pg_acting, PgId, NO_OSD};

pub const ACTIVE_CLEAN: &str = "active+clean";
pub const DEGRADED: &str = "active+undersized+degraded";
pub const INACTIVE: &str = "undersized+degraded+inactive";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PgSummary {
    /// State → number of PGs.
    pub states: BTreeMap<String, u64>,
    /// PGs that cannot serve, with why (at most `LISTED_MAX`).
    pub inactive: Vec<String>,
    pub degraded: Vec<String>,
}

/// How many PGs the summary names one by one per state.
pub const LISTED_MAX: usize = 20;

pub fn state_of(map: &OsdMap, pool: &crate::maps::Pool, pg: PgId) -> (&'static str, usize) {
    let up = pg_acting(map, pool, pg)
        .iter()
        .filter(|o| **o != NO_OSD)
        .count();
    let state = if up >= pool.width() {
        ACTIVE_CLEAN
    } else if up >= pool.min_size() && up > 0 {
        DEGRADED
    } else {
        INACTIVE
    };
    (state, up)
}

pub fn summarize(map: &OsdMap) -> PgSummary {
    let mut s = PgSummary::default();
    for (id, pool) in &map.pools {
        for pg in all_pgs(*id, pool) {
            let (state, up) = state_of(map, pool, pg);
            *s.states.entry(state.to_string()).or_default() += 1;
            let line = format!(
                "pg {pg} has {up}/{} members up (min_size {})",
                pool.width(),
                pool.min_size()
            );
            let list = match state {
                INACTIVE => &mut s.inactive,
                DEGRADED => &mut s.degraded,
                _ => continue,
            };
            if list.len() < LISTED_MAX {
                list.push(line);
            }
        }
    }
    s
}
