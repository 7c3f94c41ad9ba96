//! What each metadata request means: reads answer from the cache; changes are planned as
//! journal events (the resulting inodes and entries) and a reply, checked against POSIX rules
//! before anything is journaled.

use cairn_common::fsops::{
    validate_name, Caller, DirEntry, FsOp, FsReply, Name, SetAttrs, EEXIST, EFBIG, EINVAL, EISDIR,
    ENODATA, ENOENT, ENOTDIR, ENOTEMPTY, ERANGE, READDIR_MAX, ROOT_INO, SYMLINK_BYTES_MAX, S_IFBLK,
    S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, XATTR_VALUE_BYTES_MAX,
};

use crate::inode::{stray_name, Dentry, Inode, STRAY_INO};
use crate::journal::Event;
use crate::rank::{posix, Fail, Plan, Rank};

const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;
const RENAME_NOREPLACE: u32 = 1;
const XATTR_NAME_BYTES_MAX: usize = 255;
/// Largest file: a removed file's objects are deleted one by one up to its size.
const FILE_BYTES_MAX: u64 = 1 << 40;

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn checked_name(name: &Name) -> Result<(), Fail> {
    validate_name(name).map_err(Fail::Posix)
}

impl Rank {
    async fn inode_of(&mut self, ino: u64) -> Result<Inode, Fail> {
        self.cache
            .inode(&self.rados, ino)
            .await?
            .ok_or_else(|| posix(ENOENT, format!("no inode {ino:#x}")))
    }

    async fn dir_inode(&mut self, ino: u64) -> Result<Inode, Fail> {
        let inode = self.inode_of(ino).await?;
        if !inode.is_dir() {
            return Err(posix(ENOTDIR, format!("inode {ino:#x} is not a directory")));
        }
        Ok(inode)
    }

    pub(crate) async fn child(&mut self, parent: u64, name: &Name) -> Result<Option<Dentry>, Fail> {
        Ok(self.cache.dir(&self.rados, parent).await?.get(name))
    }

    async fn existing_child(&mut self, parent: u64, name: &Name) -> Result<Inode, Fail> {
        let dentry = self
            .child(parent, name)
            .await?
            .ok_or_else(|| posix(ENOENT, format!("no entry {name:?}")))?;
        self.inode_of(dentry.ino).await
    }

    pub async fn query(&mut self, client: &str, op: FsOp) -> Result<FsReply, Fail> {
        match op {
            FsOp::Lookup { parent, name } => {
                self.dir_inode(parent).await?;
                Ok(FsReply::Attr(
                    self.existing_child(parent, &name).await?.attr(),
                ))
            }
            FsOp::Resolve { path } => {
                let mut ino = ROOT_INO;
                for part in path.split('/').filter(|p| !p.is_empty()) {
                    self.dir_inode(ino).await?;
                    ino = self.existing_child(ino, &Name::from(part)).await?.ino;
                }
                Ok(FsReply::Attr(self.dir_inode(ino).await?.attr()))
            }
            FsOp::GetAttr { ino } | FsOp::Peek { ino } => {
                Ok(FsReply::Attr(self.inode_of(ino).await?.attr()))
            }
            FsOp::ReadLink { ino } => {
                let inode = self.inode_of(ino).await?;
                inode
                    .symlink
                    .map(FsReply::Target)
                    .ok_or_else(|| posix(EINVAL, "not a symlink"))
            }
            FsOp::ReadDir { ino, after, max } => {
                self.dir_inode(ino).await?;
                let dir = self.cache.dir(&self.rados, ino).await?;
                let entries = dir
                    .listing(&after)
                    .take(max.clamp(1, READDIR_MAX) as usize)
                    .map(|(name, d)| DirEntry {
                        name: name.clone(),
                        ino: d.ino,
                        mode: d.kind,
                    })
                    .collect();
                Ok(FsReply::Entries(entries))
            }
            FsOp::GetXattr { ino, name } => self
                .inode_of(ino)
                .await?
                .xattrs
                .remove(&name)
                .map(FsReply::Value)
                .ok_or_else(|| posix(ENODATA, format!("no attribute {name:?}"))),
            FsOp::ListXattr { ino } => Ok(FsReply::Names(
                self.inode_of(ino).await?.xattrs.into_keys().collect(),
            )),
            FsOp::Files => Ok(FsReply::Count(self.next_ino.saturating_sub(1))),
            FsOp::Open { ino, write } => {
                let inode = self.inode_of(ino).await?;
                if write {
                    self.sessions.data_changing(client, ino);
                }
                let cache_kept = self.sessions.cache_kept(client, ino);
                self.sessions.opened(client, ino, write);
                let exclusive =
                    inode.mode & S_IFMT == S_IFREG && self.sessions.grant_exclusive(client, ino);
                Ok(FsReply::Opened {
                    attr: inode.attr(),
                    exclusive,
                    cache_kept,
                })
            }
            FsOp::Status => Ok(FsReply::Status(self.status())),
            FsOp::Fsck => Ok(FsReply::Fsck(crate::fsck::run(self).await?)),
            change => Err(posix(EINVAL, format!("{change:?} is not a query"))),
        }
    }

    pub async fn plan(&mut self, client: &str, op: FsOp) -> Result<Plan, Fail> {
        match op {
            FsOp::Mknod {
                parent,
                name,
                mode,
                rdev,
                caller,
            } => {
                let kind = if mode & S_IFMT == 0 {
                    S_IFREG
                } else {
                    mode & S_IFMT
                };
                if ![S_IFREG, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK].contains(&kind) {
                    return Err(posix(
                        EINVAL,
                        "mknod makes files, fifos, sockets and devices",
                    ));
                }
                self.create(parent, &name, kind | (mode & 0o7777), caller, |i| {
                    i.rdev = rdev
                })
                .await
            }
            FsOp::Mkdir {
                parent,
                name,
                mode,
                caller,
            } => {
                let mut plan = self
                    .create(parent, &name, S_IFDIR | (mode & 0o7777), caller, |_| {})
                    .await?;
                if let FsReply::Attr(a) = &plan.reply {
                    plan.new_dir = Some(a.ino);
                }
                Ok(plan)
            }
            FsOp::Symlink {
                parent,
                name,
                target,
                caller,
            } => {
                if target.is_empty() || target.len() > SYMLINK_BYTES_MAX {
                    return Err(posix(EINVAL, "symlink targets are 1 to 4096 bytes"));
                }
                let size = target.len() as u64;
                self.create(parent, &name, S_IFLNK | 0o777, caller, |i| {
                    i.symlink = Some(target);
                    i.size = size;
                })
                .await
            }
            FsOp::Link {
                ino,
                new_parent,
                new_name,
            } => self.link(ino, new_parent, &new_name).await,
            FsOp::Unlink { parent, name } => self.remove(parent, &name, false).await,
            FsOp::Rmdir { parent, name } => self.remove(parent, &name, true).await,
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                self.rename(parent, &name, new_parent, &new_name, flags)
                    .await
            }
            FsOp::SetAttr { ino, change } => {
                if change.size.is_some() {
                    self.sessions.data_changing(client, ino);
                }
                self.set_attr(ino, change).await
            }
            FsOp::Written {
                ino,
                size,
                mtime_ns,
                ..
            } => {
                let mut inode = self.inode_of(ino).await?;
                if inode.mode & S_IFMT != S_IFREG {
                    return Err(posix(EINVAL, "only regular files hold data"));
                }
                check_file_size(size)?;
                inode.size = inode.size.max(size);
                inode.mtime_ns = inode.mtime_ns.max(mtime_ns);
                inode.ctime_ns = inode.ctime_ns.max(mtime_ns);
                Ok(updated(inode))
            }
            FsOp::SetXattr {
                ino,
                name,
                value,
                flags,
            } => {
                if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX {
                    return Err(posix(ERANGE, "attribute names are 1 to 255 bytes"));
                }
                if value.len() > XATTR_VALUE_BYTES_MAX {
                    return Err(posix(
                        cairn_common::fsops::ENOSPC,
                        "attribute values are at most 64 KiB",
                    ));
                }
                let mut inode = self.inode_of(ino).await?;
                let exists = inode.xattrs.contains_key(&name);
                // Every journal entry carries the whole inode: keep it small.
                let others: usize = inode
                    .xattrs
                    .iter()
                    .filter(|(n, _)| **n != name)
                    .map(|(n, v)| n.len() + v.len())
                    .sum();
                if others + name.len() + value.len() > XATTR_VALUE_BYTES_MAX {
                    return Err(posix(
                        cairn_common::fsops::ENOSPC,
                        "an inode's attributes hold at most 64 KiB",
                    ));
                }
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(posix(EEXIST, format!("attribute {name:?} exists")));
                }
                if flags & XATTR_REPLACE != 0 && !exists {
                    return Err(posix(ENODATA, format!("no attribute {name:?}")));
                }
                inode.xattrs.insert(name, value);
                inode.ctime_ns = now_ns();
                Ok(updated(inode))
            }
            FsOp::Release { ino, write } => {
                self.sessions.released(client, ino, write);
                let inode = self.inode_of(ino).await?;
                // The last close of a file whose last name went: it goes now, data too
                // (unless other clients may still state they hold it).
                let events = if inode.nlink == 0 && !self.keeps_unlinked(ino) {
                    gone(&inode)
                } else {
                    Vec::new()
                };
                Ok(Plan {
                    events,
                    reply: FsReply::Done,
                    new_dir: None,
                })
            }
            FsOp::RemoveXattr { ino, name } => {
                let mut inode = self.inode_of(ino).await?;
                if inode.xattrs.remove(&name).is_none() {
                    return Err(posix(ENODATA, format!("no attribute {name:?}")));
                }
                inode.ctime_ns = now_ns();
                Ok(updated(inode))
            }
            query => Err(posix(EINVAL, format!("{query:?} changes nothing"))),
        }
    }

    /// A new inode named `name` in `parent`.
    async fn create(
        &mut self,
        parent: u64,
        name: &Name,
        mode: u32,
        caller: Caller,
        fill: impl FnOnce(&mut Inode),
    ) -> Result<Plan, Fail> {
        checked_name(name)?;
        let mut dir = self.dir_inode(parent).await?;
        if self.child(parent, name).await?.is_some() {
            return Err(posix(EEXIST, format!("{name:?} exists")));
        }
        let now = now_ns();
        // Like Linux: a directory with the setgid bit hands its group (and the bit, to
        // directories) down.
        let setgid = dir.mode & 0o2000 != 0;
        let gid = if setgid { dir.gid } else { caller.gid };
        let mut mode = mode;
        if setgid && cairn_common::fsops::is_dir(mode) {
            mode |= 0o2000;
        }
        let mut inode = Inode::new(self.allocate_ino(), mode, caller.uid, gid, now);
        if inode.is_dir() {
            inode.parent = parent;
            dir.nlink += 1;
        }
        fill(&mut inode);
        Ok(named(dir, name, inode, now))
    }

    async fn link(&mut self, ino: u64, new_parent: u64, new_name: &Name) -> Result<Plan, Fail> {
        checked_name(new_name)?;
        let mut inode = self.inode_of(ino).await?;
        if inode.is_dir() {
            return Err(posix(
                cairn_common::fsops::EPERM,
                "directories cannot be hard-linked",
            ));
        }
        let dir = self.dir_inode(new_parent).await?;
        if self.child(new_parent, new_name).await?.is_some() {
            return Err(posix(EEXIST, format!("{new_name:?} exists")));
        }
        let now = now_ns();
        inode.nlink += 1;
        inode.ctime_ns = now;
        Ok(named(dir, new_name, inode, now))
    }

    async fn remove(&mut self, parent: u64, name: &Name, want_dir: bool) -> Result<Plan, Fail> {
        checked_name(name)?;
        let mut dir = self.dir_inode(parent).await?;
        let target = self.existing_child(parent, name).await?;
        match (want_dir, target.is_dir()) {
            (true, false) => return Err(posix(ENOTDIR, format!("{name:?} is not a directory"))),
            (false, true) => return Err(posix(EISDIR, format!("{name:?} is a directory"))),
            _ => {}
        }
        if want_dir && !self.cache.dir(&self.rados, target.ino).await?.is_empty() {
            return Err(posix(ENOTEMPTY, format!("{name:?} is not empty")));
        }
        let now = now_ns();
        if want_dir {
            dir.nlink = dir.nlink.saturating_sub(1);
        }
        dir.mtime_ns = now;
        dir.ctime_ns = now;
        let mut events = vec![Event::Dentry {
            dir: parent,
            name: name.clone(),
            entry: None,
        }];
        let open = self.keeps_unlinked(target.ino);
        events.extend(drop_link(target, now, open));
        events.push(Event::Inode(dir));
        Ok(Plan {
            events,
            reply: FsReply::Done,
            new_dir: None,
        })
    }

    async fn rename(
        &mut self,
        parent: u64,
        name: &Name,
        new_parent: u64,
        new_name: &Name,
        flags: u32,
    ) -> Result<Plan, Fail> {
        checked_name(name)?;
        checked_name(new_name)?;
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(posix(EINVAL, "only RENAME_NOREPLACE is supported"));
        }
        let mut from_dir = self.dir_inode(parent).await?;
        let mut to_dir = self.dir_inode(new_parent).await?;
        let mut moved = self.existing_child(parent, name).await?;
        let replaced = match self.child(new_parent, new_name).await? {
            Some(d) => Some(self.inode_of(d.ino).await?),
            None => None,
        };
        if let Some(r) = &replaced {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(posix(EEXIST, format!("{new_name:?} exists")));
            }
            if r.ino == moved.ino {
                return Ok(Plan {
                    events: Vec::new(),
                    reply: FsReply::Done,
                    new_dir: None,
                });
            }
            match (moved.is_dir(), r.is_dir()) {
                (true, false) => {
                    return Err(posix(ENOTDIR, format!("{new_name:?} is not a directory")))
                }
                (false, true) => return Err(posix(EISDIR, format!("{new_name:?} is a directory"))),
                (true, true) if !self.cache.dir(&self.rados, r.ino).await?.is_empty() => {
                    return Err(posix(ENOTEMPTY, format!("{new_name:?} is not empty")))
                }
                _ => {}
            }
        }
        if moved.is_dir() && parent != new_parent {
            self.refuse_own_subtree(moved.ino, new_parent).await?;
        }
        let now = now_ns();
        let mut events = vec![
            Event::Dentry {
                dir: parent,
                name: name.clone(),
                entry: None,
            },
            Event::Dentry {
                dir: new_parent,
                name: new_name.clone(),
                entry: Some(Dentry::of(&moved)),
            },
        ];
        let replaced_dir = replaced.as_ref().is_some_and(|r| r.is_dir());
        if let Some(r) = replaced {
            let open = self.keeps_unlinked(r.ino);
            events.extend(drop_link(r, now, open));
        }
        moved.ctime_ns = now;
        if moved.is_dir() {
            moved.parent = new_parent;
        }
        from_dir.mtime_ns = now;
        from_dir.ctime_ns = now;
        if parent == new_parent {
            if replaced_dir {
                from_dir.nlink = from_dir.nlink.saturating_sub(1);
            }
            events.push(Event::Inode(from_dir));
        } else {
            to_dir.mtime_ns = now;
            to_dir.ctime_ns = now;
            if moved.is_dir() {
                from_dir.nlink = from_dir.nlink.saturating_sub(1);
                if !replaced_dir {
                    to_dir.nlink += 1;
                }
            } else if replaced_dir {
                to_dir.nlink = to_dir.nlink.saturating_sub(1);
            }
            events.push(Event::Inode(from_dir));
            events.push(Event::Inode(to_dir));
        }
        events.push(Event::Inode(moved));
        Ok(Plan {
            events,
            reply: FsReply::Done,
            new_dir: None,
        })
    }

    /// A directory cannot move below itself: walk up from the destination to the root.
    async fn refuse_own_subtree(&mut self, moved: u64, destination: u64) -> Result<(), Fail> {
        let mut at = destination;
        while at != ROOT_INO {
            if at == moved {
                return Err(posix(EINVAL, "cannot move a directory below itself"));
            }
            at = self.dir_inode(at).await?.parent;
        }
        Ok(())
    }

    async fn set_attr(&mut self, ino: u64, change: SetAttrs) -> Result<Plan, Fail> {
        let mut inode = self.inode_of(ino).await?;
        let now = now_ns();
        if let Some(size) = change.size {
            if inode.is_dir() {
                return Err(posix(EISDIR, "cannot truncate a directory"));
            }
            check_file_size(size)?;
            if size < inode.size {
                // The bytes beyond go before the size is journaled: a size change replayed
                // later must never delete data written after it.
                crate::rank::purge(&self.rados, &self.data_pool, ino, size, inode.size).await?;
            }
            inode.size = size;
            inode.mtime_ns = now;
        }
        if let Some(mode) = change.mode {
            inode.mode = (inode.mode & S_IFMT) | (mode & 0o7777);
        }
        if let Some(uid) = change.uid {
            inode.uid = uid;
        }
        if let Some(gid) = change.gid {
            inode.gid = gid;
        }
        if let Some(t) = change.atime_ns {
            inode.atime_ns = t;
        }
        if let Some(t) = change.mtime_ns {
            inode.mtime_ns = t;
        }
        inode.ctime_ns = now;
        Ok(updated(inode))
    }
}

/// Files end before `FILE_BYTES_MAX`: deleting a file's objects walks its whole size.
fn check_file_size(size: u64) -> Result<(), Fail> {
    if size > FILE_BYTES_MAX {
        return Err(posix(EFBIG, "files are at most 1 TiB"));
    }
    Ok(())
}

/// The plan of a new name `name` in directory `dir` for `inode` (created or linked).
fn named(mut dir: Inode, name: &Name, inode: Inode, now: i64) -> Plan {
    dir.mtime_ns = now;
    dir.ctime_ns = now;
    Plan {
        reply: FsReply::Attr(inode.attr()),
        events: vec![
            Event::Dentry {
                dir: dir.ino,
                name: name.clone(),
                entry: Some(Dentry::of(&inode)),
            },
            Event::Inode(inode),
            Event::Inode(dir),
        ],
        new_dir: None,
    }
}

/// The plan of a change to one inode only.
fn updated(inode: Inode) -> Plan {
    Plan {
        reply: FsReply::Attr(inode.attr()),
        events: vec![Event::Inode(inode)],
        new_dir: None,
    }
}

/// One name of `inode` goes away: the inode loses a link, or goes with its data when it was
/// the last (directories have one name) and no client has it open.
fn drop_link(mut inode: Inode, now: i64, open: bool) -> Vec<Event> {
    if inode.is_dir() || (inode.nlink <= 1 && !open) {
        return gone(&inode);
    }
    inode.nlink = inode.nlink.saturating_sub(1);
    inode.ctime_ns = now;
    let mut events = Vec::new();
    if inode.nlink == 0 {
        events.push(stray_entry(&inode, true));
    }
    events.push(Event::Inode(inode));
    events
}

/// Adds (or removes) the stray entry of a file without a name.
fn stray_entry(inode: &Inode, present: bool) -> Event {
    Event::Dentry {
        dir: STRAY_INO,
        name: stray_name(inode.ino),
        entry: present.then(|| Dentry::of(inode)),
    }
}

/// The inode goes, with its data (and its stray entry, if it had lost its names).
pub fn gone(inode: &Inode) -> Vec<Event> {
    let mut events = vec![Event::InodeGone {
        ino: inode.ino,
        was_dir: inode.is_dir(),
    }];
    if inode.nlink == 0 && !inode.is_dir() {
        events.push(stray_entry(inode, false));
    }
    if inode.mode & S_IFMT == S_IFREG && inode.size > 0 {
        events.push(Event::Purge {
            ino: inode.ino,
            size: inode.size,
        });
    }
    events
}
