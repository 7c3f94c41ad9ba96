//! Small overwrites that are committed but not yet written in place. A transaction that
//! rewrites mapped blocks commits their new content as records in its RocksDB batch and
//! returns; a flusher thread then writes the queued blocks in place, many per submission,
//! off the transaction's path. Until a block is on disk, reads take it from here.
//!
//! Rules that keep this from returning stale data or corrupting a reused block:
//! - a block joins the queue before its transaction releases the object's lock, and leaves it
//!   only once its in-place write completed, so a reader holding the lock that does not find
//!   it here finds it on disk;
//! - a block is not released to the allocator while it is queued (`settle`);
//! - the records of a block are retired (deleted after an fdatasync) only once it was written.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::aligned::AlignedBuf;
use crate::allocator::Run;
use crate::error::{Result, StoreError};
use crate::io::{Backend, IoOp};
use crate::BLOCK_BYTES;

/// Blocks written in place per submission at most.
const FLUSH_BATCH_BLOCKS: usize = 256;

pub(crate) struct DeferredQueue {
    state: Mutex<State>,
    /// Wakes the flusher: blocks queued while it sleeps, a waiter, a stop.
    work: Condvar,
    /// Wakes waiters: written blocks left the queue, a failure, a stop. Kept apart from
    /// `work` so that a transaction queueing its blocks wakes no one but an idle flusher
    /// (one shared condition variable, notified at every push, cost a wake-up syscall per
    /// small write and woke every waiter for nothing).
    progress: Condvar,
    blocks_max: usize,
    /// Mirrors of `State::failed.is_some()` and `State::written.len()`, read on every
    /// transaction without taking the lock.
    has_failed: AtomicBool,
    written_count: AtomicUsize,
}

#[derive(Default)]
struct State {
    blocks: HashMap<u64, Queued>,
    next_gen: u64,
    /// Records whose blocks are written in place, not yet made durable by an fdatasync.
    written: Vec<Vec<u8>>,
    failed: Option<String>,
    stopping: bool,
    /// The flusher sleeps on `work`.
    flusher_idle: bool,
    /// Callers waiting for the flusher to make progress.
    waiters: usize,
    /// Tests hold the flusher back (unless someone waits for it), so that reads and
    /// transactions meet queued blocks.
    held: bool,
}

impl State {
    fn flusher_may_write(&self) -> bool {
        !self.blocks.is_empty() && (!self.held || self.waiters > 0 || self.stopping)
    }
}

/// The newest committed content of a block, and every record naming the block since it was
/// last written in place, each with the generation of the content it holds.
struct Queued {
    data: Arc<AlignedBuf>,
    gen: u64,
    records: Vec<(u64, Vec<u8>)>,
}

impl DeferredQueue {
    /// A queue holding up to about `blocks_max` blocks before committers wait for the flusher.
    pub fn new(blocks_max: usize) -> DeferredQueue {
        DeferredQueue {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            progress: Condvar::new(),
            blocks_max: blocks_max.max(1),
            has_failed: AtomicBool::new(false),
            written_count: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the flusher if it sleeps; the caller holds the lock and changed what it waits for.
    fn wake_flusher(&self, s: &State) {
        if s.flusher_idle {
            self.work.notify_one();
        }
    }

    /// Waits for the flusher's next step, letting it know someone does.
    fn wait_for_flusher<'a>(&self, mut s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        s.waiters += 1;
        self.wake_flusher(&s);
        let mut s = self.progress.wait(s).unwrap_or_else(|p| p.into_inner());
        s.waiters -= 1;
        s
    }

    /// Records a failure: the flusher has stopped, and waiters must not wait for it.
    fn fail(&self, s: &mut State, why: String) {
        s.failed.get_or_insert(why);
        self.has_failed.store(true, Ordering::SeqCst);
        self.progress.notify_all();
    }

    /// Holds the flusher back while `held`, except when a caller waits for it (tests).
    #[cfg(test)]
    pub fn hold(&self, held: bool) {
        let mut s = self.lock();
        s.held = held;
        self.wake_flusher(&s);
    }

    /// Queues committed blocks (physical block, content, its record), then waits while the
    /// queue is over its bound.
    pub fn push(&self, blocks: impl IntoIterator<Item = (u64, AlignedBuf, Vec<u8>)>) {
        let mut s = self.lock();
        for (pblock, data, record) in blocks {
            s.next_gen += 1;
            let gen = s.next_gen;
            let data = Arc::new(data);
            match s.blocks.entry(pblock) {
                Entry::Occupied(mut o) => {
                    let q = o.get_mut();
                    q.data = data;
                    q.gen = gen;
                    q.records.push((gen, record));
                }
                Entry::Vacant(v) => {
                    v.insert(Queued {
                        data,
                        gen,
                        records: vec![(gen, record)],
                    });
                }
            }
        }
        self.wake_flusher(&s);
        while s.blocks.len() > self.blocks_max && s.failed.is_none() {
            s = self.wait_for_flusher(s);
        }
    }

    /// The queued content of each of `pblocks` that is queued.
    pub fn lookup(&self, pblocks: impl Iterator<Item = u64>) -> HashMap<u64, Arc<AlignedBuf>> {
        let s = self.lock();
        if s.blocks.is_empty() {
            return HashMap::new();
        }
        pblocks
            .filter_map(|p| s.blocks.get(&p).map(|q| (p, q.data.clone())))
            .collect()
    }

    /// Waits until no block of `runs` is queued (they are about to be released for reuse).
    pub fn settle(&self, runs: &[Run]) -> Result<()> {
        self.wait_until(|s| {
            !s.blocks
                .keys()
                .any(|p| runs.iter().any(|r| *p >= r.start && *p < r.start + r.len))
        })
    }

    /// Waits until every queued block is written in place.
    pub fn drain(&self) -> Result<()> {
        self.wait_until(|s| s.blocks.is_empty())
    }

    fn wait_until(&self, done: impl Fn(&State) -> bool) -> Result<()> {
        let mut s = self.lock();
        loop {
            if let Some(why) = &s.failed {
                return Err(failure(why));
            }
            if done(&s) {
                return Ok(());
            }
            s = self.wait_for_flusher(s);
        }
    }

    /// The records whose blocks are written in place, to be retired after an fdatasync.
    pub fn take_written(&self) -> Vec<Vec<u8>> {
        let mut s = self.lock();
        self.written_count.store(0, Ordering::SeqCst);
        std::mem::take(&mut s.written)
    }

    pub fn written_len(&self) -> usize {
        self.written_count.load(Ordering::SeqCst)
    }

    /// Why the flusher stopped, if an in-place write failed.
    pub fn failure(&self) -> Option<String> {
        if !self.has_failed.load(Ordering::SeqCst) {
            return None;
        }
        self.lock().failed.clone()
    }

    /// Tells the flusher to write what is queued and end.
    pub fn stop(&self) {
        let mut s = self.lock();
        s.stopping = true;
        self.wake_flusher(&s);
        self.progress.notify_all();
    }

    /// The flusher: writes queued blocks in place in batches until stopped and empty, or until
    /// a write fails (the blocks then stay queued, readable, and their records replay at the
    /// next mount).
    pub fn flush_until_stopped(&self, io: &dyn Backend) {
        let _panic = FailOnPanic(self);
        loop {
            let batch: Vec<(u64, Arc<AlignedBuf>, u64)> = {
                let mut s = self.lock();
                while !s.flusher_may_write() {
                    if s.stopping && s.blocks.is_empty() {
                        return;
                    }
                    s.flusher_idle = true;
                    s = self.work.wait(s).unwrap_or_else(|p| p.into_inner());
                    s.flusher_idle = false;
                }
                // Oldest first: a block rewritten again and again cannot starve the others
                // (a transaction freeing one may be waiting for it).
                let mut oldest: Vec<(u64, u64)> =
                    s.blocks.iter().map(|(p, q)| (q.gen, *p)).collect();
                oldest.sort_unstable();
                oldest
                    .into_iter()
                    .take(FLUSH_BATCH_BLOCKS)
                    .map(|(gen, p)| (p, s.blocks[&p].data.clone(), gen))
                    .collect()
            };
            let writes = batch
                .iter()
                .map(|(pblock, data, _)| IoOp::Write {
                    buf: AlignedBuf::with_data(BLOCK_BYTES, 0, &data[..]),
                    offset: pblock * BLOCK_BYTES as u64,
                })
                .collect();
            let result = io.run(writes);
            let mut s = self.lock();
            if let Err(e) = result {
                let why = format!("a deferred in-place write failed: {e}");
                tracing::error!(%why, "deferred writes stop; their records replay at the next mount");
                self.fail(&mut s, why);
                return;
            }
            let s = &mut *s;
            for (pblock, _, gen) in batch {
                let Some(q) = s.blocks.get_mut(&pblock) else {
                    continue;
                };
                // Records up to the content written retire now; a block queued again
                // meanwhile stays for the next batch with the newer ones.
                let (done, newer) = std::mem::take(&mut q.records)
                    .into_iter()
                    .partition(|(g, _)| *g <= gen);
                q.records = newer;
                s.written.extend(done.into_iter().map(|(_, r)| r));
                if q.gen == gen {
                    s.blocks.remove(&pblock);
                }
            }
            self.written_count.store(s.written.len(), Ordering::SeqCst);
            if s.waiters > 0 {
                self.progress.notify_all();
            }
        }
    }
}

/// Stops the store's waits if the flusher panics (they would otherwise wait for ever).
struct FailOnPanic<'a>(&'a DeferredQueue);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut s = self.0.lock();
            self.0
                .fail(&mut s, "the deferred-write flusher panicked".to_string());
        }
    }
}

fn failure(why: &str) -> StoreError {
    StoreError::Io(std::io::Error::other(why.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the blocks written; fails every batch once `fail` is set.
    #[derive(Default)]
    struct Recorder {
        written: Mutex<Vec<(u64, u8)>>,
        batches: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn run(&self, ops: Vec<IoOp>) -> std::io::Result<Vec<AlignedBuf>> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected"));
            }
            self.batches.fetch_add(1, Ordering::SeqCst);
            let mut out = Vec::new();
            for op in ops {
                if let IoOp::Write { buf, offset } = op {
                    let block = offset / BLOCK_BYTES as u64;
                    self.written.lock().unwrap().push((block, buf[0]));
                    out.push(buf);
                }
            }
            Ok(out)
        }
    }

    fn block(byte: u8) -> AlignedBuf {
        AlignedBuf::with_data(BLOCK_BYTES, 0, &[byte; BLOCK_BYTES])
    }

    #[test]
    fn queued_blocks_are_readable_until_written_then_their_records_retire() {
        let q = Arc::new(DeferredQueue::new(64));
        q.push([(7, block(1), b"r1".to_vec()), (9, block(2), b"r2".to_vec())]);
        q.push([(7, block(3), b"r3".to_vec())]);
        let seen = q.lookup([7, 8, 9].into_iter());
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[&7][0], 3,
            "the newest content of a block is the one read"
        );
        assert!(
            q.take_written().is_empty(),
            "nothing retires before it is written"
        );

        let io = Arc::new(Recorder::default());
        let flusher = {
            let (q, io) = (q.clone(), io.clone());
            std::thread::spawn(move || q.flush_until_stopped(&*io))
        };
        q.drain().unwrap();
        q.settle(&[Run { start: 0, len: 100 }]).unwrap();
        assert!(q.lookup([7, 9].into_iter()).is_empty());
        let written = io.written.lock().unwrap().clone();
        assert!(written.contains(&(7, 3)) && written.contains(&(9, 2)));
        assert!(
            !written.contains(&(7, 1)),
            "a superseded content need not be written"
        );
        let mut records = q.take_written();
        records.sort();
        assert_eq!(
            records,
            vec![b"r1".to_vec(), b"r2".to_vec(), b"r3".to_vec()]
        );
        q.stop();
        flusher.join().unwrap();
    }

    /// Queues the block again during each of its first `rounds` writes, as a hot page's
    /// overwrites do, and records how many records had retired by each write.
    struct Requeue {
        q: Arc<DeferredQueue>,
        rounds: AtomicUsize,
        retired_seen: Mutex<Vec<usize>>,
    }

    impl Backend for Requeue {
        fn name(&self) -> &'static str {
            "requeue"
        }
        fn run(&self, ops: Vec<IoOp>) -> std::io::Result<Vec<AlignedBuf>> {
            let retired = self.q.written_len();
            self.retired_seen.lock().unwrap().push(retired);
            if self.rounds.fetch_sub(1, Ordering::SeqCst) > 0 {
                self.q.push([(7, block(9), b"again".to_vec())]);
            }
            Ok(ops
                .into_iter()
                .filter_map(|op| match op {
                    IoOp::Write { buf, .. } => Some(buf),
                    _ => None,
                })
                .collect())
        }
    }

    #[test]
    fn a_block_queued_again_while_written_retires_what_reached_the_disk() {
        let q = Arc::new(DeferredQueue::new(64));
        q.push([(7, block(1), b"first".to_vec())]);
        let io = Arc::new(Requeue {
            q: q.clone(),
            rounds: AtomicUsize::new(3),
            retired_seen: Mutex::new(Vec::new()),
        });
        let flusher = {
            let (q, io) = (q.clone(), io.clone());
            std::thread::spawn(move || q.flush_until_stopped(&*io))
        };
        q.drain().unwrap();
        q.stop();
        flusher.join().unwrap();
        // Each write found the records of the writes before it retired, not held until the
        // block went quiet.
        assert_eq!(*io.retired_seen.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(q.take_written().len(), 4);
    }

    #[test]
    fn a_failed_write_keeps_the_blocks_readable_and_is_reported() {
        let q = Arc::new(DeferredQueue::new(64));
        let io = Arc::new(Recorder::default());
        io.fail.store(true, Ordering::SeqCst);
        q.push([(3, block(5), b"r".to_vec())]);
        let flusher = {
            let (q, io) = (q.clone(), io.clone());
            std::thread::spawn(move || q.flush_until_stopped(&*io))
        };
        assert!(q.drain().is_err());
        flusher.join().unwrap();
        assert!(q.failure().is_some());
        assert_eq!(q.lookup([3].into_iter())[&3][0], 5);
        assert!(q.take_written().is_empty());
    }

    #[test]
    fn a_push_over_the_bound_waits_for_the_flusher() {
        let q = Arc::new(DeferredQueue::new(4));
        q.push((0..4).map(|p| (p, block(1), vec![])));
        // Over the bound, with no flusher yet: the committer must wait.
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || q.push((4..10).map(|p| (p, block(2), vec![]))))
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!pusher.is_finished(), "a push over the bound returned");
        let io = Arc::new(Recorder::default());
        let flusher = {
            let (q, io) = (q.clone(), io.clone());
            std::thread::spawn(move || q.flush_until_stopped(&*io))
        };
        pusher.join().unwrap();
        assert!(
            q.lookup(0..10).len() <= 4,
            "the push returned over the bound"
        );
        q.drain().unwrap();
        q.stop();
        flusher.join().unwrap();
        assert_eq!(io.written.lock().unwrap().len(), 10);
    }

    #[test]
    fn stopping_writes_everything_queued_first() {
        let q = Arc::new(DeferredQueue::new(1024));
        let io = Arc::new(Recorder::default());
        q.push((0..600).map(|p| (p, block(p as u8), vec![])));
        q.stop();
        let flusher = {
            let (q, io) = (q.clone(), io.clone());
            std::thread::spawn(move || q.flush_until_stopped(&*io))
        };
        flusher.join().unwrap();
        assert_eq!(io.written.lock().unwrap().len(), 600);
        assert!(
            io.batches.load(Ordering::SeqCst) >= 3,
            "batches are bounded"
        );
    }
}
