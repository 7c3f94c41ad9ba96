//! Which OSDs are alive, as the leader mon judges it from OSD beacons and from the failure
//! reports OSDs send about their peers. Kept in memory on the leader only: a new leader starts
//! with every OSD's clock at "now", so it never marks an OSD down for its predecessor's gaps.
//!
//! Rules (decided by `OsdLiveness::verdicts`, a pure function of what was heard and when):
//! - an OSD whose beacons stopped for `osd_beacon_grace_ms` is down;
//! - so is one that `osd_min_reporters` distinct up peers (fewer if fewer are up) report as
//!   refusing connections (the process is gone: peers report it at their next heartbeat) or
//!   silent beyond their heartbeat grace. A refused-connection report counts only if newer
//!   than the OSD's last beacon (a restarted OSD's beacon voids reports about its previous
//!   life). Reports expire after `osd_report_ttl_ms`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::command::PeerFailureReport;
use cairn_common::config::MonSettings;
use cairn_common::maps::OsdMap;

#[derive(Clone, Copy, Debug)]
struct Report {
    at: Instant,
    refused: bool,
}

#[derive(Default)]
struct Heard {
    /// OSD → when its last beacon arrived.
    beacons: HashMap<u32, Instant>,
    /// Target OSD → reporter → its latest report.
    reports: HashMap<u32, HashMap<u32, Report>>,
    /// When this mon started judging (became leader, or its first call).
    since: Option<Instant>,
}

#[derive(Default)]
pub struct OsdLiveness {
    heard: Mutex<Heard>,
}

impl OsdLiveness {
    /// Records a beacon from `osd` and the failures it reports about its peers.
    pub fn beacon(&self, osd: u32, failures: &[PeerFailureReport], now: Instant) {
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.beacons.insert(osd, now);
        for reports in h.reports.values_mut() {
            reports.remove(&osd);
        }
        for f in failures.iter().filter(|f| f.osd != osd) {
            h.reports.entry(f.osd).or_default().insert(
                osd,
                Report {
                    at: now,
                    refused: f.refused,
                },
            );
        }
    }

    /// Forgets everything: called when this mon stops leading, so a later term starts fresh.
    pub fn reset(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Heard::default();
    }

    /// The up OSDs that should be marked down now, each with the reason.
    pub fn verdicts(&self, map: &OsdMap, s: &MonSettings, now: Instant) -> Vec<(u32, String)> {
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let since = *h.since.get_or_insert(now);
        let ttl = Duration::from_millis(s.osd_report_ttl_ms);
        for reports in h.reports.values_mut() {
            reports.retain(|_, r| now.duration_since(r.at) < ttl);
        }
        let up: Vec<u32> = map
            .osds
            .iter()
            .filter(|(_, o)| o.up)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for &osd in &up {
            let beaconed = h.beacons.get(&osd).copied();
            // The grace runs from this mon's start at the earliest (see the module comment).
            let silent = now.duration_since(beaconed.unwrap_or(since).max(since));
            if silent >= Duration::from_millis(s.osd_beacon_grace_ms) {
                out.push((osd, format!("no beacon for {} ms", silent.as_millis())));
                continue;
            }
            // Only up peers' word counts (a down reporter may be the broken one), and a report
            // of a refused connection only if newer than the OSD's last beacon (a restarted
            // OSD's beacon voids reports about its previous life).
            let reports: Vec<(u32, Report)> = h
                .reports
                .get(&osd)
                .map(|r| {
                    r.iter()
                        .filter(|(reporter, _)| up.contains(reporter))
                        .filter(|(_, r)| !r.refused || beaconed.is_none_or(|b| r.at > b))
                        .map(|(k, v)| (*k, *v))
                        .collect()
                })
                .unwrap_or_default();
            // One peer's word is not enough while others can speak: a one-sided network
            // fault would make the OSD flap.
            let peers_up = up.len().saturating_sub(1);
            let needed = (s.osd_min_reporters as usize).min(peers_up).max(1);
            if reports.len() >= needed {
                let how = if reports.iter().all(|(_, r)| r.refused) {
                    "connection refused"
                } else {
                    "silent"
                };
                let by: Vec<String> = reports.iter().map(|(r, _)| format!("osd.{r}")).collect();
                out.push((osd, format!("{how} (reported by {})", by.join(", "))));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::maps::OsdInfo;

    fn map(n: u32) -> OsdMap {
        let mut m = OsdMap::default();
        for id in 0..n {
            m.osds.insert(
                id,
                OsdInfo {
                    up: true,
                    in_cluster: true,
                    ..OsdInfo::default()
                },
            );
        }
        m
    }

    fn report(osd: u32, refused: bool) -> PeerFailureReport {
        PeerFailureReport {
            osd,
            refused,
            silent_ms: 2500,
        }
    }

    fn ids(v: Vec<(u32, String)>) -> Vec<u32> {
        v.into_iter().map(|(id, _)| id).collect()
    }

    #[test]
    fn missed_beacons_mark_down_after_the_grace() {
        let s = MonSettings::default();
        let l = OsdLiveness::default();
        let m = map(3);
        let t0 = Instant::now();
        assert!(l.verdicts(&m, &s, t0).is_empty());
        for id in [0, 1] {
            l.beacon(id, &[], t0 + Duration::from_millis(3000));
        }
        let later = t0 + Duration::from_millis(s.osd_beacon_grace_ms + 1);
        assert_eq!(ids(l.verdicts(&m, &s, later)), vec![2]);
    }

    #[test]
    fn refused_reports_count_unless_a_beacon_follows() {
        let s = MonSettings::default();
        let l = OsdLiveness::default();
        let m = map(3);
        let t0 = Instant::now();
        for id in 0..3 {
            l.beacon(id, &[], t0);
        }
        let t1 = t0 + Duration::from_millis(10);
        l.beacon(0, &[report(2, true)], t1);
        assert!(
            l.verdicts(&m, &s, t1).is_empty(),
            "one peer of two is not enough"
        );
        l.beacon(1, &[report(2, true)], t1);
        assert_eq!(ids(l.verdicts(&m, &s, t1)), vec![2]);
        // osd.2 restarted and beaconed after the reports: they are about its old life.
        l.beacon(2, &[], t1 + Duration::from_millis(5));
        assert!(l.verdicts(&m, &s, t1 + Duration::from_millis(6)).is_empty());
    }

    #[test]
    fn silence_needs_enough_reporters_and_reports_expire() {
        let s = MonSettings::default();
        let l = OsdLiveness::default();
        let m = map(4);
        let t0 = Instant::now();
        for id in 0..4 {
            l.beacon(id, &[], t0);
        }
        l.beacon(0, &[report(3, false)], t0);
        assert!(
            l.verdicts(&m, &s, t0).is_empty(),
            "one reporter of two needed"
        );
        l.beacon(1, &[report(3, false)], t0);
        assert_eq!(ids(l.verdicts(&m, &s, t0)), vec![3]);
        let expired = t0 + Duration::from_millis(s.osd_report_ttl_ms);
        for id in 0..4 {
            l.beacon(id, &[], expired);
        }
        assert!(l.verdicts(&m, &s, expired).is_empty());
    }

    #[test]
    fn a_lone_peer_is_enough_in_a_two_osd_cluster() {
        let s = MonSettings::default();
        let l = OsdLiveness::default();
        let m = map(2);
        let t0 = Instant::now();
        l.beacon(1, &[], t0);
        l.beacon(0, &[report(1, false)], t0);
        assert_eq!(ids(l.verdicts(&m, &s, t0)), vec![1]);
    }
}
