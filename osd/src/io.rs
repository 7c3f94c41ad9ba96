//! Block I/O on the data file: io_uring with O_DIRECT (a ring per calling thread), or, where
//! io_uring is not allowed (a seccomp profile, an old kernel), a pool of threads doing
//! pread/pwrite. Both run batches: all I/Os of a batch are in flight together, and the call
//! returns when every one completed.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use io_uring::{opcode, types, IoUring};

use crate::aligned::AlignedBuf;

/// One I/O of a batch. Reads and writes carry their buffer, returned when the batch ends.
pub enum IoOp {
    Read {
        buf: AlignedBuf,
        offset: u64,
    },
    Write {
        buf: AlignedBuf,
        offset: u64,
    },
    /// fdatasync of the data file: everything written before this batch is durable after it.
    Sync,
}

impl IoOp {
    fn into_buf(self) -> Option<AlignedBuf> {
        match self {
            IoOp::Read { buf, .. } | IoOp::Write { buf, .. } => Some(buf),
            IoOp::Sync => None,
        }
    }

    fn expected_len(&self) -> usize {
        match self {
            IoOp::Read { buf, .. } | IoOp::Write { buf, .. } => buf.len(),
            IoOp::Sync => 0,
        }
    }
}

/// Which backend runs, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, else threads.
    Auto,
    Uring,
    Threads,
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs every op of the batch; returns the buffers of reads and writes in order.
    fn run(&self, ops: Vec<IoOp>) -> io::Result<Vec<AlignedBuf>>;
}

/// Opens the backend for `file`, falling back from io_uring to threads when it must.
pub fn open_backend(
    file: Arc<File>,
    choice: BackendChoice,
    queue_depth: u32,
    threads: usize,
) -> io::Result<Box<dyn Backend>> {
    if choice != BackendChoice::Threads {
        match UringBackend::start(file.clone(), queue_depth) {
            Ok(b) => {
                tracing::info!(queue_depth, "block I/O backend: io_uring");
                return Ok(Box::new(b));
            }
            Err(e) if choice == BackendChoice::Auto => {
                tracing::warn!(error = %e, threads, "io_uring is unavailable; block I/O backend: pread/pwrite threads");
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("io_uring unavailable: {e}"),
                ))
            }
        }
    } else {
        tracing::info!(
            threads,
            "block I/O backend: pread/pwrite threads (configured)"
        );
    }
    Ok(Box::new(ThreadBackend::start(file, threads)))
}

/// Collects one batch's results and hands them back to the caller.
struct Batch {
    ops: Vec<Option<IoOp>>,
    remaining: usize,
    error: Option<io::Error>,
    reply: SyncSender<io::Result<Vec<AlignedBuf>>>,
}

impl Batch {
    fn new(ops: Vec<IoOp>, reply: SyncSender<io::Result<Vec<AlignedBuf>>>) -> Batch {
        Batch {
            remaining: ops.len(),
            ops: ops.into_iter().map(Some).collect(),
            error: None,
            reply,
        }
    }

    /// Records one op's result; returns true when the batch is complete.
    fn complete(&mut self, index: usize, result: io::Result<usize>) -> bool {
        let expected = self.ops[index]
            .as_ref()
            .map(|o| o.expected_len())
            .unwrap_or(0);
        match result {
            Ok(n) if n == expected => {}
            Ok(n) => {
                self.error.get_or_insert_with(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short I/O: {n} of {expected} bytes"),
                    )
                });
            }
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.remaining -= 1;
        self.remaining == 0
    }

    fn finish(self) {
        let result = match self.error {
            Some(e) => Err(e),
            None => Ok(self
                .ops
                .into_iter()
                .flatten()
                .filter_map(IoOp::into_buf)
                .collect()),
        };
        let _ = self.reply.send(result);
    }
}

/// The engine's request channel, unless it has been shut down.
fn sender<T>(slot: &Mutex<Option<Sender<T>>>) -> io::Result<Sender<T>> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| io::Error::other("the I/O engine has stopped"))
}

/// io_uring without a hand-off: each thread that does I/O owns a ring (made by its first
/// batch, dropped when the thread ends) and submits and waits on it itself. A batch's I/Os
/// are in flight together, up to the ring's `queue_depth`. Two context switches per batch
/// through a shared engine thread cost more than the I/O itself on a loaded machine.
pub struct UringBackend {
    file: Arc<File>,
    queue_depth: u32,
}

thread_local! {
    /// This thread's ring, made on first use.
    static RING: RefCell<Option<IoUring>> = const { RefCell::new(None) };
}

impl UringBackend {
    pub fn start(file: Arc<File>, queue_depth: u32) -> io::Result<UringBackend> {
        let mut ring = IoUring::new(queue_depth.max(2))?;
        // The kernel must know the ops we use (read/write/fsync need 5.6).
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Read::CODE, "read"),
            (opcode::Write::CODE, "write"),
            (opcode::Fsync::CODE, "fsync"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel's io_uring lacks {name}"),
                ));
            }
        }
        // Probe: some seccomp profiles allow the setup call but not submission.
        let nop = opcode::Nop::new().build().user_data(u64::MAX);
        // SAFETY: a NOP references no memory.
        unsafe {
            ring.submission()
                .push(&nop)
                .map_err(|_| io::Error::other("submission queue full"))?
        };
        ring.submit_and_wait(1)?;
        ring.completion().for_each(drop);
        Ok(UringBackend {
            file,
            queue_depth: queue_depth.max(2),
        })
    }
}

/// Runs every op of `ops` on `ring`, at most the ring's size in flight at once. `Err(Lost)`
/// means submission failed with I/O possibly still in flight: the kernel may yet write into
/// the buffers, so neither they nor the ring may be freed.
fn run_on_ring(ring: &mut IoUring, fd: types::Fd, ops: &mut [IoOp]) -> Result<(), RingError> {
    let capacity = ring.params().sq_entries() as usize;
    let mut next = 0;
    let mut in_flight = 0usize;
    let mut error: Option<io::Error> = None;
    while next < ops.len() || in_flight > 0 {
        while next < ops.len() && in_flight < capacity {
            let sqe = match &mut ops[next] {
                IoOp::Read { buf, offset } => {
                    opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                        .offset(*offset)
                        .build()
                }
                IoOp::Write { buf, offset } => {
                    opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                        .offset(*offset)
                        .build()
                }
                IoOp::Sync => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
            .user_data(next as u64);
            // SAFETY: the buffer stays in `ops` until its completion is reaped below (or is
            // leaked if the ring fails).
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                break;
            }
            next += 1;
            in_flight += 1;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            match e.raw_os_error() {
                // Interrupted, or the kernel is busy: reap what completed, then try again.
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => return Err(RingError::Lost(e)),
            }
        }
        for cqe in ring.completion() {
            in_flight -= 1;
            let Some(op) = ops.get(cqe.user_data() as usize) else {
                continue;
            };
            let expected = op.expected_len();
            let res = cqe.result();
            if res < 0 {
                error.get_or_insert(io::Error::from_raw_os_error(-res));
            } else if res as usize != expected {
                error.get_or_insert_with(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("short I/O: {res} of {expected} bytes"),
                    )
                });
            }
        }
    }
    error.map_or(Ok(()), |e| Err(RingError::Io(e)))
}

enum RingError {
    /// An op failed; every op has completed.
    Io(io::Error),
    /// The ring itself failed with ops maybe still in flight.
    Lost(io::Error),
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn run(&self, mut ops: Vec<IoOp>) -> io::Result<Vec<AlignedBuf>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let fd = types::Fd(self.file.as_raw_fd());
        RING.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                match IoUring::new(self.queue_depth) {
                    Ok(ring) => *slot = Some(ring),
                    Err(e) => {
                        // Out of ring memory (locked-memory limits on older kernels count
                        // every ring): this batch runs with pread/pwrite, the next tries again.
                        tracing::warn!(error = %e, "cannot make this thread's io_uring ring; using pread/pwrite for this batch");
                        for op in &mut ops {
                            run_sync(&self.file, op)?;
                        }
                        return Ok(ops.into_iter().filter_map(IoOp::into_buf).collect());
                    }
                }
            }
            let ring = slot.as_mut().expect("made above");
            match run_on_ring(ring, fd, &mut ops) {
                Ok(()) => Ok(ops.into_iter().filter_map(IoOp::into_buf).collect()),
                Err(RingError::Io(e)) => Err(e),
                Err(RingError::Lost(e)) => {
                    tracing::error!(error = %e, "io_uring submission failed; this thread's ring is abandoned");
                    // The kernel may still use these buffers and this ring: leak both rather
                    // than free memory a DMA could still write. The thread's next batch makes
                    // a new ring.
                    std::mem::forget(ops);
                    if let Some(ring) = slot.take() {
                        std::mem::forget(ring);
                    }
                    Err(e)
                }
            }
        })
    }
}

/// pread/pwrite on a pool of threads; a batch's I/Os spread over the pool.
pub struct ThreadBackend {
    tx: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Job {
    batch: Arc<Mutex<Batch>>,
    index: usize,
}

impl ThreadBackend {
    pub fn start(file: Arc<File>, threads: usize) -> ThreadBackend {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..threads.max(1))
            .filter_map(|i| {
                let (rx, file) = (rx.clone(), file.clone());
                std::thread::Builder::new()
                    .name(format!("cairn-io-{i}"))
                    .spawn(move || thread_loop(&file, &rx))
                    .ok()
            })
            .collect();
        ThreadBackend {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
        }
    }
}

/// Runs one op with pread/pwrite/fdatasync on the calling thread; answers the bytes moved.
fn run_sync(file: &File, op: &mut IoOp) -> io::Result<usize> {
    match op {
        IoOp::Read { buf, offset } => file.read_exact_at(buf, *offset).map(|_| buf.len()),
        IoOp::Write { buf, offset } => file.write_all_at(buf, *offset).map(|_| buf.len()),
        IoOp::Sync => file.sync_data().map(|_| 0),
    }
}

fn thread_loop(file: &File, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        // Take the op out so the I/O runs without holding the batch lock.
        let op = job.batch.lock().unwrap_or_else(|p| p.into_inner()).ops[job.index].take();
        let (op, result) = match op {
            Some(mut op) => {
                let r = run_sync(file, &mut op);
                (Some(op), r)
            }
            None => (None, Err(io::Error::other("op ran twice"))),
        };
        let mut batch = job.batch.lock().unwrap_or_else(|p| p.into_inner());
        batch.ops[job.index] = op;
        if batch.complete(job.index, result) {
            let (reply_tx, _) = sync_channel(1);
            let done = std::mem::replace(
                &mut *batch,
                Batch {
                    ops: Vec::new(),
                    remaining: 0,
                    error: None,
                    reply: reply_tx,
                },
            );
            drop(batch);
            done.finish();
        }
    }
}

impl Backend for ThreadBackend {
    fn name(&self) -> &'static str {
        "threads"
    }

    fn run(&self, ops: Vec<IoOp>) -> io::Result<Vec<AlignedBuf>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let tx = sender(&self.tx)?;
        let n = ops.len();
        let (reply_tx, reply_rx) = sync_channel(1);
        let batch = Arc::new(Mutex::new(Batch::new(ops, reply_tx)));
        for index in 0..n {
            tx.send(Job {
                batch: batch.clone(),
                index,
            })
            .map_err(|_| io::Error::other("the I/O engine has stopped"))?;
        }
        reply_rx
            .recv()
            .map_err(|_| io::Error::other("the I/O engine dropped a batch"))?
    }
}

impl Drop for ThreadBackend {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(backend: &dyn Backend) {
        let mut ops = Vec::new();
        for i in 0..64u64 {
            let mut buf = AlignedBuf::zeroed(crate::BLOCK_BYTES);
            buf.fill(i as u8);
            ops.push(IoOp::Write {
                buf,
                offset: i * crate::BLOCK_BYTES as u64,
            });
        }
        backend.run(ops).unwrap();
        backend.run(vec![IoOp::Sync]).unwrap();
        let reads = (0..64u64)
            .map(|i| IoOp::Read {
                buf: AlignedBuf::zeroed(crate::BLOCK_BYTES),
                offset: i * crate::BLOCK_BYTES as u64,
            })
            .collect();
        let bufs = backend.run(reads).unwrap();
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|x| *x == i as u8), "block {i}");
        }
        // Reading past the end of the file is a short read: an error, not zeros.
        let past = backend.run(vec![IoOp::Read {
            buf: AlignedBuf::zeroed(crate::BLOCK_BYTES),
            offset: 1 << 30,
        }]);
        assert!(past.is_err());
    }

    fn file() -> (tempfile::TempDir, Arc<File>) {
        let dir = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("data"))
            .unwrap();
        f.set_len(64 * crate::BLOCK_BYTES as u64).unwrap();
        (dir, Arc::new(f))
    }

    #[test]
    fn uring_backend_reads_what_it_wrote() {
        let (_d, f) = file();
        exercise(&UringBackend::start(f, 32).unwrap());
    }

    #[test]
    fn thread_backend_reads_what_it_wrote() {
        let (_d, f) = file();
        exercise(&ThreadBackend::start(f, 8));
    }
}
