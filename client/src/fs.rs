//! The filesystem client: metadata through the active MDS the FSMap names, file data read
//! and written directly in the data pool's objects (`<ino>.<index>`, 4 MiB each).
//!
//! Coherence: data written goes straight to the OSDs; the new size and mtime reach the MDS
//! on flush (close), fsync and release, or sooner when the MDS recalls them through the
//! client's session stream because another client asks for the file's attributes (so a
//! stat elsewhere sees a write as soon as it returned). A file's size is read from the MDS
//! when it is opened. The only opener of a file may get its exclusive capability: it then
//! answers stats of the file itself until the MDS recalls the file, and only while it hears
//! the MDS's heartbeats (a lease shorter than the time the mons take to replace an MDS).
//! While it holds the capability it also buffers the file's writes ([`DirtyExtents`]) and
//! sends them on fsync, close, recall, when the buffer is full or a few seconds old, or
//! when the capability goes: no other client can see the file before then. Metadata requests wait through an MDS failover: they are retried (same
//! request number, so a change is applied once) at whichever daemon holds the rank, until
//! `FS_OP_TIMEOUT`; the session stream reconnects to the new active and states the files
//! this client has open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use tonic::{Code, Request};

use cairn_common::config::Config;
use cairn_common::fsmap::FsId;
use cairn_common::fsops::{self, data_object, FsOp, FsReply, MdsStatus, OBJECT_BYTES};
use cairn_common::proto::mds_client::MdsClient;
use cairn_common::proto::{MdsRequest, MdsSessionEvent, MdsSessionRequest, OpenFileState};

use crate::dirty::DirtyExtents;
use crate::{ClientError, Rados};

pub use cairn_common::fsops::{Caller, DirEntry, InodeAttr as Attr, Name, SetAttrs as SetAttr};

/// How long a metadata request keeps trying (through MDS failovers) before it fails with
/// ETIMEDOUT: applications see a pause, not an error.
const FS_OP_TIMEOUT: Duration = Duration::from_secs(120);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The MDS heartbeats every session stream each second: one silent this long is dead.
const SESSION_SILENCE_MAX: Duration = Duration::from_millis(1500);
/// Buffered writes older than this are sent without waiting for an fsync or close.
const DIRTY_AGE_MAX: Duration = Duration::from_secs(5);
const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

pub type FsResult<T> = Result<T, FsError>;

/// What the kernel caches of files and can be told to forget (the FUSE mount's side).
pub trait KernelCache: Send + Sync {
    /// Forgets an inode's attributes; never waits on the kernel.
    fn forget_attrs(&self, ino: u64);
    /// Drops the pages cached of an inode's data. Waits for reads of them in flight: never
    /// call it where answering such a read could wait on the caller.
    fn forget_pages(&self, ino: u64);
}

/// The longest the kernel may keep attributes answered from a held capability (never past
/// the lease: see `held_getattr`).
const HELD_ATTR_TTL: Duration = Duration::from_secs(1);

/// How many extended attributes' answers a held file keeps (the kernel asks for one or
/// two; any process may ask for many).
const XATTRS_HELD_MAX: usize = 16;

fn fs_error(errno: i32, message: impl Into<String>) -> FsError {
    FsError {
        errno,
        message: message.into(),
    }
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> FsError {
        let errno = match &e {
            ClientError::NoSpace(_) => fsops::ENOSPC,
            ClientError::Denied(_) | ClientError::Auth(_) => fsops::EACCES,
            ClientError::Invalid(_) => fsops::EINVAL,
            ClientError::TimedOut(_) => fsops::ETIMEDOUT,
            ClientError::NotFound(_) => fsops::ENOENT,
            _ => fsops::EIO,
        };
        fs_error(errno, e.to_string())
    }
}

#[derive(Clone, Debug)]
pub struct StatFs {
    pub bytes_total: u64,
    pub bytes_avail: u64,
    pub files: u64,
    pub block_size: u32,
    pub name_max: u32,
}

/// A file this client has open: how often and how, its size as this client knows it, and
/// whether data written here has not been reported to the MDS yet.
#[derive(Debug, Default)]
struct OpenFile {
    readers: u32,
    writers: u32,
    /// The size reads go up to: the MDS's at open, grown by writes here; `None` once
    /// another client may have changed the file (the next read asks the MDS).
    size: Option<u64>,
    /// Changes of the file by other clients heard of while it is open: a size the MDS
    /// gave across one may be older than the change.
    changes: u64,
    /// A size the MDS has durably (at open, or reported since); 0 when unknown (after a
    /// recall, which may precede another client's truncate).
    durable_size: u64,
    unreported: Option<Unreported>,
    /// This client holds the file's exclusive capability.
    exclusive: bool,
    /// Recalls of the file's capability seen, and session streams started or ended, while
    /// it is open: a grant answered across one is void.
    recalls: u64,
    /// The MDS's attributes of the file while exclusive (dropped at each change this client
    /// makes, fetched again by the next stat).
    cached: Option<Attr>,
    /// The MDS's answers about extended attributes (a value, or none by that name) while
    /// exclusive, dropped with `cached`. The kernel asks for `security.capability` before
    /// every write.
    xattrs: HashMap<String, Option<Vec<u8>>>,
    /// Writes not yet sent to the OSDs (only while exclusive), and since when.
    dirty: DirtyExtents,
    dirty_since: Option<Instant>,
    /// Taken exclusively while buffered data is being sent, shared by reads and written-
    /// through writes: a read never sees data that is neither buffered nor sent, and a
    /// written-through write never lands under older buffered data.
    io: Arc<tokio::sync::RwLock<()>>,
}

impl OpenFile {
    /// Forgets what the MDS said of the file: it may have changed.
    fn drop_cached(&mut self) {
        self.cached = None;
        self.xattrs.clear();
    }

    /// A write here ended at `end`: the file reaches at least there, and the MDS is to hear
    /// of it.
    fn wrote(&mut self, end: u64) {
        self.size = self.size.map(|s| s.max(end));
        self.unreported = Some(Unreported {
            end: self.unreported.map_or(end, |w| w.end.max(end)),
            mtime_ns: now_ns(),
        });
    }
}

/// Writes of this client the MDS has not heard of: where the furthest one ended, and when.
/// Only that end is reported (never the size seen at open, which another client may have
/// cut since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unreported {
    end: u64,
    mtime_ns: i64,
}

pub struct FsClient {
    rados: Arc<Rados>,
    fs: FsId,
    fs_name: String,
    data_pool: String,
    root: u64,
    next_tid: AtomicU64,
    channels: Mutex<HashMap<String, tonic::transport::Channel>>,
    open: Mutex<HashMap<u64, OpenFile>>,
    /// Held (shared) by each open and release from counting it to the MDS's answer, and
    /// (exclusively) by the session stream from listing the open files to the MDS's
    /// answer: the list the MDS takes as the truth is then never older than an open or
    /// release it has already counted.
    opens_in_flight: tokio::sync::RwLock<()>,
    /// Bumped whenever cached attributes may have become stale (a recall, a change this
    /// client made, a session stream starting or ending): attributes fetched across a bump
    /// are not kept.
    attr_generation: AtomicU64,
    /// When the session stream last carried a heartbeat, and for how long the MDS said it
    /// may be trusted; `None` while no stream is up.
    heard: Mutex<Option<(Instant, Duration)>>,
    /// Buffered bytes over all files, and the most there may be.
    dirty_bytes: AtomicU64,
    dirty_bytes_max: u64,
    session: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// What the kernel caches of files, and can be told to forget (set by the mount).
    kernel: OnceLock<Arc<dyn KernelCache>>,
    /// Shared while a stat answered from a capability is handed to the kernel, exclusive
    /// while capabilities end and the kernel is told to forget them: an answer the kernel
    /// may keep is never handed over after it was told to forget it.
    held_replies: RwLock<()>,
}

impl Drop for FsClient {
    fn drop(&mut self) {
        if let Some(task) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl FsClient {
    /// Connects to filesystem `fs_name`, rooted at `path` within it ("/" for all of it), and
    /// opens the session that lasts until the client is dropped.
    pub async fn mount(config: &Config, fs_name: &str, path: &str) -> FsResult<Arc<FsClient>> {
        let mut client = FsClient::connect(config, fs_name).await?;
        client.root = attr(
            client
                .call(FsOp::Resolve {
                    path: path.to_string(),
                })
                .await?,
        )?
        .ino;
        let client = Arc::new(client);
        let session = tokio::spawn(run_session(Arc::downgrade(&client)));
        *client.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
        Ok(client)
    }

    /// Connects to filesystem `fs_name` without a session: enough to ask the MDS for its
    /// status, not to open files.
    pub async fn connect(config: &Config, fs_name: &str) -> FsResult<FsClient> {
        let rados = Arc::new(Rados::connect(config).await?);
        let maps = rados.maps();
        let (fs, f) = maps
            .fsmap
            .fs_by_name(fs_name)
            .ok_or_else(|| fs_error(fsops::ENOENT, format!("no filesystem named {fs_name:?}")))?;
        let data_pool = f.data_pools.first().cloned().ok_or_else(|| {
            fs_error(
                fsops::EINVAL,
                format!("filesystem {fs_name} has no data pool"),
            )
        })?;
        Ok(FsClient {
            rados,
            fs,
            fs_name: fs_name.to_string(),
            data_pool,
            root: fsops::ROOT_INO,
            next_tid: AtomicU64::new(1),
            channels: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            opens_in_flight: tokio::sync::RwLock::new(()),
            attr_generation: AtomicU64::new(0),
            heard: Mutex::new(None),
            dirty_bytes: AtomicU64::new(0),
            dirty_bytes_max: config.client.fs_write_buffer_bytes,
            session: Mutex::new(None),
            kernel: OnceLock::new(),
            held_replies: RwLock::new(()),
        })
    }

    /// What the active MDS holds: sessions, journal, cache.
    pub async fn mds_status(&self) -> FsResult<MdsStatus> {
        match self.call(FsOp::Status).await? {
            FsReply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Has the active MDS check the namespace (`cairn fs fsck`).
    pub async fn fsck(&self) -> FsResult<fsops::FsckReport> {
        match self.call(FsOp::Fsck).await? {
            FsReply::Fsck(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    /// Sends one metadata request to the active MDS, through failovers, until it is answered
    /// or `FS_OP_TIMEOUT` passes.
    async fn call(&self, op: FsOp) -> FsResult<FsReply> {
        let tid = self.next_tid.fetch_add(1, Ordering::Relaxed);
        let op_json =
            serde_json::to_vec(&op).map_err(|e| fs_error(fsops::EINVAL, e.to_string()))?;
        let started = Instant::now();
        let deadline = started + FS_OP_TIMEOUT;
        let mut backoff = BACKOFF_MIN;
        let mut last = String::from("no MDS is active");
        let mut attempt = 0u32;
        while Instant::now() < deadline {
            attempt += 1;
            let answer = self.attempt(tid, &op_json, attempt).await;
            if op.is_change() && !matches!(answer, Err(Retry::Later(_))) {
                // Applied or not, a change may have made cached attributes stale.
                self.invalidate_attrs(None);
            }
            if !matches!(answer, Err(Retry::Later(_))) {
                metrics::histogram!("cairn_client_mds_op_seconds", "op" => op.name())
                    .record(started.elapsed().as_secs_f64());
            }
            match answer {
                Ok(FsReply::Error { errno, message }) => return Err(fs_error(errno, message)),
                Ok(reply) => return Ok(reply),
                Err(Retry::Fail(e)) => return Err(e),
                Err(Retry::Later(why)) => last = why,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        Err(fs_error(
            fsops::ETIMEDOUT,
            format!(
                "filesystem {}: no answer within {FS_OP_TIMEOUT:?}: {last}",
                self.fs_name
            ),
        ))
    }

    async fn attempt(&self, tid: u64, op_json: &[u8], attempt: u32) -> Result<FsReply, Retry> {
        // The map subscription may lag behind a failover: ask the mons now and then.
        let (name, channel, bearer) = self.active(attempt.is_multiple_of(4)).await?;
        let mut req = Request::new(MdsRequest {
            client: self.rados.instance().to_string(),
            tid,
            op_json: op_json.to_vec(),
        });
        req.set_timeout(Duration::from_secs(30));
        if let Ok(v) = bearer.parse() {
            req.metadata_mut().insert("authorization", v);
        }
        let reply = match MdsClient::new(channel).call(req).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return Err(self.failure(&name, &status)),
        };
        // Data ops after this answer must reach OSDs that know of every client the MDS
        // fenced before it (their late writes are refused, never applied after ours).
        self.rados
            .wait_for_osdmap(reply.osdmap_barrier)
            .await
            .map_err(|e| Retry::Later(e.to_string()))?;
        serde_json::from_slice(&reply.reply_json).map_err(|e| {
            Retry::Fail(fs_error(
                fsops::EIO,
                format!("mds.{name} answered garbage: {e}"),
            ))
        })
    }

    /// The active MDS (from the mons' current maps when `ask_mons`), a channel to it and the
    /// bearer to present.
    async fn active(
        &self,
        ask_mons: bool,
    ) -> Result<(String, tonic::transport::Channel, String), Retry> {
        let monc = self.rados.monc();
        let maps = if ask_mons {
            Arc::new(monc.maps().await.map_err(|e| Retry::Later(e.to_string()))?)
        } else {
            self.rados.maps()
        };
        let Some((name, mds)) = maps.fsmap.active_of(self.fs) else {
            return Err(Retry::Later(format!(
                "filesystem {} has no active MDS",
                self.fs_name
            )));
        };
        let bearer = monc.mds_bearer().await.map_err(|e| {
            if e.is_retryable() {
                Retry::Later(e.to_string())
            } else {
                Retry::Fail(e.into())
            }
        })?;
        let channel = self.channel(&mds.addr).map_err(Retry::Fail)?;
        Ok((name.to_string(), channel, bearer))
    }

    /// Opens the session stream at the active MDS, stating the files open here.
    /// `Retry::Fail` means the MDS fenced this client: no session will open again.
    async fn open_session(
        &self,
        ask_mons: bool,
    ) -> Result<tonic::Streaming<MdsSessionEvent>, Retry> {
        let (name, channel, bearer) = self.active(ask_mons).await.map_err(|r| match r {
            Retry::Fail(e) => Retry::Later(e.to_string()),
            later => later,
        })?;
        let _quiet = self.opens_in_flight.write().await;
        // A new session starts without capabilities (the MDS forgets the old ones too).
        self.drop_capabilities();
        let open_files = self
            .files()
            .iter()
            .filter(|(_, f)| f.readers + f.writers > 0)
            .map(|(ino, f)| OpenFileState {
                ino: *ino,
                readers: f.readers,
                writers: f.writers,
            })
            .collect();
        let mut req = Request::new(MdsSessionRequest {
            client: self.rados.instance().to_string(),
            open_files,
        });
        if let Ok(v) = bearer.parse() {
            req.metadata_mut().insert("authorization", v);
        }
        let opened =
            tokio::time::timeout(SESSION_OPEN_TIMEOUT, MdsClient::new(channel).session(req))
                .await
                .map_err(|_| {
                    Retry::Later(format!("mds.{name} did not open the session in time"))
                })?;
        match opened {
            Ok(stream) => {
                tracing::debug!(mds = %name, "session stream open");
                Ok(stream.into_inner())
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                Err(self.failure(&name, &status))
            }
            Err(status) => {
                if status.code() == Code::Unauthenticated {
                    self.rados.monc().forget_ticket();
                }
                Err(Retry::Later(format!("mds.{name}: {}", status.message())))
            }
        }
    }

    /// The MDS recalls this client's writes to a file and its capability: drop the one,
    /// report the others, then say so. When another client changed the file, there is
    /// what this client cached of it to forget instead.
    async fn answer_recall(&self, event: MdsSessionEvent) {
        self.invalidate_attrs(Some(event.ino));
        if event.changed_elsewhere {
            self.forget_data(Some(event.ino)).await;
        } else {
            if let Err(e) = self.report_answering(event.ino, event.recall).await {
                tracing::warn!(ino = event.ino, error = %e, "cannot report writes the MDS recalled");
            }
            // Another client may cut the file next: until this one hears the size again, an
            // fdatasync reports.
            if let Some(f) = self.files().get_mut(&event.ino) {
                f.durable_size = 0;
            }
        }
        if let Err(e) = self
            .call(FsOp::Recalled {
                recall: event.recall,
            })
            .await
        {
            tracing::debug!(error = %e, "cannot answer a recall");
        }
    }

    fn failure(&self, name: &str, status: &tonic::Status) -> Retry {
        let why = format!("mds.{name}: {}", status.message());
        match status.code() {
            Code::PermissionDenied => Retry::Fail(fs_error(fsops::EACCES, why)),
            // This client was evicted and fenced: nothing it asks will succeed again.
            Code::FailedPrecondition => Retry::Fail(fs_error(fsops::EIO, why)),
            Code::InvalidArgument => Retry::Fail(fs_error(fsops::EINVAL, why)),
            Code::Unauthenticated => {
                self.rados.monc().forget_ticket();
                Retry::Later(why)
            }
            _ => Retry::Later(why),
        }
    }

    fn channel(&self, addr: &str) -> FsResult<tonic::transport::Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let c = cairn_common::channel::endpoint(addr, Duration::from_secs(1))
            .map_err(|e| fs_error(fsops::EIO, e))?
            .connect_lazy();
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenFile>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cached attributes may be stale: forget those of `ino` (with its capability), or the
    /// attributes of every file (keeping the capabilities) when `None`.
    fn invalidate_attrs(&self, revoked: Option<u64>) {
        self.attr_generation.fetch_add(1, Ordering::SeqCst);
        match revoked {
            Some(ino) => self.end_capabilities(Some(ino)),
            None => self.files().values_mut().for_each(OpenFile::drop_cached),
        }
    }

    /// Drops every capability (the session stream started or ended).
    fn drop_capabilities(&self) {
        *self.heard.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.attr_generation.fetch_add(1, Ordering::SeqCst);
        self.end_capabilities(None);
    }

    /// Ends the capability of `ino` here (of every file when `None`), and has the kernel
    /// forget what it was told under it.
    fn end_capabilities(&self, which: Option<u64>) {
        let _replies = self.held_replies.write().unwrap_or_else(|e| e.into_inner());
        let mut ended = Vec::new();
        for (ino, f) in self.files().iter_mut() {
            if which.is_none_or(|w| w == *ino) {
                if f.exclusive {
                    ended.push(*ino);
                }
                f.exclusive = false;
                f.drop_cached();
                f.recalls += 1;
            }
        }
        if let Some(kernel) = self.kernel.get() {
            ended.into_iter().for_each(|ino| kernel.forget_attrs(ino));
        }
    }

    /// Another client may have changed these files (all open ones when `None`): forget the
    /// size reads stop at, and have the kernel drop the pages it cached of them.
    async fn forget_data(&self, which: Option<u64>) {
        let inos: Vec<u64> = {
            let mut files = self.files();
            files
                .iter_mut()
                .filter(|(ino, _)| which.is_none_or(|w| w == **ino))
                .map(|(ino, f)| {
                    f.size = None;
                    f.changes += 1;
                    *ino
                })
                .collect()
        };
        self.drop_pages(inos).await;
    }

    /// Has the kernel drop the pages it cached of `inos`.
    async fn drop_pages(&self, inos: Vec<u64>) {
        let Some(kernel) = self.kernel.get().cloned() else {
            return;
        };
        // The kernel waits for reads in flight on those pages, which other tasks answer.
        let dropped = tokio::task::spawn_blocking(move || {
            inos.into_iter().for_each(|i| kernel.forget_pages(i))
        });
        if let Err(e) = dropped.await {
            tracing::warn!(error = %e, "cannot have the kernel drop cached pages");
        }
    }

    /// A read of `ino` was answered. Without a lease (no stream, or the MDS silent) nobody
    /// can tell this client of another's change, so what the kernel just cached goes again.
    pub fn read_answered(self: &Arc<Self>, ino: u64) {
        if self.lease_fresh() {
            return;
        }
        let c = self.clone();
        tokio::spawn(async move { c.drop_pages(vec![ino]).await });
    }

    /// [`FsClient::forget_data`] of every open file, in its own task: the session stream
    /// must go on carrying recalls meanwhile.
    fn forget_all_data_soon(self: &Arc<Self>) {
        let c = self.clone();
        tokio::spawn(async move { c.forget_data(None).await });
    }

    /// Changes heard of `ino` so far (see [`OpenFile::changes`]).
    fn changes_of(&self, ino: u64) -> u64 {
        self.files().get(&ino).map_or(0, |f| f.changes)
    }

    /// Lets the kernel keep attributes answered from capabilities a while, and file pages
    /// across reads: `kernel` is told to forget them whenever a capability ends or another
    /// client changes a file.
    pub fn set_kernel_cache(&self, kernel: Arc<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    /// To be held while handing the kernel an answer of [`FsClient::held_getattr`].
    pub fn held_replies(&self) -> RwLockReadGuard<'_, ()> {
        self.held_replies.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A heartbeat: capabilities hold for another `lease`.
    fn heard_from_mds(&self, lease: Duration) {
        *self.heard.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), lease));
    }

    /// Whether the last heartbeat still vouches for this client's capabilities.
    fn lease_fresh(&self) -> bool {
        !self.lease_left().is_zero()
    }

    /// How much longer the last heartbeat vouches for this client's capabilities.
    fn lease_left(&self) -> Duration {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::ZERO, |(at, lease)| {
                lease.saturating_sub(at.elapsed())
            })
    }

    /// What `look` finds in `ino`'s open file, if this client holds its capability now.
    fn with_held<T>(&self, ino: u64, look: impl FnOnce(&OpenFile) -> Option<T>) -> Option<T> {
        let fresh = self.lease_fresh();
        let files = self.files();
        files
            .get(&ino)
            .filter(|f| fresh && f.exclusive)
            .and_then(look)
    }

    /// The attributes of `ino` this client may answer a stat with itself.
    fn held_attr(&self, ino: u64) -> Option<Attr> {
        self.with_held(ino, |f| f.cached.clone())
    }

    /// Keeps attributes fetched from the MDS while the file is held exclusively, unless
    /// they may be stale (`generation` moved on since the request was sent).
    fn keep_attr(&self, a: &Attr, generation: u64) {
        let mut files = self.files();
        if let Some(f) = files.get_mut(&a.ino) {
            if f.exclusive && self.attr_generation.load(Ordering::SeqCst) == generation {
                f.cached = Some(a.clone());
            }
        }
    }

    /// An inode's attributes as this client sees them: what the MDS says, with this
    /// client's unreported writes on top.
    fn with_local(&self, mut a: Attr) -> Attr {
        if let Some(f) = self.files().get(&a.ino) {
            if let Some(w) = f.unreported {
                a.size = a.size.max(w.end);
                a.mtime_ns = a.mtime_ns.max(w.mtime_ns);
            }
        }
        a
    }

    pub async fn lookup(&self, parent: u64, name: impl Into<Name>) -> FsResult<Attr> {
        let a = attr(
            self.call(FsOp::Lookup {
                parent,
                name: name.into(),
            })
            .await?,
        )?;
        Ok(self.with_local(a))
    }

    /// The attributes of `ino` if this client can answer for them without asking (it holds
    /// the file's exclusive capability), and how long the kernel may keep them: never past
    /// the lease, and not at all unless the kernel can be told to forget them when the
    /// capability ends.
    pub fn held_getattr(&self, ino: u64) -> Option<(Attr, Duration)> {
        let a = self.held_attr(ino).map(|a| self.with_local(a))?;
        let keep = match self.kernel.get() {
            Some(_) => self.lease_left().min(HELD_ATTR_TTL),
            None => Duration::ZERO,
        };
        Some((a, keep))
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some((a, _)) = self.held_getattr(ino) {
            return Ok(a);
        }
        let generation = self.attr_generation.load(Ordering::SeqCst);
        let a = attr(self.call(FsOp::GetAttr { ino }).await?)?;
        self.keep_attr(&a, generation);
        Ok(self.with_local(a))
    }

    pub async fn setattr(&self, ino: u64, change: SetAttr) -> FsResult<Attr> {
        // Report writes first: a truncate must see (and cut) every byte written before it.
        self.report(ino).await?;
        let size = change.size;
        let changes = self.changes_of(ino);
        let a = attr(self.call(FsOp::SetAttr { ino, change }).await?)?;
        if let (Some(size), Some(f)) = (size, self.files().get_mut(&ino)) {
            // Another client's write heard of meanwhile may have grown the file again.
            f.size = (f.changes == changes).then_some(size);
            f.durable_size = size;
        }
        Ok(a)
    }

    pub async fn mknod(
        &self,
        parent: u64,
        name: impl Into<Name>,
        mode: u32,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let op = FsOp::Mknod {
            parent,
            name: name.into(),
            mode,
            rdev,
            caller,
        };
        attr(self.call(op).await?)
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: impl Into<Name>,
        mode: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        attr(
            self.call(FsOp::Mkdir {
                parent,
                name: name.into(),
                mode,
                caller,
            })
            .await?,
        )
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: impl Into<Name>,
        target: impl Into<Name>,
        caller: Caller,
    ) -> FsResult<Attr> {
        let op = FsOp::Symlink {
            parent,
            name: name.into(),
            target: target.into(),
            caller,
        };
        attr(self.call(op).await?)
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Name> {
        match self.call(FsOp::ReadLink { ino }).await? {
            FsReply::Target(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    pub async fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: impl Into<Name>,
    ) -> FsResult<Attr> {
        attr(
            self.call(FsOp::Link {
                ino,
                new_parent,
                new_name: new_name.into(),
            })
            .await?,
        )
    }

    pub async fn unlink(&self, parent: u64, name: impl Into<Name>) -> FsResult<()> {
        done(
            self.call(FsOp::Unlink {
                parent,
                name: name.into(),
            })
            .await?,
        )
    }

    pub async fn rmdir(&self, parent: u64, name: impl Into<Name>) -> FsResult<()> {
        done(
            self.call(FsOp::Rmdir {
                parent,
                name: name.into(),
            })
            .await?,
        )
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: impl Into<Name>,
        new_parent: u64,
        new_name: impl Into<Name>,
        flags: u32,
    ) -> FsResult<()> {
        let op = FsOp::Rename {
            parent,
            name: name.into(),
            new_parent,
            new_name: new_name.into(),
            flags,
        };
        done(self.call(op).await?)
    }

    pub async fn readdir(
        &self,
        ino: u64,
        after: impl Into<Name>,
        max: u32,
    ) -> FsResult<Vec<DirEntry>> {
        match self
            .call(FsOp::ReadDir {
                ino,
                after: after.into(),
                max,
            })
            .await?
        {
            FsReply::Entries(e) => Ok(e),
            other => Err(unexpected(other)),
        }
    }

    /// Opens a file (for writing when `write`): its size is read now. Returns whether what
    /// this client cached of the file's data may be kept: no other client can have changed
    /// it since this one last held the file's exclusive capability.
    pub async fn open(&self, ino: u64, write: bool) -> FsResult<bool> {
        let _counting = self.opens_in_flight.read().await;
        let recalls = self.count_open(ino, write, true);
        let changes = self.changes_of(ino);
        match self.call(FsOp::Open { ino, write }).await.and_then(opened) {
            Ok((a, exclusive, cache_kept)) => {
                if let Some(f) = self.files().get_mut(&ino) {
                    // A change heard of meanwhile may be newer than the size in the answer.
                    f.size = (f.changes == changes)
                        .then(|| a.size.max(f.unreported.map_or(0, |w| w.end)));
                    f.durable_size = a.size;
                    // A recall that came meanwhile may have been of this very grant. Other
                    // files' recalls and this client's own changes say nothing of it.
                    f.exclusive = exclusive && f.recalls == recalls;
                    f.drop_cached();
                    f.cached = f.exclusive.then_some(a);
                }
                // Attributes fetched before this grant must not replace its own.
                self.attr_generation.fetch_add(1, Ordering::SeqCst);
                Ok(cache_kept)
            }
            Err(e) => {
                self.count_open(ino, write, false);
                self.forget_if_closed(ino, false);
                Err(e)
            }
        }
    }

    /// Counts an open (`up`) or a release of `ino`; returns the file's recalls so far.
    fn count_open(&self, ino: u64, write: bool, up: bool) -> u64 {
        let mut files = self.files();
        let f = files.entry(ino).or_default();
        let n = if write {
            &mut f.writers
        } else {
            &mut f.readers
        };
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
        if f.readers + f.writers == 0 {
            // The MDS ends the capability with the last open.
            f.exclusive = false;
            f.drop_cached();
        }
        f.recalls
    }

    /// Forgets a file no longer open here, unless writes to it are still to report (and
    /// `reported_or_gone` does not say there is nothing to report them to).
    fn forget_if_closed(&self, ino: u64, reported_or_gone: bool) {
        let mut files = self.files();
        if let Some(f) = files.get(&ino) {
            if f.readers + f.writers == 0 && (f.unreported.is_none() || reported_or_gone) {
                files.remove(&ino);
            }
        }
    }

    /// Reads up to `size` bytes at `offset`; holes read as zeros; short only at end of file.
    pub async fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let known = self.files().get(&ino).and_then(|f| f.size);
        let file_size = match known {
            Some(s) => s,
            None => self.size_for_reads(ino).await?,
        };
        let end = file_size.min(offset.saturating_add(size as u64));
        if end <= offset {
            return Ok(Vec::new());
        }
        let io = self.io_of(ino);
        let _reading = io.read().await;
        let pieces = try_join_all(
            pieces(offset, end - offset)
                .map(|(index, at, len)| self.read_piece(ino, index, at, len)),
        )
        .await?;
        let mut data = pieces.concat();
        if let Some(f) = self.files().get(&ino) {
            // Buffered writes: none can have been sent meanwhile (that takes `io`).
            f.dirty.overlay(offset, &mut data);
        }
        Ok(data)
    }

    /// The size of `ino` as the MDS has it now (with this client's writes), kept for the
    /// next reads unless another change was heard of meanwhile. Asked without recalling
    /// writers: the read may hold pages the kernel waits for before this client answers a
    /// writer's change.
    async fn size_for_reads(&self, ino: u64) -> FsResult<u64> {
        let changes = self.changes_of(ino);
        let held = attr(self.call(FsOp::Peek { ino }).await?)?.size;
        let mut files = self.files();
        let Some(f) = files.get_mut(&ino) else {
            return Ok(held);
        };
        // This client's writes, also those that completed meanwhile.
        let size = held.max(f.unreported.map_or(0, |w| w.end));
        // Without a lease, a change could come unheard of: ask again next time.
        if f.changes == changes && self.lease_fresh() {
            f.size = Some(size);
        }
        Ok(size)
    }

    /// The lock ordering a file's reads and writes against the sending of its buffer.
    fn io_of(&self, ino: u64) -> Arc<tokio::sync::RwLock<()>> {
        self.files()
            .get(&ino)
            .map(|f| f.io.clone())
            .unwrap_or_default()
    }

    async fn read_piece(&self, ino: u64, index: u64, at: u64, len: u64) -> FsResult<Vec<u8>> {
        let mut data = match self
            .rados
            .read(&self.data_pool, &data_object(ino, index), at, len)
            .await
        {
            Ok(d) => d,
            Err(ClientError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        data.resize(len as usize, 0);
        Ok(data)
    }

    pub async fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let len =
            u32::try_from(data.len()).map_err(|_| fs_error(fsops::EFBIG, "write too large"))?;
        if self.buffer(ino, offset, data) {
            if self.dirty_bytes.load(Ordering::SeqCst) > self.dirty_bytes_max {
                self.send_buffered(ino).await?;
            }
            return Ok(len);
        }
        // Written through: older buffered data goes first, so it cannot land over this.
        self.send_buffered(ino).await?;
        let io = self.io_of(ino);
        let _writing = io.read().await;
        self.write_out(ino, offset, data).await?;
        let mut files = self.files();
        files
            .entry(ino)
            .or_default()
            .wrote(offset + data.len() as u64);
        Ok(len)
    }

    /// Writes `data` at `offset` of the file to its objects, every piece at once.
    async fn write_out(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<()> {
        try_join_all(pieces(offset, data.len() as u64).map(|(index, at, n)| {
            let from = (index * OBJECT_BYTES + at - offset) as usize;
            let chunk = data[from..from + n as usize].to_vec();
            let object = data_object(ino, index);
            async move { self.rados.write(&self.data_pool, &object, at, chunk).await }
        }))
        .await?;
        Ok(())
    }

    /// Keeps a write in the file's buffer if this client holds the file's capability (no
    /// other client can look at the file without recalling it first).
    fn buffer(&self, ino: u64, offset: u64, data: &[u8]) -> bool {
        let fresh = self.lease_fresh();
        let mut files = self.files();
        let Some(f) = files.get_mut(&ino).filter(|f| f.exclusive && fresh) else {
            return false;
        };
        let grown = f.dirty.write(offset, data);
        self.dirty_bytes.fetch_add(grown, Ordering::SeqCst);
        f.dirty_since.get_or_insert_with(Instant::now);
        f.wrote(offset + data.len() as u64);
        true
    }

    /// Sends the file's buffered writes to the OSDs. On failure they stay buffered (under
    /// anything written since), to be sent again by the next attempt.
    async fn send_buffered(&self, ino: u64) -> FsResult<()> {
        let io = match self.files().get(&ino) {
            Some(f) if !f.dirty.is_empty() => f.io.clone(),
            _ => return Ok(()),
        };
        let _sending = io.write().await;
        let (taken, bytes) = {
            let mut files = self.files();
            let Some(f) = files.get_mut(&ino) else {
                return Ok(());
            };
            f.dirty_since = None;
            let bytes = f.dirty.bytes();
            (f.dirty.take(), bytes)
        };
        let sent = try_join_all(
            taken
                .iter()
                .map(|(offset, data)| self.write_out(ino, *offset, data)),
        )
        .await;
        if let Err(e) = sent {
            if let Some(f) = self.files().get_mut(&ino) {
                let before = f.dirty.bytes();
                f.dirty.restore(taken);
                f.dirty_since.get_or_insert_with(Instant::now);
                self.dirty_bytes
                    .fetch_add(f.dirty.bytes() - before, Ordering::SeqCst);
            }
            self.dirty_bytes.fetch_sub(bytes, Ordering::SeqCst);
            return Err(e);
        }
        self.dirty_bytes.fetch_sub(bytes, Ordering::SeqCst);
        Ok(())
    }

    /// Sends the buffered writes of every file (the capabilities went), or only of those
    /// buffered for longer than `DIRTY_AGE_MAX` when `old_only`.
    async fn send_all_buffered(&self, old_only: bool) {
        let due: Vec<u64> = self
            .files()
            .iter()
            .filter(|(_, f)| {
                f.dirty_since
                    .is_some_and(|since| !old_only || since.elapsed() >= DIRTY_AGE_MAX)
            })
            .map(|(ino, _)| *ino)
            .collect();
        for ino in due {
            if let Err(e) = self.send_buffered(ino).await {
                tracing::warn!(ino, error = %e, "cannot send buffered writes yet; kept for the next attempt");
            }
        }
    }

    /// Sends the file's buffered writes, then tells the MDS the size and mtime this client's
    /// writes gave the file.
    async fn report(&self, ino: u64) -> FsResult<()> {
        self.report_answering(ino, 0).await
    }

    /// [`FsClient::report`] in answer to `recall` (0: none).
    async fn report_answering(&self, ino: u64, recall: u64) -> FsResult<()> {
        self.send_buffered(ino).await?;
        let pending = self.files().get(&ino).and_then(|f| f.unreported);
        if let Some(w) = pending {
            self.call(FsOp::Written {
                ino,
                size: w.end,
                mtime_ns: w.mtime_ns,
                recall,
            })
            .await?;
            if let Some(f) = self.files().get_mut(&ino) {
                f.durable_size = f.durable_size.max(w.end);
                // Writes that came in meanwhile stay to report.
                if f.unreported == Some(w) {
                    f.unreported = None;
                }
            }
        }
        Ok(())
    }

    pub async fn flush(&self, ino: u64) -> FsResult<()> {
        self.report(ino).await
    }

    /// Data is durable once written (the OSDs acknowledge only then); the size and mtime
    /// are durable once the MDS has journaled them. `datasync` (fdatasync) needs the size
    /// only: writes within a size the MDS already holds (a database's preallocated log)
    /// need no MDS round trip.
    pub async fn fsync(&self, ino: u64, datasync: bool) -> FsResult<()> {
        let size_durable = self
            .files()
            .get(&ino)
            .is_some_and(|f| f.unreported.is_none_or(|w| w.end <= f.durable_size));
        if datasync && size_durable {
            return self.send_buffered(ino).await;
        }
        self.report(ino).await
    }

    pub async fn release(&self, ino: u64, write: bool) -> FsResult<()> {
        let _counting = self.opens_in_flight.read().await;
        // The MDS ends the capability with the last close: end it here first, so that
        // nothing answered under it outlives it.
        if self
            .files()
            .get(&ino)
            .is_some_and(|f| f.readers + f.writers == 1)
        {
            self.end_capabilities(Some(ino));
        }
        let reported = match self.report(ino).await {
            Ok(()) => self.call(FsOp::Release { ino, write }).await.map(|_| ()),
            failed => failed,
        };
        // A file removed meanwhile has nothing left to report to.
        let gone = matches!(&reported, Err(e) if e.errno == fsops::ENOENT);
        self.count_open(ino, write, false);
        self.forget_if_closed(ino, gone);
        if gone {
            return Ok(());
        }
        reported
    }

    pub async fn statfs(&self) -> FsResult<StatFs> {
        let usage = self.rados.monc().status().await?.usage;
        let files = match self.call(FsOp::Files).await? {
            FsReply::Count(n) => n,
            other => return Err(unexpected(other)),
        };
        Ok(StatFs {
            bytes_total: usage.total_bytes,
            bytes_avail: usage.available(),
            files,
            block_size: 4096,
            name_max: fsops::NAME_BYTES_MAX as u32,
        })
    }

    pub async fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        let op = FsOp::SetXattr {
            ino,
            name: name.to_string(),
            value: value.to_vec(),
            flags,
        };
        self.call(op).await.map(|_| ())
    }

    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        let no_such = || fs_error(fsops::ENODATA, format!("no attribute {name}"));
        if let Some(held) = self.held_xattr(ino, name) {
            return held.ok_or_else(no_such);
        }
        let generation = self.attr_generation.load(Ordering::SeqCst);
        let answer = self
            .call(FsOp::GetXattr {
                ino,
                name: name.to_string(),
            })
            .await;
        let value = match answer {
            Ok(FsReply::Value(v)) => Some(v),
            Err(e) if e.errno == fsops::ENODATA => None,
            Ok(other) => return Err(unexpected(other)),
            Err(e) => return Err(e),
        };
        self.keep_xattr(ino, name, &value, generation);
        value.ok_or_else(no_such)
    }

    /// What the MDS said of `ino`'s attribute `name`, if this client holds the file.
    fn held_xattr(&self, ino: u64, name: &str) -> Option<Option<Vec<u8>>> {
        self.with_held(ino, |f| f.xattrs.get(name).cloned())
    }

    /// Keeps an answer about an extended attribute as `keep_attr` keeps attributes.
    fn keep_xattr(&self, ino: u64, name: &str, value: &Option<Vec<u8>>, generation: u64) {
        let mut files = self.files();
        if let Some(f) = files.get_mut(&ino) {
            if f.exclusive
                && self.attr_generation.load(Ordering::SeqCst) == generation
                && f.xattrs.len() < XATTRS_HELD_MAX
            {
                f.xattrs.insert(name.to_string(), value.clone());
            }
        }
    }

    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<String>> {
        match self.call(FsOp::ListXattr { ino }).await? {
            FsReply::Names(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub async fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        self.call(FsOp::RemoveXattr {
            ino,
            name: name.to_string(),
        })
        .await
        .map(|_| ())
    }
}

enum Retry {
    Later(String),
    Fail(FsError),
}

/// The client's session: keeps a stream open at the active MDS (reopening it after a
/// failover) and answers the recalls that come through it, until the client is dropped.
async fn run_session(client: Weak<FsClient>) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let opened = {
            let Some(c) = client.upgrade() else { return };
            // After a failure the map may lag behind a failover: ask the mons.
            c.open_session(failures > 0).await
        };
        match opened {
            Ok(mut stream) => {
                backoff = BACKOFF_MIN;
                failures = 0;
                // Pages read while no stream was up may predate a change nobody could tell
                // this client of.
                if let Some(c) = client.upgrade() {
                    c.forget_all_data_soon();
                }
                loop {
                    let Some(lease_left) = client.upgrade().map(|c| c.lease_left()) else {
                        return;
                    };
                    let event = tokio::select! {
                        next = tokio::time::timeout(SESSION_SILENCE_MAX, stream.message()) => {
                            match next {
                                Ok(Ok(Some(event))) => event,
                                _ => break,
                            }
                        }
                        // Past the lease the MDS may let another client change a file without
                        // this one hearing of it: the kernel's pages must not outlive it.
                        () = tokio::time::sleep(lease_left), if !lease_left.is_zero() => {
                            let Some(c) = client.upgrade() else { return };
                            if !c.lease_fresh() {
                                c.forget_all_data_soon();
                            }
                            continue;
                        }
                    };
                    let Some(c) = client.upgrade() else { return };
                    if event.recall == 0 {
                        c.heard_from_mds(Duration::from_millis(event.lease_ms));
                        // Ten heartbeats a second: look for old buffered data only if any.
                        if c.dirty_bytes.load(Ordering::SeqCst) > 0 {
                            tokio::spawn(async move { c.send_all_buffered(true).await });
                        }
                    } else {
                        tokio::spawn(async move { c.answer_recall(event).await });
                    }
                }
                if let Some(c) = client.upgrade() {
                    // Without the capability, buffered data must be where others can read it.
                    c.drop_capabilities();
                    c.send_all_buffered(false).await;
                    c.forget_all_data_soon();
                }
                tracing::info!("the MDS session stream ended; reconnecting");
            }
            Err(Retry::Fail(e)) => {
                tracing::error!(error = %e, "the MDS evicted this client: its session is over, and reads and writes fail until it is mounted again");
                return;
            }
            Err(Retry::Later(why)) => {
                failures += 1;
                tracing::debug!(error = %why, "cannot open the MDS session yet");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Splits the byte range `[offset, offset + len)` of a file into `(object index, offset in
/// the object, length)` pieces.
fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let index = at / OBJECT_BYTES;
        let within = at % OBJECT_BYTES;
        let n = (OBJECT_BYTES - within).min(end - at);
        at += n;
        Some((index, within, n))
    })
}

fn opened(reply: FsReply) -> FsResult<(Attr, bool, bool)> {
    match reply {
        FsReply::Opened {
            attr,
            exclusive,
            cache_kept,
        } => Ok((attr, exclusive, cache_kept)),
        other => Err(unexpected(other)),
    }
}

fn attr(reply: FsReply) -> FsResult<Attr> {
    match reply {
        FsReply::Attr(a) => Ok(a),
        other => Err(unexpected(other)),
    }
}

fn done(reply: FsReply) -> FsResult<()> {
    match reply {
        FsReply::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(reply: FsReply) -> FsError {
    fs_error(fsops::EIO, format!("the MDS answered {reply:?}"))
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_object_boundaries() {
        let got: Vec<_> = pieces(OBJECT_BYTES - 10, 30).collect();
        assert_eq!(got, vec![(0, OBJECT_BYTES - 10, 10), (1, 0, 20)]);
        assert_eq!(pieces(5, 0).count(), 0);
        let whole: u64 = pieces(3, 3 * OBJECT_BYTES).map(|p| p.2).sum();
        assert_eq!(whole, 3 * OBJECT_BYTES);
    }
}
