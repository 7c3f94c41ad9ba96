//! Replaying the journal: a standby-replay daemon tails it continuously; a daemon given the
//! rank replays to its end (after the mons have fenced the previous active) before serving.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use anyhow::bail;

use cairn_client::Rados;
use cairn_common::fsops::FsReply;

use crate::cache::Cache;
use crate::journal::{self, Event, Position, Reader};

/// What a finished replay hands to the rank.
pub struct Replayed {
    pub cache: Cache,
    /// The newest entry replayed (0: none ever written).
    pub seq: u64,
    pub next_ino: u64,
    /// The journal's end: where the rank appends.
    pub end: Position,
    /// The entry and position the journal head names (where this replay could have begun).
    pub head: (u64, Position),
    pub first_segment: u64,
    pub completed: BTreeMap<String, Vec<(u64, FsReply)>>,
    /// Files whose data may still be waiting for deletion: (inode, size).
    pub purges: Vec<(u64, u64)>,
}

pub struct Replayer {
    rados: Arc<Rados>,
    pool: String,
    segment_bytes: u64,
    cache_memory_bytes: usize,
    cache: Cache,
    reader: Reader,
    seq: u64,
    next_ino: u64,
    first_segment: u64,
    head: (u64, Position),
    completed: HashMap<String, VecDeque<(u64, FsReply)>>,
    /// (entry, inode, size) of removed files since the head.
    purges: Vec<(u64, u64, u64)>,
}

impl Replayer {
    /// A replayer positioned at the journal head (the start of a filesystem that has none).
    pub async fn start(
        rados: Arc<Rados>,
        pool: &str,
        segment_bytes: u64,
        cache_memory_bytes: usize,
    ) -> anyhow::Result<Replayer> {
        let head = journal::read_head(&rados, pool).await?.unwrap_or_default();
        let mut r = Replayer {
            rados,
            pool: pool.to_string(),
            segment_bytes,
            cache_memory_bytes,
            cache: Cache::new(pool, cache_memory_bytes),
            reader: Reader::at(pool, Position::default(), segment_bytes),
            seq: 0,
            next_ino: 0,
            first_segment: 0,
            head: (0, Position::default()),
            completed: HashMap::new(),
            purges: Vec::new(),
        };
        r.restart_at(head);
        Ok(r)
    }

    /// Forgets everything replayed and continues from `head`: all of it was written back.
    fn restart_at(&mut self, head: journal::Head) {
        self.cache = Cache::new(&self.pool, self.cache_memory_bytes);
        self.reader = Reader::at(&self.pool, head.position, self.segment_bytes);
        self.seq = head.seq.saturating_sub(1);
        self.next_ino = head.next_ino.max(cairn_common::fsops::ROOT_INO + 1);
        self.first_segment = head.position.segment;
        self.head = (head.seq, head.position);
        self.completed = head
            .completed
            .into_iter()
            .map(|(c, r)| (c, r.into_iter().collect()))
            .collect();
        self.purges.clear();
    }

    /// Applies every entry written since the last call.
    pub async fn catch_up(&mut self) -> anyhow::Result<usize> {
        let entries = self.reader.read_available(&self.rados).await?;
        let mut applied = 0;
        for entry in entries {
            if entry.seq <= self.seq {
                continue;
            }
            if entry.seq != self.seq + 1 {
                bail!(
                    "journal gap: entry {} follows {} (damaged or trimmed under the reader)",
                    entry.seq,
                    self.seq
                );
            }
            self.cache.apply(entry.seq, &entry.events);
            for event in &entry.events {
                if let Event::Purge { ino, size } = event {
                    self.purges.push((entry.seq, *ino, *size));
                }
            }
            crate::rank::remember_replayed(&mut self.completed, &entry);
            self.seq = entry.seq;
            self.next_ino = self.next_ino.max(entry.next_ino);
            applied += 1;
        }
        Ok(applied)
    }

    /// Follows the head the active moves after each write-back: what it wrote back is clean
    /// here too; if it trimmed past what this replayer has read, start again from the head.
    pub async fn follow_head(&mut self) -> anyhow::Result<()> {
        let Some(head) = journal::read_head(&self.rados, &self.pool).await? else {
            return Ok(());
        };
        if head.seq > self.seq + 1 {
            tracing::info!(
                head = head.seq,
                replayed = self.seq,
                "fell behind the trimmed journal: replaying from its head"
            );
            self.restart_at(head);
        } else if head.seq > 0 {
            self.cache.mark_clean(head.seq - 1);
            // The active purged those itself (or its successor will, from its own replay).
            self.purges.retain(|(seq, _, _)| *seq >= head.seq);
            self.cache.evict();
            self.first_segment = head.position.segment;
            self.head = (head.seq, head.position);
        }
        Ok(())
    }

    pub fn finish(self) -> Replayed {
        Replayed {
            cache: self.cache,
            seq: self.seq,
            next_ino: self.next_ino,
            end: self.reader.position(),
            head: self.head,
            first_segment: self.first_segment,
            completed: self
                .completed
                .into_iter()
                .map(|(c, r)| (c, r.into_iter().collect()))
                .collect(),
            purges: self
                .purges
                .into_iter()
                .map(|(_, ino, size)| (ino, size))
                .collect(),
        }
    }
}
