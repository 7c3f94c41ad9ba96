//! Synchronous RocksDB commits shared by concurrent transactions. RocksDB groups concurrent
//! synchronous writes itself, but every writer waiting for its group first spins for a fixed
//! 200 pause instructions (not configurable), and with more writers than cores that spinning
//! took the CPU the group's leader needed (6.5 % of a durable 4 KiB write, BENCHMARKS.md).
//! Here a writer that finds a commit under way queues its batch and sleeps at once; the one
//! that finds none leads: it joins every batch queued into one, writes it synchronously,
//! wakes the writers it carried and hands the lead to the first writer queued meanwhile.

use std::sync::Mutex;
use std::thread::Thread;

use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::error::{Result, StoreError};

/// A WriteBatch's encoding starts with its sequence number (8 bytes) and its record count
/// (4 bytes, little-endian); the records follow (RocksDB's `WriteBatchInternal::kHeader`).
const BATCH_HEADER_BYTES: usize = 12;

#[derive(Default)]
pub struct CommitGroup {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Batches waiting for the next commit, in arrival order.
    queue: Vec<Queued>,
    /// Tickets handed out (one per batch, in arrival order) and committed so far.
    issued: u64,
    committed: u64,
    leading: bool,
    /// The first ticket of the first group that failed, and why: it and every later one
    /// fail (the store stops taking writes after a failed commit anyway).
    failed: Option<(u64, rocksdb::Error)>,
}

struct Queued {
    batch: WriteBatch,
    writer: Thread,
}

impl State {
    fn outcome(&self, ticket: u64) -> Result<()> {
        match &self.failed {
            Some((first, e)) if ticket >= *first => Err(StoreError::Db(e.clone())),
            _ => Ok(()),
        }
    }
}

impl CommitGroup {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `batch` to `db` synchronously, possibly in one write with others'.
    pub fn commit(&self, db: &DB, batch: WriteBatch, options: &WriteOptions) -> Result<()> {
        let ticket = {
            let mut s = self.lock();
            s.issued += 1;
            s.queue.push(Queued {
                batch,
                writer: std::thread::current(),
            });
            s.issued
        };
        loop {
            let mut s = self.lock();
            if s.committed >= ticket {
                return s.outcome(ticket);
            }
            if s.leading {
                drop(s);
                // Woken when the group carrying this batch committed, or to lead the next.
                std::thread::park();
                continue;
            }
            s.leading = true;
            let group = std::mem::take(&mut s.queue);
            let (first, last) = (s.committed + 1, s.issued);
            let earlier_failure = s.failed.clone();
            drop(s);
            let (batches, writers): (Vec<WriteBatch>, Vec<Thread>) =
                group.into_iter().map(|q| (q.batch, q.writer)).unzip();
            let result = match earlier_failure {
                Some((_, e)) => Err(e),
                None => db.write_opt(joined(batches), options),
            };
            let mut s = self.lock();
            if let Err(e) = result {
                s.failed.get_or_insert((first, e));
            }
            s.committed = last;
            s.leading = false;
            let next_leader = s.queue.first().map(|q| q.writer.clone());
            drop(s);
            let me = std::thread::current().id();
            for w in writers.iter().chain(&next_leader) {
                if w.id() != me {
                    w.unpark();
                }
            }
        }
    }
}

/// One batch holding the records of all of `batches`, in order.
fn joined(mut batches: Vec<WriteBatch>) -> WriteBatch {
    if batches.len() == 1 {
        if let Some(only) = batches.pop() {
            return only;
        }
    }
    let bytes: usize = batches.iter().map(|b| b.data().len()).sum();
    let count: usize = batches.iter().map(WriteBatch::len).sum();
    let mut rep = Vec::with_capacity(bytes);
    rep.extend_from_slice(&[0u8; BATCH_HEADER_BYTES]);
    rep[8..BATCH_HEADER_BYTES].copy_from_slice(&(count as u32).to_le_bytes());
    for b in &batches {
        rep.extend_from_slice(b.data().get(BATCH_HEADER_BYTES..).unwrap_or_default());
    }
    WriteBatch::from_data(&rep)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn sync() -> WriteOptions {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        o
    }

    #[test]
    fn joined_batches_hold_every_record_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = DB::open_default(dir.path()).unwrap();
        db.put(b"gone", b"x").unwrap();
        let mut a = WriteBatch::default();
        a.put(b"k1", b"a");
        a.put(b"k2", b"a");
        let mut b = WriteBatch::default();
        b.put(b"k2", b"b");
        b.delete(b"gone");
        b.delete_range(b"r0", b"r9");
        let mut c = WriteBatch::default();
        c.put(b"k3", b"c");
        let j = joined(vec![a, b, c]);
        assert_eq!(j.len(), 6);
        db.put(b"r5", b"in range").unwrap();
        db.write(j).unwrap();
        assert_eq!(db.get(b"k1").unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(
            db.get(b"k2").unwrap().as_deref(),
            Some(&b"b"[..]),
            "later wins"
        );
        assert_eq!(db.get(b"k3").unwrap().as_deref(), Some(&b"c"[..]));
        assert_eq!(db.get(b"gone").unwrap(), None);
        assert_eq!(db.get(b"r5").unwrap(), None);
    }

    #[test]
    fn concurrent_commits_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(DB::open_default(dir.path()).unwrap());
        let group = Arc::new(CommitGroup::default());
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (db, group) = (db.clone(), group.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let mut b = WriteBatch::default();
                        b.put(format!("{t}-{i}"), b"v");
                        group.commit(&db, b, &sync()).unwrap();
                        // Committed means readable.
                        assert!(db.get(format!("{t}-{i}")).unwrap().is_some());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = group.lock();
        assert_eq!((s.issued, s.committed, s.leading), (800, 800, false));
        assert!(s.queue.is_empty());
    }
}
