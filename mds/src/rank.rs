//! The active MDS's rank: the namespace cache, the journal writer and the client sessions.
//! Requests run one at a time: each is checked against the cache, its changes are appended to
//! the journal (the reply waits for that append to be durable), then applied to the cache.
//!
//! A request that must see the current size of a file other clients are writing (a stat, an
//! open, a truncate), or that shows or changes a file another client holds the exclusive
//! capability of, first gets [`Answer::Recall`]: the node has those clients report their
//! writes (and drop the capability), then asks again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use cairn_client::{ClientError, Rados};
use cairn_common::config::MdsSettings;
use cairn_common::fsops::{data_object, FsOp, FsReply, MdsStatus, OBJECT_BYTES};

use crate::cache::Cache;
use crate::inode::STRAY_INO;
use crate::journal::{self, Completed, Entry, Event, Head, Position, Writer};
use crate::sessions::{Opens, Sessions};

/// Data objects deleted at once when a file is removed or truncated.
const PURGE_IN_FLIGHT: usize = 32;
/// Replies remembered per client for retries (the newest ones).
const COMPLETED_PER_CLIENT: usize = 256;

/// A request refused with a POSIX error, or one that could not be carried out.
pub enum Fail {
    Posix(FsReply),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for Fail {
    fn from(e: anyhow::Error) -> Fail {
        Fail::Internal(e)
    }
}

pub fn posix(errno: i32, message: impl Into<String>) -> Fail {
    Fail::Posix(FsReply::error(errno, message))
}

/// What the rank makes of a request.
pub enum Answer {
    Reply(FsReply),
    /// Clients hold writes or capabilities the request needs back: (file, client) pairs to
    /// recall before asking again, and the files whose capabilities were taken.
    Recall {
        recalls: Vec<(u64, String)>,
        revoked: Vec<u64>,
    },
}

/// A file a request shows or changes.
struct Touch {
    ino: u64,
    /// The request shows or cuts its size (writers must report first).
    size: bool,
}

/// What a change request does: the events to journal and the reply once they are durable.
pub struct Plan {
    pub events: Vec<Event>,
    pub reply: FsReply,
    /// A directory this request creates (known empty: nothing to load).
    pub new_dir: Option<u64>,
}

pub struct Rank {
    pub rados: Arc<Rados>,
    pub data_pool: String,
    pub cache: Cache,
    pub journal: Writer,
    /// The newest journaled entry.
    pub seq: u64,
    pub next_ino: u64,
    completed: HashMap<String, VecDeque<(u64, FsReply)>>,
    /// Client sessions and their open files. In memory only: after a takeover, clients
    /// state their open files when their session streams reconnect.
    pub sessions: Sessions,
    /// Where replay would start: the entry and position the journal head names.
    head: (u64, Position),
    /// The oldest journal segment not yet removed.
    first_segment: u64,
    /// Until then (the reconnect window after a takeover) a file losing its last name is
    /// kept, as if open: its clients may not have reconnected and stated their opens yet.
    purges_deferred_until: Instant,
    /// Files kept by the reconnect window, checked again when it ends.
    deferred: Vec<u64>,
    /// Files open no more because their clients were evicted, checked at the next tending.
    evicted_files: Vec<u64>,
    /// The stray directory was checked once the reconnect window ended.
    strays_checked: bool,
    /// Files whose data objects a background purge is deleting right now (how many purges
    /// of each): fsck takes what it finds of them for work under way, not for leaks.
    purging: Arc<Mutex<HashMap<u64, u32>>>,
    settings: MdsSettings,
}

impl Rank {
    /// A rank that continues the journal after everything `replayed` holds.
    pub fn new(
        rados: Arc<Rados>,
        data_pool: &str,
        replayed: crate::replay::Replayed,
        settings: MdsSettings,
    ) -> Rank {
        let mut completed: HashMap<String, VecDeque<(u64, FsReply)>> = HashMap::new();
        let mut sessions = Sessions::default();
        for (client, replies) in replayed.completed {
            // Clients of the previous active: their sessions run from now, so their replies
            // are forgotten once they stay away for the session timeout.
            sessions.heard_from(&client);
            completed.insert(client, replies.into_iter().collect());
        }
        let reconnect = Duration::from_millis(settings.reconnect_timeout_ms);
        Rank {
            journal: Writer::at(
                replayed.cache.pool(),
                replayed.end,
                settings.journal_segment_bytes,
            ),
            rados,
            data_pool: data_pool.to_string(),
            cache: replayed.cache,
            seq: replayed.seq,
            next_ino: replayed.next_ino,
            completed,
            sessions,
            head: replayed.head,
            first_segment: replayed.first_segment,
            purges_deferred_until: Instant::now() + reconnect,
            deferred: Vec::new(),
            evicted_files: Vec::new(),
            strays_checked: false,
            purging: Arc::default(),
            settings,
        }
    }

    /// Deletes the data objects holding bytes `[from, size)` of a file in the background,
    /// truncating the object `from` falls inside.
    pub fn spawn_purge(&self, ino: u64, from: u64, size: u64) {
        let (rados, pool) = (self.rados.clone(), self.data_pool.clone());
        let purging = self.purging.clone();
        *lock(&purging).entry(ino).or_default() += 1;
        tokio::spawn(async move {
            let result = purge(&rados, &pool, ino, from, size).await;
            {
                let mut purging = lock(&purging);
                if let Some(n) = purging.get_mut(&ino) {
                    *n -= 1;
                    if *n == 0 {
                        purging.remove(&ino);
                    }
                }
            }
            if let Err(e) = result {
                tracing::warn!(ino, error = %e, "purging file data failed; objects are left behind until fsck finds them");
            }
        });
    }

    /// The files a background purge is deleting the data of.
    pub fn purging(&self) -> std::collections::BTreeSet<u64> {
        lock(&self.purging).keys().copied().collect()
    }

    /// Answers one request. `after_recall` is `None` on its first pass; after the recalls
    /// it asked for, the files whose capabilities were taken (grants resume once the request
    /// runs; nothing is recalled twice). `Err` means the rank can no longer serve (the
    /// journal's end is unknown after a failed append): the daemon stops and a standby
    /// takes over.
    pub async fn handle(
        &mut self,
        client: &str,
        tid: u64,
        op: FsOp,
        after_recall: Option<&[u64]>,
    ) -> anyhow::Result<Result<Answer, anyhow::Error>> {
        for ino in after_recall.unwrap_or_default() {
            self.sessions.revoke_done(*ino);
        }
        // An open made without a session stream must still end with the session.
        let counts_opens = matches!(op, FsOp::Open { .. });
        if op.is_change() || counts_opens {
            self.sessions.heard_from(client);
        }
        if let Some(reply) = self.completed_reply(client, tid) {
            return Ok(Ok(Answer::Reply(reply)));
        }
        if after_recall.is_none() {
            match self.recall_for(client, &op).await {
                Ok(Some(recall)) => return Ok(Ok(recall)),
                Ok(None) => {}
                Err(Fail::Posix(reply)) => return Ok(Ok(Answer::Reply(reply))),
                Err(Fail::Internal(e)) => return Ok(Err(e)),
            }
        }
        if !op.is_change() {
            return Ok(match self.query(client, op).await {
                Ok(reply) => {
                    if counts_opens {
                        // A retried open is counted once.
                        self.remember_unjournaled(client, tid, &reply);
                    }
                    Ok(Answer::Reply(reply))
                }
                Err(Fail::Posix(reply)) => Ok(Answer::Reply(reply)),
                Err(Fail::Internal(e)) => Err(e),
            });
        }
        let plan = match self.plan(client, op).await {
            Ok(plan) => plan,
            Err(Fail::Posix(reply)) => return Ok(Ok(Answer::Reply(reply))),
            Err(Fail::Internal(e)) => return Ok(Err(e)),
        };
        if plan.events.is_empty() {
            // Nothing changed (a release that leaves the file): nothing to journal, but a
            // retry must not release twice.
            self.remember_unjournaled(client, tid, &plan.reply);
            return Ok(Ok(Answer::Reply(plan.reply)));
        }
        let request = Completed {
            client: client.to_string(),
            tid,
            reply: plan.reply.clone(),
        };
        self.commit(plan.events, Some(request)).await?;
        if let Some(ino) = plan.new_dir {
            self.cache.new_dir(ino);
        }
        Ok(Ok(Answer::Reply(plan.reply)))
    }

    /// The recalls `op` needs first: of other clients' writes to a file whose size it shows
    /// or cuts, and of the exclusive capability of a file it shows or changes.
    async fn recall_for(&mut self, client: &str, op: &FsOp) -> Result<Option<Answer>, Fail> {
        let mut recalls = Vec::new();
        let mut revoked = Vec::new();
        for touch in self.touches(op).await? {
            if touch.size {
                for writer in self.sessions.writers_besides(touch.ino, client) {
                    recalls.push((touch.ino, writer));
                }
            }
            if let Some(holder) = self.sessions.revoke_exclusive(touch.ino, client) {
                revoked.push(touch.ino);
                if !recalls.contains(&(touch.ino, holder.clone())) {
                    recalls.push((touch.ino, holder));
                }
            }
        }
        Ok((!recalls.is_empty()).then_some(Answer::Recall { recalls, revoked }))
    }

    /// The file whose data or size `op` changes, if any.
    pub fn data_changed_by(op: &FsOp) -> Option<u64> {
        match op {
            FsOp::SetAttr { ino, change } if change.size.is_some() => Some(*ino),
            FsOp::Written { ino, .. } => Some(*ino),
            _ => None,
        }
    }

    /// The clients to tell, once a change of `ino`'s data or size is applied: every other
    /// opener of the file (they drop what they cached of it).
    pub fn told_of_change(&self, client: &str, ino: u64) -> Vec<(u64, String)> {
        self.sessions
            .openers_besides(ino, client)
            .into_iter()
            .map(|opener| (ino, opener))
            .collect()
    }

    /// The files `op` shows or changes.
    async fn touches(&mut self, op: &FsOp) -> Result<Vec<Touch>, Fail> {
        // (The requester's own capability stays: each change it makes drops the attributes
        // it cached, so its next stat asks again.)
        let touch = |ino, size| Touch { ino, size };
        Ok(match op {
            FsOp::GetAttr { ino } | FsOp::Open { ino, .. } => vec![touch(*ino, true)],
            FsOp::SetAttr { ino, change } => vec![touch(*ino, change.size.is_some())],
            FsOp::Link { ino, .. }
            | FsOp::SetXattr { ino, .. }
            | FsOp::RemoveXattr { ino, .. }
            | FsOp::Written { ino, .. } => vec![touch(*ino, false)],
            FsOp::Lookup { parent, name } => self
                .child(*parent, name)
                .await?
                .map(|d| touch(d.ino, true))
                .into_iter()
                .collect(),
            FsOp::Unlink { parent, name } => self
                .child(*parent, name)
                .await?
                .map(|d| touch(d.ino, false))
                .into_iter()
                .collect(),
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            } => {
                let mut touched = Vec::new();
                for (dir, name) in [(*parent, name), (*new_parent, new_name)] {
                    if let Some(d) = self.child(dir, name).await? {
                        touched.push(touch(d.ino, false));
                    }
                }
                touched
            }
            _ => Vec::new(),
        })
    }

    /// Remembers the reply to a request that changed only memory (an open, a release): a
    /// retry gets it again rather than counting twice. Lost at a takeover, where clients
    /// state their opens afresh.
    fn remember_unjournaled(&mut self, client: &str, tid: u64, reply: &FsReply) {
        remember(
            &mut self.completed,
            Completed {
                client: client.to_string(),
                tid,
                reply: reply.clone(),
            },
        );
    }

    fn completed_reply(&self, client: &str, tid: u64) -> Option<FsReply> {
        self.completed
            .get(client)?
            .iter()
            .find(|(t, _)| *t == tid)
            .map(|(_, r)| r.clone())
    }

    /// Journals `events` (durably) and applies them.
    pub async fn commit(
        &mut self,
        events: Vec<Event>,
        request: Option<Completed>,
    ) -> anyhow::Result<()> {
        let entry = Entry {
            seq: self.seq + 1,
            events,
            next_ino: self.next_ino,
            request,
            segment_bytes: self.journal.segment_bytes(),
        };
        self.journal.append(&self.rados, &entry).await?;
        self.seq = entry.seq;
        self.cache.apply(entry.seq, &entry.events);
        if let Some(done) = entry.request {
            remember(&mut self.completed, done);
        }
        for event in &entry.events {
            if let Event::Purge { ino, size } = event {
                self.spawn_purge(*ino, 0, *size);
            }
        }
        Ok(())
    }

    /// Files kept without a name: open, kept by the reconnect window, or open no more
    /// after an eviction and not yet removed.
    pub fn kept_without_name(&self) -> std::collections::BTreeSet<u64> {
        self.sessions
            .open_inos()
            .chain(self.deferred.iter().copied())
            .chain(self.evicted_files.iter().copied())
            .collect()
    }

    /// Whether a file losing its last name must be kept (nlink 0) rather than removed: it
    /// is open, or may be (the reconnect window after a takeover).
    pub fn keeps_unlinked(&mut self, ino: u64) -> bool {
        if self.sessions.is_open(ino) {
            return true;
        }
        if Instant::now() < self.purges_deferred_until {
            self.deferred.push(ino);
            return true;
        }
        false
    }

    pub fn allocate_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Whether enough changes wait for a write-back pass to start before its time.
    pub fn writeback_due(&self) -> bool {
        self.cache.dirty_count() >= self.settings.dirty_entries_max
    }

    /// Writes every dirty item back to its object, then moves the journal head past them and
    /// removes the segments replay no longer needs. Runs under the rank's lock: requests wait
    /// for it (one pass every `writeback_interval_ms`).
    pub async fn write_back(&mut self) -> anyhow::Result<()> {
        self.cache.evict();
        let dirty = self.cache.dirty(self.seq);
        if dirty.is_empty() {
            return Ok(());
        }
        crate::writeback::write(&self.rados, self.cache.pool(), &dirty).await?;
        let head = Head {
            seq: self.seq + 1,
            position: self.journal.position(),
            next_ino: self.next_ino,
            completed: self
                .completed
                .iter()
                .map(|(c, r)| (c.clone(), r.iter().cloned().collect()))
                .collect(),
        };
        journal::write_head(&self.rados, self.cache.pool(), &head).await?;
        self.head = (head.seq, head.position);
        journal::remove_segments(
            &self.rados,
            self.cache.pool(),
            self.first_segment,
            head.position.segment,
        )
        .await?;
        self.first_segment = head.position.segment;
        self.cache.mark_clean(dirty.upto);
        self.cache.evict();
        Ok(())
    }

    /// A client's session stream connected, stating the files it has open.
    /// Returns the capabilities of other clients it took (to recall).
    pub fn connected(&mut self, client: &str, files: Vec<(u64, Opens)>) -> Vec<(u64, String)> {
        tracing::info!(client, open_files = files.len(), "session connected");
        let (closed, revoked) = self.sessions.connected(client, files);
        // Files the client no longer holds may have lost their names meanwhile.
        self.deferred.extend(closed);
        revoked
    }

    /// The sessions disconnected for longer than the session timeout: to fence and evict.
    pub fn expired_sessions(&self) -> Vec<String> {
        self.sessions
            .expired(Duration::from_millis(self.settings.session_timeout_ms))
    }

    /// Ends `client`'s session (the node fenced it first): its opens and capabilities end,
    /// its remembered replies are forgotten, and the files it alone held open go at the next
    /// tending if they have no name left.
    pub fn evict(&mut self, client: &str) {
        let closed = self.sessions.evict(client);
        self.completed.remove(client);
        self.evicted_files.extend(closed);
        metrics::counter!("cairn_mds_sessions_evicted_total").increment(1);
    }

    /// Removes the files that lost their last name while open and are open no more (after
    /// an eviction), and those the reconnect window kept once it is over.
    pub async fn tend_sessions(&mut self) -> anyhow::Result<()> {
        let mut closed = std::mem::take(&mut self.evicted_files);
        if Instant::now() >= self.purges_deferred_until {
            closed.append(&mut self.deferred);
            if !self.strays_checked {
                // Files a predecessor kept for clients that never came back.
                let strays = self.cache.dir(&self.rados, STRAY_INO).await?;
                closed.extend(strays.present().map(|(_, d)| d.ino));
                self.strays_checked = true;
            }
        }
        closed.sort_unstable();
        closed.dedup();
        self.remove_orphans(closed).await
    }

    /// Removes those of `inos` that have no name left and are not open.
    async fn remove_orphans(&mut self, inos: Vec<u64>) -> anyhow::Result<()> {
        let mut events = Vec::new();
        for ino in inos {
            if self.sessions.is_open(ino) {
                continue;
            }
            match self.cache.inode(&self.rados, ino).await? {
                Some(inode) if inode.nlink == 0 && !inode.is_dir() => {
                    events.extend(crate::ops::gone(&inode))
                }
                _ => {}
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        tracing::info!(
            files = events.len(),
            "removing files no client has open any more"
        );
        self.commit(events, None).await
    }

    pub fn status(&self) -> MdsStatus {
        let (head_seq, head_at) = self.head;
        let end = self.journal.position();
        let segment = self.journal.segment_bytes();
        MdsStatus {
            sessions: self.sessions.status(),
            journal_entries: (self.seq + 1).saturating_sub(head_seq.max(1)),
            // Closed segments counted at their nominal size.
            journal_bytes: (end.segment.saturating_sub(head_at.segment) * segment + end.offset)
                .saturating_sub(head_at.offset),
            cache_entries: self.cache.entries() as u64,
            cache_bytes: self.cache.memory_bytes() as u64,
            cache_dirty: self.cache.dirty_count() as u64,
        }
    }
}

fn remember(completed: &mut HashMap<String, VecDeque<(u64, FsReply)>>, done: Completed) {
    let replies = completed.entry(done.client).or_default();
    replies.push_back((done.tid, done.reply));
    while replies.len() > COMPLETED_PER_CLIENT {
        replies.pop_front();
    }
}

/// Applies the request record of a replayed entry to the reply memory.
pub fn remember_replayed(completed: &mut HashMap<String, VecDeque<(u64, FsReply)>>, entry: &Entry) {
    if let Some(done) = &entry.request {
        remember(completed, done.clone());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deletes (or truncates) the data objects beyond `from` of a file that was `size` bytes.
pub async fn purge(
    rados: &Rados,
    pool: &str,
    ino: u64,
    from: u64,
    size: u64,
) -> anyhow::Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let first_whole = from.div_ceil(OBJECT_BYTES);
    let end = size.div_ceil(OBJECT_BYTES);
    futures::stream::iter(first_whole..end)
        .map(|index| async move {
            match rados.remove(pool, &data_object(ino, index)).await {
                Ok(()) | Err(ClientError::NotFound(_)) => Ok(()),
                Err(e) => Err(e).context("cannot remove a data object"),
            }
        })
        .buffer_unordered(PURGE_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    if !from.is_multiple_of(OBJECT_BYTES) && from < size {
        let object = data_object(ino, from / OBJECT_BYTES);
        match rados.truncate(pool, &object, from % OBJECT_BYTES).await {
            Ok(_) | Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e).context("cannot truncate a data object"),
        }
    }
    Ok(())
}
