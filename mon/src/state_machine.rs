//! The state machine openraft drives: applies committed entries to the `ClusterState`, and
//! builds and installs snapshots (kept in RocksDB, so the log can be purged behind them).
//!
//! The state lives in memory; after a restart it is the last snapshot plus the committed log
//! entries openraft re-applies (the commit pointer is persisted by the log store).

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use cairn_common::command::CommandOutcome;
use cairn_common::maps::{ClusterMaps, MonInfo};

use crate::db::{Store, KEY_SNAPSHOT};
use crate::raft_types::{LogId, NodeId, StorageError, StoredMembership, TypeConfig};
use crate::state::ClusterState;

/// The applied state, shared with the gRPC services for reads.
pub struct Applied {
    pub state: ClusterState,
    pub last_applied: Option<LogId>,
    pub last_membership: StoredMembership,
}

/// Read access to the applied state plus a feed of map changes, for the services.
#[derive(Clone)]
pub struct SharedState {
    applied: Arc<RwLock<Applied>>,
    maps_tx: Arc<watch::Sender<Arc<ClusterMaps>>>,
}

impl SharedState {
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.applied.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn maps(&self) -> Arc<ClusterMaps> {
        self.maps_tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterMaps>> {
        self.maps_tx.subscribe()
    }

    fn write<T>(&self, f: impl FnOnce(&mut Applied) -> T) -> T {
        let out = f(&mut self.applied.write().unwrap_or_else(|p| p.into_inner()));
        self.publish();
        out
    }

    fn publish(&self) {
        let maps = self.read(|a| a.state.maps.clone());
        self.maps_tx.send_if_modified(|cur| {
            if **cur != maps {
                *cur = Arc::new(maps);
                true
            } else {
                false
            }
        });
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, MonInfo>,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachineStore {
    store: Store,
    shared: SharedState,
    /// Serializes snapshot writes: a snapshot built from older state must not overwrite a
    /// newer one installed meanwhile (the log behind the newer one may be purged already).
    persist: Arc<std::sync::Mutex<()>>,
}

fn sm_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

impl StateMachineStore {
    /// Opens the state machine at the last snapshot, if any.
    pub fn open(store: Store) -> anyhow::Result<StateMachineStore> {
        let mut applied = Applied {
            state: ClusterState::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
        };
        if let Some(snap) = store.get_meta::<StoredSnapshot>(KEY_SNAPSHOT)? {
            applied.state = serde_json::from_slice(&snap.data)?;
            applied.last_applied = snap.meta.last_log_id;
            applied.last_membership = snap.meta.last_membership.clone();
        }
        let (maps_tx, _) = watch::channel(Arc::new(applied.state.maps.clone()));
        Ok(StateMachineStore {
            store,
            shared: SharedState {
                applied: Arc::new(RwLock::new(applied)),
                maps_tx: Arc::new(maps_tx),
            },
            persist: Arc::new(std::sync::Mutex::new(())),
        })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// Writes a snapshot unless the stored one is at least as new.
    fn persist_snapshot(&self, snap: &StoredSnapshot) -> Result<(), StorageError> {
        let _serial = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let err = |e: anyhow::Error| -> StorageError {
            StorageIOError::write_snapshot(None, AnyError::error(format!("{e:#}"))).into()
        };
        let stored: Option<StoredSnapshot> = self.store.get_meta(KEY_SNAPSHOT).map_err(err)?;
        if let Some(stored) = stored {
            if stored.meta.last_log_id >= snap.meta.last_log_id {
                return Ok(());
            }
        }
        self.store.put_meta(KEY_SNAPSHOT, snap).map_err(err)
    }
}

fn voters(
    membership: &openraft::Membership<NodeId, MonInfo>,
) -> std::collections::BTreeMap<u64, MonInfo> {
    membership
        .voter_ids()
        .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
        .collect()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_log_id, last_membership) = self.shared.read(|a| {
            (
                serde_json::to_vec(&a.state),
                a.last_applied,
                a.last_membership.clone(),
            )
        });
        let data = data.map_err(sm_err)?;
        let snapshot_id = match last_log_id {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term,
                id.index,
                cairn_common::now_ms()
            ),
            None => format!("empty-{}", cairn_common::now_ms()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.persist_snapshot(&stored)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok(self
            .shared
            .read(|a| (a.last_applied, a.last_membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.shared.write(|a| {
            entries
                .into_iter()
                .map(|entry| {
                    a.last_applied = Some(entry.log_id);
                    match entry.payload {
                        EntryPayload::Blank => CommandOutcome::Done {
                            epoch: 0,
                            message: "no-op".into(),
                        },
                        EntryPayload::Normal(p) => a.state.apply_proposal(p, entry.log_id.index),
                        EntryPayload::Membership(m) => {
                            a.state.apply_membership(voters(&m));
                            a.last_membership = StoredMembership::new(Some(entry.log_id), m);
                            CommandOutcome::Done {
                                epoch: a.state.maps.monmap.epoch,
                                message: "membership changed".into(),
                            }
                        }
                    }
                })
                .collect()
        }))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MonInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: ClusterState = serde_json::from_slice(&data).map_err(|e| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e.to_string()))
        })?;
        self.persist_snapshot(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })?;
        self.shared.write(|a| {
            a.state = state;
            a.last_applied = meta.last_log_id;
            a.last_membership = meta.last_membership.clone();
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let stored: Option<StoredSnapshot> = self
            .store
            .get_meta(KEY_SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, AnyError::error(format!("{e:#}"))))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
