//! File data a client has written but not yet sent to the OSDs: non-overlapping extents
//! keyed by their offset in the file, merged as writes overlap or touch them, so that a
//! run of small sequential writes goes out as one large write.

use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct DirtyExtents {
    extents: BTreeMap<u64, Vec<u8>>,
    bytes: u64,
}

impl DirtyExtents {
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records `data` written at `offset` over whatever is held there; returns how many
    /// more bytes are held.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> u64 {
        let end = offset + data.len() as u64;
        if let Some(grown) = self.extend(offset, data) {
            return grown;
        }
        // Extents are sorted and disjoint, so their ends are sorted too: walking back from
        // the last one starting at or before `end`, the first that ends before `offset` is
        // where the touching ones stop.
        let touching: Vec<u64> = self
            .extents
            .range(..=end)
            .rev()
            .take_while(|(start, held)| **start + held.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        let before = self.bytes;
        let mut from = offset;
        let mut to = end;
        for start in &touching {
            from = from.min(*start);
            to = to.max(start + self.extents[start].len() as u64);
        }
        let mut merged = vec![0u8; (to - from) as usize];
        for start in touching {
            let held = self.extents.remove(&start).unwrap_or_default();
            self.bytes -= held.len() as u64;
            let at = (start - from) as usize;
            merged[at..at + held.len()].copy_from_slice(&held);
        }
        let at = (offset - from) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len() as u64;
        self.extents.insert(from, merged);
        self.bytes - before
    }

    /// The common case of sequential writes: `data` starts inside or right at the end of
    /// an extent and reaches no later one. The extent is written and grown in place (no
    /// copy of what it holds); `None` when the case does not apply.
    fn extend(&mut self, offset: u64, data: &[u8]) -> Option<u64> {
        let end = offset + data.len() as u64;
        let (&start, held) = self.extents.range(..=offset).next_back()?;
        if start + (held.len() as u64) < offset {
            return None;
        }
        if self.extents.range(start + 1..=end).next().is_some() {
            return None;
        }
        let held = self.extents.get_mut(&start)?;
        let at = (offset - start) as usize;
        let overlap = (held.len() - at).min(data.len());
        held[at..at + overlap].copy_from_slice(&data[..overlap]);
        held.extend_from_slice(&data[overlap..]);
        let grown = (data.len() - overlap) as u64;
        self.bytes += grown;
        Some(grown)
    }

    /// Copies what is held of `[offset, offset + buf.len())` over `buf`.
    pub fn overlay(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        for (start, held) in self
            .extents
            .range(..end)
            .rev()
            .take_while(|(start, held)| **start + held.len() as u64 > offset)
        {
            let from = offset.max(*start);
            let to = end.min(start + held.len() as u64);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&held[(from - start) as usize..(to - start) as usize]);
        }
    }

    /// Everything held, leaving nothing.
    pub fn take(&mut self) -> BTreeMap<u64, Vec<u8>> {
        self.bytes = 0;
        std::mem::take(&mut self.extents)
    }

    /// Puts back extents taken by [`DirtyExtents::take`] that could not be sent, under
    /// whatever was written since (which is newer).
    pub fn restore(&mut self, taken: BTreeMap<u64, Vec<u8>>) {
        let newer = self.take();
        for (start, held) in taken.into_iter().chain(newer) {
            self.write(start, &held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bytes `d` holds over a zeroed file of `len` bytes.
    fn image(d: &DirtyExtents, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        d.overlay(0, &mut buf);
        buf
    }

    #[test]
    fn touching_writes_merge_into_one_extent() {
        let mut d = DirtyExtents::default();
        assert_eq!(d.write(0, b"abc"), 3);
        assert_eq!(d.write(3, b"def"), 3);
        assert_eq!(d.write(1, b"XY"), 0);
        assert_eq!(d.extents.len(), 1);
        assert_eq!(image(&d, 6), b"aXYdef");
        d.write(10, b"z");
        assert_eq!((d.extents.len(), d.bytes()), (2, 7));
    }

    #[test]
    fn restored_extents_go_under_newer_writes() {
        let mut d = DirtyExtents::default();
        d.write(0, b"old-old");
        let taken = d.take();
        d.write(2, b"NEW");
        d.restore(taken);
        assert_eq!(image(&d, 7), b"olNEWld");
        assert_eq!(d.bytes(), 7);
    }

    proptest! {
        /// Against a model: a plain byte array written in place.
        #[test]
        fn extents_hold_what_was_written(
            writes in proptest::collection::vec((0u64..200, proptest::collection::vec(any::<u8>(), 1..40)), 1..40),
            window in (0u64..240, 1usize..60),
        ) {
            let mut d = DirtyExtents::default();
            let mut model = vec![0u8; 240];
            let mut written = vec![false; 240];
            for (offset, data) in &writes {
                d.write(*offset, data);
                let at = *offset as usize;
                model[at..at + data.len()].copy_from_slice(data);
                written[at..at + data.len()].iter_mut().for_each(|w| *w = true);
            }
            prop_assert_eq!(image(&d, 240), model.clone());
            prop_assert_eq!(d.bytes(), written.iter().filter(|w| **w).count() as u64);
            // A window read sees the same bytes.
            let (offset, len) = window;
            let len = len.min(240 - offset as usize);
            let mut buf = vec![0u8; len];
            d.overlay(offset, &mut buf);
            prop_assert_eq!(&buf[..], &model[offset as usize..offset as usize + len]);
        }
    }
}
