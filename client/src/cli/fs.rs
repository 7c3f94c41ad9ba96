//! `cairn fs …`: filesystems (the FSMap). Besides the one-change commands, `apply` creates or
//! updates a filesystem and its pools from a spec shaped like Rook's CephFilesystem, changing
//! only what differs, so it can run again and again (from a deployment script, say).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use serde::Serialize;
use serde_json::{json, Map, Value};

use cairn_client::{ClientError, MonClient, Rados};
use cairn_common::command::{validate_pool_name, Command};
use cairn_common::config::Config;
use cairn_common::fsmap::{validate_fs_name, FsId, FsMap, MdsInfo, MdsRole};
use cairn_common::fsops::{FsckReport, MdsStatus};
use cairn_common::maps::{ClusterMaps, FailureDomain, OsdMap};
use cairn_common::status::{human_bytes, human_duration};

use super::emit;
use super::osd::{change, kind_label, PoolCreateArgs, DEFAULT_PG_NUM, DEFAULT_STRIPE_UNIT};
use crate::Format;

#[derive(Subcommand)]
pub enum FsCmd {
    /// Create a filesystem over two existing pools: metadata (replicated) and data.
    New {
        name: String,
        metadata_pool: String,
        data_pool: String,
        /// Use a metadata pool that already holds objects (an earlier filesystem's journal
        /// there would be replayed as this one's).
        #[arg(long)]
        force: bool,
    },
    /// List filesystems.
    Ls,
    /// Remove a filesystem (its pools and their objects remain).
    Rm {
        name: String,
        #[arg(long = "yes-i-really-mean-it")]
        confirm: bool,
    },
    /// Change a property: allow_standby_replay (true or false) or max_mds (1 only).
    Set {
        name: String,
        key: String,
        value: String,
    },
    /// Add a data pool to a filesystem.
    #[command(name = "add_data_pool")]
    AddDataPool { name: String, pool: String },
    /// Ranks and the MDS daemons holding them, standby daemons, pools.
    Status {
        /// One filesystem (default: all).
        name: Option<String>,
    },
    /// Check the namespace hangs together: entries, link counts, directory parents, the
    /// inode table, inodes no name reaches. Other requests wait while it walks; it exits
    /// non-zero when it finds a problem.
    Fsck { name: String },
    /// Create or update a filesystem and its pools from a spec (YAML, or JSON for a `.json`
    /// file) shaped like Rook's CephFilesystem; only what differs is changed.
    Apply {
        /// The spec; `-` reads standard input.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Create the filesystem over an existing metadata pool that already holds objects
        /// (an earlier filesystem's journal there would be replayed as this one's).
        #[arg(long)]
        force: bool,
    },
}

/// How long `fs status` waits for an active MDS to describe its sessions, journal and cache.
const MDS_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn run(
    client: &MonClient,
    cmd: &FsCmd,
    config: &Config,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        FsCmd::New {
            name,
            metadata_pool,
            data_pool,
            force,
        } => {
            if !force {
                refuse_used_metadata_pool(config, metadata_pool).await?;
            }
            let cmd = Command::FsNew {
                name: name.clone(),
                metadata_pool: metadata_pool.clone(),
                data_pool: data_pool.clone(),
                force: *force,
            };
            change(client, cmd, format).await
        }
        FsCmd::Ls => {
            let fsmap = client.maps().await?.fsmap;
            emit(format, &ls_json(&fsmap), || render_ls(&fsmap))
        }
        FsCmd::Rm { name, confirm } => {
            if !confirm {
                bail!(
                    "removing filesystem '{name}' makes its files unreachable: add --yes-i-really-mean-it"
                );
            }
            // The mon stamps the time.
            let rm = Command::FsRm {
                name: name.clone(),
                at_ms: 0,
            };
            change(client, rm, format).await
        }
        FsCmd::Set { name, key, value } => {
            let cmd = Command::FsSet {
                name: name.clone(),
                key: key.clone(),
                value: value.clone(),
            };
            change(client, cmd, format).await
        }
        FsCmd::AddDataPool { name, pool } => {
            let cmd = Command::FsAddDataPool {
                name: name.clone(),
                pool: pool.clone(),
            };
            change(client, cmd, format).await
        }
        FsCmd::Status { name } => {
            let mut report = fs_status(&client.maps().await?, name.as_deref())?;
            for f in &mut report.filesystems {
                if f.ranks.iter().any(|r| r.rank == "0") {
                    f.mds = Some(mds_status(config, &f.name).await.map_err(|e| e.to_string()));
                }
            }
            emit(format, &report, || report.render())
        }
        FsCmd::Fsck { name } => {
            let report = cairn_client::fs::FsClient::connect(config, name)
                .await?
                .fsck()
                .await?;
            emit(format, &report, || render_fsck(name, &report))?;
            if report.problems_total > 0 {
                bail!("filesystem {name} has {} problems", report.problems_total);
            }
            Ok(())
        }
        FsCmd::Apply { file, force } => apply(client, config, file, *force, format).await,
    }
}

/// Refuses a metadata pool that already holds objects, as Ceph's `fs new` does: an earlier
/// filesystem's journal and directories there would be taken for the new one's. A pool the
/// cluster does not know is left for the mons to refuse.
async fn refuse_used_metadata_pool(config: &Config, pool: &str) -> anyhow::Result<()> {
    let rados = Rados::connect(config).await?;
    match rados.list(pool, None, 1).await {
        Ok(page) if !page.objects.is_empty() => bail!(
            "pool '{pool}' already holds objects (an earlier filesystem's metadata?): use an empty pool, or --force to reuse it"
        ),
        Ok(_) | Err(ClientError::NotFound(_)) => Ok(()),
        Err(e) => Err(anyhow!(
            "cannot check that pool '{pool}' is empty ({e}): retry, or --force to skip the check"
        )),
    }
}

fn render_fsck(name: &str, r: &FsckReport) -> String {
    let mut out = format!(
        "filesystem {name}: {} directories, {} entries, {} inodes, {} data objects checked in {} ms\n",
        r.directories, r.entries, r.inodes, r.data_objects, r.took_ms
    );
    for p in &r.problems {
        let _ = writeln!(out, "  {p}");
    }
    if r.problems_total > r.problems.len() as u64 {
        let _ = writeln!(
            out,
            "  ... and {} more",
            r.problems_total - r.problems.len() as u64
        );
    }
    if r.problems_total == 0 {
        out.push_str("clean\n");
    }
    out
}

fn ls_json(fsmap: &FsMap) -> Value {
    let list: Vec<Value> = fsmap
        .filesystems
        .iter()
        .map(|(id, f)| json!({ "id": id, "filesystem": f }))
        .collect();
    json!({ "epoch": fsmap.epoch, "filesystems": list })
}

fn render_ls(fsmap: &FsMap) -> String {
    if fsmap.filesystems.is_empty() {
        return "no filesystems\n".into();
    }
    fsmap
        .filesystems
        .values()
        .map(|f| {
            format!(
                "name: {}, metadata pool: {}, data pools: [{}]\n",
                f.name,
                f.metadata_pool,
                f.data_pools.join(", ")
            )
        })
        .collect()
}

/// `cairn fs status`: per filesystem its ranks and pools, then the daemons without a role.
#[derive(Serialize)]
struct FsStatus {
    filesystems: Vec<FsReport>,
    standbys: Vec<DaemonRow>,
}

#[derive(Serialize)]
struct FsReport {
    id: FsId,
    name: String,
    /// Rank 0's holder, then its standby-replay (`0-s`); empty when no daemon holds it.
    ranks: Vec<RankRow>,
    pools: Vec<PoolRow>,
    /// What the active says of its sessions, journal and cache (or why it did not).
    #[serde(skip_serializing_if = "Option::is_none")]
    mds: Option<Result<MdsStatus, String>>,
}

/// Asks the filesystem's active MDS for its status.
async fn mds_status(config: &Config, fs: &str) -> anyhow::Result<MdsStatus> {
    let ask = async {
        let client = cairn_client::fs::FsClient::connect(config, fs).await?;
        client.mds_status().await
    };
    match tokio::time::timeout(MDS_STATUS_TIMEOUT, ask).await {
        Ok(answer) => Ok(answer?),
        Err(_) => bail!("the active MDS did not answer within {MDS_STATUS_TIMEOUT:?}"),
    }
}

fn render_mds(out: &mut String, mds: &Result<MdsStatus, String>) {
    let s = match mds {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(out, "mds status unavailable: {e}");
            return;
        }
    };
    let connected = s.sessions.iter().filter(|c| c.connected).count();
    let _ = writeln!(
        out,
        "journal: {} entries, {} to replay   cache: {} entries, {}, {} dirty",
        s.journal_entries,
        human_bytes(s.journal_bytes),
        s.cache_entries,
        human_bytes(s.cache_bytes),
        s.cache_dirty
    );
    let _ = writeln!(
        out,
        "clients: {} sessions, {connected} connected",
        s.sessions.len()
    );
    if s.sessions.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:<48} {:<22} {:<10} CAPS",
        "SESSION", "STATE", "OPEN FILES"
    );
    for c in &s.sessions {
        let state = format!(
            "{} {}",
            if c.connected {
                "connected"
            } else {
                "disconnected"
            },
            human_duration(c.since_ms / 1000)
        );
        let _ = writeln!(
            out,
            "{:<48} {:<22} {:<10} {}",
            c.client, state, c.open_files, c.capabilities
        );
    }
}

#[derive(Serialize)]
struct RankRow {
    rank: &'static str,
    state: &'static str,
    daemon: DaemonRow,
}

#[derive(Serialize)]
struct DaemonRow {
    name: String,
    addr: String,
}

#[derive(Serialize)]
struct PoolRow {
    name: String,
    /// `metadata` or `data`.
    role: &'static str,
    /// `replicated size 3`, `erasure 2+1`.
    kind: String,
}

fn daemon_row(name: &str, d: &MdsInfo) -> DaemonRow {
    DaemonRow {
        name: name.to_string(),
        addr: d.addr.clone(),
    }
}

fn fs_status(maps: &ClusterMaps, only: Option<&str>) -> anyhow::Result<FsStatus> {
    let fsmap = &maps.fsmap;
    if let Some(name) = only {
        if fsmap.fs_by_name(name).is_none() {
            bail!("filesystem '{name}' does not exist");
        }
    }
    let filesystems = fsmap
        .filesystems
        .iter()
        .filter(|(_, f)| only.is_none_or(|n| n == f.name))
        .map(|(id, f)| {
            let rank = |label, held: Option<(&str, &MdsInfo)>| {
                held.map(|(name, d)| RankRow {
                    rank: label,
                    state: d.role.state_name(),
                    daemon: daemon_row(name, d),
                })
            };
            let ranks = [
                rank("0", fsmap.active_of(*id)),
                rank("0-s", fsmap.standby_replay_of(*id)),
            ];
            let pool = |name: &String, role| PoolRow {
                name: name.clone(),
                role,
                kind: maps
                    .osdmap
                    .pool_by_name(name)
                    .map_or_else(|| "(missing)".to_string(), |(_, p)| kind_label(&p.kind)),
            };
            FsReport {
                id: *id,
                name: f.name.clone(),
                ranks: ranks.into_iter().flatten().collect(),
                pools: std::iter::once(pool(&f.metadata_pool, "metadata"))
                    .chain(f.data_pools.iter().map(|p| pool(p, "data")))
                    .collect(),
                mds: None,
            }
        })
        .collect();
    let standbys = fsmap
        .daemons
        .iter()
        .filter(|(_, d)| d.role == MdsRole::Standby)
        .map(|(name, d)| daemon_row(name, d))
        .collect();
    Ok(FsStatus {
        filesystems,
        standbys,
    })
}

impl FsStatus {
    fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.filesystems {
            let _ = writeln!(out, "{} (id {})", f.name, f.id);
            let _ = writeln!(out, "{:<5} {:<18} {:<12} ADDR", "RANK", "STATE", "MDS");
            if f.ranks.is_empty() {
                let _ = writeln!(out, "{:<5} {:<18} {:<12} -", "0", "(no MDS)", "-");
            }
            for r in &f.ranks {
                let _ = writeln!(
                    out,
                    "{:<5} {:<18} {:<12} {}",
                    r.rank, r.state, r.daemon.name, r.daemon.addr
                );
            }
            let _ = writeln!(out, "{:<24} {:<9} KIND", "POOL", "TYPE");
            for p in &f.pools {
                let _ = writeln!(out, "{:<24} {:<9} {}", p.name, p.role, p.kind);
            }
            if let Some(mds) = &f.mds {
                render_mds(&mut out, mds);
            }
            out.push('\n');
        }
        let _ = writeln!(out, "STANDBY MDS");
        if self.standbys.is_empty() {
            let _ = writeln!(out, "(none)");
        }
        for d in &self.standbys {
            let _ = writeln!(out, "{:<12} {}", d.name, d.addr);
        }
        out
    }
}

/// `cairn fs apply`: the spec in a file.
async fn apply(
    client: &MonClient,
    config: &Config,
    file: &Path,
    force: bool,
    format: Format,
) -> anyhow::Result<()> {
    let doc = read_spec(file)?;
    let (name, changes) = apply_spec(client, config, &doc, force)
        .await
        .with_context(|| format!("spec {}", file.display()))?;
    let report = json!({ "filesystem": name, "changes": changes });
    emit(format, &report, || {
        if changes.is_empty() {
            format!("filesystem '{name}' matches the spec already\n")
        } else {
            changes.iter().map(|c| format!("{c}\n")).collect()
        }
    })
}

/// Brings the cluster to a filesystem spec: plans every change first (so a spec that
/// conflicts with the cluster changes nothing), then commits them in order. Returns the
/// filesystem's name and what changed. A new filesystem over a metadata pool that exists and
/// holds objects is refused, as by `fs new`, unless `force`.
pub async fn apply_spec(
    client: &MonClient,
    config: &Config,
    doc: &Value,
    force: bool,
) -> anyhow::Result<(String, Vec<String>)> {
    let spec = parse_spec(doc).map_err(|e| anyhow!("invalid spec: {e}"))?;
    for field in &spec.ignored {
        eprintln!("cairn: note: {field} is not supported; ignored");
    }
    let maps = client.maps().await?;
    let cmds = plan(&maps, &spec, config.client.pool_failure_domain, force)?;
    let creates_fs = cmds.iter().any(|c| matches!(c, Command::FsNew { .. }));
    let metadata_pool = &spec.metadata_pool.name;
    if creates_fs && !force && maps.osdmap.pool_by_name(metadata_pool).is_some() {
        refuse_used_metadata_pool(config, metadata_pool).await?;
    }
    let mut changes = Vec::new();
    for cmd in cmds {
        let what = cmd.label();
        let (_, message) = client
            .command(cmd)
            .await
            .with_context(|| format!("{what} failed (the changes before it stay)"))?;
        changes.push(message);
    }
    Ok((spec.name, changes))
}

fn read_spec(file: &Path) -> anyhow::Result<Value> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the spec from stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))
    } else {
        // JSON is YAML too, so stdin may carry either.
        serde_norway::from_str(&text)
            .with_context(|| format!("{} is not valid YAML", file.display()))
    }
}

/// A pool as a spec shapes it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    Replicated { size: u32 },
    Erasure { k: u32, m: u32 },
}

#[derive(Debug, PartialEq)]
struct PoolSpec {
    name: String,
    shape: Shape,
    failure_domain: Option<FailureDomain>,
}

/// What a spec asks for.
#[derive(Debug, PartialEq)]
struct FsSpec {
    name: String,
    metadata_pool: PoolSpec,
    data_pools: Vec<PoolSpec>,
    standby_replay: bool,
    /// Fields Cairn does not read (Rook has many), as paths, to tell the user.
    ignored: Vec<String>,
}

/// A value of the spec with its path (`spec.dataPools[0].erasureCoded`), so that every error
/// names the field at fault.
#[derive(Clone)]
struct Field<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> Field<'a> {
    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn mapping(&self) -> Result<&'a Map<String, Value>, String> {
        self.value.as_object().ok_or_else(|| {
            let what = if self.path.is_empty() {
                "the spec"
            } else {
                self.path.as_str()
            };
            format!("{what} must be a mapping")
        })
    }

    /// The field `key`, if present (null counts as absent).
    fn get(&self, key: &str) -> Result<Option<Field<'a>>, String> {
        Ok(self
            .mapping()?
            .get(key)
            .filter(|v| !v.is_null())
            .map(|value| Field {
                value,
                path: self.child_path(key),
            }))
    }

    fn require(&self, key: &str) -> Result<Field<'a>, String> {
        self.get(key)?
            .ok_or_else(|| format!("{} is missing", self.child_path(key)))
    }

    fn items(&self) -> Result<Vec<Field<'a>>, String> {
        let list = self
            .value
            .as_array()
            .ok_or_else(|| format!("{} must be a list", self.path))?;
        Ok(list
            .iter()
            .enumerate()
            .map(|(i, value)| Field {
                value,
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }

    fn text(&self) -> Result<&'a str, String> {
        self.value
            .as_str()
            .ok_or_else(|| format!("{} must be a string", self.path))
    }

    fn flag(&self) -> Result<bool, String> {
        self.value
            .as_bool()
            .ok_or_else(|| format!("{} must be true or false", self.path))
    }

    /// A whole number, at least 1.
    fn count(&self) -> Result<u32, String> {
        let n = self
            .value
            .as_u64()
            .ok_or_else(|| format!("{} must be a whole number", self.path))?;
        if n == 0 {
            return Err(format!("{} must be ≥ 1", self.path));
        }
        u32::try_from(n).map_err(|_| format!("{} is too large", self.path))
    }

    /// The keys of this mapping outside `known`, as paths.
    fn unread(&self, known: &[&str]) -> Vec<String> {
        self.value
            .as_object()
            .map(|m| {
                m.keys()
                    .filter(|k| !known.contains(&k.as_str()))
                    .map(|k| self.child_path(k))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reads a spec: Rook's `{metadata: {name}, spec: {…}}` or the short form with `name` beside
/// the spec's fields. Pools are named as Rook names them: `<name>-metadata`, and
/// `<name>-<pool name>` or `<name>-data<index>`.
fn parse_spec(doc: &Value) -> Result<FsSpec, String> {
    let root = Field {
        value: doc,
        path: String::new(),
    };
    root.mapping()?;
    if let Some(kind) = root.get("kind")? {
        let kind = kind.text()?;
        if !matches!(kind, "CephFilesystem" | "Filesystem") {
            return Err(format!(
                "kind is {kind:?}: only CephFilesystem specs are understood"
            ));
        }
    }
    let mut ignored = Vec::new();
    const SPEC_FIELDS: [&str; 3] = ["metadataPool", "dataPools", "metadataServer"];
    let (name_field, spec) = match root.get("spec")? {
        Some(spec) => {
            ignored.extend(root.unread(&["apiVersion", "kind", "metadata", "spec"]));
            ignored.extend(spec.unread(&SPEC_FIELDS));
            (root.require("metadata")?.require("name")?, spec)
        }
        None => {
            let known = [&["apiVersion", "kind", "name"][..], &SPEC_FIELDS[..]].concat();
            ignored.extend(root.unread(&known));
            (root.require("name")?, root.clone())
        }
    };
    let name = name_field.text()?.to_string();
    validate_fs_name(&name).map_err(|e| format!("{}: {e}", name_field.path))?;
    let metadata = spec.require("metadataPool")?;
    let metadata_pool = parse_pool(&metadata, format!("{name}-metadata"), &mut ignored)?;
    if matches!(metadata_pool.shape, Shape::Erasure { .. }) {
        return Err(format!(
            "{}: the metadata pool must be replicated (directories live in omap, which erasure-coded pools do not support)",
            metadata.path
        ));
    }
    let data_field = spec.require("dataPools")?;
    let mut data_pools: Vec<PoolSpec> = Vec::new();
    for (i, f) in data_field.items()?.iter().enumerate() {
        let pool_name = match f.get("name")? {
            Some(n) => format!("{name}-{}", n.text()?),
            None => format!("{name}-data{i}"),
        };
        if pool_name == metadata_pool.name || data_pools.iter().any(|p| p.name == pool_name) {
            return Err(format!("{}: pool '{pool_name}' is named twice", f.path));
        }
        data_pools.push(parse_pool(f, pool_name, &mut ignored)?);
    }
    if data_pools.is_empty() {
        return Err(format!("{} must list at least one pool", data_field.path));
    }
    let mut standby_replay = false;
    if let Some(mds) = spec.get("metadataServer")? {
        if let Some(count) = mds.get("activeCount")? {
            if count.count()? != 1 {
                return Err(format!(
                    "{}: only 1 is supported (one active MDS per filesystem)",
                    count.path
                ));
            }
        }
        if let Some(flag) = mds.get("activeStandby")? {
            standby_replay = flag.flag()?;
        }
        ignored.extend(mds.unread(&["activeCount", "activeStandby"]));
    }
    Ok(FsSpec {
        name,
        metadata_pool,
        data_pools,
        standby_replay,
        ignored,
    })
}

/// One pool of a spec: exactly one of `replicated: {size}` or `erasureCoded: {dataChunks,
/// codingChunks}`, and optionally Rook's `failureDomain`.
fn parse_pool(f: &Field, name: String, ignored: &mut Vec<String>) -> Result<PoolSpec, String> {
    validate_pool_name(&name).map_err(|e| format!("{}: {e}", f.path))?;
    let shape = match (f.get("replicated")?, f.get("erasureCoded")?) {
        (Some(r), None) => {
            ignored.extend(r.unread(&["size"]));
            Shape::Replicated {
                size: r.require("size")?.count()?,
            }
        }
        (None, Some(e)) => {
            ignored.extend(e.unread(&["dataChunks", "codingChunks"]));
            Shape::Erasure {
                k: e.require("dataChunks")?.count()?,
                m: e.require("codingChunks")?.count()?,
            }
        }
        _ => {
            return Err(format!(
                "{}: give exactly one of replicated or erasureCoded",
                f.path
            ))
        }
    };
    let failure_domain = match f.get("failureDomain")? {
        Some(d) => Some(
            d.text()?
                .parse::<FailureDomain>()
                .map_err(|e| format!("{}: {e}", d.path))?,
        ),
        None => None,
    };
    ignored.extend(f.unread(&["name", "replicated", "erasureCoded", "failureDomain"]));
    Ok(PoolSpec {
        name,
        shape,
        failure_domain,
    })
}

/// `cairn osd pool create`'s arguments for a spec's pool, so its defaults (pg_num, min_size,
/// stripe unit, the config's failure domain) fill what the spec leaves out.
fn pool_args(pool: &PoolSpec) -> PoolCreateArgs {
    let (erasure, size, k, m) = match pool.shape {
        Shape::Replicated { size } => (false, size, None, None),
        // `size` is not read for erasure-coded pools.
        Shape::Erasure { k, m } => (true, 0, Some(k), Some(m)),
    };
    PoolCreateArgs {
        name: pool.name.clone(),
        pg_num: DEFAULT_PG_NUM,
        replicated: !erasure,
        size,
        min_size: None,
        erasure,
        k,
        m,
        stripe_unit: DEFAULT_STRIPE_UNIT,
        failure_domain: pool.failure_domain,
    }
}

/// The commands that bring the cluster to the spec: pools missing, the filesystem, data pools
/// it lacks, its standby-replay setting. An existing pool of the same shape (what `kind_label`
/// shows: size, or k+m; not min_size, which an admin may have changed) is reused; one of
/// another shape is an error, as is a filesystem over another metadata pool. `force` goes with
/// a new filesystem to the mons (a metadata pool holding objects).
fn plan(
    maps: &ClusterMaps,
    spec: &FsSpec,
    default_domain: FailureDomain,
    force: bool,
) -> anyhow::Result<Vec<Command>> {
    let mut cmds = Vec::new();
    for pool in std::iter::once(&spec.metadata_pool).chain(&spec.data_pools) {
        if let Some(cmd) = pool_command(&maps.osdmap, pool, default_domain)? {
            cmds.push(cmd);
        }
    }
    let Some(first_data) = spec.data_pools.first() else {
        bail!("the spec lists no data pool");
    };
    let (data_pools, standby_replay) = match maps.fsmap.fs_by_name(&spec.name) {
        Some((_, fs)) if fs.metadata_pool != spec.metadata_pool.name => bail!(
            "filesystem '{}' exists over metadata pool '{}', not '{}': a filesystem's metadata pool cannot change",
            spec.name,
            fs.metadata_pool,
            spec.metadata_pool.name
        ),
        Some((_, fs)) => (fs.data_pools.clone(), fs.allow_standby_replay),
        None => {
            cmds.push(Command::FsNew {
                name: spec.name.clone(),
                metadata_pool: spec.metadata_pool.name.clone(),
                data_pool: first_data.name.clone(),
                force,
            });
            (vec![first_data.name.clone()], false)
        }
    };
    for pool in spec
        .data_pools
        .iter()
        .filter(|p| !data_pools.contains(&p.name))
    {
        cmds.push(Command::FsAddDataPool {
            name: spec.name.clone(),
            pool: pool.name.clone(),
        });
    }
    if spec.standby_replay != standby_replay {
        cmds.push(Command::FsSet {
            name: spec.name.clone(),
            key: "allow_standby_replay".into(),
            value: spec.standby_replay.to_string(),
        });
    }
    Ok(cmds)
}

fn pool_command(
    osdmap: &OsdMap,
    pool: &PoolSpec,
    default_domain: FailureDomain,
) -> anyhow::Result<Option<Command>> {
    let args = pool_args(pool);
    let wanted = kind_label(&args.kind()?);
    match osdmap.pool_by_name(&pool.name) {
        Some((_, p)) if kind_label(&p.kind) == wanted => Ok(None),
        Some((_, p)) => bail!(
            "pool '{}' exists as {}, but the spec asks for {wanted}: change the spec or remove the pool",
            pool.name,
            kind_label(&p.kind)
        ),
        None => args.command(default_domain).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_common::fsmap::Filesystem;
    use cairn_common::maps::{Pool, PoolKind};

    const ROOK: &str = r#"
apiVersion: ceph.rook.io/v1
kind: CephFilesystem
metadata:
  name: myfs
  namespace: rook-ceph
spec:
  metadataPool:
    replicated:
      size: 3
  dataPools:
    - name: ec
      failureDomain: osd
      erasureCoded:
        dataChunks: 2
        codingChunks: 1
  preserveFilesystemOnDelete: true
  metadataServer:
    activeCount: 1
    activeStandby: true
"#;

    fn yaml(text: &str) -> Value {
        serde_norway::from_str(text).expect("valid YAML")
    }

    fn error(doc: Value) -> String {
        parse_spec(&doc).expect_err("refused")
    }

    #[test]
    fn reads_rooks_shape() {
        let spec = parse_spec(&yaml(ROOK)).unwrap();
        assert_eq!(spec.name, "myfs");
        assert_eq!(spec.metadata_pool.name, "myfs-metadata");
        assert_eq!(spec.metadata_pool.shape, Shape::Replicated { size: 3 });
        assert_eq!(spec.data_pools[0].name, "myfs-ec");
        assert_eq!(spec.data_pools[0].shape, Shape::Erasure { k: 2, m: 1 });
        assert_eq!(spec.data_pools[0].failure_domain, Some(FailureDomain::Osd));
        assert!(spec.standby_replay);
        // metadata's other fields are Kubernetes' business: not reported.
        assert_eq!(spec.ignored, vec!["spec.preserveFilesystemOnDelete"]);
    }

    #[test]
    fn reads_the_short_form() {
        let doc = json!({
            "name": "fs",
            "metadataPool": {"replicated": {"size": 2}},
            "dataPools": [{"replicated": {"size": 2}}, {"erasureCoded": {"dataChunks": 4, "codingChunks": 2}}],
        });
        let spec = parse_spec(&doc).unwrap();
        let names: Vec<&str> = spec.data_pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["fs-data0", "fs-data1"]);
        assert!(!spec.standby_replay);
        assert!(spec.ignored.is_empty());
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let with = |data: Value, mds: Value| {
            json!({"metadata": {"name": "myfs"}, "spec": {
                "metadataPool": {"replicated": {"size": 3}}, "dataPools": data, "metadataServer": mds}})
        };
        let ec = |k: i64| json!([{"erasureCoded": {"dataChunks": k, "codingChunks": 1}}]);
        let one = json!({"activeCount": 1});
        assert_eq!(
            error(with(ec(0), one.clone())),
            "spec.dataPools[0].erasureCoded.dataChunks must be ≥ 1"
        );
        assert_eq!(
            error(with(ec(2), json!({"activeCount": 2}))),
            "spec.metadataServer.activeCount: only 1 is supported (one active MDS per filesystem)"
        );
        assert!(error(with(json!([]), one.clone())).contains("spec.dataPools must list"));
        assert!(error(with(json!([{}]), one.clone()))
            .starts_with("spec.dataPools[0]: give exactly one"));
        assert!(
            error(with(json!([{"replicated": {"size": "3"}}]), one.clone()))
                .contains("spec.dataPools[0].replicated.size must be a whole number")
        );
        let ec_meta = json!({"name": "x", "metadataPool": {"erasureCoded": {"dataChunks": 2, "codingChunks": 1}}, "dataPools": []});
        assert!(error(ec_meta).starts_with("metadataPool: the metadata pool must be replicated"));
        assert!(
            error(json!({"kind": "CephBlockPool", "name": "x"})).contains("only CephFilesystem")
        );
        assert_eq!(error(json!({"spec": {}})), "metadata is missing");
        assert_eq!(error(json!([1])), "the spec must be a mapping");
    }

    fn pool(name: &str, kind: PoolKind) -> Pool {
        Pool {
            name: name.into(),
            pg_num: 8,
            kind,
            failure_domain: FailureDomain::Osd,
        }
    }

    fn labels(cmds: &[Command]) -> Vec<&'static str> {
        cmds.iter().map(|c| c.label()).collect()
    }

    #[test]
    fn apply_changes_only_what_differs() {
        let spec = parse_spec(&yaml(ROOK)).unwrap();
        let mut maps = ClusterMaps::default();
        let cmds = plan(&maps, &spec, FailureDomain::Host, false).unwrap();
        assert_eq!(
            labels(&cmds),
            vec!["osd pool create", "osd pool create", "fs new", "fs set"]
        );
        let Command::PoolCreate {
            failure_domain,
            pg_num,
            ..
        } = &cmds[1]
        else {
            panic!("{cmds:?}")
        };
        assert_eq!(
            (*failure_domain, *pg_num),
            (FailureDomain::Osd, DEFAULT_PG_NUM)
        );
        // The same spec over a cluster that has it all: nothing to do.
        maps.osdmap.pools.insert(
            1,
            pool(
                "myfs-metadata",
                PoolKind::Replicated {
                    size: 3,
                    min_size: 3,
                },
            ),
        );
        maps.osdmap.pools.insert(
            2,
            pool(
                "myfs-ec",
                PoolKind::Erasure {
                    k: 2,
                    m: 1,
                    stripe_unit: 4096,
                    min_size: 2,
                },
            ),
        );
        maps.fsmap.filesystems.insert(
            1,
            Filesystem {
                name: "myfs".into(),
                metadata_pool: "myfs-metadata".into(),
                data_pools: vec!["myfs-ec".into()],
                max_mds: 1,
                allow_standby_replay: true,
            },
        );
        assert!(plan(&maps, &spec, FailureDomain::Host, false)
            .unwrap()
            .is_empty());
        // A pool of another shape is not silently reused.
        maps.osdmap.pools.insert(
            1,
            pool(
                "myfs-metadata",
                PoolKind::Replicated {
                    size: 2,
                    min_size: 2,
                },
            ),
        );
        let e = plan(&maps, &spec, FailureDomain::Host, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exists as replicated size 2, but the spec asks for replicated size 3"),
            "{e}"
        );
    }
}
