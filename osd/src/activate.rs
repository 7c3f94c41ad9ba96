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
use crate::pg::{Interval, Pg, PgState};
use crate::replica::pulled_state;

/// Makes the PG active for `interval`, bringing members in line first. Errors say why the
/// PG cannot serve yet (the client retries).
pub async fn ensure_active(
    node: &OsdNode,
    pg: &Pg,
    st: &mut PgState,
    members: &[Member],
    codec: Option<&Codec>,
    interval: Interval,
    epoch: u64,
) -> Result<(), String> {
    if st.active.as_ref().map(|(i, _)| i) == Some(&interval) {
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
    for (m, info) in &infos {
        if *m == auth
            || (info.last_update == auth_info.last_update && info.objects == auth_info.objects)
        {
            continue;
        }
        tracing::info!(
            pg = %pg.id,
            osd = m.osd,
            from = auth.osd,
            version = format_args!("{:#x}", info.last_update),
            target = format_args!("{:#x}", auth_info.last_update),
            "bringing a member in line"
        );
        let names: BTreeSet<&String> = info
            .objects
            .keys()
            .chain(auth_info.objects.keys())
            .collect();
        for name in names {
            let (have, want) = (info.objects.get(name), auth_info.objects.get(name));
            if have == want {
                continue;
            }
            let (state, version) = match (want, codec) {
                (Some(v), Some(codec)) => {
                    let state = rebuild_shard(node, pg, &infos, *m, codec, name, *v).await?;
                    (Some(state), *v)
                }
                (Some(_), None) => {
                    let reply = members::pull(node, pg, auth, name).await?;
                    (pulled_state(&reply), reply.version)
                }
                (None, _) => (None, 0),
            };
            let muts = mutation::replace_with(have.is_some(), state);
            if muts.is_empty() {
                continue;
            }
            recover(node, pg, st, *m, name, muts, version, epoch).await?;
        }
        recover(
            node,
            pg,
            st,
            *m,
            "",
            Vec::new(),
            auth_info.last_update,
            epoch,
        )
        .await?;
    }
    st.active = Some((interval, epoch));
    tracing::debug!(pg = %pg.id, epoch, "pg active");
    Ok(())
}

/// Member `target`'s shard of `object` at `version`, decoded from k members that hold it.
async fn rebuild_shard(
    node: &OsdNode,
    pg: &Pg,
    infos: &[(Member, PgQueryReply)],
    target: Member,
    codec: &Codec,
    object: &str,
    version: u64,
) -> Result<Vec<Mutation>, String> {
    let sources: Vec<Member> = infos
        .iter()
        .filter(|(m, info)| *m != target && info.objects.get(object) == Some(&version))
        .map(|(m, _)| *m)
        .take(codec.k())
        .collect();
    if sources.len() < codec.k() {
        return Err(format!(
            "object {object} has {} shards at version {version:#x}, {} needed to rebuild it",
            sources.len(),
            codec.k()
        ));
    }
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; codec.shard_count()];
    let mut attrs = Vec::new();
    for m in &sources {
        let reply = members::pull(node, pg, *m, object).await?;
        shards[m.shard as usize] = Some(erasure::state_data(&reply.mutations));
        attrs = reply.mutations;
    }
    codec
        .decode(&mut shards)
        .map_err(|e| format!("cannot rebuild {object}: {e}"))?;
    let shard = shards[target.shard as usize].take().unwrap_or_default();
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
