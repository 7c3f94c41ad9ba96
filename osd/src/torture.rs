//! Randomized transactions and a plain in-memory model of the store, shared by the property
//! test and the crash test. The crash-test worker (`cairn-osd torture`) prints each
//! transaction before applying it and whether it was acknowledged, so a test that kills it can
//! tell exactly what must be on disk.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::txn::{Op, Transaction};

pub const COLLECTION: &str = "c";
const OBJECTS: u8 = 6;
const ATTRS: u8 = 3;
const OMAP_KEYS: u8 = 4;
/// Largest write, and the span of offsets writes land in.
pub const WRITE_BYTES_MAX: u32 = 96 * 1024;
pub const OFFSET_MAX: u64 = 512 * 1024;

/// A compact description of one op: data is regenerated from a seed on both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TortureOp {
    Write {
        obj: u8,
        offset: u64,
        len: u32,
        seed: u64,
    },
    Zero {
        obj: u8,
        offset: u64,
        len: u64,
    },
    Truncate {
        obj: u8,
        size: u64,
    },
    Remove {
        obj: u8,
    },
    SetAttr {
        obj: u8,
        name: u8,
        seed: u64,
    },
    RmAttr {
        obj: u8,
        name: u8,
    },
    OmapSet {
        obj: u8,
        key: u8,
        seed: u64,
    },
    OmapRm {
        obj: u8,
        key: u8,
    },
    OmapClear {
        obj: u8,
    },
    Clone {
        src: u8,
        dst: u8,
    },
    Rename {
        src: u8,
        dst: u8,
    },
}

/// Deterministic bytes from a seed (xorshift64*).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Object `obj` of a worker thread's namespace (threads never share objects).
pub fn object_name(thread: u32, obj: u8) -> String {
    format!("t{thread}-obj{obj}")
}

impl TortureOp {
    pub fn to_op(&self, thread: u32) -> Op {
        let c = COLLECTION.to_string();
        let n = |obj: u8| object_name(thread, obj);
        match *self {
            TortureOp::Write {
                obj,
                offset,
                len,
                seed,
            } => Op::Write {
                coll: c,
                oid: n(obj),
                offset,
                data: pattern(seed, len as usize).into(),
            },
            TortureOp::Zero { obj, offset, len } => Op::Zero {
                coll: c,
                oid: n(obj),
                offset,
                len,
            },
            TortureOp::Truncate { obj, size } => Op::Truncate {
                coll: c,
                oid: n(obj),
                size,
            },
            TortureOp::Remove { obj } => Op::Remove {
                coll: c,
                oid: n(obj),
            },
            TortureOp::SetAttr { obj, name, seed } => Op::SetAttrs {
                coll: c,
                oid: n(obj),
                attrs: BTreeMap::from([(format!("a{name}"), pattern(seed, 16))]),
            },
            TortureOp::RmAttr { obj, name } => Op::RmAttr {
                coll: c,
                oid: n(obj),
                name: format!("a{name}"),
            },
            TortureOp::OmapSet { obj, key, seed } => Op::OmapSet {
                coll: c,
                oid: n(obj),
                entries: BTreeMap::from([(vec![key], pattern(seed, 24))]),
            },
            TortureOp::OmapRm { obj, key } => Op::OmapRm {
                coll: c,
                oid: n(obj),
                keys: vec![vec![key]],
            },
            TortureOp::OmapClear { obj } => Op::OmapClear {
                coll: c,
                oid: n(obj),
            },
            TortureOp::Clone { src, dst } => Op::Clone {
                coll: c,
                src: n(src),
                dst: n(dst),
            },
            TortureOp::Rename { src, dst } => Op::Rename {
                coll: c,
                src: n(src),
                dst: n(dst),
            },
        }
    }
}

pub fn to_transaction(ops: &[TortureOp], thread: u32) -> Transaction {
    Transaction {
        ops: ops.iter().map(|op| op.to_op(thread)).collect(),
    }
}

/// A small deterministic generator (splitmix64), so the worker needs no RNG crate.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Gen {
        Gen(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn obj(&mut self) -> u8 {
        self.below(OBJECTS as u64) as u8
    }

    pub fn op(&mut self) -> TortureOp {
        let obj = self.obj();
        match self.below(16) {
            0..=5 => TortureOp::Write {
                obj,
                offset: self.below(OFFSET_MAX),
                len: self.below(WRITE_BYTES_MAX as u64) as u32 + 1,
                seed: self.next_u64(),
            },
            6 => TortureOp::Zero {
                obj,
                offset: self.below(OFFSET_MAX),
                len: self.below(64 * 1024),
            },
            7 => TortureOp::Truncate {
                obj,
                size: self.below(OFFSET_MAX),
            },
            8 => TortureOp::Remove { obj },
            9 => TortureOp::SetAttr {
                obj,
                name: self.below(ATTRS as u64) as u8,
                seed: self.next_u64(),
            },
            10 => TortureOp::RmAttr {
                obj,
                name: self.below(ATTRS as u64) as u8,
            },
            11 | 12 => TortureOp::OmapSet {
                obj,
                key: self.below(OMAP_KEYS as u64) as u8,
                seed: self.next_u64(),
            },
            13 => TortureOp::OmapRm {
                obj,
                key: self.below(OMAP_KEYS as u64) as u8,
            },
            14 => TortureOp::OmapClear { obj },
            _ => {
                let dst = self.obj();
                if self.below(2) == 0 {
                    TortureOp::Clone { src: obj, dst }
                } else {
                    TortureOp::Rename { src: obj, dst }
                }
            }
        }
    }

    /// A transaction of one to four ops.
    pub fn transaction(&mut self) -> Vec<TortureOp> {
        let n = self.below(4) + 1;
        (0..n).map(|_| self.op()).collect()
    }
}

/// One object of the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelObject {
    pub data: Vec<u8>,
    pub attrs: BTreeMap<String, Vec<u8>>,
    pub omap: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What the store should hold: the obvious implementation of every op.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub collections: BTreeSet<String>,
    pub objects: BTreeMap<(String, String), ModelObject>,
}

impl Model {
    /// Objects and their bytes per collection, as `ObjectStore::collection_stats` counts them.
    pub fn counts(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64)> = self
            .collections
            .iter()
            .map(|c| (c.clone(), (0, 0)))
            .collect();
        for ((coll, _), o) in &self.objects {
            let c = out.entry(coll.clone()).or_default();
            c.0 += 1;
            c.1 += o.data.len() as u64;
        }
        out
    }

    /// Applies a transaction: all of it, or (on the first failing op) none of it.
    pub fn apply(&mut self, txn: &Transaction) -> Result<(), String> {
        let mut next = self.clone();
        for op in &txn.ops {
            next.apply_op(op)?;
        }
        *self = next;
        Ok(())
    }

    fn need_coll(&self, coll: &str) -> Result<(), String> {
        if self.collections.contains(coll) {
            Ok(())
        } else {
            Err(format!("no collection {coll}"))
        }
    }

    fn get_or_create(&mut self, coll: &str, oid: &str) -> Result<&mut ModelObject, String> {
        self.need_coll(coll)?;
        Ok(self.objects.entry((coll.into(), oid.into())).or_default())
    }

    fn existing(&mut self, coll: &str, oid: &str) -> Result<&mut ModelObject, String> {
        self.need_coll(coll)?;
        self.objects
            .get_mut(&(coll.into(), oid.into()))
            .ok_or_else(|| format!("no object {oid}"))
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::CreateCollection { coll } => {
                if !self.collections.insert(coll.clone()) {
                    return Err("exists".into());
                }
            }
            Op::RemoveCollection { coll } => {
                self.need_coll(coll)?;
                if self.objects.keys().any(|(c, _)| c == coll) {
                    return Err("not empty".into());
                }
                self.collections.remove(coll);
            }
            Op::Touch { coll, oid } => {
                self.get_or_create(coll, oid)?;
            }
            Op::Write {
                coll,
                oid,
                offset,
                data,
            } => {
                let o = self.get_or_create(coll, oid)?;
                let end = *offset as usize + data.len();
                if !data.is_empty() && o.data.len() < end {
                    o.data.resize(end, 0);
                }
                o.data[*offset as usize..*offset as usize + data.len()].copy_from_slice(data);
            }
            Op::Zero {
                coll,
                oid,
                offset,
                len,
            } => {
                let o = self.get_or_create(coll, oid)?;
                let end = (*offset + *len) as usize;
                if *len > 0 && o.data.len() < end {
                    o.data.resize(end, 0);
                }
                if *len > 0 {
                    o.data[*offset as usize..end].fill(0);
                }
            }
            Op::Truncate { coll, oid, size } => {
                self.get_or_create(coll, oid)?
                    .data
                    .resize(*size as usize, 0);
            }
            Op::Remove { coll, oid } => {
                self.existing(coll, oid)?;
                self.objects.remove(&(coll.clone(), oid.clone()));
            }
            Op::SetAttrs { coll, oid, attrs } => {
                self.get_or_create(coll, oid)?.attrs.extend(attrs.clone());
            }
            Op::RmAttr { coll, oid, name } => {
                self.existing(coll, oid)?.attrs.remove(name);
            }
            Op::OmapSet { coll, oid, entries } => {
                self.get_or_create(coll, oid)?.omap.extend(entries.clone());
            }
            Op::OmapRm { coll, oid, keys } => {
                let o = self.existing(coll, oid)?;
                for k in keys {
                    o.omap.remove(k);
                }
            }
            Op::OmapClear { coll, oid } => {
                self.get_or_create(coll, oid)?.omap.clear();
            }
            Op::Clone { coll, src, dst } => {
                let s = self.existing(coll, src)?.clone();
                *self.get_or_create(coll, dst)? = s;
            }
            Op::Rename { coll, src, dst } => {
                let s = self.existing(coll, src)?.clone();
                if src != dst {
                    self.objects.remove(&(coll.clone(), src.clone()));
                    self.objects.insert((coll.clone(), dst.clone()), s);
                }
            }
        }
        Ok(())
    }
}

/// Reads everything a store holds into the model's shape, for comparison.
pub fn snapshot(store: &crate::ObjectStore) -> crate::error::Result<Model> {
    let mut m = Model::default();
    for coll in store.list_collections()? {
        let mut after: Option<String> = None;
        loop {
            let (names, next) = store.list(&coll, after.as_deref(), 100)?;
            for oid in names {
                let size = store.stat(&coll, &oid)?;
                let obj = ModelObject {
                    data: store.read(&coll, &oid, 0, size)?.into(),
                    attrs: store.getattrs(&coll, &oid)?,
                    omap: store
                        .omap_get(&coll, &oid, None, usize::MAX)?
                        .into_iter()
                        .collect(),
                };
                m.objects.insert((coll.clone(), oid), obj);
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        m.collections.insert(coll);
    }
    Ok(m)
}

/// The torture worker: `threads` threads, each on its own objects, apply generated
/// transactions concurrently (so commits share fdatasyncs), printing `begin T <json>` before and
/// `ack T` or `fail T <why>` after each, flushed, so a killer knows what was acknowledged.
pub fn run_worker(
    store: &crate::ObjectStore,
    seed: u64,
    count: u64,
    threads: u32,
) -> anyhow::Result<()> {
    if !store.list_collections()?.iter().any(|c| c == COLLECTION) {
        anyhow::bail!("the store has no collection {COLLECTION:?}: create it before torturing");
    }
    let say = |line: String| -> std::io::Result<()> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|t| {
                scope.spawn(move || -> anyhow::Result<()> {
                    let mut gen = Gen::new(seed.wrapping_add(t as u64));
                    for _ in 0..count {
                        let ops = gen.transaction();
                        say(format!("begin {t} {}", serde_json::to_string(&ops)?))?;
                        match store.apply(&to_transaction(&ops, t)) {
                            Ok(()) => say(format!("ack {t}"))?,
                            Err(e) => say(format!("fail {t} {e}"))?,
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        }
        Ok(())
    })
}
