//! Erasure-coded PGs on the primary: reads gather the k data shards of the stripes a range
//! covers (no decoding on the healthy path) and reconstruct from any k when a shard is
//! missing, unreachable, stale or fails its checksum; writes read-modify-write the stripes
//! they touch and give each shard its own chunk; activation rebuilds the shards a member
//! lacks from any k others.
//!
//! Each shard holds chunk i of every stripe of its object (`ec::Codec`), the object's version
//! (`_v`), its logical size (`_size`: the shard holds whole stripes) and the user xattrs.
//! Bytes past the logical size within the last stripe are kept zero, so growing an object
//! never needs a read and parity stays consistent.

use cairn_common::maps::{Pool, PoolKind};
use cairn_common::proto::mutation::M;
use cairn_common::proto::object_op::Op;
use cairn_common::proto::{Mutation, OpReply, OpResult};
use prost::bytes::Bytes;

use crate::ec::Codec;
use crate::error::StoreError;
use crate::members::{self, Member};
use crate::mutation::{
    self, decode_u64, encode_u64, user_attr, user_attrs, ATTR_LOGICAL_SIZE, ATTR_VERSION,
};
use crate::node::OsdNode;
use crate::pg::{is_internal, Pg};
use crate::primary::{reply, Plan, Planned, PAGE_ENTRIES_MAX};

/// The pool's codec, or `None` for a replicated pool.
pub fn codec_of(pool: &Pool) -> Result<Option<Codec>, String> {
    match pool.kind {
        PoolKind::Replicated { .. } => Ok(None),
        PoolKind::Erasure {
            k, m, stripe_unit, ..
        } => Codec::new(k as usize, m as usize, stripe_unit as usize)
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

fn refuse(result: OpResult, message: impl Into<String>) -> Box<OpReply> {
    Box::new(reply(result, message))
}

/// An object's logical size and version as this primary's own shard records them, or
/// `None` when the object does not exist.
async fn head(node: &OsdNode, pg: &Pg, object: &str) -> Result<Option<(u64, u64)>, StoreError> {
    let (coll, oid) = (pg.coll.clone(), object.to_string());
    node.blocking(move |store| match store.getattrs(&coll, &oid) {
        Ok(a) => Ok(Some((
            decode_u64(a.get(ATTR_LOGICAL_SIZE)),
            decode_u64(a.get(ATTR_VERSION)),
        ))),
        Err(StoreError::NoObject { .. }) => Ok(None),
        Err(e) => Err(e),
    })
    .await
}

/// A store error as the reply that ends the op.
fn store_refusal(e: StoreError) -> Box<OpReply> {
    refuse(crate::replica::result_of(&e), e.to_string())
}

fn missing(object: &str) -> Box<OpReply> {
    refuse(
        OpResult::NotFound,
        format!("object {object} does not exist"),
    )
}

/// Read ops of an erasure-coded PG.
pub async fn read(
    node: &OsdNode,
    pg: &Pg,
    members: &[Member],
    codec: &Codec,
    object: &str,
    op: Op,
) -> OpReply {
    match read_inner(node, pg, members, codec, object, op).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

async fn read_inner(
    node: &OsdNode,
    pg: &Pg,
    members: &[Member],
    codec: &Codec,
    object: &str,
    op: Op,
) -> Result<OpReply, Box<OpReply>> {
    let io = store_refusal;
    if let Op::List(l) = op {
        let coll = pg.coll.clone();
        let (names, next) = node
            .blocking(move |store| {
                let after = (!l.after.is_empty()).then_some(l.after.as_str());
                store.list(&coll, after, l.max.clamp(1, PAGE_ENTRIES_MAX) as usize)
            })
            .await
            .map_err(io)?;
        return Ok(OpReply {
            objects: names.into_iter().filter(|n| !is_internal(n)).collect(),
            next: next.unwrap_or_default(),
            ..reply(OpResult::Ok, "")
        });
    }
    let (size, version) = head(node, pg, object)
        .await
        .map_err(io)?
        .ok_or_else(|| missing(object))?;
    match op {
        Op::Stat(_) => Ok(OpReply {
            size,
            version,
            ..reply(OpResult::Ok, "")
        }),
        Op::GetXattrs(_) => {
            let (coll, oid) = (pg.coll.clone(), object.to_string());
            let attrs = node
                .blocking(move |s| s.getattrs(&coll, &oid))
                .await
                .map_err(io)?;
            Ok(OpReply {
                xattrs: user_attrs(&attrs),
                ..reply(OpResult::Ok, "")
            })
        }
        Op::Read(r) => {
            let length = r.length.min(crate::IO_BYTES_MAX);
            let end = r.offset.saturating_add(length).min(size);
            if r.offset >= end {
                return Ok(OpReply {
                    size,
                    ..reply(OpResult::Ok, "")
                });
            }
            let (first, count) = codec.stripe_range(r.offset, end - r.offset);
            let object_stripes = Stripes {
                node,
                pg,
                members,
                codec,
                object,
                version,
                size,
            };
            let stripes = object_stripes.read(first, count).await?;
            let skip = (r.offset - first * codec.stripe_width() as u64) as usize;
            Ok(OpReply {
                data: Bytes::from(stripes).slice(skip..skip + (end - r.offset) as usize),
                size,
                ..reply(OpResult::Ok, "")
            })
        }
        _ => Err(refuse(
            OpResult::Invalid,
            "erasure-coded pools keep no omap",
        )),
    }
}

fn join(
    codec: &Codec,
    shards: &[Option<Vec<u8>>],
    shard_len: u64,
) -> Result<Vec<u8>, Box<OpReply>> {
    let data: Vec<&[u8]> = shards[..codec.k()]
        .iter()
        .map(|s| s.as_deref().unwrap_or_default())
        .collect();
    codec
        .join_data(&data, (shard_len as usize) * codec.k())
        .map_err(|e| refuse(OpResult::IoError, e.to_string()))
}

/// Each shard's mutations for a write op, reading the stripes it changes only in part.
pub async fn plan_write(
    node: &OsdNode,
    pg: &Pg,
    members: &[Member],
    codec: &Codec,
    object: &str,
    op: Op,
) -> Result<Planned, Box<OpReply>> {
    let head = head(node, pg, object).await.map_err(store_refusal)?;
    let (size, version) = head.unwrap_or((0, 0));
    crate::primary::check_object_end(&op, head.map(|(s, _)| s))?;
    let same =
        |muts: Vec<Mutation>| -> Plan { members.iter().map(|m| (*m, muts.clone())).collect() };
    let ctx = Stripes {
        node,
        pg,
        members,
        codec,
        object,
        version,
        size,
    };
    let plan = match op {
        Op::WriteFull(data) => {
            let len = data.len() as u64;
            let shards = shards_of(codec, &data);
            Ok(per_shard(members, |pos| {
                let mut muts = vec![mutation::touch(), mutation::truncate(0)];
                if len > 0 {
                    muts.push(mutation::write(0, shards[pos].clone()));
                }
                muts.push(size_attr(len));
                muts
            }))
        }
        Op::Write(w) => ctx.overwrite(w.offset, &w.data).await,
        Op::Append(data) => ctx.overwrite(size, &data).await,
        Op::Truncate(n) => ctx.truncate(n).await,
        Op::Remove(_) => {
            head.ok_or_else(|| missing(object))?;
            Ok(same(vec![mutation::remove()]))
        }
        Op::SetXattr(kv) => {
            if kv.key.is_empty() || kv.key.len() > 256 {
                return Err(refuse(OpResult::Invalid, "xattr names are 1 to 256 bytes"));
            }
            let mut muts = vec![mutation::set_attr(&user_attr(&kv.key), kv.value)];
            if head.is_none() {
                muts.insert(0, mutation::touch());
                muts.push(size_attr(0));
            }
            Ok(same(muts))
        }
        Op::RmXattr(name) => {
            head.ok_or_else(|| missing(object))?;
            Ok(same(vec![Mutation {
                m: Some(M::RmXattr(user_attr(&name))),
            }]))
        }
        _ => Err(refuse(
            OpResult::Invalid,
            "erasure-coded pools keep no omap",
        )),
    };
    Ok(Planned {
        plan: plan?,
        existed: head.is_some(),
    })
}

fn size_attr(size: u64) -> Mutation {
    mutation::set_attr(ATTR_LOGICAL_SIZE, encode_u64(size))
}

fn per_shard(members: &[Member], muts: impl Fn(usize) -> Vec<Mutation>) -> Plan {
    members
        .iter()
        .map(|m| (*m, muts(m.shard as usize)))
        .collect()
}

/// One object's stripes at one version: reads, and read-modify-write.
struct Stripes<'a> {
    node: &'a OsdNode,
    pg: &'a Pg,
    members: &'a [Member],
    codec: &'a Codec,
    object: &'a str,
    version: u64,
    size: u64,
}

impl Stripes<'_> {
    /// Logical bytes of stripes `[first, first + count)` of an object at `version`: the data
    /// shards when they all answer intact, else a reconstruction from any k shards.
    async fn read(&self, first: u64, count: u64) -> Result<Vec<u8>, Box<OpReply>> {
        let (codec, members, object) = (self.codec, self.members, self.object);
        let su = codec.stripe_unit() as u64;
        let (offset, length) = (first * su, count * su);
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; codec.shard_count()];
        let data_first: Vec<Member> = (0..codec.shard_count())
            .filter_map(|pos| members.iter().find(|m| m.shard == pos as i32).copied())
            .collect();
        let (wanted, spare): (Vec<Member>, Vec<Member>) = data_first
            .into_iter()
            .partition(|m| (m.shard as usize) < codec.k());
        self.fetch(&wanted, offset, length, &mut shards).await;
        let present = |s: &[Option<Vec<u8>>]| s.iter().filter(|x| x.is_some()).count();
        if shards[..codec.k()].iter().all(|s| s.is_some()) {
            return join(codec, &shards, length);
        }
        self.fetch(&spare, offset, length, &mut shards).await;
        if present(&shards) < codec.k() {
            return Err(refuse(
                OpResult::Retry,
                format!(
                    "only {} of the {} shards of {object} needed could be read intact",
                    present(&shards),
                    codec.k()
                ),
            ));
        }
        codec.reconstruct_data(&mut shards).map_err(|e| {
            refuse(
                OpResult::IoError,
                format!("cannot reconstruct {object}: {e}"),
            )
        })?;
        metrics::counter!("cairn_osd_ec_reconstructed_reads_total").increment(1);
        join(codec, &shards, length)
    }

    /// Reads the range from each member's shard; keeps intact answers at `version` (zero-padded
    /// to the full range: a shard's object ends with its last stripe). Failures are logged and
    /// counted, and leave the position empty.
    async fn fetch(
        &self,
        from: &[Member],
        offset: u64,
        length: u64,
        shards: &mut [Option<Vec<u8>>],
    ) {
        let (node, pg, object, version) = (self.node, self.pg, self.object, self.version);
        let reads = from.iter().map(|m| async move {
            (
                *m,
                members::shard_read(node, pg, *m, object, offset, length).await,
            )
        });
        for (m, result) in futures::future::join_all(reads).await {
            match result {
                Ok(r) if r.version == version => {
                    let mut data = Vec::from(r.data);
                    data.resize(length as usize, 0);
                    shards[m.shard as usize] = Some(data);
                }
                Ok(r) => {
                    tracing::warn!(pg = %pg.id, object, shard = m.shard, osd = m.osd, found = r.version, version, "shard at another version: not used")
                }
                Err(e) => {
                    metrics::counter!("cairn_osd_ec_shard_errors_total").increment(1);
                    tracing::warn!(pg = %pg.id, object, shard = m.shard, osd = m.osd, error = %e, "bad or missing shard: reading around it");
                }
            }
        }
    }

    fn width(&self) -> u64 {
        self.codec.stripe_width() as u64
    }

    /// The logical bytes of stripe `s` as stored now (zeros past the object's end).
    async fn stripe(&self, s: u64) -> Result<Vec<u8>, Box<OpReply>> {
        if s * self.width() >= self.size {
            return Ok(vec![0; self.width() as usize]);
        }
        self.read(s, 1).await
    }

    /// Writes `data` at `offset`: stripes it covers in part are read first.
    async fn overwrite(&self, offset: u64, data: &[u8]) -> Result<Plan, Box<OpReply>> {
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| refuse(OpResult::Invalid, "write past the largest offset"))?;
        let new_size = self.size.max(end);
        if data.is_empty() {
            // As on replicated pools: an empty write creates the object, nothing more.
            return Ok(per_shard(self.members, |_| {
                vec![mutation::touch(), size_attr(self.size)]
            }));
        }
        let (first, count) = self.codec.stripe_range(offset, data.len() as u64);
        let w = self.width();
        let base = first * w;
        let mut buf = vec![0u8; (count * w) as usize];
        if !offset.is_multiple_of(w) {
            buf[..w as usize].copy_from_slice(&self.stripe(first).await?);
        }
        let last = first + count - 1;
        if !end.is_multiple_of(w) && (last != first || offset.is_multiple_of(w)) {
            let at = ((last - first) * w) as usize;
            buf[at..at + w as usize].copy_from_slice(&self.stripe(last).await?);
        }
        let at = (offset - base) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        let shards = shards_of(self.codec, &buf);
        let shard_offset = first * self.codec.stripe_unit() as u64;
        Ok(per_shard(self.members, |pos| {
            vec![
                mutation::touch(),
                mutation::write(shard_offset, shards[pos].clone()),
                size_attr(new_size),
            ]
        }))
    }

    /// Cuts or extends the object; a cut inside a stripe zeroes the rest of that stripe.
    async fn truncate(&self, n: u64) -> Result<Plan, Box<OpReply>> {
        let w = self.width();
        let shard_len = self.codec.shard_len(n);
        let mut tail = None;
        if n < self.size && !n.is_multiple_of(w) {
            let s = n / w;
            let mut stripe = self.stripe(s).await?;
            stripe[(n % w) as usize..].fill(0);
            tail = Some((
                s * self.codec.stripe_unit() as u64,
                shards_of(self.codec, &stripe),
            ));
        }
        Ok(per_shard(self.members, |pos| {
            let mut muts = vec![mutation::touch()];
            if let Some((at, shards)) = &tail {
                muts.push(mutation::write(*at, shards[pos].clone()));
            }
            muts.push(mutation::truncate(shard_len));
            muts.push(size_attr(n));
            muts
        }))
    }
}

/// The shards of `data`, each shared (not copied) by the mutations of its members.
fn shards_of(codec: &Codec, data: &[u8]) -> Vec<Bytes> {
    codec.encode(data).into_iter().map(Bytes::from).collect()
}

/// The shard data in a pulled object state (its writes, up to its final size), copied once.
pub fn state_data(muts: &[Mutation]) -> Vec<u8> {
    let mut data = Vec::new();
    for m in muts {
        match &m.m {
            // Writes in order (the usual state) are appended: nothing is zeroed first.
            Some(M::Write(w)) if w.offset as usize == data.len() => data.extend_from_slice(&w.data),
            Some(M::Write(w)) => {
                let end = w.offset as usize + w.data.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[w.offset as usize..end].copy_from_slice(&w.data);
            }
            Some(M::Truncate(n)) => data.resize(*n as usize, 0),
            _ => {}
        }
    }
    data
}

/// The pulled state with its data replaced by `shard` (attributes kept).
pub fn with_shard_data(muts: &[Mutation], shard: Vec<u8>) -> Vec<Mutation> {
    let len = shard.len() as u64;
    let mut out = vec![mutation::touch()];
    if len > 0 {
        out.push(mutation::write(0, shard));
    }
    out.push(mutation::truncate(len));
    out.extend(
        muts.iter()
            .filter(|m| matches!(m.m, Some(M::SetXattr(_)) | Some(M::OmapSet(_))))
            .cloned(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pulled_state_gives_its_data_up_to_its_size() {
        let muts = vec![
            mutation::touch(),
            mutation::write(0, b"abcd".to_vec()),
            mutation::write(4, b"ef".to_vec()),
            mutation::write(1, b"X".to_vec()),
            mutation::write(8, b"gh".to_vec()),
            mutation::truncate(9),
            mutation::set_attr("a", b"1".to_vec()),
        ];
        assert_eq!(state_data(&muts), b"aXcdef\0\0g");
        // The state's attributes carry over to `with_shard_data`.
        let rebuilt = with_shard_data(&muts, b"shard".to_vec());
        assert!(rebuilt
            .iter()
            .any(|m| matches!(&m.m, Some(M::SetXattr(kv)) if kv.key == "a")));
    }

    #[test]
    fn an_empty_state_has_no_data() {
        let muts = vec![mutation::touch(), mutation::truncate(0)];
        assert!(state_data(&muts).is_empty());
    }
}
