//! `cairn-mds`: the metadata server of a Cairn filesystem. The namespace lives in the
//! metadata pool (directories and inodes as objects, see `inode`); changes are journaled
//! there before they are acknowledged (`journal`), kept in a bounded cache (`cache`) and
//! written back (`writeback`). A standby-replay daemon tails the journal (`replay`) and takes
//! the rank over when the mons fence the active (`node`). `fsck` checks the namespace hangs
//! together.

pub mod cache;
pub mod daemon;
pub mod fsck;
pub mod inode;
pub mod journal;
pub mod node;
pub mod ops;
pub mod rank;
pub mod replay;
pub mod service;
pub mod sessions;
pub mod writeback;
