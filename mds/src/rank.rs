//! The active MDS's rank: the namespace cache, the journal writer and the client sessions.
//! Requests run one at a time: each is checked against the cache, its changes are appended to
//! the journal (the reply waits for that append to be durable), then applied to the cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use cairn_client::{ClientError, Rados};
use cairn_common::config::MdsSettings;
use cairn_common::fsops::{data_object, FsOp, FsReply, OBJECT_BYTES};

use crate::cache::Cache;
use crate::journal::{self, Completed, Entry, Event, Head, Writer};

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
    sessions: HashMap<String, Instant>,
    /// The oldest journal segment not yet removed.
    first_segment: u64,
    /// Files open, by inode: how many opens each client holds. In memory only: after a
    /// takeover, files opened before it count as closed (see ARCHITECTURE.md).
    opens: HashMap<u64, HashMap<String, u32>>,
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
        let mut sessions = HashMap::new();
        for (client, replies) in replayed.completed {
            // Clients of the previous active: their sessions run from now, so their replies
            // are forgotten once they stay away for the session timeout.
            sessions.insert(client.clone(), Instant::now());
            completed.insert(client, replies.into_iter().collect());
        }
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
            first_segment: replayed.first_segment,
            opens: HashMap::new(),
            settings,
        }
    }

    /// Answers one request. `Err` means the rank can no longer serve (the journal's end is
    /// unknown after a failed append): the daemon stops and a standby takes over.
    pub async fn handle(
        &mut self,
        client: &str,
        tid: u64,
        op: FsOp,
    ) -> anyhow::Result<Result<FsReply, anyhow::Error>> {
        self.sessions.insert(client.to_string(), Instant::now());
        if let Some(reply) = self.completed_reply(client, tid) {
            return Ok(Ok(reply));
        }
        if !op.is_change() {
            return Ok(match self.query(client, op).await {
                Ok(reply) => Ok(reply),
                Err(Fail::Posix(reply)) => Ok(reply),
                Err(Fail::Internal(e)) => Err(e),
            });
        }
        let plan = match self.plan(client, op).await {
            Ok(plan) => plan,
            Err(Fail::Posix(reply)) => return Ok(Ok(reply)),
            Err(Fail::Internal(e)) => return Ok(Err(e)),
        };
        if plan.events.is_empty() {
            // Nothing changed (a release that leaves the file): nothing to journal.
            return Ok(Ok(plan.reply));
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
        Ok(Ok(plan.reply))
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
                spawn_purge(self.rados.clone(), &self.data_pool, *ino, 0, *size);
            }
        }
        Ok(())
    }

    pub fn opened(&mut self, client: &str, ino: u64) {
        *self
            .opens
            .entry(ino)
            .or_default()
            .entry(client.to_string())
            .or_default() += 1;
    }

    /// One open ends; returns whether the file is still open anywhere.
    pub fn released(&mut self, client: &str, ino: u64) -> bool {
        let Some(by_client) = self.opens.get_mut(&ino) else {
            return false;
        };
        if let Some(n) = by_client.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_client.remove(client);
            }
        }
        if by_client.is_empty() {
            self.opens.remove(&ino);
            return false;
        }
        true
    }

    pub fn is_open(&self, ino: u64) -> bool {
        self.opens.contains_key(&ino)
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

    /// Forgets sessions silent for longer than the session timeout, with their replies.
    pub fn expire_sessions(&mut self) {
        let timeout = Duration::from_millis(self.settings.session_timeout_ms);
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, seen)| seen.elapsed() > timeout)
            .map(|(c, _)| c.clone())
            .collect();
        for client in expired {
            tracing::info!(client = %client, "session timed out");
            self.sessions.remove(&client);
            self.completed.remove(&client);
            self.opens.retain(|_, by_client| {
                by_client.remove(&client);
                !by_client.is_empty()
            });
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
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

/// Deletes the data objects holding bytes `[from, size)` of a file in the background,
/// truncating the object `from` falls inside.
pub fn spawn_purge(rados: Arc<Rados>, pool: &str, ino: u64, from: u64, size: u64) {
    let pool = pool.to_string();
    tokio::spawn(async move {
        if let Err(e) = purge(&rados, &pool, ino, from, size).await {
            tracing::warn!(ino, error = %e, "purging file data failed; objects may be left behind");
        }
    });
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
