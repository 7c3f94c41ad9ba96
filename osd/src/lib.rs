//! `cairn-osd`: the object storage daemon. The local object store is a BlueStore-class
//! engine: object data in a block device or preallocated file, managed by an extent allocator
//! and written through io_uring; all metadata in RocksDB (`store` and the modules it uses).
//! The daemon (`daemon`, `node`, `service`) serves PGs: as primary (`primary`, `activate`,
//! `members`, with the decisions of `peering`) and as member (`replica`), over the store (`pg`, `mutation`); erasure-coded
//! PGs use `erasure` over the `ec` codec; `scrub` checks and repairs copies; `pg_stats`
//! keeps what the beacons report of PGs; `heartbeat` watches the peers; `cleanup` frees
//! deleted pools.

pub mod activate;
pub mod aligned;
pub mod allocator;
pub mod apply;
pub mod cleanup;
pub mod coll_stats;
pub mod commit_group;
pub mod daemon;
pub mod deferred;
pub mod ec;
pub mod erasure;
pub mod error;
pub mod extents;
pub mod fsck;
pub mod heartbeat;
pub mod io;
pub mod locks;
pub mod members;
pub mod mutation;
pub mod node;
pub mod onode;
pub mod peering;
pub mod pg;
pub mod pg_detail;
pub mod pg_stats;
pub mod primary;
pub mod recovery;
pub mod replica;
pub mod scrub;
pub mod service;
pub mod stash;
pub mod store;
pub mod torture;
pub mod txn;

#[cfg(test)]
mod peering_sim;
#[cfg(test)]
mod store_tests;

/// The unit of allocation, I/O alignment and checksumming.
pub const BLOCK_BYTES: usize = 4096;

/// Largest data one write op carries or one read returns; keeps every I/O far below what
/// one io_uring operation can do (its length is 32 bits).
pub const IO_BYTES_MAX: u64 = 64 << 20;

/// Writes up to this size into blocks already holding data go in place through a RocksDB
/// record (one sync) instead of copy-on-write (data sync, then RocksDB sync, and a
/// fragmenting extent map).
pub const DEFERRED_WRITE_BYTES_MAX: u64 = 64 << 10;

pub use error::StoreError;
/// The buffer write data travels in, from the network to the store.
pub use prost::bytes::Bytes;
pub use store::{ObjectStore, StoreConfig};
pub use txn::{Op, Transaction};
