//! The Raft log and vote in RocksDB. Every append and vote is fsync'd before openraft is told
//! it is durable: a mon never forgets a vote it cast or an entry it acknowledged.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::db::{Store, CF_LOGS, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE};
use crate::raft_types::{LogId, NodeId, StorageError, TypeConfig};

#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn anyhow_err(e: anyhow::Error) -> StorageError {
    StorageIOError::write_logs(AnyError::error(format!("{e:#}"))).into()
}

impl LogStore {
    pub fn new(store: Store) -> LogStore {
        LogStore { store }
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let db = self.store.db();
        let mut it = db.iterator_cf(self.store.cf(CF_LOGS), IteratorMode::End);
        match it.next() {
            Some(Ok((_, v))) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(read_err)?;
                Ok(Some(e.log_id))
            }
            Some(Err(e)) => Err(read_err(e)),
            None => Ok(None),
        }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        self.store
            .get_meta(key)
            .map_err(|e| StorageIOError::read(AnyError::error(format!("{e:#}"))).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => *i + 1,
            Bound::Unbounded => 0,
        };
        let db = self.store.db();
        let from = index_key(start);
        let it = db.iterator_cf(
            self.store.cf(CF_LOGS),
            IteratorMode::From(&from, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| read_err(std::io::Error::other("malformed log key")))?,
            );
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.store
            .put_meta(KEY_VOTE, vote)
            .map_err(|e| anyhow_err(e.context("saving the vote")))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.store
            .put_meta(KEY_COMMITTED, &committed)
            .map_err(anyhow_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.store.cf(CF_LOGS);
        for e in entries {
            batch.put_cf(
                cf,
                index_key(e.log_id.index),
                serde_json::to_vec(&e).map_err(write_err)?,
            );
        }
        let result = self.store.write_sync(batch);
        let io_result = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(format!("{e:#}")));
        callback.log_io_completed(io_result);
        result.map_err(anyhow_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.delete_range(log_id.index, u64::MAX)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.store
            .put_meta(KEY_LAST_PURGED, &log_id)
            .map_err(anyhow_err)?;
        self.delete_range(0, log_id.index)
    }
}

impl LogStore {
    /// Deletes entries with index in `first..=last`, durably.
    fn delete_range(&self, first: u64, last: u64) -> Result<(), StorageError> {
        let cf = self.store.cf(CF_LOGS);
        let mut batch = WriteBatch::default();
        let from = index_key(first);
        let it = self
            .store
            .db()
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward));
        for item in it {
            let (k, _) = item.map_err(write_err)?;
            if k.as_ref() > index_key(last).as_slice() {
                break;
            }
            batch.delete_cf(cf, k);
        }
        self.store.write_sync(batch).map_err(anyhow_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::state_machine::StateMachineStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let settings = cairn_common::config::MonSettings::default();
            let store = Store::open(dir.path(), &settings, true).expect("open store");
            let sm = StateMachineStore::open(store.clone()).expect("open state machine");
            Ok((dir, LogStore::new(store), sm))
        }
    }

    /// openraft's own conformance suite: log, vote, purge, truncate, snapshots, membership.
    #[test]
    fn passes_the_openraft_storage_suite() {
        Suite::test_all(Builder).expect("storage suite");
    }
}
