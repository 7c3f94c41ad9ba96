//! Buffers aligned for O_DIRECT: address, length and file offset must all be multiples of the
//! device's logical block size; we align everything to `BLOCK_BYTES`.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Mutex;

use crate::BLOCK_BYTES;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through &self.
unsafe impl Sync for AlignedBuf {}

/// Buffers at least this large are kept for reuse when dropped.
const POOLED_BYTES_MIN: usize = 64 << 10;
/// Most bytes the pool keeps (beyond it, dropped buffers are freed).
const POOL_BYTES_MAX: usize = 32 << 20;

/// Large buffers freed recently, for reuse. A fresh large allocation is a new mapping: every
/// page faults on first touch and is unmapped again on free, which was half the CPU time of a
/// 4 MiB write (BENCHMARKS.md). Reused, its pages are already there.
struct Pool {
    bytes: usize,
    free: Vec<Freed>,
}

/// An allocation of `len` bytes with the block-aligned layout, owned by the pool.
struct Freed {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the pool owns its allocations exclusively; they hold no thread-bound state.
unsafe impl Send for Freed {}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    bytes: 0,
    free: Vec::new(),
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

fn layout(len: usize) -> Layout {
    Layout::from_size_align(len, BLOCK_BYTES).expect("block-aligned layout")
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes, `len` rounded up to whole blocks.
    pub fn zeroed(len: usize) -> AlignedBuf {
        Self::with_data(len, 0, &[])
    }

    /// A buffer of `len` bytes (rounded up to whole blocks) holding `data` at `at` and zeros
    /// elsewhere, each byte written once. `data` must fit.
    pub fn with_data(len: usize, at: usize, data: &[u8]) -> AlignedBuf {
        let len = len.div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
        let end = at + data.len();
        assert!(end <= len, "data past the end of the buffer");
        let mut buf = match Self::reused(len) {
            Some(mut buf) => {
                buf[..at].fill(0);
                buf[end..].fill(0);
                buf
            }
            None => {
                let layout = layout(len);
                // SAFETY: layout has a non-zero size.
                let raw = unsafe { alloc_zeroed(layout) };
                let ptr =
                    NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
                AlignedBuf { ptr, len }
            }
        };
        buf[at..end].copy_from_slice(data);
        buf
    }

    /// A buffer of `len` bytes (rounded up to whole blocks) to read into. A pooled one keeps
    /// what it last held: the read replaces every byte (a short read is an error), and zeroing
    /// it first would touch each byte twice.
    pub fn for_read(len: usize) -> AlignedBuf {
        let len = len.div_ceil(BLOCK_BYTES).max(1) * BLOCK_BYTES;
        Self::reused(len).unwrap_or_else(|| Self::zeroed(len))
    }

    /// A pooled buffer of exactly `len` bytes, with whatever it last held.
    fn reused(len: usize) -> Option<AlignedBuf> {
        if len < POOLED_BYTES_MIN {
            return None;
        }
        let mut pool = pool();
        let i = pool.free.iter().rposition(|f| f.len == len)?;
        pool.bytes -= len;
        let f = pool.free.swap_remove(i);
        Some(AlignedBuf { ptr: f.ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the buffer's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// Lets a filled buffer become `Bytes` (`Bytes::from_owner`) and be sent without a copy.
impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len >= POOLED_BYTES_MIN && self.len <= POOL_BYTES_MAX {
            // The oldest buffers make room: sizes no longer asked for do not fill the pool.
            let evicted = {
                let mut pool = pool();
                let mut evicted = Vec::new();
                while pool.bytes + self.len > POOL_BYTES_MAX {
                    let oldest = pool.free.remove(0);
                    pool.bytes -= oldest.len;
                    evicted.push(oldest);
                }
                pool.bytes += self.len;
                pool.free.push(Freed {
                    ptr: self.ptr,
                    len: self.len,
                });
                evicted
            };
            for f in evicted {
                // SAFETY: allocated in `with_data` with this layout; the pool owned it alone.
                unsafe { dealloc(f.ptr.as_ptr(), layout(f.len)) }
            }
            return;
        }
        // SAFETY: allocated in `with_data` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), layout(self.len)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_rounded() {
        let b = AlignedBuf::zeroed(5000);
        assert_eq!(b.len(), 2 * BLOCK_BYTES);
        assert_eq!(b.as_ptr() as usize % BLOCK_BYTES, 0);
        assert!(b.iter().all(|x| *x == 0));
    }

    #[test]
    fn buffers_to_read_into_are_whole_aligned_blocks() {
        for len in [1, 5000, POOLED_BYTES_MIN + 1] {
            let b = AlignedBuf::for_read(len);
            assert_eq!(b.len(), len.div_ceil(BLOCK_BYTES) * BLOCK_BYTES);
            assert_eq!(b.as_ptr() as usize % BLOCK_BYTES, 0);
        }
    }

    #[test]
    fn reused_buffers_come_back_zeroed() {
        let len = POOLED_BYTES_MIN + BLOCK_BYTES;
        let mut b = AlignedBuf::zeroed(len);
        b.fill(0xab);
        drop(b);
        // Whether or not another test took the freed buffer, each one handed out is zeroed.
        for _ in 0..3 {
            let b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_ptr() as usize % BLOCK_BYTES, 0);
            assert!(b.iter().all(|x| *x == 0));
        }
        assert!(pool().bytes <= POOL_BYTES_MAX);
    }

    #[test]
    fn the_pool_stays_bounded() {
        // More than the pool holds, in a size of their own: older buffers make room. (Other
        // tests share the pool, so only its invariants are checked.)
        let len = POOL_BYTES_MAX / 4 + BLOCK_BYTES;
        let bufs: Vec<AlignedBuf> = (0..6).map(|_| AlignedBuf::zeroed(len)).collect();
        drop(bufs);
        let pool = pool();
        assert!(pool.bytes <= POOL_BYTES_MAX);
        assert_eq!(pool.bytes, pool.free.iter().map(|f| f.len).sum::<usize>());
    }

    #[test]
    fn data_lands_between_zeros() {
        for len in [BLOCK_BYTES, POOLED_BYTES_MIN * 2] {
            // A dirty pooled buffer first, so both kinds of allocation are checked.
            let mut dirty = AlignedBuf::zeroed(len);
            dirty.fill(0xee);
            drop(dirty);
            let b = AlignedBuf::with_data(len - 10, 100, b"hello");
            assert_eq!(b.len(), len);
            assert_eq!(&b[100..105], b"hello");
            assert!(b[..100].iter().chain(&b[105..]).all(|x| *x == 0));
        }
    }
}
