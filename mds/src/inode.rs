//! The namespace as it is stored in the metadata pool: one object per inode (`inode.<ino>`,
//! its record), directories as objects (`dir.<ino>`, omap name → entry). Entries name inodes
//! instead of embedding them so hard links are plain entries and an inode's link count can be
//! checked against the entries naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use cairn_common::fsops::{InodeAttr, Name, S_IFMT};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// A directory's parent (directories have one name): rename refuses to move one below
    /// itself by walking up.
    #[serde(default)]
    pub parent: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink: Option<Name>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

impl Inode {
    pub fn new(ino: u64, mode: u32, uid: u32, gid: u32, now_ns: i64) -> Inode {
        let dir = cairn_common::fsops::is_dir(mode);
        Inode {
            ino,
            mode,
            uid,
            gid,
            size: 0,
            nlink: if dir { 2 } else { 1 },
            rdev: 0,
            atime_ns: now_ns,
            mtime_ns: now_ns,
            ctime_ns: now_ns,
            parent: 0,
            symlink: None,
            xattrs: BTreeMap::new(),
        }
    }

    pub fn is_dir(&self) -> bool {
        cairn_common::fsops::is_dir(self.mode)
    }

    /// About how much memory the record takes.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Inode>()
            + self.symlink.as_ref().map_or(0, Name::len)
            + self
                .xattrs
                .iter()
                .map(|(name, value)| 48 + name.len() + value.len())
                .sum::<usize>()
    }

    pub fn attr(&self) -> InodeAttr {
        InodeAttr {
            ino: self.ino,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            rdev: self.rdev,
            atime_ns: self.atime_ns,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
        }
    }
}

/// One name in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dentry {
    pub ino: u64,
    /// The file type bits of the inode (readdir answers without loading every inode).
    pub kind: u32,
}

impl Dentry {
    pub fn of(inode: &Inode) -> Dentry {
        Dentry {
            ino: inode.ino,
            kind: inode.mode & S_IFMT,
        }
    }
}

/// The stray directory: one entry per file that lost its last name while open (named by
/// its inode number), removed with the inode. A new active, once the clients of its
/// predecessor had their reconnect window, removes the strays nobody has open: without it a
/// file whose last opener never came back would stay stored, unnamed, for ever. It has no
/// inode and no name (no client can reach it); the number is never handed out.
pub const STRAY_INO: u64 = u64::MAX - 1;

pub fn stray_name(ino: u64) -> Name {
    Name::from(format!("{ino:x}"))
}

pub fn dir_object(ino: u64) -> String {
    format!("dir.{ino:x}")
}

pub fn inode_object(ino: u64) -> String {
    format!("inode.{ino:x}")
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("metadata records always serialize")
}

/// Decodes a stored record; damage is an error naming what was being read, never a panic.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> anyhow::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| anyhow::anyhow!("damaged metadata record {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inode_and_directory_has_its_own_object() {
        let inodes: std::collections::BTreeSet<String> = (1..3000).map(inode_object).collect();
        assert_eq!(inodes.len(), 2999);
        assert_ne!(dir_object(7), dir_object(8));
        assert_ne!(dir_object(7), inode_object(7));
    }
}
