//! Block I/O on the data file: io_uring with O_DIRECT, or, where io_uring is not allowed (a
//! seccomp profile, an old kernel), a pool of threads doing pread/pwrite. Both run batches: all
//! I/Os of a batch are in flight together, and the call returns when every one completed.

use std::collections::{HashMap, VecDeque};
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

fn submit_and_wait(tx: &Sender<Request>, ops: Vec<IoOp>) -> io::Result<Vec<AlignedBuf>> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let (reply_tx, reply_rx) = sync_channel(1);
    tx.send((ops, reply_tx))
        .map_err(|_| io::Error::other("the I/O engine has stopped"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the I/O engine dropped a batch"))?
}

type Request = (Vec<IoOp>, SyncSender<io::Result<Vec<AlignedBuf>>>);

/// The engine's request channel, unless it has been shut down.
fn sender<T>(slot: &Mutex<Option<Sender<T>>>) -> io::Result<Sender<T>> {
    slot.lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| io::Error::other("the I/O engine has stopped"))
}

/// io_uring: one thread owns the ring, keeps up to `queue_depth` I/Os of any number of batches
/// in flight, and completes batches as their last I/O finishes.
pub struct UringBackend {
    tx: Mutex<Option<Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
        let (tx, rx) = channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("cairn-uring".into())
            .spawn(move || uring_loop(ring, file, rx))?;
        Ok(UringBackend {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }
}

const INDEX_BITS: u32 = 24;

fn uring_loop(mut ring: IoUring, file: Arc<File>, rx: Receiver<Request>) {
    let fd = types::Fd(file.as_raw_fd());
    let mut batches: HashMap<u64, Batch> = HashMap::new();
    let mut queued: VecDeque<(u64, usize)> = VecDeque::new();
    let mut next_id: u64 = 0;
    let mut in_flight = 0usize;
    let in_flight_max = ring.params().sq_entries() as usize;
    loop {
        // Take new batches: block only when there is nothing else to do.
        let mut take = |req: Request,
                        batches: &mut HashMap<u64, Batch>,
                        queued: &mut VecDeque<(u64, usize)>| {
            let (ops, reply) = req;
            let id = next_id;
            next_id += 1;
            queued.extend((0..ops.len()).map(|i| (id, i)));
            batches.insert(id, Batch::new(ops, reply));
        };
        if in_flight == 0 && queued.is_empty() {
            match rx.recv() {
                Ok(req) => take(req, &mut batches, &mut queued),
                Err(_) => return,
            }
        }
        while let Ok(req) = rx.try_recv() {
            take(req, &mut batches, &mut queued);
        }
        // Fill the submission queue, never beyond what the completion queue can hold.
        while let Some(&(id, index)) = queued.front() {
            if in_flight >= in_flight_max {
                break;
            }
            let Some(op) = batches.get_mut(&id).and_then(|b| b.ops[index].as_mut()) else {
                queued.pop_front();
                continue;
            };
            let user_data = (id << INDEX_BITS) | index as u64;
            let sqe = match op {
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
            .user_data(user_data);
            // SAFETY: the buffer lives in `batches` until its completion is reaped below.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                break;
            }
            queued.pop_front();
            in_flight += 1;
        }
        if in_flight == 0 {
            continue;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            match e.raw_os_error() {
                // Interrupted, or the kernel is busy: reap what completed, then try again.
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN) => {}
                _ => {
                    tracing::error!(error = %e, "io_uring submission failed; the I/O engine stops");
                    // The kernel may still use the buffers of submitted I/O: leak them rather
                    // than free memory a DMA could still write.
                    for (_, mut b) in batches.drain() {
                        for op in b.ops.iter_mut() {
                            if let Some(op) = op.take() {
                                std::mem::forget(op);
                            }
                        }
                        b.error = Some(io::Error::new(e.kind(), e.to_string()));
                        b.finish();
                    }
                    std::mem::forget(ring);
                    return;
                }
            }
        }
        let completions: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, res) in completions {
            in_flight -= 1;
            let id = user_data >> INDEX_BITS;
            let index = (user_data & ((1 << INDEX_BITS) - 1)) as usize;
            let result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as usize)
            };
            if let Some(b) = batches.get_mut(&id) {
                if b.complete(index, result) {
                    if let Some(b) = batches.remove(&id) {
                        b.finish();
                    }
                }
            }
        }
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn run(&self, ops: Vec<IoOp>) -> io::Result<Vec<AlignedBuf>> {
        if ops.len() >= 1 << INDEX_BITS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "batch too large",
            ));
        }
        let tx = sender(&self.tx)?;
        submit_and_wait(&tx, ops)
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
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

fn thread_loop(file: &File, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        // Take the op out so the I/O runs without holding the batch lock.
        let op = job.batch.lock().unwrap_or_else(|p| p.into_inner()).ops[job.index].take();
        let (op, result) = match op {
            Some(IoOp::Read { mut buf, offset }) => {
                let r = file.read_exact_at(&mut buf, offset).map(|_| buf.len());
                (Some(IoOp::Read { buf, offset }), r)
            }
            Some(IoOp::Write { buf, offset }) => {
                let r = file.write_all_at(&buf, offset).map(|_| buf.len());
                (Some(IoOp::Write { buf, offset }), r)
            }
            Some(IoOp::Sync) => (Some(IoOp::Sync), file.sync_data().map(|_| 0)),
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
