//! The metadata journal: every change is appended to a segment object of the metadata pool
//! (`journal.<segment>`) and acknowledged only once the append is durable on every member of
//! its PG. A record is `[length u32][crc32c u32][JSON entry]`; one record is one RADOS
//! append, which the OSDs apply atomically, so a record is wholly there or absent.
//!
//! The writer moves to the next segment only once the current one holds its segment size, so
//! a reader that has consumed a segment that long knows to go on to the next one, and one
//! shorter than that is the tail. Every entry carries the segment size its writer used: the
//! reader follows that, not its own configuration, so daemons configured differently still
//! agree on where the journal ends. `journal.head` says where replay
//! starts: everything before it has been written back to the directory and inode objects.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use cairn_client::{ClientError, Rados};
use cairn_common::fsops::{FsReply, Name};

use crate::inode::{decode, encode, Dentry, Inode};

const HEAD_OBJECT: &str = "journal.head";
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record accepted when reading: a bigger length field is damage, not a record.
const RECORD_BYTES_MAX: usize = 16 << 20;
/// Bytes read from a segment per request.
const READ_CHUNK: u64 = 4 << 20;

fn segment_object(segment: u64) -> String {
    format!("journal.{segment:016x}")
}

/// One change to the namespace, stated as the resulting state so replaying it twice is harmless.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Inode(Inode),
    InodeGone {
        ino: u64,
        was_dir: bool,
    },
    Dentry {
        dir: u64,
        name: Name,
        entry: Option<Dentry>,
    },
    /// The data objects of a removed file (`size` bytes) are to be deleted. Redone after a
    /// takeover: inode numbers are never reused, so deleting twice is harmless.
    Purge {
        ino: u64,
        size: u64,
    },
}

/// What one journal record holds: the events of one request, and the request and its reply
/// so a retry after a takeover is answered instead of applied again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub events: Vec<Event>,
    /// The next inode number to hand out after this entry.
    pub next_ino: u64,
    #[serde(default)]
    pub request: Option<Completed>,
    /// The segment size of the writer (see the module comment).
    pub segment_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub client: String,
    pub tid: u64,
    pub reply: FsReply,
}

/// A position in the journal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// `journal.head`: replay starts at `position` with entry `seq`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub position: Position,
    pub next_ino: u64,
    /// Recent replies per client whose entries were trimmed.
    #[serde(default)]
    pub completed: BTreeMap<String, Vec<(u64, FsReply)>>,
}

pub async fn read_head(rados: &Rados, pool: &str) -> anyhow::Result<Option<Head>> {
    match rados.read_all(pool, HEAD_OBJECT, READ_CHUNK).await {
        Ok(bytes) => Ok(Some(decode(&bytes, HEAD_OBJECT)?)),
        Err(ClientError::NotFound(_)) => Ok(None),
        Err(e) => Err(e).context("cannot read the journal head"),
    }
}

pub async fn write_head(rados: &Rados, pool: &str, head: &Head) -> anyhow::Result<()> {
    rados
        .write_full(pool, HEAD_OBJECT, encode(head))
        .await
        .context("cannot write the journal head")?;
    Ok(())
}

/// Deletes whole segments before `keep` (already written back), from `first` on.
pub async fn remove_segments(
    rados: &Rados,
    pool: &str,
    first: u64,
    keep: u64,
) -> anyhow::Result<()> {
    for segment in first..keep {
        match rados.remove(pool, &segment_object(segment)).await {
            Ok(()) | Err(ClientError::NotFound(_)) => {}
            Err(e) => return Err(e).context("cannot remove a trimmed journal segment"),
        }
    }
    Ok(())
}

fn frame(entry: &Entry) -> Vec<u8> {
    let body = encode(entry);
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Splits whole records off the front of `bytes`: the entries and the bytes they took. A
/// record cut short by the end of `bytes` is left for the next read; a damaged one is an error.
fn unframe(bytes: &[u8], at: &str) -> anyhow::Result<(Vec<Entry>, usize)> {
    let mut entries = Vec::new();
    let mut used = 0;
    while bytes.len() - used >= RECORD_HEADER_BYTES {
        let header = &bytes[used..used + RECORD_HEADER_BYTES];
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > RECORD_BYTES_MAX {
            bail!("journal damaged at {at}+{used}: record length {len}");
        }
        let end = used + RECORD_HEADER_BYTES + len;
        if end > bytes.len() {
            break;
        }
        let body = &bytes[used + RECORD_HEADER_BYTES..end];
        if crc32c::crc32c(body) != crc {
            bail!("journal damaged at {at}+{used}: checksum mismatch");
        }
        entries.push(decode(body, &format!("journal entry at {at}+{used}"))?);
        used = end;
    }
    Ok((entries, used))
}

/// Appends entries at the end of the journal. Only the active MDS holds one.
pub struct Writer {
    pool: String,
    position: Position,
    segment_bytes: u64,
}

impl Writer {
    pub fn at(pool: &str, position: Position, segment_bytes: u64) -> Writer {
        Writer {
            pool: pool.to_string(),
            position,
            segment_bytes,
        }
    }

    /// Where the next record goes (the position after every record written so far).
    pub fn position(&self) -> Position {
        self.position
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Makes `entry` durable. An error leaves the journal's end unknown: the caller must stop
    /// serving (its successor replays whatever landed).
    pub async fn append(&mut self, rados: &Rados, entry: &Entry) -> anyhow::Result<()> {
        if self.position.offset >= self.segment_bytes {
            self.position = Position {
                segment: self.position.segment + 1,
                offset: 0,
            };
        }
        let record = frame(entry);
        let len = record.len() as u64;
        rados
            .append(&self.pool, &segment_object(self.position.segment), record)
            .await
            .context("journal append failed")?;
        self.position.offset += len;
        Ok(())
    }
}

/// Reads the journal from a position on: replay after a takeover, and the standby-replay's tail.
pub struct Reader {
    pool: String,
    position: Position,
    segment_bytes: u64,
}

impl Reader {
    pub fn at(pool: &str, position: Position, segment_bytes: u64) -> Reader {
        Reader {
            pool: pool.to_string(),
            position,
            segment_bytes,
        }
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// Every whole entry written after the reader's position, up to the journal's current end.
    pub async fn read_available(&mut self, rados: &Rados) -> anyhow::Result<Vec<Entry>> {
        let mut entries = Vec::new();
        loop {
            let object = segment_object(self.position.segment);
            let bytes = match rados
                .read(&self.pool, &object, self.position.offset, READ_CHUNK)
                .await
            {
                Ok(b) => b,
                Err(ClientError::NotFound(_)) => Vec::new(),
                Err(e) => return Err(e).context("cannot read the journal"),
            };
            let (got, used) = unframe(&bytes, &object)?;
            self.take(got, &mut entries);
            self.position.offset += used as u64;
            if used > 0 {
                continue;
            }
            if bytes.len() >= RECORD_HEADER_BYTES {
                // A record longer than one read: fetch it whole.
                let whole = self.read_record(rados, &object, &bytes).await?;
                let (got, used) = unframe(&whole, &object)?;
                self.take(got, &mut entries);
                self.position.offset += used as u64;
                continue;
            }
            if self.position.offset >= self.segment_bytes {
                self.position = Position {
                    segment: self.position.segment + 1,
                    offset: 0,
                };
                continue;
            }
            return Ok(entries);
        }
    }

    /// Keeps entries read, following the segment size their writer used.
    fn take(&mut self, got: Vec<Entry>, into: &mut Vec<Entry>) {
        if let Some(last) = got.last() {
            if last.segment_bytes > 0 {
                self.segment_bytes = last.segment_bytes;
            }
        }
        into.extend(got);
    }

    async fn read_record(
        &self,
        rados: &Rados,
        object: &str,
        start: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let len = u32::from_le_bytes([start[0], start[1], start[2], start[3]]) as u64;
        let bytes = rados
            .read(
                &self.pool,
                object,
                self.position.offset,
                RECORD_HEADER_BYTES as u64 + len,
            )
            .await
            .context("cannot read the journal")?;
        if (bytes.len() as u64) < RECORD_HEADER_BYTES as u64 + len {
            bail!(
                "journal damaged at {object}+{}: a record runs past the segment's end",
                self.position.offset
            );
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            events: vec![Event::InodeGone {
                ino: seq,
                was_dir: false,
            }],
            next_ino: seq + 1,
            request: None,
            segment_bytes: 1 << 20,
        }
    }

    #[test]
    fn records_round_trip_and_stop_at_a_cut() {
        let mut bytes = frame(&entry(1));
        bytes.extend(frame(&entry(2)));
        let whole = bytes.len();
        bytes.extend(&frame(&entry(3))[..5]);
        let (entries, used) = unframe(&bytes, "t").unwrap();
        assert_eq!(entries, vec![entry(1), entry(2)]);
        assert_eq!(used, whole);
    }

    #[test]
    fn damage_is_an_error() {
        let mut bytes = frame(&entry(1));
        let last = bytes.len() - 2;
        bytes[last] ^= 0x40;
        assert!(unframe(&bytes, "t").is_err());
        let mut huge = frame(&entry(1));
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unframe(&huge, "t").is_err());
    }
}
