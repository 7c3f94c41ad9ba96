//! Bringing a PG's members in line before its primary serves it in a new interval (a change
//! of members, or a member that restarted).
//!
//! The primary asks every current member for its version and its objects' versions, takes
//! the member with the newest version as the authority, and makes every other member equal
//! to it object by object (copy what differs, remove what the authority lacks), then sets
//! their versions. Writes are acknowledged only once every member of their interval has
//! them, and each interval's members overlap the previous one's while `min_size` is a
//! majority of the pool's width, so the newest member holds every acknowledged write.
//!
//! In an erasure-coded PG members hold different shards: a member's shard of an object is
//! rebuilt from any k members holding the authority's version of it. An object with fewer
//! than k such shards keeps the PG inactive (it says which): the PG never guesses.
//!
//! This is the first form of peering: it does not yet remember past intervals, so a PG
//! whose every member of the last interval is gone (e.g. all replaced after `out`) cannot
//! tell it missed writes; nor does it roll back a partial erasure-coded write to the
//! previous version. Full peering with past intervals and log-based recovery come with the
//! self-healing issue.

use std::collections::BTreeSet;

use cairn_common::proto::{Mutation, PgQueryReply, SubOpRequest};

use crate::ec::Codec;
use crate::erasure;

use crate::members::{self, Member};
use crate::mutation;
use crate::node::OsdNode;
use crate::pg::{Pg, PgState};
use crate::replica::pulled_state;

/// Makes the PG active under the map of `epoch`, bringing members in line first. Any map
/// change re-activates (the PG's members may have changed and changed back in between).
/// Errors say why the PG cannot serve yet (the client retries).
pub async fn ensure_active(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    members: &[Member],
    codec: Option<&Codec>,
    epoch: u64,
) -> Result<(), String> {
    if st.active == Some(epoch) {
        return Ok(());
    }
    st.active = None;
    let mut infos = Vec::with_capacity(members.len());
    for m in members {
        infos.push((*m, members::query(node, pg, st, *m, epoch).await?));
    }
    let (auth, auth_info) = infos
        .iter()
        .max_by_key(|(_, info)| info.last_update)
        .cloned()
        .ok_or("the PG has no members")?;
    let names: BTreeSet<String> = infos
        .iter()
        .flat_map(|(_, info)| info.objects.keys().cloned())
        .collect();
    for name in &names {
        let chosen = match codec {
            None => auth_info.objects.get(name).copied(),
            Some(codec) => chosen_ec_version(&infos, name, codec.k())?,
        };
        for (m, info) in &infos {
            let have = info.objects.get(name).copied();
            if have == chosen {
                continue;
            }
            tracing::info!(pg = %pg.id, osd = m.osd, object = %name, have = ?have, want = ?chosen, "bringing a member in line");
            let state = match (chosen, codec) {
                (None, _) => None,
                (Some(v), Some(codec)) => {
                    Some(rebuild_shard(node, pg, &infos, *m, codec, name, v).await?)
                }
                (Some(_), None) => pulled_state(&members::pull(node, pg, auth, name).await?),
            };
            let muts = mutation::replace_with(have.is_some(), state);
            if !muts.is_empty() {
                let version = chosen.unwrap_or(0);
                recover(node, pg, st, *m, name, muts, version, epoch).await?;
            }
        }
    }
    // Every member starts the interval at one new version, after anything an earlier
    // interval wrote: a stray write of an old primary can never tie with this interval's.
    let start = crate::pg::next_version(auth_info.last_update, epoch);
    for (m, _) in &infos {
        recover(node, pg, st, *m, "", Vec::new(), start, epoch).await?;
    }
    st.active = Some(epoch);
    tracing::debug!(pg = %pg.id, epoch, "pg active");
    Ok(())
}

/// The version of an erasure-coded object the PG keeps: the newest one at least k members
/// hold (a newer one on fewer shards was never acknowledged: it rolls back), or its absence
/// when at least k members lack it. With neither, the PG cannot tell and stays inactive.
fn chosen_ec_version(
    infos: &[(Member, PgQueryReply)],
    object: &str,
    k: usize,
) -> Result<Option<u64>, String> {
    let mut counts: std::collections::BTreeMap<Option<u64>, usize> = Default::default();
    for (_, info) in infos {
        *counts.entry(info.objects.get(object).copied()).or_default() += 1;
    }
    let newest = counts
        .iter()
        .rev()
        .find(|(v, n)| v.is_some() && **n >= k)
        .map(|(v, _)| *v);
    match newest {
        Some(v) => Ok(v),
        None if counts.get(&None).copied().unwrap_or(0) >= k => Ok(None),
        None => Err(format!(
            "object {object} has no version on {k} shards (found {counts:?}): waiting for more members"
        )),
    }
}

/// Member `target`'s shard of `object` at `version`, decoded from k other members that hold
/// it (trying the next holder when one cannot be read).
async fn rebuild_shard(
    node: &OsdNode,
    pg: &Pg,
    infos: &[(Member, PgQueryReply)],
    target: Member,
    codec: &Codec,
    object: &str,
    version: u64,
) -> Result<Vec<Mutation>, String> {
    let holders = infos
        .iter()
        .filter(|(m, info)| *m != target && info.objects.get(object) == Some(&version));
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; codec.shard_count()];
    let mut attrs = Vec::new();
    let mut found = 0;
    for (m, _) in holders {
        if found == codec.k() {
            break;
        }
        match members::pull(node, pg, *m, object).await {
            Ok(reply) if reply.exists && reply.version == version => {
                shards[m.shard as usize] = Some(erasure::state_data(&reply.mutations));
                attrs = reply.mutations;
                found += 1;
            }
            Ok(_) => {
                tracing::warn!(pg = %pg.id, object, osd = m.osd, "shard changed while rebuilding")
            }
            Err(e) => {
                tracing::warn!(pg = %pg.id, object, osd = m.osd, error = %e, "cannot read a shard to rebuild from")
            }
        }
    }
    if found < codec.k() {
        return Err(format!(
            "object {object}: {found} readable shards at version {version:#x}, {} needed to rebuild",
            codec.k()
        ));
    }
    codec
        .decode(&mut shards)
        .map_err(|e| format!("cannot rebuild {object}: {e}"))?;
    let shard = shards
        .get_mut(target.shard as usize)
        .and_then(Option::take)
        .unwrap_or_default();
    Ok(erasure::with_shard_data(&attrs, shard))
}

#[allow(clippy::too_many_arguments)]
async fn recover(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    m: Member,
    object: &str,
    mutations: Vec<Mutation>,
    version: u64,
    epoch: u64,
) -> Result<(), String> {
    let req = SubOpRequest {
        osdmap_epoch: epoch,
        pool: pg.id.pool,
        pg: pg.id.seed,
        shard: m.shard,
        object: object.to_string(),
        version,
        mutations,
        prior_version: 0,
        recovery: true,
        reqid: String::new(),
    };
    members::sub_op(node, pg, st, m, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(shard: i32, objects: &[(&str, u64)]) -> (Member, PgQueryReply) {
        let reply = PgQueryReply {
            objects: objects.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            ..PgQueryReply::default()
        };
        (
            Member {
                osd: shard as u32,
                shard,
            },
            reply,
        )
    }

    #[test]
    fn ec_objects_keep_the_newest_version_k_shards_hold() {
        // 2+1: a write that reached one shard only rolls back to the version two hold.
        let infos = [
            member(0, &[("a", 7)]),
            member(1, &[("a", 5)]),
            member(2, &[("a", 5)]),
        ];
        assert_eq!(chosen_ec_version(&infos, "a", 2), Ok(Some(5)));
        // Written everywhere but one: the newest wins.
        let infos = [
            member(0, &[("a", 7)]),
            member(1, &[("a", 7)]),
            member(2, &[]),
        ];
        assert_eq!(chosen_ec_version(&infos, "a", 2), Ok(Some(7)));
        // Created on one shard only (never acknowledged): it goes.
        let infos = [member(0, &[("a", 7)]), member(1, &[]), member(2, &[])];
        assert_eq!(chosen_ec_version(&infos, "a", 2), Ok(None));
        // Two members, one at each version: nobody can tell, so the PG waits.
        let infos = [member(0, &[("a", 7)]), member(2, &[("a", 5)])];
        assert!(chosen_ec_version(&infos, "a", 2).is_err());
    }
}
