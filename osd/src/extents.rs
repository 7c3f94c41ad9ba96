//! An object's extent map: which physical blocks hold which logical blocks, with the crc32c of
//! every block. Unmapped logical blocks are holes and read as zeros.

use std::collections::{BTreeMap, BTreeSet};

use crate::allocator::Run;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub lblock: u64,
    pub pblock: u64,
    /// One crc32c per block; the extent is `csums.len()` blocks long.
    pub csums: Vec<u32>,
}

impl Extent {
    pub fn len(&self) -> u64 {
        self.csums.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.csums.is_empty()
    }

    pub fn end(&self) -> u64 {
        self.lblock + self.len()
    }

    /// The part of this extent covering logical blocks `[from, to)` (clamped).
    fn slice(&self, from: u64, to: u64) -> Extent {
        let from = from.max(self.lblock);
        let to = to.min(self.end());
        let skip = (from - self.lblock) as usize;
        Extent {
            lblock: from,
            pblock: self.pblock + (from - self.lblock),
            csums: self.csums[skip..skip + (to - from) as usize].to_vec(),
        }
    }

    pub fn run(&self) -> Run {
        Run {
            start: self.pblock,
            len: self.len(),
        }
    }
}

/// A piece of a logical range: data in physical blocks, or a hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Data(Extent),
    Hole { lblock: u64, len: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentMap {
    map: BTreeMap<u64, Extent>,
}

impl ExtentMap {
    pub fn from_extents(extents: impl IntoIterator<Item = Extent>) -> ExtentMap {
        ExtentMap {
            map: extents.into_iter().map(|e| (e.lblock, e)).collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Extent> {
        self.map.values()
    }

    pub fn used_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.map.values().map(Extent::run)
    }

    /// Unmaps logical blocks `[from, to)`; returns the physical runs no longer referenced.
    pub fn punch(&mut self, from: u64, to: u64) -> Vec<Run> {
        if from >= to {
            return Vec::new();
        }
        let hit: Vec<u64> = self
            .map
            .range(..to)
            .rev()
            .take_while(|(_, e)| e.end() > from)
            .map(|(k, _)| *k)
            .collect();
        let mut freed = Vec::new();
        for key in hit {
            let e = self.map.remove(&key).expect("key from range");
            if e.lblock < from {
                let left = e.slice(e.lblock, from);
                self.map.insert(left.lblock, left);
            }
            if e.end() > to {
                let right = e.slice(to, e.end());
                self.map.insert(right.lblock, right);
            }
            freed.push(e.slice(from, to).run());
        }
        freed
    }

    /// Replaces the checksum of one mapped logical block (its data is rewritten in place).
    pub fn set_csum(&mut self, lblock: u64, csum: u32) -> bool {
        match self.map.range_mut(..=lblock).next_back() {
            Some((_, e)) if e.end() > lblock => {
                e.csums[(lblock - e.lblock) as usize] = csum;
                true
            }
            _ => false,
        }
    }

    /// Maps an extent; its logical range must be unmapped (punch first).
    pub fn insert(&mut self, e: Extent) {
        debug_assert!(self
            .pieces(e.lblock, e.end())
            .iter()
            .all(|p| matches!(p, Piece::Hole { .. })));
        if !e.is_empty() {
            self.map.insert(e.lblock, e);
        }
    }

    /// The logical range `[from, to)` as data pieces and holes, in order.
    pub fn pieces(&self, from: u64, to: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut pos = from;
        let start_key = self
            .map
            .range(..=from)
            .next_back()
            .filter(|(_, e)| e.end() > from)
            .map(|(k, _)| *k)
            .unwrap_or(from);
        for (_, e) in self.map.range(start_key..to) {
            if e.lblock > pos {
                out.push(Piece::Hole {
                    lblock: pos,
                    len: e.lblock - pos,
                });
            }
            let part = e.slice(pos.max(e.lblock), to);
            pos = part.end();
            out.push(Piece::Data(part));
        }
        if pos < to {
            out.push(Piece::Hole {
                lblock: pos,
                len: to - pos,
            });
        }
        out
    }

    /// The first logical block past the last mapped one.
    pub fn end(&self) -> u64 {
        self.map.values().next_back().map(Extent::end).unwrap_or(0)
    }

    /// The shards holding data when the map is cut into shards of `shard_blocks` logical
    /// blocks (shard `s` covers `[s * shard_blocks, (s + 1) * shard_blocks)`).
    pub fn shards(&self, shard_blocks: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for e in self.map.values().filter(|e| !e.is_empty()) {
            out.extend(e.lblock / shard_blocks..=(e.end() - 1) / shard_blocks);
        }
        out
    }

    /// The parts of extents inside logical blocks `[from, to)`, in order, borrowed: comparing
    /// one shard of two maps copies nothing.
    pub fn parts(&self, from: u64, to: u64) -> impl Iterator<Item = Part<'_>> {
        let straddling = self
            .map
            .range(..from)
            .next_back()
            .map(|(_, e)| e)
            .filter(|e| e.end() > from);
        let inside = self.map.range(from..to.max(from)).map(|(_, e)| e);
        straddling.into_iter().chain(inside).map(move |e| {
            let start = e.lblock.max(from);
            let end = e.end().min(to);
            let skip = (start - e.lblock) as usize;
            Part {
                lblock: start,
                pblock: e.pblock + (start - e.lblock),
                csums: &e.csums[skip..skip + (end - start) as usize],
            }
        })
    }
}

/// The part of an extent inside a range of logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub lblock: u64,
    pub pblock: u64,
    pub csums: &'a [u32],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(lblock: u64, pblock: u64, len: u32) -> Extent {
        Extent {
            lblock,
            pblock,
            csums: (0..len).map(|i| (lblock as u32) * 100 + i).collect(),
        }
    }

    #[test]
    fn punch_splits_and_frees_the_middle() {
        let mut m = ExtentMap::from_extents([ext(0, 100, 10)]);
        let freed = m.punch(3, 5);
        assert_eq!(freed, vec![Run { start: 103, len: 2 }]);
        let pieces = m.pieces(0, 12);
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[0], Piece::Data(ext(0, 100, 10).slice(0, 3)));
        assert_eq!(pieces[1], Piece::Hole { lblock: 3, len: 2 });
        assert_eq!(pieces[2], Piece::Data(ext(0, 100, 10).slice(5, 10)));
        assert_eq!(pieces[3], Piece::Hole { lblock: 10, len: 2 });
    }

    #[test]
    fn punch_across_several_extents() {
        let mut m = ExtentMap::from_extents([ext(0, 10, 4), ext(4, 50, 4), ext(10, 90, 2)]);
        let mut freed = m.punch(2, 11);
        freed.sort();
        assert_eq!(
            freed,
            vec![
                Run { start: 12, len: 2 },
                Run { start: 50, len: 4 },
                Run { start: 90, len: 1 }
            ]
        );
        assert_eq!(m.used_runs().map(|r| r.len).sum::<u64>(), 3);
        assert_eq!(m.end(), 12);
        m.insert(ext(2, 200, 3));
        assert!(matches!(m.pieces(2, 5)[0], Piece::Data(_)));
    }

    #[test]
    fn shards_cut_extents_at_shard_boundaries() {
        let m = ExtentMap::from_extents([ext(2, 100, 12), ext(20, 300, 1)]);
        assert_eq!(m.shards(8).into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        let parts = |s: u64| m.parts(s * 8, (s + 1) * 8).collect::<Vec<_>>();
        let first = ext(2, 100, 12);
        assert_eq!(
            parts(0),
            vec![Part {
                lblock: 2,
                pblock: 100,
                csums: &first.csums[..6]
            }]
        );
        assert_eq!(
            parts(1),
            vec![Part {
                lblock: 8,
                pblock: 106,
                csums: &first.csums[6..]
            }]
        );
        let last = ext(20, 300, 1);
        assert_eq!(
            parts(2),
            vec![Part {
                lblock: 20,
                pblock: 300,
                csums: &last.csums
            }]
        );
        assert_eq!(parts(3), vec![]);
        // A range inside one extent, and one spanning a hole.
        assert_eq!(m.parts(4, 5).map(|p| p.csums.len()).sum::<usize>(), 1);
        assert_eq!(m.parts(10, 30).map(|p| p.csums.len()).sum::<usize>(), 5);
    }

    #[test]
    fn pieces_of_an_empty_map_are_one_hole() {
        assert_eq!(
            ExtentMap::default().pieces(5, 9),
            vec![Piece::Hole { lblock: 5, len: 4 }]
        );
    }
}
