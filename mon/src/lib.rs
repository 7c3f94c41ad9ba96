//! `cairn-mon`: the monitors. A Raft group (openraft) whose replicated state machine is the
//! cluster maps and the auth database, persisted in RocksDB.

// openraft's storage traits fix the error type (`StorageError`, over 200 bytes); our helpers
// return it as is rather than boxing and unboxing at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod daemon;
pub mod db;
pub mod fsmap_change;
pub mod log_store;
pub mod mds_liveness;
pub mod network;
pub mod node;
pub mod osd_liveness;
pub mod osd_watch;
pub mod osdmap_change;
pub mod quorum;
pub mod raft_types;
pub mod service;
pub mod state;
pub mod state_machine;
pub mod ticket_check;
