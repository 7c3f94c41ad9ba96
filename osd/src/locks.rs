//! Per-object reader/writer locks. A transaction write-locks every object it touches from
//! planning until its new blocks are committed and the old ones released, so no reader can
//! follow an extent map into blocks that were freed and reused. Object transactions read-lock
//! their collection (the empty object name) and collection creation or removal write-locks it,
//! so a collection cannot vanish under a transaction. Locks are taken in sorted order, so
//! transactions cannot deadlock.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

pub type Key = (String, String);

#[derive(Default)]
struct State {
    readers: usize,
    writer: bool,
}

#[derive(Default)]
pub struct LockTable {
    held: Mutex<HashMap<Key, State>>,
    changed: Condvar,
}

pub struct Guard<'a> {
    table: &'a LockTable,
    keys: Vec<(Key, bool)>,
}

impl LockTable {
    /// Locks every key, `true` for write; the caller passes them sorted and deduplicated.
    pub fn lock(&self, keys: Vec<(Key, bool)>) -> Guard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (key, write) in &keys {
            loop {
                let s = held.entry(key.clone()).or_default();
                let free = if *write {
                    !s.writer && s.readers == 0
                } else {
                    !s.writer
                };
                if free {
                    if *write {
                        s.writer = true;
                    } else {
                        s.readers += 1;
                    }
                    break;
                }
                held = self.changed.wait(held).unwrap_or_else(|p| p.into_inner());
            }
        }
        Guard { table: self, keys }
    }

    /// Read-locks one object (and its collection).
    pub fn read(&self, coll: &str, oid: &str) -> Guard<'_> {
        self.lock(vec![
            ((coll.to_string(), String::new()), false),
            ((coll.to_string(), oid.to_string()), false),
        ])
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let mut held = self.table.held.lock().unwrap_or_else(|p| p.into_inner());
        for (key, write) in &self.keys {
            if let Some(s) = held.get_mut(key) {
                if *write {
                    s.writer = false;
                } else {
                    s.readers -= 1;
                }
                if !s.writer && s.readers == 0 {
                    held.remove(key);
                }
            }
        }
        self.table.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn writers_exclude_readers() {
        let t = Arc::new(LockTable::default());
        let g = t.lock(vec![(("c".into(), "o".into()), true)]);
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            let _r = t2.read("c", "o");
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(50));
        let released = Instant::now();
        drop(g);
        assert!(h.join().unwrap() >= released);
        let _r1 = t.read("c", "o");
        let _r2 = t.read("c", "o");
    }
}
