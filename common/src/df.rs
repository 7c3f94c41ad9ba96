//! `cairn df` per pool: the data clients stored, the raw space it takes, and how much more
//! the pool could take before its first OSD fills — from the OSDs' reports of their
//! collections and devices, as `ceph df` reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::maps::{OsdMap, Pool, PoolKind};
use crate::status::Usage;

/// What one OSD's collections of a pool hold (or, summed, every OSD's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    /// Object copies and shards, the PGs' own bookkeeping objects included.
    pub objects: u64,
    /// Their sizes: whole copies in a replicated pool, shards in an erasure-coded one.
    pub bytes: u64,
    /// The device blocks their data takes.
    pub allocated_bytes: u64,
}

impl PoolUsage {
    pub fn add(&mut self, other: &PoolUsage) {
        self.objects += other.objects;
        self.bytes += other.bytes;
        self.allocated_bytes += other.allocated_bytes;
    }
}

/// One pool's line of `cairn df`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolSpace {
    /// Data as clients see it: the bytes on the OSDs over the pool's raw-to-data ratio.
    pub stored_bytes: u64,
    /// Raw device space the pool's copies or shards take.
    pub used_bytes: u64,
    /// Data the pool can still take before the fullest OSD (relative to its weight) is full.
    pub max_avail_bytes: u64,
    /// `used` of `used` plus the raw space `max_avail` would take, in percent.
    pub percent_used: f64,
}

/// Raw bytes written per byte of data: the replica count, or (k + m) / k.
pub fn raw_ratio(pool: &Pool) -> f64 {
    match pool.kind {
        PoolKind::Replicated { size, .. } => f64::from(size.max(1)),
        PoolKind::Erasure { k, m, .. } => f64::from(k + m) / f64::from(k.max(1)),
    }
}

/// Raw bytes the OSDs that take data can still receive, placement spreading it by weight,
/// until the first of them is full: the least of each one's free space over its share of
/// the weight. OSDs that are out take none; one with no report yet counts as full, so the
/// figure errs low.
pub fn raw_avail(osdmap: &OsdMap, osd_usage: &BTreeMap<u32, Usage>) -> u64 {
    let taking: Vec<(f64, u64)> = osdmap
        .osds
        .iter()
        .filter(|(_, o)| o.in_cluster && o.weight > 0.0)
        .map(|(id, o)| (o.weight, osd_usage.get(id).map_or(0, Usage::available)))
        .collect();
    let total_weight: f64 = taking.iter().map(|(w, _)| w).sum();
    taking
        .iter()
        .map(|(w, avail)| *avail as f64 * total_weight / w)
        .min_by(f64::total_cmp)
        .map_or(0, |raw| raw as u64)
}

/// The data clients stored in a pool: the bytes on the OSDs over the raw ratio.
pub fn stored_bytes(pool: &Pool, usage: &PoolUsage) -> u64 {
    (usage.bytes as f64 / raw_ratio(pool)) as u64
}

pub fn pool_space(pool: &Pool, usage: &PoolUsage, raw_avail: u64) -> PoolSpace {
    let ratio = raw_ratio(pool);
    let used = usage.allocated_bytes;
    let room = used as f64 + raw_avail as f64;
    PoolSpace {
        stored_bytes: stored_bytes(pool, usage),
        used_bytes: used,
        max_avail_bytes: (raw_avail as f64 / ratio) as u64,
        percent_used: if room > 0.0 {
            100.0 * used as f64 / room
        } else {
            0.0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{FailureDomain, OsdInfo};

    const GIB: u64 = 1 << 30;

    fn map(osds: &[(f64, bool)]) -> OsdMap {
        let mut m = OsdMap::default();
        for (id, (weight, in_cluster)) in osds.iter().enumerate() {
            m.osds.insert(
                id as u32,
                OsdInfo {
                    addr: String::new(),
                    host: format!("h{id}"),
                    weight: *weight,
                    up: true,
                    in_cluster: *in_cluster,
                    down_since_ms: 0,
                    capacity_bytes: 0,
                    up_from: 0,
                },
            );
        }
        m
    }

    fn usage(avail: &[u64]) -> BTreeMap<u32, Usage> {
        avail
            .iter()
            .enumerate()
            .map(|(id, a)| {
                let u = Usage {
                    used_bytes: 100 * GIB - a,
                    total_bytes: 100 * GIB,
                };
                (id as u32, u)
            })
            .collect()
    }

    fn pool(kind: PoolKind) -> Pool {
        Pool {
            name: "p".into(),
            pg_num: 8,
            kind,
            failure_domain: FailureDomain::Osd,
        }
    }

    #[test]
    fn the_fullest_osd_for_its_weight_bounds_what_the_cluster_takes() {
        // Equal weights: data spreads evenly, so three OSDs take three times the least free.
        let m = map(&[(1.0, true), (1.0, true), (1.0, true)]);
        assert_eq!(
            raw_avail(&m, &usage(&[10 * GIB, 40 * GIB, 50 * GIB])),
            30 * GIB
        );
        // Twice the weight takes twice the share: 20 GiB free on it fills at the same time
        // as 10 GiB on each of the others.
        let m = map(&[(2.0, true), (1.0, true), (1.0, true)]);
        assert_eq!(
            raw_avail(&m, &usage(&[20 * GIB, 10 * GIB, 50 * GIB])),
            40 * GIB
        );
        // An OSD out takes no data: its free space neither counts nor bounds.
        let m = map(&[(1.0, true), (1.0, true), (1.0, false)]);
        assert_eq!(raw_avail(&m, &usage(&[10 * GIB, 10 * GIB, 0])), 20 * GIB);
        // An OSD that has not reported yet: nothing is promised.
        let m = map(&[(1.0, true), (1.0, true)]);
        assert_eq!(raw_avail(&m, &usage(&[10 * GIB])), 0);
        assert_eq!(raw_avail(&OsdMap::default(), &BTreeMap::new()), 0);
    }

    #[test]
    fn stored_and_available_are_data_bytes_used_is_raw() {
        let replicated = pool(PoolKind::Replicated {
            size: 3,
            min_size: 2,
        });
        let usage = PoolUsage {
            objects: 30,
            bytes: 30 * GIB,
            allocated_bytes: 30 * GIB,
        };
        let s = pool_space(&replicated, &usage, 90 * GIB);
        assert_eq!(s.stored_bytes, 10 * GIB);
        assert_eq!(s.used_bytes, 30 * GIB);
        assert_eq!(s.max_avail_bytes, 30 * GIB);
        assert!((s.percent_used - 25.0).abs() < 1e-9);

        let ec = pool(PoolKind::Erasure {
            k: 2,
            m: 1,
            stripe_unit: 4096,
            min_size: 2,
        });
        let s = pool_space(&ec, &usage, 90 * GIB);
        assert_eq!(s.stored_bytes, 20 * GIB);
        assert_eq!(s.max_avail_bytes, 60 * GIB);

        let empty = pool_space(&ec, &PoolUsage::default(), 0);
        assert_eq!(empty.percent_used, 0.0);
    }
}
