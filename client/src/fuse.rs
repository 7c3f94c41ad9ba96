//! The FUSE mount of a Cairn shared filesystem (`cairn mount`), on the pure-Rust `fuser`:
//! no libfuse, and as root the kernel mount is made directly.
//!
//! Two choices shape it:
//! - **The kernel caches little past one call.** Entries and attributes are returned with a
//!   TTL of zero, so every lookup, `stat` and permission check asks the client (which asks
//!   the MDS unless it holds the file's exclusive capability; then the kernel may keep the
//!   answer within the capability's lease until told to forget it), and a file's page cache is
//!   dropped at each open (no `FOPEN_KEEP_CACHE`) unless the MDS says no other client may
//!   have written the file since this one last held its exclusive capability. A file kept
//!   open loses its cached pages too when another client changes its data or size: the MDS
//!   tells every other opener before it records a writer's report (fsync, close) or a
//!   truncate, and the client has the kernel drop the pages before it answers.
//!   Two mounts of one filesystem thus see each other's metadata changes at once, and each
//!   other's data once the writer's close returned, also through handles opened before.
//! - **fuser's request thread never waits on the network.** Each callback moves its reply
//!   into a task on the tokio runtime and returns, so many requests are in flight at once.
//!
//! Inode numbers are the MDS's, except that the mounted directory (not the filesystem's root
//! when a sub-path is mounted) is FUSE's root inode 1.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, BsdFileFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow,
    WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{
    Attr, Caller, DirEntry, FsClient, FsError, FsResult, KernelCache, Name, SetAttr, StatFs,
};

/// How long the kernel may trust an entry or attributes: not at all (see the module doc).
const TTL: Duration = Duration::ZERO;
/// The I/O size `stat` suggests.
const BLOCK_SIZE: u32 = 64 * 1024;
/// The largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1024 * 1024;
/// Directory entries asked of the MDS at a time when listing a directory.
const READDIR_PAGE: u32 = 1024;
/// The free inodes `statfs` reports: the MDS sets no limit, and `df -i` shows the used count.
const FREE_INODES: u64 = 1 << 32;

/// How to mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let users other than the one mounting use the mount (mode bits still apply).
    pub allow_other: bool,
    /// Refuse every change.
    pub read_only: bool,
    /// The kernel's read-ahead on the mount, in KiB (0: the kernel's default, 128 KiB). A
    /// sequential reader has this much asked for at once, in requests served in parallel.
    pub readahead_kb: u32,
}

/// Mounts `fs` at `mountpoint`, serving requests on `runtime`. The mount lasts as long as the
/// returned session: dropping it unmounts. Blocks until the kernel has set the mount up.
pub fn mount(
    fs: Arc<FsClient>,
    runtime: Handle,
    mountpoint: &Path,
    opts: &MountOptions,
) -> io::Result<BackgroundSession> {
    let mut config = fuser::Config::default();
    // The kernel checks mode bits, owners and groups itself (`access` is never called).
    config.mount_options = vec![
        MountOption::FSName("cairn".to_owned()),
        MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        config.mount_options.push(MountOption::RO);
    }
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    let inodes = Inodes { root: fs.root() };
    let session = fuser::spawn_mount(CairnFs::new(fs.clone(), runtime), mountpoint, &config)?;
    if opts.readahead_kb > 0 {
        if let Err(e) = set_readahead(mountpoint, opts.readahead_kb) {
            tracing::warn!(error = %e, "cannot set the mount's read-ahead; the kernel's default stays");
        }
    }
    fs.set_kernel_cache(Arc::new(KernelNotifier {
        notifier: session.notifier(),
        inodes,
    }));
    Ok(session)
}

/// Tells this mount's kernel to forget what it caches of an inode.
struct KernelNotifier {
    notifier: fuser::Notifier,
    inodes: Inodes,
}

impl KernelCache for KernelNotifier {
    fn forget_attrs(&self, ino: u64) {
        // Offset -1: attributes only, so no page is waited for.
        let _ = self.notifier.inval_inode(self.inodes.to_fuse(ino), -1, 0);
    }

    fn forget_pages(&self, ino: u64) {
        // Offset 0, length 0: every page (and the attributes). An inode the kernel does not
        // know has nothing cached.
        let _ = self.notifier.inval_inode(self.inodes.to_fuse(ino), 0, 0);
    }
}

/// Sets the read-ahead of the mount's backing device: FUSE offers the kernel no more than its
/// default at init, but the device's setting can be raised once mounted.
fn set_readahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(mountpoint)?.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(&path, kb.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
}

/// The `fuser::Filesystem` over a [`FsClient`].
struct CairnFs {
    fs: Arc<FsClient>,
    runtime: Handle,
    inodes: Inodes,
    dirs: Arc<OpenDirs>,
}

impl CairnFs {
    fn new(fs: Arc<FsClient>, runtime: Handle) -> Self {
        let inodes = Inodes { root: fs.root() };
        Self {
            fs,
            runtime,
            inodes,
            dirs: Arc::default(),
        }
    }

    fn client(&self) -> Arc<FsClient> {
        Arc::clone(&self.fs)
    }

    /// Runs `task`, which replies to the kernel, off fuser's request thread, and records how
    /// long the kernel waited for the answer to `op`.
    fn spawn(&self, op: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.runtime.spawn(async move {
            let started = std::time::Instant::now();
            task.await;
            metrics::histogram!("cairn_fuse_op_seconds", "op" => op)
                .record(started.elapsed().as_secs_f64());
        });
    }
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(limit) = config.set_max_write(MAX_WRITE) {
            tracing::debug!(limit, "FUSE max_write refused");
        }
        // Lookups and listings in one directory need not wait for each other.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS) {
            tracing::debug!(?missing, "the kernel lacks parallel directory operations");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = fs_name(name);
        let (fs, inodes) = (self.client(), self.inodes);
        self.spawn("lookup", async move {
            let found = fs.lookup(inodes.to_mds(parent), &name).await;
            reply_entry(inodes, reply, found);
        });
    }

    /// Inode numbers are the MDS's and outlive the kernel's references: nothing to drop.
    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {}

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, inodes) = (self.client(), self.inodes);
        // Attributes this client holds need no network: answered here, with no hand-off,
        // and the kernel may keep them a while.
        let held = fs.held_replies();
        if let Some((a, keep)) = fs.held_getattr(inodes.to_mds(ino)) {
            metrics::counter!("cairn_fuse_getattr_held_total").increment(1);
            return reply.attr(&keep, &inodes.file_attr(&a));
        }
        drop(held);
        self.spawn("getattr", async move {
            let attr = fs.getattr(inodes.to_mds(ino)).await;
            reply_attr(inodes, reply, attr);
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime_ns: atime.map(time_ns),
            mtime_ns: mtime.map(time_ns),
        };
        let (fs, inodes) = (self.client(), self.inodes);
        self.spawn("setattr", async move {
            let attr = fs.setattr(inodes.to_mds(ino), change).await;
            reply_attr(inodes, reply, attr);
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn("readlink", async move {
            match fs.readlink(ino).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = fs_name(name);
        let (fs, inodes, caller) = (self.client(), self.inodes, caller(req));
        self.spawn("mknod", async move {
            let made = fs
                .mknod(inodes.to_mds(parent), &name, mode, rdev, caller)
                .await;
            reply_entry(inodes, reply, made);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let name = fs_name(name);
        let (fs, inodes, caller) = (self.client(), self.inodes, caller(req));
        self.spawn("mkdir", async move {
            let made = fs.mkdir(inodes.to_mds(parent), &name, mode, caller).await;
            reply_entry(inodes, reply, made);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = fs_name(name);
        let (fs, parent) = (self.client(), self.inodes.to_mds(parent));
        self.spawn("unlink", async move {
            reply_empty(reply, fs.unlink(parent, &name).await)
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = fs_name(name);
        let (fs, parent) = (self.client(), self.inodes.to_mds(parent));
        self.spawn("rmdir", async move {
            reply_empty(reply, fs.rmdir(parent, &name).await)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = (fs_name(link_name), fs_name(target.as_os_str()));
        let (fs, inodes, caller) = (self.client(), self.inodes, caller(req));
        self.spawn("symlink", async move {
            let made = fs
                .symlink(inodes.to_mds(parent), &name, &target, caller)
                .await;
            reply_entry(inodes, reply, made);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (fs_name(name), fs_name(newname));
        let (fs, inodes) = (self.client(), self.inodes);
        let (parent, newparent) = (inodes.to_mds(parent), inodes.to_mds(newparent));
        self.spawn("rename", async move {
            let renamed = fs
                .rename(parent, &name, newparent, &newname, flags.bits())
                .await;
            reply_empty(reply, renamed);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = fs_name(newname);
        let (fs, inodes) = (self.client(), self.inodes);
        let (ino, newparent) = (inodes.to_mds(ino), inodes.to_mds(newparent));
        self.spawn("link", async move {
            let linked = fs.link(ino, newparent, &newname).await;
            reply_entry(inodes, reply, linked);
        });
    }

    /// `FOPEN_KEEP_CACHE` only when the MDS says no other client may have written the file
    /// since this one last held it exclusively: otherwise the kernel drops the file's cached
    /// pages (close-to-open).
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn("open", async move {
            match fs.open(ino, writes(flags)).await {
                Ok(true) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
                Ok(false) => reply.opened(FileHandle(0), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn("read", async move {
            match fs.read(ino, offset, size).await {
                Ok(data) => {
                    reply.data(&data);
                    fs.read_answered(ino);
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (fs, ino, data) = (self.client(), self.inodes.to_mds(ino), data.to_vec());
        self.spawn("write", async move {
            match fs.write(ino, offset, &data).await {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn(
            "flush",
            async move { reply_empty(reply, fs.flush(ino).await) },
        );
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        let (fs, ino, write) = (self.client(), self.inodes.to_mds(ino), writes(flags));
        self.spawn("release", async move {
            reply_empty(reply, flush_and_release(&fs, ino, write, flush).await)
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn("fsync", async move {
            reply_empty(reply, fs.fsync(ino, datasync).await)
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(self.dirs.open(), FopenFlags::empty());
    }

    /// The kernel resumes a listing at the offset of the last entry it took, so entries carry
    /// their index + 1 in a listing kept per open directory. A read from offset 0 (a new
    /// open, or `rewinddir`) lists the directory afresh.
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let (fs, inodes, dirs) = (self.client(), self.inodes, Arc::clone(&self.dirs));
        self.spawn("readdir", async move {
            let kept = if offset == 0 { None } else { dirs.listing(fh) };
            let listing = match kept {
                Some(listing) => listing,
                None => match list_dir(&fs, inodes, ino).await {
                    Ok(listing) => dirs.keep(fh, listing),
                    Err(e) => return reply.error(errno(&e)),
                },
            };
            fill_directory(reply, &listing, offset);
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.release(fh);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let fs = self.client();
        self.spawn("statfs", async move {
            match fs.statfs().await {
                Ok(stats) => reply_statfs(reply, &stats),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::EINVAL);
        };
        let (fs, ino, value) = (self.client(), self.inodes.to_mds(ino), value.to_vec());
        self.spawn("setxattr", async move {
            reply_empty(reply, fs.setxattr(ino, &name, &value, flags).await);
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::EINVAL);
        };
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn("getxattr", async move {
            match fs.getxattr(ino, &name).await {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn("listxattr", async move {
            match fs.listxattr(ino).await {
                Ok(names) => reply_xattr(reply, size, &nul_terminated(&names)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::EINVAL);
        };
        let (fs, ino) = (self.client(), self.inodes.to_mds(ino));
        self.spawn("removexattr", async move {
            reply_empty(reply, fs.removexattr(ino, &name).await)
        });
    }

    /// Not called under `default_permissions`, where the kernel checks access itself.
    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = fs_name(name);
        let (fs, inodes, caller) = (self.client(), self.inodes, caller(req));
        let write = writes(OpenFlags(flags));
        self.spawn("create", async move {
            match create_and_open(&fs, inodes.to_mds(parent), &name, mode, write, caller).await {
                Ok(attr) => reply.created(
                    &TTL,
                    &inodes.file_attr(&attr),
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }
}

/// Creates regular file `name` in `parent` and opens it, as `open(O_CREAT)` does.
async fn create_and_open(
    fs: &FsClient,
    parent: u64,
    name: &Name,
    mode: u32,
    write: bool,
    caller: Caller,
) -> FsResult<Attr> {
    let mode = libc::S_IFREG | (mode & !libc::S_IFMT);
    let attr = fs.mknod(parent, name, mode, 0, caller).await?;
    fs.open(attr.ino, write).await?;
    Ok(attr)
}

/// Whether a file is opened for writing (the MDS then recalls its size from this client
/// when another asks).
fn writes(flags: OpenFlags) -> bool {
    flags.0 & libc::O_ACCMODE != libc::O_RDONLY
}

/// The last close of an open file, flushing it first when the kernel asks to.
async fn flush_and_release(fs: &FsClient, ino: u64, write: bool, flush: bool) -> FsResult<()> {
    let flushed = if flush { fs.flush(ino).await } else { Ok(()) };
    let released = fs.release(ino, write).await;
    flushed.and(released)
}

/// FUSE inode numbers: the MDS's, with the mounted directory and FUSE's root (1) swapped.
/// Swapping, rather than only mapping the mounted directory to 1, keeps the mapping one to
/// one should the filesystem's own root (MDS inode 1) be reached from a mounted sub-path.
#[derive(Clone, Copy)]
struct Inodes {
    root: u64,
}

impl Inodes {
    fn to_mds(self, ino: INodeNo) -> u64 {
        self.swap(ino.0)
    }

    fn to_fuse(self, ino: u64) -> INodeNo {
        INodeNo(self.swap(ino))
    }

    fn swap(self, ino: u64) -> u64 {
        if ino == self.root {
            INodeNo::ROOT.0
        } else if ino == INodeNo::ROOT.0 {
            self.root
        } else {
            ino
        }
    }

    fn file_attr(self, attr: &Attr) -> FileAttr {
        let ctime = system_time(attr.ctime_ns);
        FileAttr {
            ino: self.to_fuse(attr.ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: system_time(attr.atime_ns),
            mtime: system_time(attr.mtime_ns),
            ctime,
            crtime: ctime,
            kind: file_type(attr.mode),
            perm: (attr.mode & 0o7777) as u16,
            nlink: attr.nlink,
            uid: attr.uid,
            gid: attr.gid,
            rdev: attr.rdev,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }
}

/// One entry of a directory listing, as the kernel is sent it.
struct Entry {
    ino: INodeNo,
    kind: FileType,
    name: Name,
}

type Listing = Arc<[Entry]>;

/// The listings of open directories, by file handle. A handle's listing is kept from its
/// first read until it is released, so the offsets the kernel resumes from stay valid.
#[derive(Default)]
struct OpenDirs {
    next: AtomicU64,
    listings: Mutex<HashMap<FileHandle, Option<Listing>>>,
}

impl OpenDirs {
    fn open(&self) -> FileHandle {
        let fh = FileHandle(self.next.fetch_add(1, Ordering::Relaxed));
        self.lock().insert(fh, None);
        fh
    }

    fn listing(&self, fh: FileHandle) -> Option<Listing> {
        self.lock().get(&fh).cloned().flatten()
    }

    /// Keeps `listing` for `fh`, unless the handle was released meanwhile, and returns it.
    fn keep(&self, fh: FileHandle, listing: Listing) -> Listing {
        if let Some(kept) = self.lock().get_mut(&fh) {
            *kept = Some(Arc::clone(&listing));
        }
        listing
    }

    fn release(&self, fh: FileHandle) {
        self.lock().remove(&fh);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<FileHandle, Option<Listing>>> {
        // The map stays consistent whatever panicked while holding it.
        self.listings.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// All of directory `dir`, "." and ".." first, paging through the MDS's listing.
async fn list_dir(fs: &FsClient, inodes: Inodes, dir: INodeNo) -> FsResult<Listing> {
    let mut entries: Vec<DirEntry> = Vec::new();
    loop {
        let after = entries.last().map_or(Name::default(), |e| e.name.clone());
        let page = fs.readdir(inodes.to_mds(dir), after, READDIR_PAGE).await?;
        let last = page.len() < READDIR_PAGE as usize;
        entries.extend(page);
        if last {
            break;
        }
    }
    let dots = [".", ".."].map(|name| Entry {
        ino: dir,
        kind: FileType::Directory,
        name: Name::from(name),
    });
    let named = entries.into_iter().map(|e| Entry {
        ino: inodes.to_fuse(e.ino),
        kind: file_type(e.mode),
        name: e.name,
    });
    Ok(dots.into_iter().chain(named).collect())
}

/// Sends the entries after `offset`, as many as the kernel's buffer holds.
fn fill_directory(mut reply: ReplyDirectory, listing: &[Entry], offset: u64) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    for (index, entry) in listing.iter().enumerate().skip(start) {
        if reply.add(
            entry.ino,
            index as u64 + 1,
            entry.kind,
            OsStr::from_bytes(entry.name.as_bytes()),
        ) {
            break;
        }
    }
    reply.ok();
}

fn reply_entry(inodes: Inodes, reply: ReplyEntry, result: FsResult<Attr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &inodes.file_attr(&attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_attr(inodes: Inodes, reply: ReplyAttr, result: FsResult<Attr>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &inodes.file_attr(&attr)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: FsResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// An xattr value or name list: its size when asked (`size` 0), else the data if it fits.
fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    match u32::try_from(data.len()) {
        Err(_) => reply.error(Errno::E2BIG),
        Ok(len) if size == 0 => reply.size(len),
        Ok(len) if len > size => reply.error(Errno::ERANGE),
        Ok(_) => reply.data(data),
    }
}

fn reply_statfs(reply: ReplyStatfs, stats: &StatFs) {
    let block = stats.block_size.max(1);
    let blocks = stats.bytes_total / u64::from(block);
    let avail = stats.bytes_avail / u64::from(block);
    let files = stats.files.saturating_add(FREE_INODES);
    reply.statfs(
        blocks,
        avail,
        avail,
        files,
        FREE_INODES,
        block,
        stats.name_max,
        block,
    );
}

/// xattr names as `listxattr(2)` returns them: each followed by a NUL.
fn nul_terminated(names: &[String]) -> Vec<u8> {
    names.iter().flat_map(|n| n.bytes().chain([0])).collect()
}

/// A name or symlink target as the kernel gave it: any bytes.
fn fs_name(name: &OsStr) -> Name {
    Name::from(name.as_bytes())
}

/// Xattr names are UTF-8 in Cairn: anything else is refused (EINVAL).
fn utf8(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_owned)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn errno(error: &FsError) -> Errno {
    tracing::debug!(errno = error.errno, message = %error.message, "cairn fs call failed");
    Errno::from_i32(error.errno)
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// `ns` nanoseconds after the Unix epoch (before it when negative).
fn system_time(ns: i64) -> SystemTime {
    let distance = Duration::from_nanos(ns.unsigned_abs());
    let time = if ns < 0 {
        UNIX_EPOCH.checked_sub(distance)
    } else {
        UNIX_EPOCH.checked_add(distance)
    };
    time.unwrap_or(UNIX_EPOCH)
}

/// Nanoseconds after the Unix epoch (negative before it), saturating.
fn epoch_ns(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |ns| -ns),
    }
}

fn time_ns(time: TimeOrNow) -> i64 {
    match time {
        TimeOrNow::SpecificTime(time) => epoch_ns(time),
        TimeOrNow::Now => epoch_ns(SystemTime::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mounted_directory_is_fuse_root_both_ways() {
        let inodes = Inodes { root: 42 };
        assert_eq!(inodes.to_fuse(42), INodeNo::ROOT);
        assert_eq!(inodes.to_mds(INodeNo::ROOT), 42);
        assert_eq!(inodes.to_fuse(1), INodeNo(42));
        assert_eq!(inodes.to_mds(INodeNo(42)), 1);
        assert_eq!(inodes.to_fuse(7), INodeNo(7));
        assert_eq!(inodes.to_mds(INodeNo(7)), 7);
        let identity = Inodes { root: 1 };
        assert_eq!(identity.to_fuse(1), INodeNo::ROOT);
        assert_eq!(identity.to_mds(INodeNo::ROOT), 1);
    }

    #[test]
    fn times_round_trip_either_side_of_the_epoch() {
        for ns in [0, 1, 1_700_000_000_123_456_789, -1, -86_400_000_000_001] {
            assert_eq!(epoch_ns(system_time(ns)), ns);
        }
    }

    #[test]
    fn xattr_names_are_nul_terminated() {
        let names = ["user.a".to_owned(), "user.bc".to_owned()];
        assert_eq!(nul_terminated(&names), b"user.a\0user.bc\0");
        assert!(nul_terminated(&[]).is_empty());
    }

    #[test]
    fn file_types_come_from_the_mode() {
        assert_eq!(file_type(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(file_type(libc::S_IFLNK | 0o777), FileType::Symlink);
        assert_eq!(file_type(libc::S_IFREG | 0o644), FileType::RegularFile);
    }
}
