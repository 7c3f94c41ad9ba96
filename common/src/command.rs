//! Changes to the maps, as proposed to the monitors, and the requests a follower forwards to
//! the leader. Each command is validated before it is proposed and applied deterministically
//! by every monitor's state machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::SecretKey;
use crate::maps::{FailureDomain, PoolKind};
use crate::pg_states::ScrubStamps;
use crate::placement::PgId;

/// Most PGs one pool may have, and most pools: every client computes placement over them.
pub const POOL_PG_NUM_MAX: u32 = 65_536;
pub const POOLS_MAX: usize = 1024;
/// OSD ids run from 0 to this bound.
pub const OSD_ID_MAX: u32 = 1 << 20;

/// Largest option name and value accepted by `config set`.
pub const CONFIG_NAME_BYTES_MAX: usize = 128;
pub const CONFIG_VALUE_BYTES_MAX: usize = 4096;
/// Most options the config map holds, and most entities the auth map holds: the maps travel
/// whole to every subscriber, so they stay small.
pub const CONFIG_OPTIONS_MAX: usize = 4096;
pub const ENTITIES_MAX: usize = 65_536;

/// Identifies one client request so a retried write applies once: the monitors remember the
/// outcome of each client's recent requests and answer a repeat with it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// Unique per client instance (entity plus a random nonce).
    pub client: String,
    /// Grows with each request of that client.
    pub seq: u64,
}

/// A command as it travels through the Raft log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Proposal {
    pub request: Option<RequestId>,
    pub command: Command,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Seeds a new cluster: fsid and the first entities. Applied once; later copies are no-ops.
    Bootstrap {
        fsid: uuid::Uuid,
        entities: BTreeMap<String, NewEntity>,
    },
    ConfigSet {
        name: String,
        value: String,
    },
    ConfigRm {
        name: String,
    },
    /// Adds an entity. A client may leave `key` empty; the receiving mon then generates one
    /// before proposing, so the state machine itself stays deterministic.
    AuthAdd {
        entity: String,
        caps: BTreeMap<String, String>,
        key: Option<SecretKey>,
    },
    AuthCaps {
        entity: String,
        caps: BTreeMap<String, String>,
    },
    AuthRm {
        entity: String,
    },
    /// An OSD starts: it joins the map (in, with its weight) on first boot, and is up at
    /// `addr` from now on.
    OsdBoot {
        id: u32,
        addr: String,
        host: String,
        weight: f64,
        capacity_bytes: u64,
    },
    /// Marks OSDs down (already down ones are left alone); `at_ms` starts their out timer.
    OsdDown {
        ids: Vec<u32>,
        reason: String,
        at_ms: u64,
    },
    OsdOut {
        ids: Vec<u32>,
    },
    OsdIn {
        ids: Vec<u32>,
    },
    /// Sets an OSD's placement weight (its share of data; it starts as its capacity in TiB):
    /// data moves to or from that OSD only.
    OsdReweight {
        id: u32,
        weight: f64,
    },
    /// Fences a client or daemon instance (`entity/nonce`): OSDs refuse its ops until
    /// `expire_secs` after `at_ms` (stamped by the mon leader). An MDS issues it for a client
    /// it evicts, so writes that client still holds back can never land behind others'.
    BlocklistAdd {
        instance: String,
        expire_secs: u64,
        #[serde(default)]
        at_ms: u64,
    },
    /// Lifts the fence on an instance.
    BlocklistRm {
        instance: String,
    },
    PoolCreate {
        name: String,
        pg_num: u32,
        kind: PoolKind,
        failure_domain: FailureDomain,
    },
    /// Changes one property of a pool: `min_size` today.
    PoolSet {
        name: String,
        key: String,
        value: String,
    },
    PoolRm {
        name: String,
    },
    /// Creates a filesystem over two existing pools; its `max_mds` is 1 and standby-replay
    /// is off until `FsSet` turns it on.
    FsNew {
        name: String,
        metadata_pool: String,
        data_pool: String,
        /// Takes a metadata pool whose PGs report objects (an earlier filesystem's journal
        /// there would be replayed as the new one's); refused otherwise.
        #[serde(default)]
        force: bool,
    },
    /// Removes a filesystem (not its pools); its active is fenced and leaves the map (it
    /// restarts as a fresh standby), its other daemons go back to standby. `at_ms` is the
    /// fence's start, stamped by the mon that proposes the command.
    FsRm {
        name: String,
        #[serde(default)]
        at_ms: u64,
    },
    /// Changes one property of a filesystem: `allow_standby_replay` or `max_mds`.
    FsSet {
        name: String,
        key: String,
        value: String,
    },
    FsAddDataPool {
        name: String,
        pool: String,
    },
    /// An MDS daemon instance registers (from its beacons; the mons propose it, never a
    /// client). It replaces an older instance of the same name, fencing it if it held a rank;
    /// `at_ms` dates that fence.
    MdsBoot {
        name: String,
        addr: String,
        instance: String,
        at_ms: u64,
    },
    /// An MDS instance is gone (beacons stopped, or it shut down): it leaves the map, and if
    /// it held a rank it is blocklisted from `at_ms` so its successor is safe from it. A
    /// no-op when `instance` is no longer the daemon's current one.
    MdsFailed {
        name: String,
        instance: String,
        at_ms: u64,
        reason: String,
    },
    /// The rank holder `instance` finished replaying its journal and answers clients.
    MdsServing {
        name: String,
        instance: String,
    },
    /// Scrub stamps PGs' primaries reported, newer than the committed ones (the mons propose
    /// it from the OSDs' beacons, never a client). Each PG keeps the newer of its stamps.
    ScrubStamps {
        stamps: Vec<(PgId, ScrubStamps)>,
    },
}

impl Command {
    /// The command as a user types it, for logs and error messages.
    pub fn label(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "bootstrap",
            Command::ConfigSet { .. } => "config set",
            Command::ConfigRm { .. } => "config rm",
            Command::AuthAdd { .. } => "auth add",
            Command::AuthCaps { .. } => "auth caps",
            Command::AuthRm { .. } => "auth rm",
            Command::OsdBoot { .. } => "osd boot",
            Command::OsdDown { .. } => "osd down",
            Command::OsdOut { .. } => "osd out",
            Command::OsdIn { .. } => "osd in",
            Command::OsdReweight { .. } => "osd reweight",
            Command::BlocklistAdd { .. } => "osd blocklist add",
            Command::BlocklistRm { .. } => "osd blocklist rm",
            Command::PoolCreate { .. } => "osd pool create",
            Command::PoolSet { .. } => "osd pool set",
            Command::PoolRm { .. } => "osd pool rm",
            Command::FsNew { .. } => "fs new",
            Command::FsRm { .. } => "fs rm",
            Command::FsSet { .. } => "fs set",
            Command::FsAddDataPool { .. } => "fs add_data_pool",
            Command::MdsBoot { .. } => "mds boot",
            Command::MdsFailed { .. } => "mds failed",
            Command::MdsServing { .. } => "mds serving",
            Command::ScrubStamps { .. } => "pg scrub stamps",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewEntity {
    pub key: SecretKey,
    pub caps: BTreeMap<String, String>,
}

/// The result of a command, as applied by the state machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// Applied; `epoch` is the new epoch of the map it changed (unchanged when a no-op).
    Done { epoch: u64, message: String },
    /// Refused by the state machine; nothing changed.
    Refused { reason: String },
}

/// Requests a mon may forward to the leader on behalf of an authenticated entity.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Forwarded {
    Command(Proposal),
    /// Checks a client's proof on the leader (where the key is), without the key leaving it.
    Authenticate {
        entity: String,
        challenge: Vec<u8>,
        client_nonce: Vec<u8>,
        proof: Vec<u8>,
    },
    Status,
    GetMaps,
    MonAdd {
        name: String,
        addr: String,
    },
    MonRm {
        name: String,
    },
    /// An entity's key, for `cairn auth get` (secrets are read on the leader only).
    AuthGetKey {
        entity: String,
    },
    /// An OSD's beacon with the peers it cannot reach; the leader decides who is down.
    OsdBeacon {
        osd: u32,
        failures: Vec<PeerFailureReport>,
        going_down: bool,
        #[serde(default)]
        usage: crate::status::Usage,
        #[serde(default)]
        io: crate::status::IoTotals,
        /// The PGs it is the primary of.
        #[serde(default)]
        pgs: Vec<(crate::placement::PgId, crate::pg_states::PgReport)>,
        /// What its collections hold, by pool id.
        #[serde(default)]
        pools: std::collections::BTreeMap<u32, crate::df::PoolUsage>,
    },
    /// An MDS's beacon; the leader turns it into `MdsBoot`, `MdsServing` or `MdsFailed`
    /// when the FSMap must change, and tracks when each daemon was last heard.
    MdsBeacon {
        name: String,
        addr: String,
        instance: String,
        serving: bool,
        going_down: bool,
    },
    /// Every PG's row (`cairn pg ls`, `cairn pg query`).
    PgList,
    /// Past OSD maps of epochs `from..=to` (bounded), for peering.
    OsdMapHistory {
        from: u64,
        to: u64,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerFailureReport {
    pub osd: u32,
    pub refused: bool,
    pub silent_ms: u64,
}

/// Checks a pool name: 1 to 64 characters of letters, digits, '-', '_' and '.'.
pub fn validate_pool_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid pool name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Checks a config option name: dotted lowercase words, e.g. `mon.down_grace_ms`.
pub fn validate_config_name(name: &str) -> Result<(), String> {
    let word_ok = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if name.len() <= CONFIG_NAME_BYTES_MAX && name.split('.').all(word_ok) {
        Ok(())
    } else {
        Err(format!(
            "invalid option name {name:?}: use dotted words of a-z, 0-9 and '_' (at most {CONFIG_NAME_BYTES_MAX} bytes), e.g. mon.down_grace_ms"
        ))
    }
}

pub fn validate_config_value(value: &str) -> Result<(), String> {
    if value.len() <= CONFIG_VALUE_BYTES_MAX {
        Ok(())
    } else {
        Err(format!(
            "option value is {} bytes; the limit is {CONFIG_VALUE_BYTES_MAX}",
            value.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names() {
        assert!(validate_config_name("mon.down_grace_ms").is_ok());
        assert!(validate_config_name("x").is_ok());
        for bad in ["", "a..b", "A.b", "a b", ".a", &"a".repeat(129)] {
            assert!(validate_config_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_config_value(&"v".repeat(4097)).is_err());
    }
}
