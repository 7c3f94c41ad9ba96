//! `cairn.toml`, the one configuration format of every daemon and of the `cairn` tool.
//!
//! Precedence, lowest first: built-in defaults, the file, environment variables
//! `CAIRN__SECTION__OPTION=value` (e.g. `CAIRN__MON__DOWN_GRACE_MS=3000`), then
//! `--set section.option=value` flags. Relative paths in the file are relative to the file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Environment variable naming the config file.
pub const CONF_ENV: &str = "CAIRN_CONF";
const ENV_OVERRIDE_PREFIX: &str = "CAIRN__";
const DEFAULT_CONF: &str = "/etc/cairn/cairn.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub fsid: Option<Uuid>,
    pub keyring: PathBuf,
    /// The monitors clients and daemons contact first (the initial mon set).
    pub monitors: Vec<MonEndpoint>,
    pub mon: MonSettings,
    pub osd: OsdSettings,
    pub mds: MdsSettings,
    pub client: ClientSettings,
    pub log: LogSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonEndpoint {
    pub name: String,
    /// gRPC address for clients and peers.
    pub addr: String,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub admin_addr: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonSettings {
    /// Where a mon keeps its RocksDB store; `{name}` is replaced by the mon's name.
    pub data_dir: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is taken after this many log entries; older entries are then purged.
    pub snapshot_logs_since_last: u64,
    /// Entries kept behind a snapshot so lagging mons catch up without a snapshot transfer.
    pub logs_kept_after_snapshot: u64,
    /// A mon not heard from for this long is reported out of quorum (MON_DOWN).
    pub down_grace_ms: u64,
    pub ticket_ttl_secs: u64,
    pub challenge_max_age_ms: u64,
    /// Largest gRPC request a mon accepts.
    pub request_bytes_max: usize,
    /// How long a write or current read waits for a leader and a quorum before failing.
    pub commit_timeout_ms: u64,
    pub rocksdb_block_cache_bytes: usize,
    pub rocksdb_write_buffer_bytes: usize,
    /// Map subscriptions served at once by one mon.
    pub subscribers_max: usize,
    /// Requests one connection may have in flight; more wait.
    pub requests_in_flight_per_connection_max: usize,
    /// An OSD whose beacons stop for this long is marked down.
    pub osd_beacon_grace_ms: u64,
    /// Distinct peers that must report an OSD silent before it is marked down (fewer when
    /// fewer peers are up). A refused connection needs one report: the process is gone.
    pub osd_min_reporters: u32,
    /// A failure report counts for this long after it arrived.
    pub osd_report_ttl_ms: u64,
    /// A down OSD is marked out (its data moves elsewhere) after this long.
    pub osd_out_interval_ms: u64,
    /// An MDS whose beacons stop for this long leaves the FSMap; if it held a rank it is
    /// blocklisted and its standby takes over. Eight of the MDSs' 250 ms beacons: one lost
    /// beacon must not cost a failover, a dead MDS must not cost clients long.
    pub mds_beacon_grace_ms: u64,
}

impl Default for MonSettings {
    fn default() -> Self {
        MonSettings {
            data_dir: "/var/lib/cairn/mon.{name}".into(),
            // openraft waits a lease (election_timeout_max) plus a random election timeout
            // before a follower campaigns: 600-800 ms here, so failover stays near 1 s.
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 200,
            election_timeout_max_ms: 400,
            snapshot_logs_since_last: 5000,
            logs_kept_after_snapshot: 1000,
            down_grace_ms: 2000,
            ticket_ttl_secs: 3600,
            challenge_max_age_ms: 30_000,
            request_bytes_max: 1 << 20,
            commit_timeout_ms: 5000,
            rocksdb_block_cache_bytes: 32 << 20,
            rocksdb_write_buffer_bytes: 16 << 20,
            subscribers_max: 1024,
            requests_in_flight_per_connection_max: 256,
            osd_beacon_grace_ms: 4000,
            osd_min_reporters: 2,
            osd_report_ttl_ms: 3000,
            osd_out_interval_ms: 600_000,
            mds_beacon_grace_ms: 2000,
        }
    }
}

/// A metadata server (`cairn-mds --id NAME`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MdsSettings {
    /// gRPC listen address; port 0 picks a free port. `{name}` is replaced by the MDS's name.
    pub addr: String,
    /// The address announced to clients when `addr` listens on 0.0.0.0; empty picks the local
    /// address of the route towards the mons.
    pub public_addr: String,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`); empty disables it.
    pub admin_addr: String,
    /// Beacons to the mons; `mon.mds_beacon_grace_ms` without one hands the rank over.
    pub beacon_interval_ms: u64,
    /// A journal segment object is closed once it holds this many bytes.
    pub journal_segment_bytes: u64,
    /// Dirty metadata is written back to its objects (and the journal trimmed) this often,
    /// or sooner when `dirty_entries_max` changes wait.
    pub writeback_interval_ms: u64,
    pub dirty_entries_max: usize,
    /// Memory the metadata cache may take (about: records and map overheads); past it,
    /// clean inodes and directory entries are dropped at the next write-back.
    pub cache_memory_bytes: usize,
    /// A client session whose stream stays disconnected this long is evicted: its open
    /// files are closed and the replies kept for its retries forgotten.
    pub session_timeout_ms: u64,
    /// After a takeover, files that lose their last name are kept this long before removal
    /// even when no client has stated it holds them open: clients of the previous active
    /// state their open files as they reconnect.
    pub reconnect_timeout_ms: u64,
    /// How long a request waits for other clients to report their writes to the file it
    /// shows (a stat while another client writes); past it, a client that has the file open
    /// for writing and did not answer is evicted and blocklisted (its held-back writes must
    /// never land behind later ones), and the MDS answers with what it knows.
    pub recall_timeout_ms: u64,
    /// How long an evicted client stays blocklisted: OSDs refuse its ops, and it must mount
    /// again.
    pub evicted_blocklist_secs: u64,
    /// Client sessions (streams) served at once; more are refused.
    pub sessions_max: usize,
    /// Requests answered at once; more wait.
    pub requests_in_flight_max: usize,
    /// Journal tail polls of a standby-replay daemon when it has caught up.
    pub replay_poll_ms: u64,
}

impl Default for MdsSettings {
    fn default() -> Self {
        MdsSettings {
            addr: "0.0.0.0:0".into(),
            public_addr: String::new(),
            admin_addr: String::new(),
            beacon_interval_ms: 250,
            journal_segment_bytes: 4 << 20,
            writeback_interval_ms: 2000,
            dirty_entries_max: 100_000,
            cache_memory_bytes: 256 << 20,
            // Longer than a client retries one request (2 minutes): a retry must still find
            // its reply remembered, or a change could be applied twice.
            session_timeout_ms: 300_000,
            reconnect_timeout_ms: 45_000,
            // Well inside a client's 30 s per-attempt deadline.
            recall_timeout_ms: 5_000,
            // An hour, as Ceph: far past any pause of a process or a network.
            evicted_blocklist_secs: 3600,
            sessions_max: 4096,
            requests_in_flight_max: 1024,
            replay_poll_ms: 100,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OsdSettings {
    /// Where an OSD keeps its store; `{id}` is replaced by the OSD's id.
    pub data_dir: String,
    /// Host name for placement (the failure domain); empty means the machine's host name.
    pub host: String,
    /// gRPC listen address; port 0 picks a free port. `{id}` is replaced by the OSD's id.
    pub addr: String,
    /// The address announced to peers and clients when `addr` listens on 0.0.0.0; empty picks
    /// the local address of the route towards the mons.
    pub public_addr: String,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`); empty disables it.
    pub admin_addr: String,
    pub heartbeat_interval_ms: u64,
    /// A peer silent this long is reported to the mons.
    pub heartbeat_grace_ms: u64,
    pub beacon_interval_ms: u64,
    /// When a PG's state changes (activated, clean, scrubbed), the next beacon goes this long
    /// after rather than at the interval, so `cairn status` follows recovery closely; changes
    /// within the delay share a beacon. At `beacon_interval_ms` or more: interval only.
    pub beacon_after_pg_change_ms: u64,
    /// Client ops one OSD runs at once; more wait, up to `op_queue_max`, then are refused.
    pub ops_in_flight_max: usize,
    pub op_queue_max: usize,
    /// Largest gRPC message (data of one op plus framing).
    pub message_bytes_max: usize,
    /// How long a sub-op to a peer may take before the op is answered RETRY.
    pub peer_timeout_ms: u64,
    /// Each PG is scrubbed (copies compared) this often, and deep-scrubbed (every byte read
    /// and checked) at `deep_scrub_interval_ms`; 0 turns the schedule off (on demand only).
    pub scrub_interval_ms: u64,
    pub deep_scrub_interval_ms: u64,
    /// Scrubs rewrite copies that fail their checksums from good ones without being asked.
    pub scrub_auto_repair: bool,
    /// Objects compared per step of a scrub; client ops to the PG wait only for one step.
    pub scrub_chunk_objects: u32,
    /// PGs whose objects a primary recovers at once in the background after a map change
    /// (each one object at a time); a client op recovers the object it needs at once.
    pub recovery_pgs_at_once: usize,
    /// Bytes per second this OSD's background recovery writes at most, over all its PGs,
    /// while clients use the OSD (I/O in the last second; idle, it recovers at full speed);
    /// 0: no limit. What a client op needs recovered first is not counted.
    pub recovery_max_bytes_per_sec: u64,
    /// The same when no client has used the OSD for a second (0: no limit).
    pub recovery_idle_max_bytes_per_sec: u64,
}

impl Default for OsdSettings {
    fn default() -> Self {
        OsdSettings {
            data_dir: "/var/lib/cairn/osd.{id}".into(),
            host: String::new(),
            addr: "0.0.0.0:0".into(),
            public_addr: String::new(),
            admin_addr: String::new(),
            heartbeat_interval_ms: 500,
            heartbeat_grace_ms: 2000,
            beacon_interval_ms: 1000,
            beacon_after_pg_change_ms: 100,
            ops_in_flight_max: 256,
            op_queue_max: 4096,
            message_bytes_max: 80 << 20,
            peer_timeout_ms: 10_000,
            scrub_interval_ms: 24 * 3600 * 1000,
            deep_scrub_interval_ms: 7 * 24 * 3600 * 1000,
            scrub_auto_repair: true,
            scrub_chunk_objects: 64,
            // Measured with scripts/bench-recovery (BENCHMARKS.md): 4 PGs at once rebuild
            // at ~300 MiB/s on an idle cluster, 1 at ~200; 16 MiB/s while clients work left
            // them 86 % of their throughput, 64 MiB/s 54 %.
            recovery_pgs_at_once: 4,
            recovery_max_bytes_per_sec: 16 << 20,
            recovery_idle_max_bytes_per_sec: 0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// The entity the `cairn` tool authenticates as.
    pub name: String,
    /// Total time one operation may take, retries included.
    pub op_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Attempts per operation (each against the next mon) before giving up.
    pub attempts_max: u32,
    pub retry_backoff_ms: u64,
    /// Largest reply the client accepts.
    pub reply_bytes_max: usize,
    /// Failure domain of new pools when `cairn osd pool create` names none: `host`, or
    /// `osd` for clusters on one host (the dev cluster).
    pub pool_failure_domain: crate::maps::FailureDomain,
    /// File data a filesystem client holds written but not yet sent, over all its files;
    /// past it, a write sends its file's data first.
    pub fs_write_buffer_bytes: u64,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            name: "client.admin".into(),
            op_timeout_ms: 15_000,
            connect_timeout_ms: 1000,
            attempts_max: 50,
            retry_backoff_ms: 100,
            reply_bytes_max: 80 << 20,
            pool_failure_domain: crate::maps::FailureDomain::Host,
            fs_write_buffer_bytes: 64 << 20,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter (`info`, `cairn_mon=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    pub json: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            // openraft narrates every election at info; its warnings and errors are enough.
            level: "info,openraft=warn".into(),
            json: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fsid: None,
            keyring: PathBuf::from("/etc/cairn/keyring"),
            monitors: Vec::new(),
            mon: MonSettings::default(),
            osd: OsdSettings::default(),
            mds: MdsSettings::default(),
            client: ClientSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// A loaded configuration and the file it came from (if any).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub path: Option<PathBuf>,
}

impl Config {
    /// Finds the config file: `explicit`, else `$CAIRN_CONF`, else `./cairn.toml`, else
    /// `/etc/cairn/cairn.toml`. With none of them present, the defaults (plus overrides) apply.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_path_buf());
        }
        if let Ok(p) = std::env::var(CONF_ENV) {
            if !p.is_empty() {
                return Some(PathBuf::from(p));
            }
        }
        ["cairn.toml", DEFAULT_CONF]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    /// Loads the file (if any), then applies environment and `--set` overrides.
    pub fn load(explicit: Option<&Path>, sets: &[String]) -> anyhow::Result<Loaded> {
        let path = Config::locate(explicit);
        let mut table = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read config {}", p.display()))?;
                toml::from_str::<toml::Table>(&text)
                    .with_context(|| format!("config {} is not valid TOML", p.display()))?
            }
            None => toml::Table::new(),
        };
        for (k, v) in std::env::vars() {
            if let Some(rest) = k.strip_prefix(ENV_OVERRIDE_PREFIX) {
                let key = rest.to_ascii_lowercase().replace("__", ".");
                set_path(&mut table, &key, &v)
                    .with_context(|| format!("environment variable {k}"))?;
            }
        }
        for s in sets {
            let (key, value) = s
                .split_once('=')
                .with_context(|| format!("--set {s:?}: expected section.option=value"))?;
            set_path(&mut table, key.trim(), value.trim()).with_context(|| format!("--set {s}"))?;
        }
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow::anyhow!("invalid configuration: {}", e.message())
                })?;
        if let Some(dir) = path.as_ref().and_then(|p| p.parent()) {
            config.resolve_relative_to(dir);
        }
        config.validate()?;
        Ok(Loaded { config, path })
    }

    fn resolve_relative_to(&mut self, dir: &Path) {
        if self.keyring.is_relative() {
            self.keyring = dir.join(&self.keyring);
        }
        if Path::new(&self.mon.data_dir).is_relative() {
            self.mon.data_dir = dir.join(&self.mon.data_dir).to_string_lossy().into_owned();
        }
        if Path::new(&self.osd.data_dir).is_relative() {
            self.osd.data_dir = dir.join(&self.osd.data_dir).to_string_lossy().into_owned();
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let m = &self.mon;
        if m.election_timeout_min_ms <= m.heartbeat_interval_ms * 2 {
            bail!("mon.election_timeout_min_ms must exceed twice mon.heartbeat_interval_ms");
        }
        if m.election_timeout_max_ms <= m.election_timeout_min_ms {
            bail!("mon.election_timeout_max_ms must exceed mon.election_timeout_min_ms");
        }
        if m.ticket_ttl_secs == 0 || m.request_bytes_max < 1024 || m.subscribers_max == 0 {
            bail!("mon.ticket_ttl_secs, mon.request_bytes_max (>= 1024) and mon.subscribers_max must be positive");
        }
        let o = &self.osd;
        if o.heartbeat_grace_ms <= o.heartbeat_interval_ms || o.heartbeat_interval_ms == 0 {
            bail!("osd.heartbeat_grace_ms must exceed osd.heartbeat_interval_ms (> 0)");
        }
        if o.ops_in_flight_max == 0 || o.message_bytes_max < (1 << 20) || o.beacon_interval_ms == 0
        {
            bail!("osd.ops_in_flight_max and osd.beacon_interval_ms must be positive, osd.message_bytes_max at least 1 MiB");
        }
        if o.scrub_chunk_objects == 0 || o.scrub_chunk_objects > 10_000 {
            bail!("osd.scrub_chunk_objects must be 1 to 10000");
        }
        if m.mds_beacon_grace_ms <= self.mds.beacon_interval_ms {
            bail!("mon.mds_beacon_grace_ms must exceed mds.beacon_interval_ms");
        }
        if self.client.attempts_max == 0 || self.client.op_timeout_ms == 0 {
            bail!("client.attempts_max and client.op_timeout_ms must be positive");
        }
        for mon in &self.monitors {
            crate::maps::validate_daemon_name(&mon.name)
                .map_err(|e| anyhow::anyhow!("in [[monitors]]: {e}"))?;
        }
        Ok(())
    }

    pub fn mon_data_dir(&self, name: &str) -> PathBuf {
        PathBuf::from(self.mon.data_dir.replace("{name}", name))
    }

    pub fn osd_data_dir(&self, id: u32) -> PathBuf {
        PathBuf::from(self.osd.data_dir.replace("{id}", &id.to_string()))
    }

    pub fn monitor(&self, name: &str) -> Option<&MonEndpoint> {
        self.monitors.iter().find(|m| m.name == name)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config always serializes")
    }
}

/// Sets `a.b.c = value` in a TOML table; the value is read as TOML (number, bool, array) when
/// it parses as one, otherwise as a string.
fn set_path(table: &mut toml::Table, key: &str, value: &str) -> anyhow::Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("invalid option name {key:?}");
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, sections) = parts.split_last().expect("split yields at least one part");
    let mut cur = table;
    for s in sections {
        cur = cur
            .entry(s.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("{s} is not a section"))?;
    }
    cur.insert(last.to_string(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_sets_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(
            &path,
            "keyring = \"keyring\"\n[[monitors]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n[mon]\ndown_grace_ms = 10\n",
        )
        .unwrap();
        let loaded = Config::load(
            Some(&path),
            &["mon.down_grace_ms=20".into(), "log.level=debug".into()],
        )
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.mon.down_grace_ms, 20);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.keyring, dir.path().join("keyring"));
        assert_eq!(c.monitors[0].name, "a");
        assert_eq!(
            c.mon.heartbeat_interval_ms,
            MonSettings::default().heartbeat_interval_ms
        );
    }

    #[test]
    fn unknown_options_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, "[mon]\nno_such_option = 1\n").unwrap();
        assert!(Config::load(Some(&path), &[]).is_err());
        std::fs::write(&path, "").unwrap();
        assert!(Config::load(Some(&path), &["mon.down_grace_ms=soon".into()]).is_err());
        assert!(Config::load(Some(&path), &["nonsense".into()]).is_err());
        assert!(Config::load(Some(&path), &["mon.election_timeout_min_ms=1".into()]).is_err());
    }
}
