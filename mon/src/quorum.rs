//! Who is in quorum, as the leader sees it: a mon is in if the leader heard a reply from it
//! within `down_grace_ms`. Replies come from the Raft traffic the leader sends anyway
//! (heartbeats every `heartbeat_interval_ms`), so tracking costs no extra messages.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Liveness {
    last_ok: Mutex<HashMap<u64, Instant>>,
}

impl Liveness {
    pub fn heard(&self, node: u64) {
        self.lock().insert(node, Instant::now());
    }

    /// Peers heard from within `grace`.
    pub fn alive(&self, grace: Duration) -> BTreeSet<u64> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, t)| now.duration_since(**t) <= grace)
            .map(|(id, _)| *id)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.last_ok.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Remembers since when the quorum has been what it is, for the `(age …)` of `cairn status`.
pub struct QuorumAge {
    current: Mutex<(BTreeSet<u64>, Instant)>,
}

impl Default for QuorumAge {
    fn default() -> Self {
        QuorumAge {
            current: Mutex::new((BTreeSet::new(), Instant::now())),
        }
    }
}

impl QuorumAge {
    /// Records the quorum seen now and returns how long it has held.
    pub fn observe(&self, quorum: &BTreeSet<u64>) -> Duration {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if &cur.0 != quorum {
            *cur = (quorum.clone(), Instant::now());
        }
        cur.1.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_expires_after_grace() {
        let l = Liveness::default();
        l.heard(7);
        assert_eq!(l.alive(Duration::from_secs(10)), BTreeSet::from([7]));
        std::thread::sleep(Duration::from_millis(20));
        assert!(l.alive(Duration::from_millis(5)).is_empty());
    }

    #[test]
    fn quorum_age_resets_on_change() {
        let q = QuorumAge::default();
        q.observe(&BTreeSet::from([1, 2]));
        std::thread::sleep(Duration::from_millis(20));
        assert!(q.observe(&BTreeSet::from([1, 2])) >= Duration::from_millis(20));
        assert!(q.observe(&BTreeSet::from([1])) < Duration::from_millis(20));
    }
}
