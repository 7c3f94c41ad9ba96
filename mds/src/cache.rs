//! The MDS's view of the namespace: journaled changes not yet written back (dirty, tagged
//! with the journal sequence number of their newest change) over clean copies loaded from the
//! metadata pool. A directory is loaded whole the first time it is needed (so a missing name
//! is known missing); a standby-replay daemon holds only what it replayed until it takes over.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;

use cairn_client::{ClientError, Rados};
use cairn_common::fsops::Name;

use crate::inode::{decode, dir_object, inode_object, Dentry, Inode};
use crate::journal::Event;

/// Directory entries fetched per omap read when a directory is loaded.
const DIR_PAGE: u32 = 4096;

#[derive(Clone, Debug)]
pub struct Slot<T> {
    /// `None`: known absent (removed, or never there).
    pub value: Option<T>,
    /// The journal entry of the newest change not yet written back.
    pub dirty: Option<u64>,
}

impl<T> Slot<T> {
    fn clean(value: Option<T>) -> Slot<T> {
        Slot { value, dirty: None }
    }
}

#[derive(Debug, Default)]
pub struct Dir {
    /// Every entry of the directory is in `entries` (loaded, or created by this journal).
    pub complete: bool,
    pub entries: BTreeMap<Name, Slot<Dentry>>,
}

impl Dir {
    /// Present entries after `after`, in name order.
    pub fn listing<'a>(&'a self, after: &Name) -> impl Iterator<Item = (&'a Name, &'a Dentry)> {
        use std::ops::Bound;
        self.entries
            .range::<Name, _>((Bound::Excluded(after), Bound::Unbounded))
            .filter_map(|(name, slot)| slot.value.as_ref().map(|d| (name, d)))
    }

    /// Every present entry, in name order.
    pub fn present(&self) -> impl Iterator<Item = (&Name, &Dentry)> {
        self.listing(&Name::default())
    }

    pub fn get(&self, name: &Name) -> Option<Dentry> {
        self.entries.get(name).and_then(|s| s.value)
    }

    pub fn is_empty(&self) -> bool {
        self.present().next().is_none()
    }
}

/// What a write-back pass writes: every dirty item as of journal entry `upto`.
#[derive(Debug, Default)]
pub struct Dirty {
    pub upto: u64,
    pub inodes: Vec<(u64, Option<Inode>)>,
    pub dentries: BTreeMap<u64, Vec<(Name, Option<Dentry>)>>,
    /// Directories removed: their objects go once their entries are written.
    pub gone_dirs: Vec<u64>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty() && self.dentries.is_empty() && self.gone_dirs.is_empty()
    }
}

pub struct Cache {
    pool: String,
    inodes: HashMap<u64, Slot<Inode>>,
    dirs: HashMap<u64, Dir>,
    gone_dirs: BTreeMap<u64, u64>,
    memory_max: usize,
}

/// What a map slot costs beyond its value (keys, hashing, tree nodes), roughly.
const SLOT_OVERHEAD: usize = 48;

impl Cache {
    pub fn new(pool: &str, memory_max: usize) -> Cache {
        Cache {
            pool: pool.to_string(),
            inodes: HashMap::new(),
            dirs: HashMap::new(),
            gone_dirs: BTreeMap::new(),
            memory_max,
        }
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Applies one journal entry's events (live, or replayed).
    pub fn apply(&mut self, seq: u64, events: &[Event]) {
        for event in events {
            match event {
                Event::Inode(inode) => {
                    self.inodes.insert(
                        inode.ino,
                        Slot {
                            value: Some(inode.clone()),
                            dirty: Some(seq),
                        },
                    );
                }
                Event::InodeGone { ino, was_dir } => {
                    self.inodes.insert(
                        *ino,
                        Slot {
                            value: None,
                            dirty: Some(seq),
                        },
                    );
                    if *was_dir {
                        self.dirs.remove(ino);
                        self.gone_dirs.insert(*ino, seq);
                    }
                }
                Event::Dentry { dir, name, entry } => {
                    self.dirs.entry(*dir).or_default().entries.insert(
                        name.clone(),
                        Slot {
                            value: *entry,
                            dirty: Some(seq),
                        },
                    );
                }
                Event::Purge { .. } => {}
            }
        }
    }

    /// A directory just created: it has no stored entries to load.
    pub fn new_dir(&mut self, ino: u64) {
        self.dirs.insert(
            ino,
            Dir {
                complete: true,
                entries: BTreeMap::new(),
            },
        );
    }

    pub async fn inode(&mut self, rados: &Rados, ino: u64) -> anyhow::Result<Option<Inode>> {
        if let Some(slot) = self.inodes.get(&ino) {
            return Ok(slot.value.clone());
        }
        let object = inode_object(ino);
        let loaded = match rados.read_all(&self.pool, &object, 1 << 20).await {
            Ok(bytes) => Some(decode::<Inode>(&bytes, &object)?),
            Err(ClientError::NotFound(_)) => None,
            Err(e) => return Err(e).with_context(|| format!("cannot load inode {ino:#x}")),
        };
        self.inodes.insert(ino, Slot::clean(loaded.clone()));
        Ok(loaded)
    }

    /// The directory, loaded whole if needed.
    pub async fn dir(&mut self, rados: &Rados, ino: u64) -> anyhow::Result<&Dir> {
        let complete = self.dirs.get(&ino).is_some_and(|d| d.complete);
        if !complete {
            let stored = self.load_dir(rados, ino).await?;
            let dir = self.dirs.entry(ino).or_default();
            for (name, dentry) in stored {
                // Replayed changes are newer than what was written back.
                dir.entries
                    .entry(name)
                    .or_insert_with(|| Slot::clean(Some(dentry)));
            }
            dir.complete = true;
        }
        Ok(self.dirs.entry(ino).or_default())
    }

    async fn load_dir(&self, rados: &Rados, ino: u64) -> anyhow::Result<Vec<(Name, Dentry)>> {
        let object = dir_object(ino);
        let mut out = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = match rados.omap_get(&self.pool, &object, &after, DIR_PAGE).await {
                Ok(p) => p,
                Err(ClientError::NotFound(_)) => Vec::new(),
                Err(e) => return Err(e).with_context(|| format!("cannot load directory {ino:#x}")),
            };
            let full = page.len() == DIR_PAGE as usize;
            for (key, value) in page {
                out.push((Name::from(key.as_slice()), decode(&value, &object)?));
                after = key;
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// The inodes the cache holds as present (loaded, or created by the journal).
    pub fn cached_inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.inodes
            .iter()
            .filter(|(_, slot)| slot.value.is_some())
            .map(|(ino, _)| *ino)
    }

    pub fn dirty_count(&self) -> usize {
        self.inodes.values().filter(|s| s.dirty.is_some()).count()
            + self
                .dirs
                .values()
                .map(|d| d.entries.values().filter(|s| s.dirty.is_some()).count())
                .sum::<usize>()
    }

    /// Everything dirty, as of journal entry `upto` (the newest applied).
    pub fn dirty(&self, upto: u64) -> Dirty {
        let inodes = self
            .inodes
            .iter()
            .filter(|(_, s)| s.dirty.is_some())
            .map(|(ino, s)| (*ino, s.value.clone()))
            .collect();
        let dentries = self
            .dirs
            .iter()
            .filter_map(|(ino, d)| {
                let changed: Vec<_> = d
                    .entries
                    .iter()
                    .filter(|(_, s)| s.dirty.is_some())
                    .map(|(n, s)| (n.clone(), s.value))
                    .collect();
                (!changed.is_empty()).then_some((*ino, changed))
            })
            .collect();
        Dirty {
            upto,
            inodes,
            dentries,
            gone_dirs: self.gone_dirs.keys().copied().collect(),
        }
    }

    /// Everything changed at or before `upto` has been written back: it is clean now (and
    /// absent items need no memory).
    pub fn mark_clean(&mut self, upto: u64) {
        let written = |s: &Option<u64>| s.is_some_and(|seq| seq <= upto);
        self.inodes.retain(|_, s| {
            if written(&s.dirty) {
                s.dirty = None;
            }
            s.dirty.is_some() || s.value.is_some()
        });
        for dir in self.dirs.values_mut() {
            dir.entries.retain(|_, s| {
                if written(&s.dirty) {
                    s.dirty = None;
                }
                // A complete directory knows a name is absent without a marker.
                s.dirty.is_some() || s.value.is_some() || !dir.complete
            });
        }
        self.gone_dirs.retain(|_, seq| *seq > upto);
    }

    /// Inodes and directory entries held.
    pub fn entries(&self) -> usize {
        self.inodes.len() + self.dirs.values().map(|d| d.entries.len()).sum::<usize>()
    }

    /// About how much memory the items held take (what `mds.cache_memory_bytes` bounds).
    pub fn memory_bytes(&self) -> usize {
        let inodes: usize = self
            .inodes
            .values()
            .map(|s| SLOT_OVERHEAD + s.value.as_ref().map_or(0, Inode::memory_bytes))
            .sum();
        let dentries: usize = self
            .dirs
            .values()
            .flat_map(|d| d.entries.keys())
            .map(|name| SLOT_OVERHEAD + std::mem::size_of::<Slot<Dentry>>() + name.len())
            .sum();
        inodes + dentries
    }

    /// Drops every clean item once the cache holds more than its memory budget. Dirty ones
    /// stay: they are the only copy outside the journal.
    pub fn evict(&mut self) {
        if self.memory_bytes() <= self.memory_max {
            return;
        }
        self.inodes
            .retain(|ino, s| s.dirty.is_some() || *ino == cairn_common::fsops::ROOT_INO);
        self.dirs
            .retain(|_, d| d.entries.values().any(|s| s.dirty.is_some()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::fsops::{S_IFDIR, S_IFREG};

    fn file(ino: u64) -> Inode {
        Inode::new(ino, S_IFREG | 0o644, 0, 0, 1)
    }

    fn entry(dir: u64, name: &str, ino: Option<u64>) -> Event {
        Event::Dentry {
            dir,
            name: name.into(),
            entry: ino.map(|ino| Dentry { ino, kind: S_IFREG }),
        }
    }

    #[test]
    fn write_back_cleans_only_what_it_wrote() {
        let mut c = Cache::new("meta", 100);
        c.apply(1, &[Event::Inode(file(2)), entry(1, "a", Some(2))]);
        c.apply(2, &[Event::Inode(file(3)), entry(1, "b", Some(3))]);
        let d = c.dirty(2);
        assert_eq!(d.upto, 2);
        assert_eq!(
            d.inodes.len(),
            2,
            "every dirty item is written, newest value"
        );
        assert_eq!(d.dentries[&1].len(), 2);
        // Inode 2 changes again while the pass writes: cleaning up to 2 keeps it dirty.
        c.apply(3, &[Event::Inode(file(2))]);
        c.mark_clean(2);
        assert_eq!(c.dirty_count(), 1, "inode 2 changed again at 3");
        c.mark_clean(3);
        assert_eq!(c.dirty_count(), 0);
    }

    #[test]
    fn removed_directories_are_written_once_then_forgotten() {
        let mut c = Cache::new("meta", 100);
        let dir = Inode::new(5, S_IFDIR | 0o755, 0, 0, 1);
        c.apply(1, &[Event::Inode(dir)]);
        c.apply(
            2,
            &[Event::InodeGone {
                ino: 5,
                was_dir: true,
            }],
        );
        assert_eq!(c.dirty(2).gone_dirs, vec![5]);
        c.mark_clean(2);
        assert!(c.dirty(2).is_empty());
    }

    #[test]
    fn listings_skip_removed_names_and_start_after_the_cursor() {
        let mut c = Cache::new("meta", 100);
        c.new_dir(1);
        c.apply(
            1,
            &[
                entry(1, "a", Some(2)),
                entry(1, "b", Some(3)),
                entry(1, "c", Some(4)),
            ],
        );
        c.apply(2, &[entry(1, "b", None)]);
        let dir = &c.dirs[&1];
        let names: Vec<&Name> = dir.present().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "c"]);
        let after_a: Vec<&Name> = dir.listing(&"a".into()).map(|(n, _)| n).collect();
        assert_eq!(after_a, ["c"]);
        assert_eq!(dir.get(&"b".into()), None);
        assert!(!dir.is_empty());
    }

    #[test]
    fn the_memory_budget_counts_names_and_attributes() {
        let mut c = Cache::new("meta", usize::MAX);
        let empty = c.memory_bytes();
        let mut big = file(2);
        big.xattrs.insert("user.x".into(), vec![0; 1000]);
        c.apply(1, &[Event::Inode(big), entry(1, &"n".repeat(200), Some(2))]);
        assert!(c.memory_bytes() >= empty + 1200);
    }

    #[test]
    fn eviction_keeps_dirty_items() {
        let mut c = Cache::new("meta", 1);
        c.apply(1, &[Event::Inode(file(2)), Event::Inode(file(3))]);
        c.mark_clean(1);
        c.apply(2, &[Event::Inode(file(4))]);
        c.evict();
        assert!(
            c.inodes.contains_key(&4),
            "dirty: the only copy outside the journal"
        );
        assert!(!c.inodes.contains_key(&2) && !c.inodes.contains_key(&3));
    }
}
