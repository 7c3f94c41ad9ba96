//! MDS daemons as the leader mon sees them through their beacons: what each beacon asks of the
//! FSMap (`beacon_command`, a pure function), and which daemons fell silent (`MdsLiveness`).
//!
//! Last-seen times live in the leader's memory only. A new leader starts every daemon's clock
//! at the moment it started judging (as for OSDs, see `osd_liveness`), so it never fails a
//! daemon for the gap between two leaders.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_common::command::Command;
use cairn_common::fsmap::{FsMap, MdsRole};
use cairn_common::maps::ClusterMaps;

/// What one MDS beacon says.
pub struct MdsBeacon<'a> {
    pub name: &'a str,
    pub addr: &'a str,
    pub instance: &'a str,
    pub serving: bool,
    pub going_down: bool,
}

/// The FSMap change a beacon calls for, if any: an unknown daemon or a new instance of one
/// boots; the rank holder done replaying serves; a daemon shutting down fails at once (no
/// need to wait for its silence). Refused for a blocklisted instance: it lost its rank and
/// must not take part again (the process should exit).
pub fn beacon_command(
    maps: &ClusterMaps,
    b: &MdsBeacon,
    now_ms: u64,
) -> Result<Option<Command>, String> {
    let known = maps
        .fsmap
        .daemons
        .get(b.name)
        .filter(|d| d.instance == b.instance);
    if b.going_down {
        return Ok(known.map(|_| Command::MdsFailed {
            name: b.name.to_string(),
            instance: b.instance.to_string(),
            at_ms: now_ms,
            reason: "shutting down".into(),
        }));
    }
    if maps.osdmap.blocklist.contains_key(b.instance) {
        return Err(format!(
            "mds.{} instance {} is blocklisted (it lost its rank): restart the daemon",
            b.name, b.instance
        ));
    }
    Ok(match known {
        None => Some(Command::MdsBoot {
            name: b.name.to_string(),
            addr: b.addr.to_string(),
            instance: b.instance.to_string(),
            at_ms: now_ms,
        }),
        Some(d) if b.serving && matches!(d.role, MdsRole::Active { serving: false, .. }) => {
            Some(Command::MdsServing {
                name: b.name.to_string(),
                instance: b.instance.to_string(),
            })
        }
        Some(_) => None,
    })
}

#[derive(Default)]
struct Heard {
    /// (name, instance) → when its last beacon arrived.
    beacons: HashMap<(String, String), Instant>,
    /// When this mon started judging (became leader, or its first call).
    since: Option<Instant>,
}

#[derive(Default)]
pub struct MdsLiveness {
    heard: Mutex<Heard>,
}

impl MdsLiveness {
    pub fn beacon(&self, name: &str, instance: &str, now: Instant) {
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        h.beacons
            .insert((name.to_string(), instance.to_string()), now);
    }

    /// Forgets everything: called when this mon stops leading, so a later term starts fresh.
    pub fn reset(&self) {
        *self.heard.lock().unwrap_or_else(|p| p.into_inner()) = Heard::default();
    }

    /// `MdsFailed` (dated `now_ms`) for every daemon of `fsmap` not heard from for `grace`.
    /// Instances the map does not hold are forgotten once silent too, so memory stays
    /// bounded (a beacon of a daemon whose boot is not committed yet is kept meanwhile).
    pub fn failed(
        &self,
        fsmap: &FsMap,
        grace: Duration,
        now: Instant,
        now_ms: u64,
    ) -> Vec<Command> {
        let mut h = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let since = *h.since.get_or_insert(now);
        h.beacons.retain(|(name, instance), at| {
            now.duration_since(*at) < grace
                || fsmap
                    .daemons
                    .get(name)
                    .is_some_and(|d| d.instance == *instance)
        });
        fsmap
            .daemons
            .iter()
            .filter_map(|(name, d)| {
                let heard = h.beacons.get(&(name.clone(), d.instance.clone())).copied();
                // The grace runs from this mon's start at the earliest (see the module comment).
                let silent = now.duration_since(heard.unwrap_or(since).max(since));
                (silent >= grace).then(|| Command::MdsFailed {
                    name: name.clone(),
                    instance: d.instance.clone(),
                    at_ms: now_ms,
                    reason: format!("no beacon for {} ms", silent.as_millis()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::fsmap::MdsInfo;

    fn maps_with(daemons: &[(&str, &str, MdsRole)]) -> ClusterMaps {
        let mut m = ClusterMaps::default();
        for (name, instance, role) in daemons {
            m.fsmap.daemons.insert(
                name.to_string(),
                MdsInfo {
                    addr: "127.0.0.1:6800".into(),
                    instance: instance.to_string(),
                    role: role.clone(),
                },
            );
        }
        m
    }

    fn beacon<'a>(name: &'a str, instance: &'a str) -> MdsBeacon<'a> {
        MdsBeacon {
            name,
            addr: "127.0.0.1:6800",
            instance,
            serving: false,
            going_down: false,
        }
    }

    fn label(c: Result<Option<Command>, String>) -> Option<&'static str> {
        c.expect("not refused").map(|c| c.label())
    }

    #[test]
    fn beacons_become_boot_serving_or_failed() {
        let active = MdsRole::Active {
            fs: 1,
            serving: false,
        };
        let mut m = maps_with(&[("a", "mds.a/1", active)]);
        assert_eq!(
            label(beacon_command(&m, &beacon("b", "mds.b/1"), 0)),
            Some("mds boot")
        );
        assert_eq!(
            label(beacon_command(&m, &beacon("a", "mds.a/2"), 0)),
            Some("mds boot")
        );
        assert_eq!(label(beacon_command(&m, &beacon("a", "mds.a/1"), 0)), None);
        let serving = MdsBeacon {
            serving: true,
            ..beacon("a", "mds.a/1")
        };
        assert_eq!(label(beacon_command(&m, &serving, 0)), Some("mds serving"));
        let leaving = MdsBeacon {
            going_down: true,
            ..beacon("a", "mds.a/1")
        };
        assert_eq!(label(beacon_command(&m, &leaving, 0)), Some("mds failed"));
        let stale_leaving = MdsBeacon {
            going_down: true,
            ..beacon("a", "mds.a/0")
        };
        assert_eq!(label(beacon_command(&m, &stale_leaving, 0)), None);
        m.osdmap.blocklist.insert("mds.a/0".into(), u64::MAX);
        assert!(beacon_command(&m, &beacon("a", "mds.a/0"), 0).is_err());
    }

    #[test]
    fn silent_daemons_fail_after_the_grace() {
        let m = maps_with(&[
            ("a", "mds.a/1", MdsRole::Standby),
            ("b", "mds.b/1", MdsRole::Standby),
        ]);
        let l = MdsLiveness::default();
        let grace = Duration::from_millis(2000);
        let t0 = Instant::now();
        assert!(
            l.failed(&m.fsmap, grace, t0, 0).is_empty(),
            "a new leader waits a grace"
        );
        l.beacon("a", "mds.a/1", t0 + Duration::from_millis(1500));
        // A beacon of another instance does not keep b's current one alive.
        l.beacon("b", "mds.b/0", t0 + Duration::from_millis(1500));
        let failed = l.failed(&m.fsmap, grace, t0 + grace, 7);
        let [Command::MdsFailed {
            name,
            instance,
            at_ms,
            ..
        }] = failed.as_slice()
        else {
            panic!("{failed:?}")
        };
        assert_eq!(
            (name.as_str(), instance.as_str(), *at_ms),
            ("b", "mds.b/1", 7)
        );
        let later = t0 + Duration::from_millis(3500);
        assert_eq!(l.failed(&m.fsmap, grace, later, 0).len(), 2);
        assert_eq!(
            l.heard.lock().unwrap().beacons.len(),
            1,
            "silent instances the map does not hold are forgotten"
        );
    }
}
