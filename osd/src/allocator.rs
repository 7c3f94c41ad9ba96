//! The extent allocator: free space as a sorted map of runs of blocks. It is not persisted;
//! mount rebuilds it as the complement of every extent the metadata references, so a crash can
//! never leak space nor hand out a block that committed metadata still uses.

use std::collections::BTreeMap;

/// A run of physical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    pub start: u64,
    pub len: u64,
}

#[derive(Debug)]
pub struct Allocator {
    /// start → length of each free run; runs never touch (they are merged).
    free: BTreeMap<u64, u64>,
    free_blocks: u64,
    total_blocks: u64,
    /// Next-fit cursor: new data lands after the last allocation, so sequential writes stay
    /// sequential on disk.
    cursor: u64,
}

impl Allocator {
    /// An allocator over `total_blocks` with `used` runs taken. Fails if runs overlap or fall
    /// outside the device (corrupt metadata).
    pub fn rebuild(
        total_blocks: u64,
        used: impl IntoIterator<Item = Run>,
    ) -> Result<Allocator, String> {
        let mut used: Vec<Run> = used.into_iter().filter(|r| r.len > 0).collect();
        used.sort();
        let mut free = BTreeMap::new();
        let mut pos = 0;
        for r in used {
            if r.start < pos {
                return Err(format!("block {} is referenced twice", r.start));
            }
            if r.start
                .checked_add(r.len)
                .is_none_or(|end| end > total_blocks)
            {
                return Err(format!(
                    "run {}+{} lies beyond the device ({total_blocks} blocks)",
                    r.start, r.len
                ));
            }
            if r.start > pos {
                free.insert(pos, r.start - pos);
            }
            pos = r.start + r.len;
        }
        if pos < total_blocks {
            free.insert(pos, total_blocks - pos);
        }
        let free_blocks = free.values().sum();
        Ok(Allocator {
            free,
            free_blocks,
            total_blocks,
            cursor: 0,
        })
    }

    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Whether both allocators hold exactly the same free runs.
    pub fn same_free_space(&self, other: &Allocator) -> bool {
        self.free == other.free
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    /// Allocates `n` blocks, contiguous when possible, else in several runs. `None` when fewer
    /// than `n` blocks are free (nothing is taken then).
    pub fn allocate(&mut self, n: u64) -> Option<Vec<Run>> {
        if n == 0 {
            return Some(Vec::new());
        }
        if n > self.free_blocks {
            return None;
        }
        let contiguous = self
            .free
            .range(self.cursor..)
            .chain(self.free.range(..self.cursor))
            .find(|(_, len)| **len >= n)
            .map(|(s, _)| *s);
        let runs = match contiguous {
            Some(start) => vec![self.take(start, n)],
            None => {
                let mut runs = Vec::new();
                let mut left = n;
                while left > 0 {
                    let (&start, &len) = self.free.iter().next_back().expect("free_blocks >= n");
                    let take = len.min(left);
                    runs.push(self.take(start, take));
                    left -= take;
                }
                runs
            }
        };
        Some(runs)
    }

    /// Takes `n` blocks from the front of the free run starting at `start`.
    fn take(&mut self, start: u64, n: u64) -> Run {
        let len = self.free.remove(&start).expect("run exists");
        if len > n {
            self.free.insert(start + n, len - n);
        }
        self.free_blocks -= n;
        self.cursor = start + n;
        Run { start, len: n }
    }

    /// Returns a run to the free space, merging with its neighbours.
    pub fn release(&mut self, run: Run) {
        if run.len == 0 {
            return;
        }
        let mut start = run.start;
        let mut len = run.len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            debug_assert!(ps + pl <= start, "double free of block {start}");
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(&nl) = self.free.get(&(run.start + run.len)) {
            self.free.remove(&(run.start + run.len));
            len += nl;
        }
        self.free.insert(start, len);
        self.free_blocks += run.len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_is_the_complement_of_used() {
        let a = Allocator::rebuild(100, [Run { start: 10, len: 5 }, Run { start: 50, len: 50 }])
            .unwrap();
        assert_eq!(a.free_blocks(), 45);
        assert!(
            Allocator::rebuild(100, [Run { start: 10, len: 5 }, Run { start: 12, len: 1 }])
                .is_err()
        );
        assert!(Allocator::rebuild(100, [Run { start: 99, len: 2 }]).is_err());
    }

    #[test]
    fn allocate_release_merges_and_reuses() {
        let mut a = Allocator::rebuild(16, []).unwrap();
        let r1 = a.allocate(4).unwrap();
        let r2 = a.allocate(4).unwrap();
        assert_eq!(r1, vec![Run { start: 0, len: 4 }]);
        assert_eq!(r2, vec![Run { start: 4, len: 4 }]);
        a.release(r1[0]);
        a.release(r2[0]);
        assert_eq!(a.free_blocks(), 16);
        assert_eq!(a.free.len(), 1, "runs merged: {:?}", a.free);
        assert_eq!(a.allocate(17), None);
        assert_eq!(a.free_blocks(), 16);
    }

    #[test]
    fn fragmented_space_is_still_usable() {
        let mut a = Allocator::rebuild(8, []).unwrap();
        let all: Vec<Run> = (0..8).map(|_| a.allocate(1).unwrap()[0]).collect();
        for r in all.iter().step_by(2) {
            a.release(*r);
        }
        let runs = a.allocate(4).unwrap();
        assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), 4);
        assert_eq!(a.free_blocks(), 0);
        assert_eq!(a.allocate(1), None);
    }
}
