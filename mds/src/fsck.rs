//! `cairn fs fsck`: the active MDS checks that its namespace hangs together. Every entry
//! names an inode of the entry's type; a file's link count is the number of names it has; a
//! directory has one name, knows the directory holding it, and counts 2 + its
//! subdirectories; no inode number is at or past the inode table's next (it would be handed
//! out twice); and no stored inode is out of every name's reach, except files removed while
//! open, which the stray directory lists. Then the data pool: every object of a file's data
//! must belong to an inode that exists, and lie inside its file's size unless a client has
//! the file open (its writes may run ahead of the size it reported) — objects a failed purge
//! left behind hold space nothing will ever free.
//!
//! The walk goes from the root through the cache (journaled changes not yet written back
//! included) under the rank's lock, so it sees one state of the namespace; clients wait
//! while it runs, and what it loads stays cached until the next write-back trims the cache.

use std::collections::{BTreeMap, BTreeSet};

use cairn_common::fsops::{
    is_dir, parse_data_object, FsckReport, Name, OBJECT_BYTES, ROOT_INO, S_IFMT, S_IFREG,
};

use crate::inode::{Dentry, Inode, STRAY_INO};
use crate::rank::Rank;

/// Problems listed in a report; more are counted, not listed.
const PROBLEMS_LISTED_MAX: usize = 1000;
/// Objects asked for per page of the metadata pool's listing.
const LIST_PAGE: u32 = 1024;

/// What the check needs of one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    pub mode: u32,
    pub nlink: u32,
    pub parent: u64,
    pub size: u64,
}

impl Facts {
    fn of(inode: &Inode) -> Facts {
        Facts {
            mode: inode.mode,
            nlink: inode.nlink,
            parent: inode.parent,
            size: inode.size,
        }
    }
}

/// Data objects of one file that no file accounts for: how many, and the first listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub count: u64,
    pub first: String,
}

impl Leftovers {
    fn add(&mut self, name: &str) {
        if self.count == 0 {
            self.first = name.to_string();
        }
        self.count += 1;
    }
}

/// What the data pool's listing says of one object, against the namespace.
#[derive(Debug, PartialEq, Eq)]
enum DataObject {
    /// Inside its file, or of a file being written or purged.
    Accounted,
    /// Of an inode that does not exist.
    Orphaned(u64),
    /// Past the end of a file no client has open.
    PastEnd(u64),
    /// Not a file's data object.
    Other,
}

/// The namespace as the walk found it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Inodes reached from the root (the root included).
    pub reached: BTreeMap<u64, Facts>,
    /// Each directory reached and its entries.
    pub dirs: BTreeMap<u64, Vec<(Name, Dentry)>>,
    /// Inodes stored or cached that no name reaches.
    pub unreached: BTreeMap<u64, Facts>,
    /// Files kept without a name: listed as strays, open, or awaiting removal.
    pub kept: BTreeSet<u64>,
    pub next_ino: u64,
    /// Problems met while gathering: records that could not be read or decoded, strays
    /// that are not.
    pub noted: Vec<String>,
    /// Files a background purge is deleting the data of.
    pub purging: BTreeSet<u64>,
    /// Data objects listed, and those of inodes that do not exist or past a file's end.
    pub data_objects: u64,
    pub orphaned: BTreeMap<u64, Leftovers>,
    pub past_end: BTreeMap<u64, Leftovers>,
}

impl Snapshot {
    /// An inode found, named or not.
    fn facts(&self, ino: u64) -> Option<&Facts> {
        self.reached.get(&ino).or_else(|| self.unreached.get(&ino))
    }

    fn classify(&self, name: &str) -> DataObject {
        let Some((ino, index)) = parse_data_object(name) else {
            return DataObject::Other;
        };
        if self.purging.contains(&ino) {
            return DataObject::Accounted;
        }
        let Some(f) = self.facts(ino) else {
            return DataObject::Orphaned(ino);
        };
        let open = self.kept.contains(&ino);
        if !open && f.mode & S_IFMT == S_IFREG && index >= f.size.div_ceil(OBJECT_BYTES) {
            return DataObject::PastEnd(ino);
        }
        DataObject::Accounted
    }

    /// Counts one object of the data pool's listing.
    fn data_object(&mut self, name: &str) {
        self.data_objects += 1;
        match self.classify(name) {
            DataObject::Orphaned(ino) => self.orphaned.entry(ino).or_default().add(name),
            DataObject::PastEnd(ino) => self.past_end.entry(ino).or_default().add(name),
            DataObject::Accounted | DataObject::Other => {}
        }
    }
}

/// Every inconsistency in `s`, in a stable order.
pub fn check(s: &Snapshot) -> Vec<String> {
    let mut problems = s.noted.clone();
    // Which directories name each inode, and how many subdirectories each directory has.
    let mut named_in: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    for (dir, entries) in &s.dirs {
        for (name, d) in entries {
            let Some(f) = s.reached.get(&d.ino) else {
                problems.push(format!(
                    "entry {name:?} in directory {dir:#x} names inode {:#x}, which does not exist",
                    d.ino
                ));
                continue;
            };
            if f.mode & S_IFMT != d.kind {
                problems.push(format!(
                    "entry {name:?} in directory {dir:#x} says type {:o} but inode {:#x} is {:o}",
                    d.kind,
                    d.ino,
                    f.mode & S_IFMT
                ));
            }
            named_in.entry(d.ino).or_default().push(*dir);
            if is_dir(f.mode) {
                *subdirs.entry(*dir).or_default() += 1;
            }
        }
    }
    for (ino, f) in &s.reached {
        if *ino >= s.next_ino {
            problems.push(format!(
                "inode {ino:#x} is at or past the inode table's next number {:#x}: it would be handed out again",
                s.next_ino
            ));
        }
        let names = named_in.get(ino).map_or(&[][..], Vec::as_slice);
        if !is_dir(f.mode) {
            if f.nlink as usize != names.len() {
                problems.push(format!(
                    "inode {ino:#x} has link count {} but {} names",
                    f.nlink,
                    names.len()
                ));
            }
            continue;
        }
        let want = 2 + subdirs.get(ino).copied().unwrap_or(0);
        if f.nlink != want {
            problems.push(format!(
                "directory {ino:#x} has link count {} but 2 + {} subdirectories",
                f.nlink,
                want - 2
            ));
        }
        match names {
            [] if *ino == ROOT_INO => {}
            [parent] if *parent == f.parent => {}
            [parent] => problems.push(format!(
                "directory {ino:#x} is named in {parent:#x} but records parent {:#x}",
                f.parent
            )),
            _ => problems.push(format!(
                "directory {ino:#x} has {} names (a directory has one)",
                names.len()
            )),
        }
    }
    for (ino, f) in &s.unreached {
        if f.nlink == 0 && !is_dir(f.mode) {
            if !s.kept.contains(ino) {
                problems.push(format!(
                    "inode {ino:#x} lost its last name but is neither a listed stray nor open"
                ));
            }
        } else {
            problems.push(format!(
                "inode {ino:#x} ({} links) is stored but no name reaches it",
                f.nlink
            ));
        }
    }
    for (ino, l) in &s.orphaned {
        problems.push(format!(
            "the data pool holds {} objects of inode {ino:#x}, which does not exist (a purge that failed?), the first {}",
            l.count, l.first
        ));
    }
    for (ino, l) in &s.past_end {
        let size = s.facts(*ino).map_or(0, |f| f.size);
        problems.push(format!(
            "file {ino:#x} is {size} bytes but the data pool holds {} objects past its end, the first {}",
            l.count, l.first
        ));
    }
    problems
}

/// Walks the namespace and the metadata pool's inode objects; checks them.
pub async fn run(rank: &mut Rank) -> anyhow::Result<FsckReport> {
    let started = std::time::Instant::now();
    let s = gather(rank).await?;
    let problems = check(&s);
    let entries = s.dirs.values().map(Vec::len).sum::<usize>() as u64;
    Ok(FsckReport {
        directories: s.dirs.len() as u64,
        inodes: (s.reached.len() + s.unreached.len()) as u64,
        entries,
        problems_total: problems.len() as u64,
        problems: problems.into_iter().take(PROBLEMS_LISTED_MAX).collect(),
        took_ms: started.elapsed().as_millis() as u64,
        data_objects: s.data_objects,
    })
}

async fn gather(rank: &mut Rank) -> anyhow::Result<Snapshot> {
    let mut s = Snapshot {
        next_ino: rank.next_ino,
        kept: rank.kept_without_name(),
        ..Snapshot::default()
    };
    let rados = rank.rados.clone();
    match rank.cache.inode(&rados, ROOT_INO).await {
        Ok(Some(root)) => {
            s.reached.insert(ROOT_INO, Facts::of(&root));
        }
        Ok(None) => s.noted.push("the root inode does not exist".into()),
        Err(e) => s.noted.push(format!("{e:#}")),
    }
    let mut to_walk = vec![ROOT_INO];
    while let Some(dir) = to_walk.pop() {
        let entries: Vec<(Name, Dentry)> = match rank.cache.dir(&rados, dir).await {
            Ok(d) => d.present().map(|(n, d)| (n.clone(), *d)).collect(),
            Err(e) => {
                s.noted.push(format!("{e:#}"));
                continue;
            }
        };
        for (_, d) in &entries {
            // A name seen before (a hard link, or a directory named twice) is walked once.
            if s.reached.contains_key(&d.ino) {
                continue;
            }
            match rank.cache.inode(&rados, d.ino).await {
                Ok(Some(inode)) => {
                    if inode.is_dir() {
                        to_walk.push(d.ino);
                    }
                    s.reached.insert(d.ino, Facts::of(&inode));
                }
                Ok(None) => {}
                Err(e) => s.noted.push(format!("{e:#}")),
            }
        }
        s.dirs.insert(dir, entries);
    }
    gather_strays(rank, &mut s).await;
    // No purge starts while the walk holds the rank; one that ends meanwhile took its
    // objects with it.
    for ino in stored_and_cached_inodes(rank).await? {
        if s.reached.contains_key(&ino) {
            continue;
        }
        // The cache holds removals not yet written back: what it says is current.
        match rank.cache.inode(&rados, ino).await {
            Ok(Some(inode)) => {
                s.unreached.insert(ino, Facts::of(&inode));
            }
            Ok(None) => {}
            Err(e) => s.noted.push(format!("{e:#}")),
        }
    }
    s.purging = rank.purging();
    list_data_pool(rank, &mut s).await?;
    Ok(s)
}

/// Checks every object of the data pool against the files found.
async fn list_data_pool(rank: &Rank, s: &mut Snapshot) -> anyhow::Result<()> {
    let mut cursor = None;
    loop {
        let page = rank.rados.list(&rank.data_pool, cursor, LIST_PAGE).await?;
        for name in &page.objects {
            s.data_object(name);
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}

/// Adds the stray directory's files to those kept without a name; a stray entry of an inode
/// that still has names, or of none, is a problem.
async fn gather_strays(rank: &mut Rank, s: &mut Snapshot) {
    let rados = rank.rados.clone();
    let strays: Vec<u64> = match rank.cache.dir(&rados, STRAY_INO).await {
        Ok(d) => d.present().map(|(_, d)| d.ino).collect(),
        Err(e) => {
            s.noted.push(format!("{e:#}"));
            return;
        }
    };
    for ino in strays {
        match rank.cache.inode(&rados, ino).await {
            Ok(Some(inode)) if inode.nlink == 0 => {
                s.kept.insert(ino);
            }
            Ok(Some(inode)) => s.noted.push(format!(
                "stray entry of inode {ino:#x}, which has {} links",
                inode.nlink
            )),
            Ok(None) => s.noted.push(format!(
                "stray entry of inode {ino:#x}, which does not exist"
            )),
            Err(e) => s.noted.push(format!("{e:#}")),
        }
    }
}

/// Every inode the metadata pool stores an object of, and every one the cache holds.
async fn stored_and_cached_inodes(rank: &Rank) -> anyhow::Result<BTreeSet<u64>> {
    let mut inos: BTreeSet<u64> = rank.cache.cached_inodes().collect();
    let pool = rank.cache.pool();
    let mut cursor = None;
    loop {
        let page = rank.rados.list(pool, cursor, LIST_PAGE).await?;
        inos.extend(page.objects.iter().filter_map(|o| {
            o.strip_prefix("inode.")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        }));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(inos),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::fsops::{S_IFDIR, S_IFREG};

    fn facts(mode: u32, nlink: u32, parent: u64) -> Facts {
        Facts {
            mode,
            nlink,
            parent,
            size: 0,
        }
    }

    fn entry(name: &str, ino: u64, kind: u32) -> (Name, Dentry) {
        (Name::from(name), Dentry { ino, kind })
    }

    /// `/` holding `d/` (ino 2) and file 3 named twice (`/f` and `/d/g`).
    fn consistent() -> Snapshot {
        Snapshot {
            reached: BTreeMap::from([
                (ROOT_INO, facts(S_IFDIR | 0o755, 3, ROOT_INO)),
                (2, facts(S_IFDIR | 0o755, 2, ROOT_INO)),
                (3, facts(S_IFREG | 0o644, 2, 0)),
            ]),
            dirs: BTreeMap::from([
                (
                    ROOT_INO,
                    vec![entry("d", 2, S_IFDIR), entry("f", 3, S_IFREG)],
                ),
                (2, vec![entry("g", 3, S_IFREG)]),
            ]),
            next_ino: 4,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_consistent_namespace_has_no_problems() {
        assert_eq!(check(&consistent()), Vec::<String>::new());
    }

    #[test]
    fn each_kind_of_damage_is_named() {
        type Damage = fn(&mut Snapshot);
        let cases: [(&str, Damage); 8] = [
            ("names inode 0x9, which does not exist", |s| {
                s.dirs.get_mut(&2).unwrap().push(entry("ghost", 9, S_IFREG))
            }),
            ("says type 40000 but inode 0x3 is 100000", |s| {
                s.dirs.get_mut(&2).unwrap()[0].1.kind = S_IFDIR
            }),
            ("inode 0x3 has link count 3 but 2 names", |s| {
                s.reached.get_mut(&3).unwrap().nlink = 3
            }),
            (
                "directory 0x1 has link count 2 but 2 + 1 subdirectories",
                |s| s.reached.get_mut(&ROOT_INO).unwrap().nlink = 2,
            ),
            (
                "directory 0x2 is named in 0x1 but records parent 0x7",
                |s| s.reached.get_mut(&2).unwrap().parent = 7,
            ),
            ("at or past the inode table's next number 0x3", |s| {
                s.next_ino = 3
            }),
            (
                "inode 0x8 (1 links) is stored but no name reaches it",
                |s| {
                    s.unreached.insert(8, facts(S_IFREG, 1, 0));
                },
            ),
            (
                "inode 0x8 lost its last name but is neither a listed stray nor open",
                |s| {
                    s.unreached.insert(8, facts(S_IFREG, 0, 0));
                },
            ),
        ];
        for (want, damage) in cases {
            let mut s = consistent();
            damage(&mut s);
            let problems = check(&s);
            assert!(
                problems.len() == 1 && problems[0].contains(want),
                "wanted one problem with {want:?}, got {problems:?}"
            );
        }
    }

    #[test]
    fn a_file_removed_while_open_is_no_problem() {
        let mut s = consistent();
        s.unreached.insert(8, facts(S_IFREG, 0, 0));
        s.kept.insert(8);
        assert_eq!(check(&s), Vec::<String>::new());
    }

    #[test]
    fn data_objects_must_belong_to_a_file_and_lie_inside_it() {
        use cairn_common::fsops::data_object;
        let mut s = consistent();
        // File 3 spans two objects; 8 is open (its writer may be ahead of its size); 9's
        // purge is under way.
        s.reached.get_mut(&3).unwrap().size = OBJECT_BYTES + 1;
        s.unreached.insert(8, facts(S_IFREG, 0, 0));
        s.kept.insert(8);
        s.purging.insert(9);
        let sound = [
            data_object(3, 0),
            data_object(3, 1),
            data_object(8, 5),
            data_object(9, 0),
            "not-file-data".to_string(),
        ];
        for name in &sound {
            s.data_object(name);
        }
        assert_eq!(check(&s), Vec::<String>::new());
        for name in [data_object(3, 7), data_object(3, 2), data_object(0x77, 0)] {
            s.data_object(&name);
        }
        assert_eq!(s.data_objects, 8);
        assert_eq!(
            check(&s),
            vec![
                "the data pool holds 1 objects of inode 0x77, which does not exist (a purge that failed?), the first 77.00000000".to_string(),
                "file 0x3 is 4194305 bytes but the data pool holds 2 objects past its end, the first 3.00000007".to_string(),
            ]
        );
    }

    #[test]
    fn a_directory_named_twice_is_a_problem() {
        let mut s = consistent();
        s.dirs.get_mut(&2).unwrap().push(entry("loop", 2, S_IFDIR));
        let problems = check(&s);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("directory 0x2 has 2 names")),
            "{problems:?}"
        );
    }
}
