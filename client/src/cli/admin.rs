//! Commands against a running cluster: status, health, mon, auth, config.

use std::collections::BTreeMap;
use std::fmt::Write;

use clap::{Subcommand, ValueEnum};
use serde_json::json;

use cairn_client::MonClient;
use cairn_common::command::Command;
use cairn_common::keyring::Keyring;

use super::emit;
use crate::Format;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Detail {
    Detail,
}

#[derive(Subcommand)]
pub enum MonCmd {
    /// Summary of the monitors and the quorum.
    Stat,
    /// Add a monitor that already runs (created with `cairn-mon mkfs --join`).
    Add { name: String, addr: String },
    /// Remove a monitor from the group.
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum AuthCmd {
    /// List entities and their caps.
    Ls,
    /// Show an entity's key and caps as a keyring entry.
    Get { entity: String },
    /// Add an entity with a new key: `cairn auth add client.bob mon 'allow r'`.
    Add { entity: String, caps: Vec<String> },
    /// Replace an entity's caps: `cairn auth caps client.bob mon 'allow rw'`.
    Caps { entity: String, caps: Vec<String> },
    /// Remove an entity and its key.
    Rm { entity: String },
}

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Show one option.
    Get { name: String },
    /// Set an option for the whole cluster.
    Set { name: String, value: String },
    /// Remove an option.
    Rm { name: String },
    /// Show every option.
    Dump,
}

pub async fn status(client: &MonClient, format: Format) -> anyhow::Result<()> {
    let status = client.status().await?;
    emit(format, &status, || status.render())
}

pub async fn health(client: &MonClient, detail: bool, format: Format) -> anyhow::Result<()> {
    let health = client.status().await?.health;
    emit(format, &health, || health.render(detail))
}

pub async fn mon(client: &MonClient, cmd: &MonCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        MonCmd::Stat => {
            let s = client.status().await?;
            let mons: Vec<String> = s
                .mons
                .iter()
                .map(|m| format!("{}={}", m.name, m.addr))
                .collect();
            let leader = s.leader.clone().unwrap_or_default();
            emit(
                format,
                &json!({
                    "epoch": s.epochs.monmap,
                    "mons": s.mons,
                    "quorum": s.quorum_names(),
                    "leader": leader,
                    "term": s.raft.term,
                }),
                || {
                    format!(
                        "e{}: {} mons at {{{}}}, term {}, leader {}, quorum {}\n",
                        s.epochs.monmap,
                        s.mons.len(),
                        mons.join(","),
                        s.raft.term,
                        leader,
                        s.quorum_names().join(",")
                    )
                },
            )
        }
        MonCmd::Add { name, addr } => done(format, client.mon_add(name, addr).await?),
        MonCmd::Rm { name } => done(format, client.mon_rm(name).await?),
    }
}

fn done(format: Format, (epoch, message): (u64, String)) -> anyhow::Result<()> {
    emit(
        format,
        &json!({ "epoch": epoch, "message": message }),
        || format!("{message}\n"),
    )
}

/// `mon 'allow r' osd 'allow rw'` → {mon: allow r, osd: allow rw}.
fn parse_caps(words: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    if !words.len().is_multiple_of(2) {
        anyhow::bail!("caps come in pairs: SERVICE 'CAP', e.g. mon 'allow r'");
    }
    Ok(words
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect())
}

pub async fn auth(client: &MonClient, cmd: &AuthCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        AuthCmd::Ls => {
            let maps = client.maps().await?;
            let entities = &maps.auth.entities;
            emit(format, entities, || {
                let mut out = String::new();
                for (name, e) in entities {
                    let _ = writeln!(out, "{name}");
                    for (svc, cap) in &e.caps {
                        let _ = writeln!(out, "\tcaps: [{svc}] {cap}");
                    }
                }
                out
            })
        }
        AuthCmd::Get { entity } => {
            let (key, caps) = client.auth_get(entity).await?;
            let mut keyring = Keyring::default();
            keyring.add(entity, key.clone(), caps.clone());
            emit(
                format,
                &json!({ "entity": entity, "key": key, "caps": caps }),
                || toml::to_string(&keyring).unwrap_or_default(),
            )
        }
        AuthCmd::Add { entity, caps } => {
            let caps = parse_caps(caps)?;
            done(
                format,
                client
                    .command(Command::AuthAdd {
                        entity: entity.clone(),
                        caps,
                        key: None,
                    })
                    .await?,
            )
        }
        AuthCmd::Caps { entity, caps } => {
            let caps = parse_caps(caps)?;
            done(
                format,
                client
                    .command(Command::AuthCaps {
                        entity: entity.clone(),
                        caps,
                    })
                    .await?,
            )
        }
        AuthCmd::Rm { entity } => done(
            format,
            client
                .command(Command::AuthRm {
                    entity: entity.clone(),
                })
                .await?,
        ),
    }
}

pub async fn config(client: &MonClient, cmd: &ConfigCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Get { name } => {
            let maps = client.maps().await?;
            let value = maps
                .config
                .options
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("option {name} is not set"))?;
            emit(format, &json!({ "name": name, "value": value }), || {
                format!("{value}\n")
            })
        }
        ConfigCmd::Set { name, value } => done(
            format,
            client
                .command(Command::ConfigSet {
                    name: name.clone(),
                    value: value.clone(),
                })
                .await?,
        ),
        ConfigCmd::Rm { name } => done(
            format,
            client
                .command(Command::ConfigRm { name: name.clone() })
                .await?,
        ),
        ConfigCmd::Dump => {
            let maps = client.maps().await?;
            let options = &maps.config.options;
            emit(format, options, || {
                options
                    .iter()
                    .map(|(k, v)| format!("{k} = {v}\n"))
                    .collect()
            })
        }
    }
}
