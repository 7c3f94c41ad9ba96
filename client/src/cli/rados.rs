//! `cairn rados …`: objects for people, like the `rados` tool.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use cairn_client::rados::ListCursor;
use cairn_client::Rados;

use super::emit;
use crate::Format;

/// Bytes per read or write op when moving a file (below the OSD's message bound).
const CHUNK_BYTES: u64 = 16 << 20;

#[derive(Subcommand)]
pub enum RadosCmd {
    /// Store FILE (or stdin with `-`) as object OBJ.
    Put {
        pool: String,
        object: String,
        file: PathBuf,
    },
    /// Write object OBJ to FILE (or stdout with `-`).
    Get {
        pool: String,
        object: String,
        file: PathBuf,
    },
    /// Remove an object.
    Rm { pool: String, object: String },
    /// List a pool's objects.
    Ls { pool: String },
    /// An object's size and version.
    Stat { pool: String, object: String },
}

pub async fn run(rados: &Rados, cmd: &RadosCmd, format: Format) -> anyhow::Result<()> {
    match cmd {
        RadosCmd::Put { pool, object, file } => {
            let data = read_input(file)?;
            let size = data.len();
            let mut chunks = data.chunks(CHUNK_BYTES as usize);
            let first = chunks.next().unwrap_or_default().to_vec();
            rados.write_full(pool, object, first).await?;
            let mut offset = CHUNK_BYTES.min(size as u64);
            for c in chunks {
                rados.write(pool, object, offset, c.to_vec()).await?;
                offset += c.len() as u64;
            }
            emit(format, &json!({ "object": object, "size": size }), || {
                String::new()
            })
        }
        RadosCmd::Get { pool, object, file } => {
            let data = rados.read_all(pool, object, CHUNK_BYTES).await?;
            write_output(file, &data)
        }
        RadosCmd::Rm { pool, object } => {
            rados.remove(pool, object).await?;
            emit(format, &json!({ "removed": object }), String::new)
        }
        RadosCmd::Ls { pool } => {
            let mut all = Vec::new();
            let mut cursor: Option<ListCursor> = None;
            loop {
                let page = rados.list(pool, cursor, 1000).await?;
                all.extend(page.objects);
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            emit(format, &all, || {
                all.iter().map(|o| format!("{o}\n")).collect()
            })
        }
        RadosCmd::Stat { pool, object } => {
            let st = rados.stat(pool, object).await?;
            emit(
                format,
                &json!({ "object": object, "size": st.size, "version": st.version }),
                || {
                    format!(
                        "{pool}/{object} size {} version {:#x}\n",
                        st.size, st.version
                    )
                },
            )
        }
    }
}

fn read_input(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut data)?;
    } else {
        data = std::fs::read(file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    }
    Ok(data)
}

fn write_output(file: &PathBuf, data: &[u8]) -> anyhow::Result<()> {
    if file.as_os_str() == "-" {
        std::io::stdout().write_all(data)?;
        return Ok(());
    }
    std::fs::write(file, data).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", file.display()))
}
