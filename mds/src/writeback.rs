//! Writing dirty metadata back to its objects, so the journal before it can be trimmed.
//! Every write states a final value (an inode's whole record, an entry set or removed), so a
//! pass cut short by a crash is simply redone from the journal by the next active.

use anyhow::Context;
use futures::{stream, StreamExt, TryStreamExt};

use cairn_client::{ClientError, Rados};
use cairn_common::fsops::Name;

use crate::cache::Dirty;
use crate::inode::{dir_object, encode, inode_object, Inode};

/// Object writes of one pass in flight at once.
const WRITES_IN_FLIGHT: usize = 32;

pub async fn write(rados: &Rados, pool: &str, dirty: &Dirty) -> anyhow::Result<()> {
    bounded(
        dirty
            .inodes
            .iter()
            .map(|(ino, inode)| write_inode(rados, pool, *ino, inode.as_ref()))
            .collect(),
    )
    .await?;
    bounded(
        dirty
            .dentries
            .iter()
            .map(|(dir, entries)| write_dir(rados, pool, *dir, entries))
            .collect(),
    )
    .await?;
    for dir in &dirty.gone_dirs {
        ignore_missing(rados.remove(pool, &dir_object(*dir)).await)
            .with_context(|| format!("cannot remove directory object {dir:#x}"))?;
    }
    Ok(())
}

/// Runs the writes, `WRITES_IN_FLIGHT` at a time, stopping at the first failure.
async fn bounded<F: std::future::Future<Output = anyhow::Result<()>>>(
    writes: Vec<F>,
) -> anyhow::Result<()> {
    stream::iter(writes)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .try_collect::<()>()
        .await
}

async fn write_inode(
    rados: &Rados,
    pool: &str,
    ino: u64,
    inode: Option<&Inode>,
) -> anyhow::Result<()> {
    let object = inode_object(ino);
    match inode {
        Some(inode) => rados
            .write_full(pool, &object, encode(inode))
            .await
            .map(|_| ()),
        None => ignore_missing(rados.remove(pool, &object).await),
    }
    .with_context(|| format!("cannot write back inode {ino:#x}"))
}

async fn write_dir(
    rados: &Rados,
    pool: &str,
    dir: u64,
    entries: &[(Name, Option<crate::inode::Dentry>)],
) -> anyhow::Result<()> {
    let object = dir_object(dir);
    let set: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .filter_map(|(name, d)| d.map(|d| (name.as_bytes().to_vec(), encode(&d))))
        .collect();
    let removed: Vec<Vec<u8>> = entries
        .iter()
        .filter(|(_, d)| d.is_none())
        .map(|(name, _)| name.as_bytes().to_vec())
        .collect();
    if !set.is_empty() {
        rados
            .omap_set(pool, &object, set)
            .await
            .with_context(|| format!("cannot write back directory {dir:#x}"))?;
    }
    if !removed.is_empty() {
        ignore_missing(rados.omap_rm(pool, &object, removed).await)
            .with_context(|| format!("cannot write back directory {dir:#x}"))?;
    }
    Ok(())
}

fn ignore_missing(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(ClientError::NotFound(_)) => Ok(()),
        other => other,
    }
}
