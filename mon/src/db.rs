//! The mon's RocksDB store: column family `logs` holds the Raft log (index → entry), `meta`
//! holds the vote, commit and purge pointers, the last snapshot and the mon's identity.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use cairn_common::command::NewEntity;
use cairn_common::config::MonSettings;
use cairn_common::maps::MonInfo;

pub const CF_LOGS: &str = "logs";
pub const CF_META: &str = "meta";

pub const KEY_IDENTITY: &[u8] = b"identity";
pub const KEY_BOOTSTRAP: &[u8] = b"bootstrap";
pub const KEY_VOTE: &[u8] = b"vote";
pub const KEY_COMMITTED: &[u8] = b"committed";
pub const KEY_LAST_PURGED: &[u8] = b"last_purged";
pub const KEY_SNAPSHOT: &[u8] = b"snapshot";

/// Who this mon is; written once by `mkfs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub fsid: uuid::Uuid,
    pub name: String,
    pub node_id: u64,
}

/// What the first monitors start from; absent on a mon created to join a running cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Bootstrap {
    pub members: std::collections::BTreeMap<u64, MonInfo>,
    pub entities: std::collections::BTreeMap<String, NewEntity>,
}

#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    pub fn open(dir: &Path, settings: &MonSettings, create: bool) -> anyhow::Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(create);
        opts.set_write_buffer_size(settings.rocksdb_write_buffer_bytes);
        opts.set_max_write_buffer_number(2);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(settings.rocksdb_block_cache_bytes));
        opts.set_block_based_table_factory(&table);
        let cfs = [CF_LOGS, CF_META].map(|n| ColumnFamilyDescriptor::new(n, opts.clone()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)
            .with_context(|| format!("cannot open the mon store in {}", dir.display()))?;
        Ok(Store { db: Arc::new(db) })
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created by open")
    }

    pub fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> anyhow::Result<Option<T>> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("meta {} is corrupt", String::from_utf8_lossy(key))
            })?)),
            None => Ok(None),
        }
    }

    /// Writes one meta value durably (fsync'd WAL) before returning.
    pub fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> anyhow::Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), key, serde_json::to_vec(value)?);
        self.write_sync(batch)
    }

    pub fn write_sync(&self, batch: WriteBatch) -> anyhow::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        // The write blocks on fsync: let tokio move other tasks off this worker meanwhile.
        tokio::task::block_in_place(|| self.db.write_opt(batch, &wo))
            .context("mon store write failed")
    }
}
