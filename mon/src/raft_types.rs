//! The openraft type configuration of the monitors.

use std::io::Cursor;

use cairn_common::command::{CommandOutcome, Proposal};
use cairn_common::maps::MonInfo;

openraft::declare_raft_types!(
    /// Raft types of the monitor group: commands in, outcomes out, mons as nodes.
    pub TypeConfig:
        D = Proposal,
        R = CommandOutcome,
        NodeId = u64,
        Node = MonInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MonInfo>;
