//! The filesystem's metadata requests and replies between clients and the active MDS. Like
//! the mon commands, they travel as serde-JSON bodies inside a protobuf envelope
//! (`MdsRequest`/`MdsReply`): one definition serves the wire and the MDS journal.
//!
//! File data never passes through the MDS: file `ino`'s bytes live in the data pool as
//! objects named by [`data_object`], each [`OBJECT_BYTES`] long at most.

use serde::{Deserialize, Serialize};

pub use crate::fsname::Name;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Size of the data objects a file is cut into.
pub const OBJECT_BYTES: u64 = 4 << 20;
/// Longest name of one directory entry, as in Linux.
pub const NAME_BYTES_MAX: usize = 255;
/// Longest symlink target and xattr value; xattr names follow Linux's 255 bytes.
pub const SYMLINK_BYTES_MAX: usize = 4096;
pub const XATTR_VALUE_BYTES_MAX: usize = 64 << 10;
/// Entries one readdir reply holds at most.
pub const READDIR_MAX: u32 = 4096;

/// The data object holding bytes `[index * OBJECT_BYTES, (index + 1) * OBJECT_BYTES)` of a file.
pub fn data_object(ino: u64, index: u64) -> String {
    format!("{ino:x}.{index:08x}")
}

/// The file and index a data object's name says (`None` for any other name).
pub fn parse_data_object(name: &str) -> Option<(u64, u64)> {
    let (ino, index) = name.split_once('.')?;
    let hex = |s: &str| {
        let well_formed =
            !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    let (ino, index) = (hex(ino)?, hex(index)?);
    (data_object(ino, index) == name).then_some((ino, index))
}

/// What `stat` shows of an inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeAttr {
    pub ino: u64,
    /// File type bits (`S_IFREG`, …) and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub rdev: u32,
    /// Nanoseconds since the Unix epoch.
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Name,
    pub ino: u64,
    /// File type bits only.
    pub mode: u32,
}

/// Changes `setattr` makes; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

/// Who asks, for ownership of new inodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    Lookup {
        parent: u64,
        name: Name,
    },
    /// Resolves a path from the root (`cairn mount --path`), following no symlinks.
    Resolve {
        path: String,
    },
    GetAttr {
        ino: u64,
    },
    /// The attributes the MDS holds now, without recalling other clients' writes: what a
    /// reader told that another client changed the file reads up to. (A getattr would wait
    /// on the writer, which may be waiting for this reader's answer.)
    Peek {
        ino: u64,
    },
    SetAttr {
        ino: u64,
        change: SetAttrs,
    },
    /// Creates a regular file, fifo, socket or device node (`mode` carries the type).
    Mknod {
        parent: u64,
        name: Name,
        mode: u32,
        rdev: u32,
        caller: Caller,
    },
    Mkdir {
        parent: u64,
        name: Name,
        mode: u32,
        caller: Caller,
    },
    Symlink {
        parent: u64,
        name: Name,
        target: Name,
        caller: Caller,
    },
    ReadLink {
        ino: u64,
    },
    Link {
        ino: u64,
        new_parent: u64,
        new_name: Name,
    },
    Unlink {
        parent: u64,
        name: Name,
    },
    Rmdir {
        parent: u64,
        name: Name,
    },
    /// `flags` as Linux `renameat2`: `RENAME_NOREPLACE` (1) is supported.
    Rename {
        parent: u64,
        name: Name,
        new_parent: u64,
        new_name: Name,
        flags: u32,
    },
    /// Entries after `after` in name order, at most `max`.
    ReadDir {
        ino: u64,
        after: Name,
        max: u32,
    },
    /// A client wrote file data: the size grows to at least `size`, mtime becomes `mtime_ns`.
    Written {
        ino: u64,
        size: u64,
        mtime_ns: i64,
        /// The recall this report answers (0: none). Once the report is applied the recall
        /// is answered, before the other openers have been told of the change: the
        /// request that recalled the writer must not wait on them (nor fence the writer).
        #[serde(default)]
        recall: u64,
    },
    SetXattr {
        ino: u64,
        name: String,
        value: Vec<u8>,
        flags: i32,
    },
    GetXattr {
        ino: u64,
        name: String,
    },
    ListXattr {
        ino: u64,
    },
    RemoveXattr {
        ino: u64,
        name: String,
    },
    /// Inodes in use (statfs).
    Files,
    /// A file is opened: its attributes, and the MDS keeps it while open even once its last
    /// name is removed (POSIX: data lives until the last close). A client with a file open
    /// for writing may hold back the size and mtime its writes give it until the MDS
    /// recalls them (a stat from another client) or the file is flushed, synced or closed.
    Open {
        ino: u64,
        write: bool,
    },
    /// One open of the file ends.
    Release {
        ino: u64,
        write: bool,
    },
    /// The client has reported its writes for a recall of its session stream.
    Recalled {
        recall: u64,
    },
    /// The active MDS's sessions, journal and cache (`cairn fs status`).
    Status,
    /// Checks the namespace is consistent (`cairn fs fsck`).
    Fsck,
}

impl FsOp {
    /// The operation's name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            FsOp::Lookup { .. } => "lookup",
            FsOp::Resolve { .. } => "resolve",
            FsOp::GetAttr { .. } => "getattr",
            FsOp::Peek { .. } => "peek",
            FsOp::SetAttr { .. } => "setattr",
            FsOp::Mknod { .. } => "mknod",
            FsOp::Mkdir { .. } => "mkdir",
            FsOp::Symlink { .. } => "symlink",
            FsOp::ReadLink { .. } => "readlink",
            FsOp::Link { .. } => "link",
            FsOp::Unlink { .. } => "unlink",
            FsOp::Rmdir { .. } => "rmdir",
            FsOp::Rename { .. } => "rename",
            FsOp::ReadDir { .. } => "readdir",
            FsOp::Written { .. } => "written",
            FsOp::SetXattr { .. } => "setxattr",
            FsOp::GetXattr { .. } => "getxattr",
            FsOp::ListXattr { .. } => "listxattr",
            FsOp::RemoveXattr { .. } => "removexattr",
            FsOp::Files => "files",
            FsOp::Open { .. } => "open",
            FsOp::Release { .. } => "release",
            FsOp::Recalled { .. } => "recalled",
            FsOp::Status => "status",
            FsOp::Fsck => "fsck",
        }
    }

    /// Whether the op changes metadata (and so is journaled before its reply).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            FsOp::Lookup { .. }
                | FsOp::Resolve { .. }
                | FsOp::GetAttr { .. }
                | FsOp::Peek { .. }
                | FsOp::ReadLink { .. }
                | FsOp::ReadDir { .. }
                | FsOp::GetXattr { .. }
                | FsOp::ListXattr { .. }
                | FsOp::Files
                | FsOp::Open { .. }
                | FsOp::Recalled { .. }
                | FsOp::Status
                | FsOp::Fsck
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Done,
    Attr(InodeAttr),
    Entries(Vec<DirEntry>),
    Target(Name),
    Value(Vec<u8>),
    Names(Vec<String>),
    Count(u64),
    Status(MdsStatus),
    Fsck(FsckReport),
    /// A file opened; with `exclusive`, this client is its only opener and may answer stats
    /// of it from `attr` (and its own changes) until the MDS recalls the file.
    Opened {
        attr: InodeAttr,
        exclusive: bool,
        /// No other client can have changed the file's data since this client last held its
        /// exclusive capability (a new grant is not enough: it may have cached data while
        /// another client wrote): what it cached since may be kept.
        #[serde(default)]
        cache_kept: bool,
    },
    /// A POSIX errno and why.
    Error {
        errno: i32,
        message: String,
    },
}

impl FsReply {
    pub fn error(errno: i32, message: impl Into<String>) -> FsReply {
        FsReply::Error {
            errno,
            message: message.into(),
        }
    }
}

/// What the active MDS holds, for `cairn fs status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdsStatus {
    pub sessions: Vec<SessionStatus>,
    /// Journal entries and bytes replay would read (written since the last trim).
    pub journal_entries: u64,
    pub journal_bytes: u64,
    /// Inodes and directories in the cache, and how many changes wait for write-back.
    pub cache_entries: u64,
    /// About how much memory they take (`mds.cache_memory_bytes` bounds it).
    pub cache_bytes: u64,
    pub cache_dirty: u64,
}

/// What `cairn fs fsck` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckReport {
    pub directories: u64,
    pub inodes: u64,
    pub entries: u64,
    /// Every problem found, and the first of them (at most 1000) described.
    pub problems_total: u64,
    pub problems: Vec<String>,
    pub took_ms: u64,
    /// Objects of the data pool checked against the files they belong to.
    #[serde(default)]
    pub data_objects: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub client: String,
    /// Whether the client's session stream is open; a session disconnected for
    /// `mds.session_timeout_ms` is evicted.
    pub connected: bool,
    /// Milliseconds since the stream connected or, when disconnected, since it broke.
    pub since_ms: u64,
    pub open_files: u64,
    /// Files whose exclusive capability the client holds.
    pub capabilities: u64,
}

/// Checks one name of a directory entry.
pub fn validate_name(name: &Name) -> Result<(), FsReply> {
    let bytes = name.as_bytes();
    if bytes.is_empty()
        || bytes == b"."
        || bytes == b".."
        || bytes.contains(&b'/')
        || bytes.contains(&0)
    {
        return Err(FsReply::error(EINVAL, format!("invalid name {name:?}")));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(FsReply::error(
            ENAMETOOLONG,
            format!("names are at most {NAME_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Linux errno values the protocol names (both ends run on Linux; `common` does not link libc).
pub const EPERM: i32 = 1;
pub const ENOENT: i32 = 2;
pub const EIO: i32 = 5;
pub const EAGAIN: i32 = 11;
pub const EACCES: i32 = 13;
pub const EEXIST: i32 = 17;
pub const EXDEV: i32 = 18;
pub const ENOTDIR: i32 = 20;
pub const EISDIR: i32 = 21;
pub const EINVAL: i32 = 22;
pub const EFBIG: i32 = 27;
pub const ENOSPC: i32 = 28;
pub const EMLINK: i32 = 31;
pub const ERANGE: i32 = 34;
pub const ENAMETOOLONG: i32 = 36;
pub const ENOTEMPTY: i32 = 39;
pub const ENODATA: i32 = 61;
pub const ENOTSUP: i32 = 95;
pub const ETIMEDOUT: i32 = 110;

/// File type bits.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFSOCK: u32 = 0o140000;

pub fn is_dir(mode: u32) -> bool {
    mode & S_IFMT == S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        let check = |n: &[u8]| validate_name(&Name::from(n));
        assert!(check(b"a").is_ok());
        assert!(check(&[b'x'; 255]).is_ok());
        assert!(check(b"caf\xe9").is_ok(), "any bytes but / and NUL");
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            check(&[b'x'; 256]),
            Err(FsReply::Error {
                errno: ENAMETOOLONG,
                ..
            })
        ));
    }

    #[test]
    fn data_objects_sort_by_index() {
        assert_eq!(data_object(0x2a, 3), "2a.00000003");
        assert!(data_object(1, 9) < data_object(1, 10));
    }

    #[test]
    fn data_object_names_parse_back_and_nothing_else_does() {
        for (ino, index) in [(0x2a, 3), (1, 0), (u64::MAX, 0x1_0000_0000)] {
            assert_eq!(
                parse_data_object(&data_object(ino, index)),
                Some((ino, index))
            );
        }
        for other in [
            "inode.2a",
            "2a.3",
            "2A.00000003",
            "2a.0000000g",
            ".00000001",
            "2a",
            "+2a.00000003",
        ] {
            assert_eq!(parse_data_object(other), None, "{other}");
        }
    }
}
