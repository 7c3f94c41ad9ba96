//! The object store: mkfs and mount, reads, listings and space accounting. Transactions are
//! planned in `apply.rs` and committed here: data to fresh blocks, one fdatasync shared by
//! concurrent transactions, then one synchronous RocksDB batch that makes them visible.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use prost::bytes::Bytes;
use rocksdb::{BlockBasedOptions, Cache, Direction, IteratorMode, Options, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::aligned::AlignedBuf;
use crate::allocator::Allocator;
use crate::apply::Plan;
use crate::coll_stats::{CollectionStats, StatsTable};
use crate::commit_group::CommitGroup;
use crate::deferred::DeferredQueue;
use crate::error::{Result, StoreError};
use crate::extents::{Extent, Piece};
use crate::io::{open_backend, Backend, BackendChoice, IoOp};
use crate::locks::LockTable;
use crate::onode::*;
use crate::txn::{Op, Transaction};
use crate::BLOCK_BYTES;

/// Format 2 keeps extent maps in shards; a store of format 1 (one record per object) is
/// converted when mounted.
const FORMAT_VERSION: u32 = 2;
const FORMAT_WHOLE_EXTENT_MAPS: u32 = 1;
pub const DATA_FILE: &str = "block";
pub const DB_DIR: &str = "db";

/// Store settings; every bound has a default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: BackendChoice,
    /// I/Os in flight at once on each thread's io_uring ring (each thread that does I/O has
    /// one: a few KiB of kernel memory).
    pub uring_queue_depth: u32,
    pub io_threads: usize,
    /// O_DIRECT on the data file (falls back to buffered I/O where the file system refuses it).
    pub direct_io: bool,
    pub rocksdb_block_cache_bytes: usize,
    pub rocksdb_write_buffer_bytes: usize,
    pub rocksdb_write_buffers_max: i32,
    /// Decoded object records kept in memory (each a few KiB for a 4 MiB object).
    pub onode_cache_entries_max: usize,
    /// Committed small overwrites waiting to be written in place (4 KiB each) before
    /// transactions wait for the flusher.
    pub deferred_blocks_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        // RocksDB memory: 64 MiB cache + 2 × 32 MiB write buffers = 128 MiB, under the 256 MiB
        // the store may use in all.
        StoreConfig {
            backend: BackendChoice::Auto,
            uring_queue_depth: 64,
            io_threads: 16,
            direct_io: true,
            rocksdb_block_cache_bytes: 64 << 20,
            rocksdb_write_buffer_bytes: 32 << 20,
            rocksdb_write_buffers_max: 2,
            onode_cache_entries_max: 4096,
            deferred_blocks_max: 4096,
        }
    }
}

/// Space of the data device, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub total: u64,
    pub used: u64,
    pub available: u64,
}

/// Lets concurrent transactions share one fdatasync: a caller waits for a sync that started
/// after its own writes completed, and whoever finds none running starts one.
#[derive(Default)]
struct SyncGroup {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Default)]
struct SyncState {
    started: u64,
    finished: u64,
    running: bool,
    failed: Option<String>,
}

impl SyncGroup {
    fn sync(&self, io: &dyn Backend) -> Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let need = s.started + 1;
        loop {
            if s.finished >= need {
                return match &s.failed {
                    Some(e) => Err(StoreError::Io(std::io::Error::other(e.clone()))),
                    None => Ok(()),
                };
            }
            if !s.running {
                s.running = true;
                s.started += 1;
                let mine = s.started;
                drop(s);
                let result = io.run(vec![IoOp::Sync]);
                s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                s.running = false;
                s.finished = mine;
                // A failed fdatasync poisons the store: the kernel may have dropped dirty data.
                if let Err(e) = &result {
                    s.failed.get_or_insert_with(|| e.to_string());
                }
                self.done.notify_all();
                continue;
            }
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Decoded onodes of committed objects. Entries change only under the object's write lock
/// (after the commit) and are filled under its read or write lock, so they are never stale.
struct OnodeCache {
    entries: Mutex<HashMap<(String, String), Arc<Onode>>>,
    max: usize,
}

impl OnodeCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Onode>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, coll: &str, oid: &str) -> Option<Arc<Onode>> {
        self.lock()
            .get(&(coll.to_string(), oid.to_string()))
            .cloned()
    }

    fn put(&self, coll: &str, oid: &str, onode: Option<Arc<Onode>>) {
        let mut entries = self.lock();
        let key = (coll.to_string(), oid.to_string());
        match onode {
            Some(o) => {
                if entries.len() >= self.max && !entries.contains_key(&key) {
                    // Bounded, not LRU: drop an arbitrary entry.
                    if let Some(victim) = entries.keys().next().cloned() {
                        entries.remove(&victim);
                    }
                }
                if self.max > 0 {
                    entries.insert(key, o);
                }
            }
            None => {
                entries.remove(&key);
            }
        }
    }
}

pub struct ObjectStore {
    /// Key sequence of deferred-write records.
    next_record: AtomicU64,
    /// Small overwrites committed and not yet written in place, with the flusher writing them.
    /// Their records are deleted in bulk after a sync, and always before any block is freed
    /// (so replay never writes a block that another object may own by then).
    pub(crate) deferred: Arc<DeferredQueue>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held across a whole retirement (take, sync, delete): a transaction about to free blocks
    /// waits for any retirement under way, not only for the list to be empty.
    retiring: Mutex<()>,
    /// Set when a commit's outcome is unknown (a failed RocksDB write): the store refuses
    /// further transactions until remounted, since its allocator may no longer be right.
    /// Read by every transaction; set once, so it needs no lock.
    poisoned: OnceLock<String>,
    dir: PathBuf,
    cache: OnodeCache,
    pub(crate) db: DB,
    pub(crate) io: Arc<dyn Backend>,
    pub(crate) alloc: Mutex<Allocator>,
    locks: LockTable,
    sync: SyncGroup,
    commits: CommitGroup,
    total_blocks: u64,
    stats: StatsTable,
}

fn db_options(config: &StoreConfig, create: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.set_write_buffer_size(config.rocksdb_write_buffer_bytes);
    // Reuse WAL files: syncing a file that does not grow skips a journal commit.
    opts.set_recycle_log_file_num(4);
    opts.set_max_write_buffer_number(config.rocksdb_write_buffers_max);
    // Writers of the next group go to the WAL while this one fills the memtable (measured:
    // a few percent less CPU per small durable write, BENCHMARKS.md).
    opts.set_enable_pipelined_write(true);
    // Writers waiting for their group sleep instead of spinning and yielding for up to 100 µs:
    // with more writers than cores the spinning took the CPU the group's leader needed.
    opts.set_enable_write_thread_adaptive_yield(false);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(config.rocksdb_block_cache_bytes));
    // Index and filter blocks count against the cache, so memory stays bounded as the
    // database grows.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    opts
}

/// Objects converted per batch when a store of format 1 is mounted.
const CONVERSION_BATCH_OBJECTS: u64 = 1024;

/// Retired records deleted at once at most (bounds memory and replay at mount).
const RETIRE_BATCH: usize = 4096;

/// Deferred-write records left from the last run: the last one of each block (records of a
/// block are written in sequence order), and the next sequence number.
fn deferred_records(db: &DB, total_blocks: u64) -> Result<(BTreeMap<u64, Vec<u8>>, u64)> {
    let mut blocks = BTreeMap::new();
    let mut next = 0u64;
    for item in db.prefix_iterator(DEFERRED_PREFIX) {
        let (k, v) = item?;
        if !k.starts_with(DEFERRED_PREFIX) {
            break;
        }
        let seq = k[1..]
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt("malformed deferred-write key".into()))?;
        let (pblock, data) = decode_deferred(&v)
            .filter(|(p, _)| *p < total_blocks)
            .ok_or_else(|| StoreError::Corrupt(format!("malformed deferred-write record {seq}")))?;
        blocks.insert(pblock, data.to_vec());
        next = seq + 1;
    }
    Ok((blocks, next))
}

/// Replays deferred writes left by a crash, then deletes the records. A record is written only
/// if its data matches the checksum the metadata holds for that block now, so a replay can
/// never overwrite a block another object owns, whatever happened before the crash.
fn replay_deferred(
    db: &DB,
    io: &dyn Backend,
    records: BTreeMap<u64, Vec<u8>>,
    expected: &HashMap<u64, u32>,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let total = records.len();
    let writes: Vec<IoOp> = records
        .into_iter()
        .filter(|(pblock, data)| expected.get(pblock) == Some(&crc32c::crc32c(data)))
        .map(|(pblock, data)| {
            let mut buf = AlignedBuf::zeroed(BLOCK_BYTES);
            buf.copy_from_slice(&data);
            IoOp::Write {
                buf,
                offset: pblock * BLOCK_BYTES as u64,
            }
        })
        .collect();
    tracing::info!(
        records = total,
        replayed = writes.len(),
        "replaying deferred writes"
    );
    io.run(writes)?;
    io.run(vec![IoOp::Sync])?;
    let mut batch = rocksdb::WriteBatch::default();
    batch.delete_range(DEFERRED_PREFIX, &prefix_end(DEFERRED_PREFIX)[..]);
    db.write_opt(batch, &sync_write())?;
    Ok(())
}

fn collection_names(db: &DB) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in db.prefix_iterator(b"C") {
        let (k, _) = item?;
        if !k.starts_with(b"C") {
            break;
        }
        out.push(String::from_utf8_lossy(&k[1..]).into_owned());
    }
    Ok(out)
}

/// The extent-map shards stored under `prefix` (one object's), by shard number.
pub(crate) fn extent_shards(db: &DB, prefix: &[u8]) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    for item in db.prefix_iterator(prefix) {
        let (k, v) = item?;
        if !k.starts_with(prefix) {
            break;
        }
        out.push((shard_of_key(prefix, &k)?, v.to_vec()));
    }
    Ok(out)
}

/// Puts an object's record and its whole extent map, in shards, replacing what was stored.
pub(crate) fn put_whole_onode(
    batch: &mut rocksdb::WriteBatch,
    key: &[u8],
    shard_prefix: &[u8],
    o: &Onode,
) {
    batch.delete_range(shard_prefix, &prefix_end(shard_prefix)[..]);
    batch.put(key, o.encode_meta());
    for (shard, record) in changed_shards(None, &o.extents) {
        if let Some(record) = record {
            batch.put(shard_key_under(shard_prefix, shard), record);
        }
    }
}

fn sync_write() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// Size of a block device or regular file, in bytes.
fn device_bytes(path: &Path) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    Ok(f.seek(SeekFrom::End(0))?)
}

impl Drop for ObjectStore {
    /// Lets the flusher write what is queued, then retires the records (else they would only
    /// replay at the next mount).
    fn drop(&mut self) {
        self.deferred.stop();
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(f) = flusher {
            if f.join().is_ok() && self.deferred.failure().is_none() {
                if let Err(e) = self.retire_deferred() {
                    tracing::warn!(error = %e, "deferred-write records left to replay at the next mount");
                }
            }
        }
    }
}

impl ObjectStore {
    /// Whether `dir` already holds a store (its metadata database).
    pub fn is_created(dir: &Path) -> bool {
        dir.join(DB_DIR).exists()
    }

    /// Creates a store in `dir`: a data file of `size_bytes` (preallocated) or, when
    /// `dir/block` already is a block device (or a link to one), that device whole.
    pub fn mkfs(dir: &Path, size_bytes: Option<u64>, config: &StoreConfig) -> Result<()> {
        if Self::is_created(dir) {
            return Err(StoreError::Invalid(format!(
                "{} already holds a store",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)?;
        let data_path = dir.join(DATA_FILE);
        let is_device = std::fs::metadata(&data_path)
            .map(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_block_device()
            })
            .unwrap_or(false);
        let bytes = if is_device {
            device_bytes(&data_path)?
        } else {
            let size = size_bytes
                .ok_or_else(|| StoreError::Invalid("a data file needs a size (--size)".into()))?;
            preallocate(&data_path, size)?;
            size
        };
        let total_blocks = bytes / BLOCK_BYTES as u64;
        if total_blocks < 16 {
            return Err(StoreError::Invalid(format!(
                "the data device is too small: {bytes} bytes"
            )));
        }
        let db = DB::open(&db_options(config, true), dir.join(DB_DIR))?;
        let sb = SuperblockRecord {
            format_version: FORMAT_VERSION,
            block_bytes: BLOCK_BYTES as u32,
            total_blocks,
            store_id: format!("{:016x}", rand_id()),
        };
        db.put_opt(
            KEY_SUPERBLOCK,
            prost::Message::encode_to_vec(&sb),
            &sync_write(),
        )?;
        Ok(())
    }

    /// Mounts the store: opens RocksDB and the data file, and rebuilds the allocator from every
    /// extent the metadata references.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<ObjectStore> {
        let db = DB::open(&db_options(config, false), dir.join(DB_DIR))?;
        let sb_bytes = db
            .get(KEY_SUPERBLOCK)?
            .ok_or_else(|| StoreError::Corrupt("no superblock: not a store (run mkfs)".into()))?;
        let sb: SuperblockRecord = prost::Message::decode(sb_bytes.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("undecodable superblock: {e}")))?;
        let known = [FORMAT_VERSION, FORMAT_WHOLE_EXTENT_MAPS].contains(&sb.format_version);
        if !known || sb.block_bytes as usize != BLOCK_BYTES {
            return Err(StoreError::Corrupt(format!(
                "store format {} with {}-byte blocks is not supported",
                sb.format_version, sb.block_bytes
            )));
        }
        let data = Arc::new(open_data(&dir.join(DATA_FILE), config.direct_io)?);
        let io: Arc<dyn Backend> = Arc::from(open_backend(
            data,
            config.backend,
            config.uring_queue_depth,
            config.io_threads,
        )?);
        let (records, next_record) = deferred_records(&db, sb.total_blocks)?;
        // Checksums the metadata expects for the blocks the records name.
        let mut expected: HashMap<u64, u32> = HashMap::new();
        let mut used = Vec::new();
        let mut conversion = rocksdb::WriteBatch::default();
        let mut converted = 0u64;
        let stats = StatsTable::default();
        for coll in collection_names(&db)? {
            stats.count_collection(&coll);
        }
        for item in db.prefix_iterator(b"O") {
            let (k, v) = item?;
            if !k.starts_with(b"O") {
                break;
            }
            let shard_prefix = extent_shard_prefix_of(&k);
            let onode = Onode::decode(&v, &extent_shards(&db, &shard_prefix)?, sb.total_blocks)?;
            stats.count_object(&split_object_key(&k).0, &onode);
            if sb.format_version == FORMAT_WHOLE_EXTENT_MAPS {
                put_whole_onode(&mut conversion, &k, &shard_prefix, &onode);
                converted += 1;
                // Bounded batches: a crash part-way leaves format 1, converted again (the
                // conversion of an object replaces what an earlier one wrote).
                if converted.is_multiple_of(CONVERSION_BATCH_OBJECTS) {
                    db.write(std::mem::take(&mut conversion))?;
                }
            }
            for e in onode.extents.iter() {
                for (p, _) in records.range(e.pblock..e.pblock + e.len()) {
                    expected.insert(*p, e.csums[(p - e.pblock) as usize]);
                }
            }
            used.extend(onode.extents.used_runs());
        }
        let alloc = Allocator::rebuild(sb.total_blocks, used).map_err(StoreError::Corrupt)?;
        if sb.format_version == FORMAT_WHOLE_EXTENT_MAPS {
            tracing::info!(
                objects = converted,
                "store converted to sharded extent maps"
            );
            let sb = SuperblockRecord {
                format_version: FORMAT_VERSION,
                ..sb.clone()
            };
            conversion.put(KEY_SUPERBLOCK, prost::Message::encode_to_vec(&sb));
            db.write_opt(conversion, &sync_write())?;
        }
        tracing::info!(
            dir = %dir.display(),
            backend = io.name(),
            total_blocks = sb.total_blocks,
            free_blocks = alloc.free_blocks(),
            "object store mounted"
        );
        replay_deferred(&db, &*io, records, &expected)?;
        let deferred = Arc::new(DeferredQueue::new(config.deferred_blocks_max));
        let flusher = {
            let (deferred, io) = (deferred.clone(), io.clone());
            std::thread::Builder::new()
                .name("deferred-writes".into())
                .spawn(move || deferred.flush_until_stopped(&*io))?
        };
        Ok(ObjectStore {
            next_record: AtomicU64::new(next_record),
            deferred,
            flusher: Mutex::new(Some(flusher)),
            retiring: Mutex::new(()),
            poisoned: OnceLock::new(),
            dir: dir.to_path_buf(),
            cache: OnodeCache {
                entries: Mutex::new(HashMap::new()),
                max: config.onode_cache_entries_max,
            },
            db,
            io,
            alloc: Mutex::new(alloc),
            locks: LockTable::default(),
            sync: SyncGroup::default(),
            commits: CommitGroup::default(),
            total_blocks: sb.total_blocks,
            stats,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn backend_name(&self) -> &'static str {
        self.io.name()
    }

    pub(crate) fn allocator(&self) -> std::sync::MutexGuard<'_, Allocator> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a transaction atomically; when it returns Ok, it is durable.
    pub fn apply(&self, txn: &Transaction) -> Result<()> {
        self.refuse_if_poisoned()?;
        let _locks = self.locks.lock(lock_keys(txn));
        // Again under the locks: a transaction that waited for them may find the store stopped.
        self.refuse_if_poisoned()?;
        let mut plan = Plan::new(self);
        let result = self.plan_and_commit(&mut plan, txn);
        if plan.committed {
            let freed = std::mem::take(&mut plan.freed);
            if self.refuse_if_poisoned().is_err() {
                // A record that could not be retired may still point at these blocks.
                return result;
            }
            let retired = if freed.is_empty() && self.deferred.written_len() < RETIRE_BATCH {
                Ok(())
            } else {
                // A queued in-place write must land before its block can have a new owner.
                self.deferred
                    .settle(&freed)
                    .and_then(|()| self.retire_deferred())
            };
            match retired {
                Ok(()) => {
                    let mut alloc = self.allocator();
                    for run in freed {
                        alloc.release(run);
                    }
                }
                // Keep the freed blocks out of use: a record may still point at them.
                Err(e) => self.poison(&format!("deferred writes could not be retired: {e}")),
            }
        } else if let Err(StoreError::Db(e)) = &result {
            // The batch may have reached the WAL: its blocks may be referenced after a restart.
            self.poison(&format!("a commit failed: {e}"));
        } else {
            let mut alloc = self.allocator();
            for run in std::mem::take(&mut plan.allocated) {
                alloc.release(run);
            }
        }
        result
    }

    fn refuse_if_poisoned(&self) -> Result<()> {
        let poisoned = self
            .poisoned
            .get()
            .cloned()
            .or_else(|| self.deferred.failure());
        match poisoned {
            Some(why) => Err(StoreError::Corrupt(format!(
                "the store stopped taking writes ({why}); remount it"
            ))),
            None => Ok(()),
        }
    }

    fn poison(&self, why: &str) {
        tracing::error!(%why, "the object store stops taking writes until remounted");
        // The first reason is the one reported.
        let _ = self.poisoned.set(why.to_string());
    }

    /// Makes the in-place writes of retired records durable, then deletes the records. The
    /// delete needs no sync: any later synchronous batch (one reusing a freed block) carries it.
    fn retire_deferred(&self) -> Result<()> {
        let _whole = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let keys = self.deferred.take_written();
        if keys.is_empty() {
            return Ok(());
        }
        self.sync.sync(&*self.io)?;
        let mut batch = rocksdb::WriteBatch::default();
        for k in keys {
            batch.delete(k);
        }
        self.db.write(batch)?;
        Ok(())
    }

    fn plan_and_commit(&self, plan: &mut Plan, txn: &Transaction) -> Result<()> {
        for op in &txn.ops {
            plan.apply(op)?;
        }
        let writes: Vec<IoOp> = std::mem::take(&mut plan.pending)
            .into_iter()
            .map(|(pblock, buf)| IoOp::Write {
                buf,
                offset: pblock * BLOCK_BYTES as u64,
            })
            .collect();
        if !writes.is_empty() {
            self.io.run(writes)?;
            self.sync.sync(&*self.io)?;
        }
        let (batch, records) = plan.batch(&self.next_record)?;
        self.commits.commit(&self.db, batch, &sync_write())?;
        plan.committed = true;
        for ((coll, oid), onode) in plan.onodes() {
            self.cache.put(coll, oid, onode.clone().map(Arc::new));
        }
        self.stats
            .committed(plan.stats_changes(), plan.collections());
        // Queued before the objects' locks are released: readers find the blocks there
        // until they are on disk. The records are in the same order as the blocks.
        let deferred = std::mem::take(&mut plan.deferred);
        if !deferred.is_empty() {
            self.deferred.push(
                deferred
                    .into_iter()
                    .zip(records)
                    .map(|((pblock, buf), record)| (pblock, buf, record)),
            );
        }
        Ok(())
    }

    /// A committed onode; the caller holds the object's lock.
    pub(crate) fn get_onode(&self, coll: &str, oid: &str) -> Result<Option<Arc<Onode>>> {
        if let Some(o) = self.cache.get(coll, oid) {
            return Ok(Some(o));
        }
        match self.db.get(onode_key(coll, oid))? {
            Some(v) => {
                let shards = extent_shards(&self.db, &extent_shard_prefix(coll, oid))?;
                let o = Arc::new(Onode::decode(&v, &shards, self.total_blocks)?);
                self.cache.put(coll, oid, Some(o.clone()));
                Ok(Some(o))
            }
            None => Ok(None),
        }
    }

    pub(crate) fn collection_exists(&self, coll: &str) -> Result<bool> {
        Ok(self.db.get(collection_key(coll))?.is_some())
    }

    fn require_onode(&self, coll: &str, oid: &str) -> Result<Arc<Onode>> {
        self.get_onode(coll, oid)?
            .ok_or_else(|| StoreError::no_object(coll, oid))
    }

    /// Reads `[offset, offset + len)` of an object, clamped to its size. Every block is checked
    /// against its checksum; a mismatch is an error that names the object and range.
    pub fn read(&self, coll: &str, oid: &str, offset: u64, len: u64) -> Result<Bytes> {
        let _lock = self.locks.read(coll, oid);
        let onode = self.require_onode(coll, oid)?;
        let end = offset.saturating_add(len).min(onode.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        if end - offset > crate::IO_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "a read returns at most {} bytes; read in pieces",
                crate::IO_BYTES_MAX
            )));
        }
        let b0 = offset / BLOCK_BYTES as u64;
        let b1 = end.div_ceil(BLOCK_BYTES as u64);
        let blocks = self.read_blocks(coll, oid, &onode.extents.pieces(b0, b1))?;
        let skip = (offset - b0 * BLOCK_BYTES as u64) as usize;
        Ok(blocks.slice(skip..skip + (end - offset) as usize))
    }

    /// Reads logical pieces into one buffer, verifying every data block. A read of one extent
    /// (the usual case) answers the buffer the disk filled, shared rather than copied.
    pub(crate) fn read_blocks(&self, coll: &str, oid: &str, pieces: &[Piece]) -> Result<Bytes> {
        let total: u64 = pieces
            .iter()
            .map(|p| match p {
                Piece::Data(e) => e.len(),
                Piece::Hole { len, .. } => *len,
            })
            .sum();
        let data: Vec<&Extent> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Data(e) => Some(e),
                Piece::Hole { .. } => None,
            })
            .collect();
        // Looked up before the disk is read: a block that leaves the queue meanwhile was
        // written in place first.
        let queued = self
            .deferred
            .lookup(data.iter().flat_map(|e| e.pblock..e.pblock + e.len()));
        let ops = data
            .iter()
            .map(|e| IoOp::Read {
                buf: AlignedBuf::for_read(e.len() as usize * BLOCK_BYTES),
                offset: e.pblock * BLOCK_BYTES as u64,
            })
            .collect();
        let mut bufs = self.io.run(ops)?;
        for (e, buf) in data
            .iter()
            .zip(bufs.iter_mut())
            .filter(|_| !queued.is_empty())
        {
            for (i, p) in (e.pblock..e.pblock + e.len()).enumerate() {
                if let Some(block) = queued.get(&p) {
                    buf[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES].copy_from_slice(block);
                }
            }
        }
        let mut bufs = bufs.into_iter();
        let mut next_buf = |e: &Extent| {
            let buf = bufs.next().ok_or_else(|| {
                StoreError::Io(std::io::Error::other("a read returned too few buffers"))
            })?;
            verify(coll, oid, e, &buf)?;
            Ok::<_, StoreError>(buf)
        };
        if let [Piece::Data(e)] = pieces {
            return Ok(Bytes::from_owner(next_buf(e)?));
        }
        // Pieces are contiguous and in order: each is appended (not written into a zeroed
        // buffer, which would touch every byte twice).
        let mut out = Vec::with_capacity(total as usize * BLOCK_BYTES);
        for p in pieces {
            match p {
                Piece::Data(e) => out.extend_from_slice(&next_buf(e)?),
                Piece::Hole { len, .. } => out.resize(out.len() + *len as usize * BLOCK_BYTES, 0),
            }
        }
        Ok(out.into())
    }

    pub fn stat(&self, coll: &str, oid: &str) -> Result<u64> {
        let _lock = self.locks.read(coll, oid);
        Ok(self.require_onode(coll, oid)?.size)
    }

    pub fn exists(&self, coll: &str, oid: &str) -> Result<bool> {
        let _lock = self.locks.read(coll, oid);
        Ok(self.get_onode(coll, oid)?.is_some())
    }

    pub fn getattrs(&self, coll: &str, oid: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let _lock = self.locks.read(coll, oid);
        Ok(self.require_onode(coll, oid)?.attrs.clone())
    }

    /// Omap entries after `after` (exclusive), at most `max`.
    pub fn omap_get(
        &self,
        coll: &str,
        oid: &str,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let _lock = self.locks.read(coll, oid);
        self.require_onode(coll, oid)?;
        let prefix = omap_prefix(coll, oid);
        let start = match after {
            Some(k) => [omap_key(coll, oid, k).as_slice(), b"\0"].concat(),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= max {
                break;
            }
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Objects of a collection in name order, after `after` (exclusive), at most `max`; the
    /// second value is where the next page starts, if there is one.
    pub fn list(
        &self,
        coll: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<(Vec<String>, Option<String>)> {
        if !self.collection_exists(coll)? {
            return Err(StoreError::NoCollection(coll.to_string()));
        }
        if max == 0 {
            return Err(StoreError::Invalid(
                "a listing returns at least one name".into(),
            ));
        }
        let prefix = onode_prefix(coll);
        let start = match after {
            Some(o) => [onode_key(coll, o).as_slice(), b"\0"].concat(),
            None => prefix.clone(),
        };
        let mut names = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward))
        {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                return Ok((names, None));
            }
            if names.len() == max {
                return Ok((names.clone(), names.last().cloned()));
            }
            names.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok((names, None))
    }

    pub fn list_collections(&self) -> Result<Vec<String>> {
        collection_names(&self.db)
    }

    /// Objects, bytes and blocks of every collection, as of the last commit.
    pub fn collection_stats(&self) -> BTreeMap<String, CollectionStats> {
        self.stats.snapshot()
    }

    pub fn statfs(&self) -> StatFs {
        let total = self.total_blocks * BLOCK_BYTES as u64;
        let available = self.allocator().free_blocks() * BLOCK_BYTES as u64;
        StatFs {
            total,
            used: total - available,
            available,
        }
    }

    /// Where an object's data lies on the device (for fsck and for tests that damage it).
    pub fn object_extents(&self, coll: &str, oid: &str) -> Result<Vec<Extent>> {
        Ok(self
            .require_onode(coll, oid)?
            .extents
            .iter()
            .cloned()
            .collect())
    }

    pub(crate) fn total_blocks(&self) -> u64 {
        self.total_blocks
    }
}

/// Checks every block of an extent read from disk against its checksum.
pub(crate) fn verify(coll: &str, oid: &str, e: &Extent, buf: &[u8]) -> Result<()> {
    for (i, (block, expected)) in buf.chunks(BLOCK_BYTES).zip(&e.csums).enumerate() {
        let found = crc32c::crc32c(block);
        if found != *expected {
            let offset = (e.lblock + i as u64) * BLOCK_BYTES as u64;
            tracing::error!(
                collection = coll,
                object = oid,
                offset,
                pblock = e.pblock + i as u64,
                "checksum mismatch: stored data is damaged"
            );
            metrics_checksum_error();
            return Err(StoreError::ChecksumMismatch {
                collection: coll.to_string(),
                object: oid.to_string(),
                offset,
                length: BLOCK_BYTES as u64,
                expected: *expected,
                found,
            });
        }
    }
    Ok(())
}

fn metrics_checksum_error() {
    CHECKSUM_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Checksum mismatches seen by this process (exported as a metric by the daemon).
pub static CHECKSUM_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn lock_keys(txn: &Transaction) -> Vec<((String, String), bool)> {
    let mut keys: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (coll, oid) in txn.objects() {
        keys.entry((coll.clone(), String::new())).or_insert(false);
        if !oid.is_empty() {
            keys.insert((coll, oid), true);
        }
    }
    for op in &txn.ops {
        if let Op::CreateCollection { coll } | Op::RemoveCollection { coll } = op {
            keys.insert((coll.clone(), String::new()), true);
        }
    }
    keys.into_iter().collect()
}

fn open_data(path: &Path, direct: bool) -> Result<File> {
    if direct {
        match File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "the file system refuses O_DIRECT; using buffered I/O (still fdatasync'd)");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(File::options().read(true).write(true).open(path)?)
}

/// Creates the data file and writes it whole with zeros. Only written extents are cheap to
/// overwrite durably: a block fallocate'd but never written costs an extent conversion in the
/// file system's journal on its first fdatasync, which made small durable writes several times
/// slower.
fn preallocate(path: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    const CHUNK: usize = 4 << 20;
    let mut f = File::options().write(true).create_new(true).open(path)?;
    let zeros = vec![0u8; CHUNK];
    let mut written = 0u64;
    let mut reported = 0u64;
    while written < bytes {
        let n = (bytes - written).min(CHUNK as u64) as usize;
        f.write_all(&zeros[..n])?;
        written += n as u64;
        if written * 10 / bytes > reported {
            reported = written * 10 / bytes;
            tracing::info!(percent = reported * 10, "writing the data file");
        }
    }
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
