//! `cairn osd …` and `cairn osd pool …`: OSD states, the placement hierarchy, pools.

use std::collections::BTreeMap;
use std::fmt::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use cairn_client::MonClient;
use cairn_common::command::Command;
use cairn_common::maps::{default_min_size, FailureDomain, OsdMap, Pool, PoolKind};
use cairn_common::status::{human_bytes, Usage};

use super::emit;
use crate::Format;

#[derive(Subcommand)]
pub enum OsdCmd {
    /// The placement hierarchy: root, hosts, OSDs with up/down, in/out and weights.
    Tree,
    /// Mark OSDs down (a running OSD boots again at once: use it to test peering).
    Down { ids: Vec<u32> },
    /// Mark OSDs out: their data moves to other OSDs.
    Out { ids: Vec<u32> },
    /// Mark OSDs in again.
    In { ids: Vec<u32> },
    /// Set an OSD's placement weight (its share of data; new OSDs start at their capacity in
    /// TiB): data moves to or from that OSD only.
    Reweight { id: u32, weight: f64 },
    /// Fenced client and daemon instances: OSDs refuse their ops.
    #[command(subcommand)]
    Blocklist(BlocklistCmd),
    /// Pools.
    #[command(subcommand)]
    Pool(PoolCmd),
}

#[derive(Subcommand)]
pub enum BlocklistCmd {
    /// List the fenced instances and when each fence lapses.
    Ls,
    /// Fence an instance (`ENTITY/NONCE`; `cairn fs status` names a client `ENTITY|ENTITY/NONCE`).
    Add {
        instance: String,
        /// Seconds until the fence lapses.
        #[arg(long, default_value_t = 3600)]
        expire: u64,
    },
    /// Lift the fence on an instance.
    Rm { instance: String },
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Create a pool: replicated (default, size 3) or erasure-coded (--erasure --k K --m M).
    Create(PoolCreateArgs),
    /// List pools.
    Ls,
    /// Show a pool's properties.
    Get { name: String },
    /// Change a pool property (min_size).
    Set {
        name: String,
        key: String,
        value: String,
    },
    /// Remove a pool and all its objects.
    Rm {
        name: String,
        #[arg(long = "yes-i-really-mean-it")]
        confirm: bool,
    },
}

/// PGs of a new pool unless told otherwise (`osd pool create`, `fs apply`).
pub const DEFAULT_PG_NUM: u32 = 64;
/// Bytes of each chunk in an erasure-code stripe unless told otherwise.
pub const DEFAULT_STRIPE_UNIT: u32 = 4096;

#[derive(Args)]
pub struct PoolCreateArgs {
    pub name: String,
    #[arg(long, default_value_t = DEFAULT_PG_NUM)]
    pub pg_num: u32,
    /// Full copies (the default kind).
    #[arg(long, conflicts_with = "erasure")]
    pub replicated: bool,
    /// Copies of a replicated pool.
    #[arg(long, default_value_t = 3)]
    pub size: u32,
    /// Members a PG needs to take writes (default: size − 1, or k + min(1, m − 1)).
    #[arg(long)]
    pub min_size: Option<u32>,
    /// Reed–Solomon erasure coding with --k data and --m coding chunks.
    #[arg(long, requires_all = ["k", "m"])]
    pub erasure: bool,
    #[arg(long)]
    pub k: Option<u32>,
    #[arg(long)]
    pub m: Option<u32>,
    /// Bytes of each chunk in a stripe.
    #[arg(long, default_value_t = DEFAULT_STRIPE_UNIT)]
    pub stripe_unit: u32,
    /// host (default) or osd (for one-host clusters); default `client.pool_failure_domain`.
    #[arg(long)]
    pub failure_domain: Option<FailureDomain>,
}

impl PoolCreateArgs {
    /// The `PoolCreate` these arguments ask for, in `default_domain` unless they name one.
    pub fn command(&self, default_domain: FailureDomain) -> anyhow::Result<Command> {
        Ok(Command::PoolCreate {
            name: self.name.clone(),
            pg_num: self.pg_num,
            kind: self.kind()?,
            failure_domain: self.failure_domain.unwrap_or(default_domain),
        })
    }

    pub fn kind(&self) -> anyhow::Result<PoolKind> {
        if self.erasure {
            let (k, m) = (self.k.unwrap_or(0), self.m.unwrap_or(0));
            return Ok(PoolKind::Erasure {
                k,
                m,
                stripe_unit: self.stripe_unit,
                min_size: self.min_size.unwrap_or(default_min_size(true, k, m)),
            });
        }
        if self.k.is_some() || self.m.is_some() {
            anyhow::bail!("--k and --m are for erasure-coded pools: add --erasure");
        }
        Ok(PoolKind::Replicated {
            size: self.size,
            min_size: self
                .min_size
                .unwrap_or(default_min_size(false, self.size, 0)),
        })
    }
}

pub async fn run(
    client: &MonClient,
    cmd: &OsdCmd,
    default_domain: FailureDomain,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        OsdCmd::Tree => {
            let osdmap = client.maps().await?.osdmap;
            let usage = client.status().await?.osd_usage;
            emit(format, &tree_json(&osdmap, &usage), || {
                render_tree(&osdmap, &usage)
            })
        }
        OsdCmd::Down { ids } => {
            change(
                client,
                Command::OsdDown {
                    ids: ids.clone(),
                    reason: "marked down by an admin".into(),
                    at_ms: cairn_common::now_ms(),
                },
                format,
            )
            .await
        }
        OsdCmd::Out { ids } => change(client, Command::OsdOut { ids: ids.clone() }, format).await,
        OsdCmd::In { ids } => change(client, Command::OsdIn { ids: ids.clone() }, format).await,
        OsdCmd::Reweight { id, weight } => {
            let cmd = Command::OsdReweight {
                id: *id,
                weight: *weight,
            };
            change(client, cmd, format).await
        }
        OsdCmd::Blocklist(b) => blocklist(client, b, format).await,
        OsdCmd::Pool(p) => pool(client, p, default_domain, format).await,
    }
}

async fn blocklist(client: &MonClient, cmd: &BlocklistCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        BlocklistCmd::Ls => {
            let osdmap = client.maps().await?.osdmap;
            let now = cairn_common::now_ms();
            let live: Vec<(&String, u64)> = osdmap
                .blocklist
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(i, until)| (i, until.saturating_sub(now) / 1000))
                .collect();
            let rows: Vec<_> = live
                .iter()
                .map(|(i, left)| json!({ "instance": i, "expires_in_secs": left }))
                .collect();
            emit(format, &json!(rows), || {
                let mut out = String::new();
                for (i, left) in &live {
                    let _ = writeln!(out, "{i}  expires in {left} s");
                }
                let _ = writeln!(out, "listed {} entries", live.len());
                out
            })
        }
        BlocklistCmd::Add { instance, expire } => {
            let cmd = Command::BlocklistAdd {
                instance: instance.clone(),
                expire_secs: *expire,
                at_ms: 0,
            };
            change(client, cmd, format).await
        }
        BlocklistCmd::Rm { instance } => {
            let cmd = Command::BlocklistRm {
                instance: instance.clone(),
            };
            change(client, cmd, format).await
        }
    }
}

/// Commits `cmd` and prints the mons' answer.
pub async fn change(client: &MonClient, cmd: Command, format: Format) -> anyhow::Result<()> {
    let (epoch, message) = client.command(cmd).await?;
    emit(
        format,
        &json!({ "epoch": epoch, "message": message }),
        || format!("{message}\n"),
    )
}

async fn pool(
    client: &MonClient,
    cmd: &PoolCmd,
    default_domain: FailureDomain,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Create(a) => change(client, a.command(default_domain)?, format).await,
        PoolCmd::Ls => {
            let osdmap = client.maps().await?.osdmap;
            let pools: Vec<_> = osdmap
                .pools
                .iter()
                .map(|(id, p)| json!({ "id": id, "name": p.name }))
                .collect();
            emit(format, &pools, || {
                osdmap
                    .pools
                    .values()
                    .map(|p| format!("{}\n", p.name))
                    .collect()
            })
        }
        PoolCmd::Get { name } => {
            let osdmap = client.maps().await?.osdmap;
            let (id, p) = osdmap
                .pool_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("pool '{name}' does not exist"))?;
            emit(format, &json!({ "id": id, "pool": p }), || {
                let mut out = format!(
                    "pool {id} '{}'\npg_num: {}\nfailure_domain: {}\n",
                    p.name, p.pg_num, p.failure_domain
                );
                match &p.kind {
                    PoolKind::Replicated { size, min_size } => {
                        let _ =
                            writeln!(out, "type: replicated\nsize: {size}\nmin_size: {min_size}");
                    }
                    PoolKind::Erasure {
                        k,
                        m,
                        stripe_unit,
                        min_size,
                    } => {
                        let _ = writeln!(out, "type: erasure\nk: {k}\nm: {m}\nstripe_unit: {stripe_unit}\nmin_size: {min_size}");
                    }
                }
                out
            })
        }
        PoolCmd::Set { name, key, value } => {
            let cmd = Command::PoolSet {
                name: name.clone(),
                key: key.clone(),
                value: value.clone(),
            };
            change(client, cmd, format).await
        }
        PoolCmd::Rm { name, confirm } => {
            if !confirm {
                anyhow::bail!(
                    "removing pool '{name}' destroys all its objects: add --yes-i-really-mean-it"
                );
            }
            change(client, Command::PoolRm { name: name.clone() }, format).await
        }
    }
}

fn status_word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

/// `cairn osd tree --format json`: every OSD with its status, for scripts.
fn tree_json(map: &OsdMap, usage: &BTreeMap<u32, Usage>) -> serde_json::Value {
    let nodes: Vec<_> = map
        .osds
        .iter()
        .map(|(id, o)| {
            json!({
                "id": id,
                "name": format!("osd.{id}"),
                "type": "osd",
                "host": o.host,
                "status": status_word(o.up),
                "in": o.in_cluster,
                "weight": o.weight,
                "addr": o.addr,
                "capacity_bytes": o.capacity_bytes,
                "used_bytes": usage.get(id).map(|u| u.used_bytes),
            })
        })
        .collect();
    json!({ "epoch": map.epoch, "nodes": nodes })
}

fn render_tree(map: &OsdMap, usage: &BTreeMap<u32, Usage>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:>9}  {:<20} {:<6} {:<4} {:>10} {:>10}",
        "ID", "WEIGHT", "TYPE NAME", "STATUS", "IN", "SIZE", "USED"
    );
    let total: f64 = map.osds.values().map(|o| o.weight).sum();
    let _ = writeln!(out, "{:<5} {:>9.5}  {:<20}", "-1", total, "root default");
    for (host, ids) in &map.hosts {
        let weight: f64 = ids
            .iter()
            .filter_map(|i| map.osds.get(i))
            .map(|o| o.weight)
            .sum();
        let _ = writeln!(
            out,
            "{:<5} {:>9.5}      {:<16}",
            "",
            weight,
            format!("host {host}")
        );
        for id in ids {
            let Some(o) = map.osds.get(id) else { continue };
            let used = usage
                .get(id)
                .map(|u| human_bytes(u.used_bytes))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<5} {:>9.5}          {:<12} {:<6} {:<4} {:>10} {:>10}",
                id,
                o.weight,
                format!("osd.{id}"),
                status_word(o.up),
                if o.in_cluster { "in" } else { "out" },
                human_bytes(o.capacity_bytes),
                used
            );
        }
    }
    out
}

/// `cairn df`: raw space of the OSDs, and per pool what clients stored, the raw space it
/// takes and what the pool can still take (see `cairn_common::df`).
pub async fn df(client: &MonClient, format: Format) -> anyhow::Result<()> {
    let status = client.status().await?;
    let osdmap = client.maps().await?.osdmap;
    let u = status.usage;
    let objects = |id: &u32| status.pool_objects.get(id).copied().unwrap_or(0);
    let raw_avail = cairn_common::df::raw_avail(&osdmap, &status.osd_usage);
    let space = |id: &u32, p: &Pool| {
        let usage = status.pool_usage.get(id).copied().unwrap_or_default();
        cairn_common::df::pool_space(p, &usage, raw_avail)
    };
    let pools: Vec<_> = osdmap
        .pools
        .iter()
        .map(|(id, p)| {
            let s = space(id, p);
            json!({ "id": id, "name": p.name, "pg_num": p.pg_num, "objects": objects(id),
                    "stored_bytes": s.stored_bytes, "used_bytes": s.used_bytes,
                    "max_avail_bytes": s.max_avail_bytes, "percent_used": s.percent_used,
                    "kind": kind_label(&p.kind) })
        })
        .collect();
    let value = json!({
        "total_bytes": u.total_bytes,
        "used_bytes": u.used_bytes,
        "available_bytes": u.available(),
        "pools": pools,
    });
    emit(format, &value, || {
        let mut out = String::from("--- RAW STORAGE ---\n");
        let pct = if u.total_bytes == 0 {
            0.0
        } else {
            100.0 * u.used_bytes as f64 / u.total_bytes as f64
        };
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>10} {:>8}",
            "SIZE", "AVAIL", "USED", "%USED"
        );
        let _ = writeln!(
            out,
            "{:>10} {:>10} {:>10} {:>7.2}%",
            human_bytes(u.total_bytes),
            human_bytes(u.available()),
            human_bytes(u.used_bytes),
            pct
        );
        let _ = writeln!(
            out,
            "\n--- POOLS ---\n{:<16} {:>4} {:>6} {:>10} {:>9} {:>10} {:>6} {:>10}  KIND",
            "POOL", "ID", "PGS", "STORED", "OBJECTS", "USED", "%USED", "MAX AVAIL"
        );
        for (id, p) in &osdmap.pools {
            let s = space(id, p);
            let _ = writeln!(
                out,
                "{:<16} {:>4} {:>6} {:>10} {:>9} {:>10} {:>5.2}% {:>10}  {}",
                p.name,
                id,
                p.pg_num,
                human_bytes(s.stored_bytes),
                objects(id),
                human_bytes(s.used_bytes),
                s.percent_used,
                human_bytes(s.max_avail_bytes),
                kind_label(&p.kind)
            );
        }
        out
    })
}

pub fn kind_label(kind: &PoolKind) -> String {
    match kind {
        PoolKind::Replicated { size, .. } => format!("replicated size {size}"),
        PoolKind::Erasure { k, m, .. } => format!("erasure {k}+{m}"),
    }
}

/// `cairn pg stat`: PG states and space in one line, like `ceph pg stat`.
pub async fn pg_stat(client: &MonClient, format: Format) -> anyhow::Result<()> {
    let s = client.status().await?;
    let value = json!({ "pgs": s.pgs, "states": s.pg_states, "usage": s.usage });
    emit(format, &value, || {
        let states: Vec<String> = s
            .pg_states
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!(
            "{} pgs: {}; {} used, {} / {} avail\n",
            s.pgs,
            states.join(", "),
            human_bytes(s.usage.used_bytes),
            human_bytes(s.usage.available()),
            human_bytes(s.usage.total_bytes)
        )
    })
}
