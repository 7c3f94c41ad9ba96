//! The store's test suite, run once per I/O backend: behaviour of each op, checksums and bit
//! rot, a full device, and a property test against the in-memory model (with remounts).

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::error::StoreError;
use crate::io::BackendChoice;
use crate::torture::{snapshot, to_transaction, Gen, Model, COLLECTION};
use crate::txn::{Op, Transaction};
use crate::{ObjectStore, StoreConfig, BLOCK_BYTES};

fn config(backend: BackendChoice) -> StoreConfig {
    StoreConfig {
        backend,
        rocksdb_block_cache_bytes: 4 << 20,
        rocksdb_write_buffer_bytes: 4 << 20,
        ..StoreConfig::default()
    }
}

fn new_store(backend: BackendChoice, bytes: u64) -> (tempfile::TempDir, ObjectStore) {
    // On the disk, not tmpfs: O_DIRECT is part of what is tested.
    let dir = tempfile::Builder::new()
        .prefix("cairn-store-")
        .tempdir_in("/var/tmp")
        .unwrap();
    ObjectStore::mkfs(dir.path(), Some(bytes), &config(backend)).unwrap();
    let store = ObjectStore::open(dir.path(), &config(backend)).unwrap();
    let mut t = Transaction::new();
    t.create_collection(COLLECTION);
    store.apply(&t).unwrap();
    (dir, store)
}

fn op_basics(backend: BackendChoice) {
    let (_d, s) = new_store(backend, 64 << 20);
    let mut t = Transaction::new();
    t.write(COLLECTION, "a", 5000, b"hello");
    s.apply(&t).unwrap();
    assert_eq!(s.stat(COLLECTION, "a").unwrap(), 5005);
    let data = s.read(COLLECTION, "a", 0, 10_000).unwrap();
    assert_eq!(data.len(), 5005);
    assert!(data[..5000].iter().all(|b| *b == 0));
    assert_eq!(&data[5000..], b"hello");
    // A failing op undoes the whole transaction.
    let mut t = Transaction::new();
    t.write(COLLECTION, "a", 0, b"XX")
        .remove(COLLECTION, "missing");
    assert!(matches!(s.apply(&t), Err(StoreError::NoObject { .. })));
    assert_eq!(s.read(COLLECTION, "a", 0, 2).unwrap(), vec![0, 0]);
    // Unknown collections and bad names are refused.
    let mut t = Transaction::new();
    t.write("nope", "a", 0, b"x");
    assert!(matches!(s.apply(&t), Err(StoreError::NoCollection(_))));
    let mut t = Transaction::new();
    t.write(COLLECTION, "a\0b", 0, b"x");
    assert!(matches!(s.apply(&t), Err(StoreError::Invalid(_))));
    let mut t = Transaction::new();
    t.write(COLLECTION, "a", u64::MAX - 1, b"xx");
    assert!(matches!(s.apply(&t), Err(StoreError::Invalid(_))));
    // Listing pages through names in order.
    let mut t = Transaction::new();
    for i in 0..25 {
        t.push(Op::Touch {
            coll: COLLECTION.into(),
            oid: format!("o{i:02}"),
        });
    }
    s.apply(&t).unwrap();
    let (page, next) = s.list(COLLECTION, None, 10).unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page[0], "a");
    let (page2, _) = s.list(COLLECTION, next.as_deref(), 100).unwrap();
    assert_eq!(page2.len(), 16);
    assert_eq!(page2[0], "o09");
    // A collection with objects cannot go.
    let mut t = Transaction::new();
    t.push(Op::RemoveCollection {
        coll: COLLECTION.into(),
    });
    assert!(matches!(
        s.apply(&t),
        Err(StoreError::CollectionNotEmpty(_))
    ));
    assert!(s.fsck(true).unwrap().is_clean());
}

fn bit_rot(backend: BackendChoice) {
    let (dir, s) = new_store(backend, 64 << 20);
    let mut t = Transaction::new();
    t.write(COLLECTION, "good", 0, &vec![7u8; 3 * BLOCK_BYTES]);
    t.write(COLLECTION, "bad", 0, &vec![9u8; 3 * BLOCK_BYTES]);
    s.apply(&t).unwrap();
    let victim = s.object_extents(COLLECTION, "bad").unwrap()[0].clone();
    drop(s);
    // Flip a byte in the second block of "bad", straight in the data file.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join("block"))
            .unwrap();
        let at = (victim.pblock + 1) * BLOCK_BYTES as u64 + 100;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
        f.sync_all().unwrap();
    }
    let s = ObjectStore::open(dir.path(), &config(backend)).unwrap();
    match s.read(COLLECTION, "bad", 0, 3 * BLOCK_BYTES as u64) {
        Err(StoreError::ChecksumMismatch {
            collection,
            object,
            offset,
            length,
            ..
        }) => {
            assert_eq!((collection.as_str(), object.as_str()), (COLLECTION, "bad"));
            assert_eq!((offset, length), (BLOCK_BYTES as u64, BLOCK_BYTES as u64));
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    // The undamaged block of the same object and the other object still read.
    assert_eq!(s.read(COLLECTION, "bad", 0, 10).unwrap(), vec![9u8; 10]);
    assert_eq!(
        s.read(COLLECTION, "good", 0, 3 * BLOCK_BYTES as u64)
            .unwrap(),
        vec![7u8; 3 * BLOCK_BYTES]
    );
    let report = s.fsck(true).unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].object, "bad");
    assert_eq!(report.damaged[0].offset, BLOCK_BYTES as u64);
    assert!(report.errors.is_empty());
    assert!(
        s.fsck(false).unwrap().is_clean(),
        "a shallow fsck reads no data"
    );
}

fn fill_to_full(backend: BackendChoice) {
    let (_d, s) = new_store(backend, 4 << 20);
    let chunk = vec![1u8; 256 * 1024];
    let mut written = Vec::new();
    let err = loop {
        let name = format!("f{}", written.len());
        let mut t = Transaction::new();
        t.write(COLLECTION, &name, 0, &chunk);
        match s.apply(&t) {
            Ok(()) => written.push(name),
            Err(e) => break e,
        }
        assert!(written.len() < 100, "never filled up");
    };
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("no space left"));
    let full = s.statfs();
    assert!(full.available < chunk.len() as u64);
    // Nothing written is damaged, and the failed write left nothing behind.
    for name in &written {
        assert_eq!(
            s.read(COLLECTION, name, 0, chunk.len() as u64).unwrap(),
            chunk
        );
    }
    assert!(!s
        .exists(COLLECTION, &format!("f{}", written.len()))
        .unwrap());
    assert!(s.fsck(true).unwrap().is_clean());
    // Deleting frees space for new writes.
    let mut t = Transaction::new();
    t.remove(COLLECTION, &written[0])
        .remove(COLLECTION, &written[1]);
    s.apply(&t).unwrap();
    assert!(s.statfs().available >= 2 * chunk.len() as u64);
    let mut t = Transaction::new();
    t.write(COLLECTION, "after", 0, &chunk);
    s.apply(&t).unwrap();
    assert!(s.fsck(true).unwrap().is_clean());
}

fn space_returns(backend: BackendChoice) {
    let (_d, s) = new_store(backend, 64 << 20);
    let empty = s.statfs().used;
    let mut gen = Gen::new(3);
    for _ in 0..200 {
        let _ = s.apply(&to_transaction(&gen.transaction(), 0));
    }
    let mut t = Transaction::new();
    for name in s.list(COLLECTION, None, usize::MAX).unwrap().0 {
        t.remove(COLLECTION, &name);
    }
    s.apply(&t).unwrap();
    assert_eq!(s.statfs().used, empty, "space leaked");
    assert!(s.fsck(true).unwrap().is_clean());
}

/// Random transactions against the model; compares everything, also after a remount.
fn against_model(backend: BackendChoice, seed: u64, txns: usize) {
    let (dir, mut s) = new_store(backend, 64 << 20);
    let mut model = Model::default();
    model.collections.insert(COLLECTION.into());
    let mut gen = Gen::new(seed);
    for i in 0..txns {
        // Stretches with the in-place writes held back: reads, partial-block rewrites and
        // frees then meet blocks still queued.
        s.deferred.hold(i % 50 >= 25);
        let txn = to_transaction(&gen.transaction(), 0);
        let expect = model.apply(&txn);
        let got = s.apply(&txn);
        assert_eq!(
            expect.is_ok(),
            got.is_ok(),
            "seed {seed} txn {i}: model {expect:?}, store {got:?}, {txn:?}"
        );
        let counts: BTreeMap<String, (u64, u64)> = s
            .collection_stats()
            .into_iter()
            .map(|(c, st)| (c, (st.objects, st.bytes)))
            .collect();
        assert_eq!(counts, model.counts(), "seed {seed} txn {i}: {txn:?}");
        if i % 50 == 49 {
            drop(s);
            s = ObjectStore::open(dir.path(), &config(backend)).unwrap();
        }
    }
    s.deferred.hold(true);
    assert_eq!(snapshot(&s).unwrap(), model, "seed {seed}");
    s.deferred.hold(false);
    let report = s.fsck(true).unwrap();
    assert!(report.is_clean(), "seed {seed}: {report:?}");
}

macro_rules! suite {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn op_basics() {
                super::op_basics($backend);
            }

            #[test]
            fn bit_rot_is_caught_and_located() {
                super::bit_rot($backend);
            }

            #[test]
            fn full_store_refuses_cleanly_and_recovers() {
                super::fill_to_full($backend);
            }

            #[test]
            fn removed_objects_return_their_space() {
                super::space_returns($backend);
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
                #[test]
                fn random_transactions_match_the_model(seed in any::<u64>()) {
                    super::against_model($backend, seed, 150);
                }
            }
        }
    };
}

suite!(uring, BackendChoice::Uring);
suite!(threads, BackendChoice::Threads);

#[test]
fn attributes_and_omap() {
    let (_d, s) = new_store(BackendChoice::Auto, 16 << 20);
    let mut t = Transaction::new();
    t.push(Op::SetAttrs {
        coll: COLLECTION.into(),
        oid: "x".into(),
        attrs: BTreeMap::from([("k".to_string(), b"v".to_vec())]),
    });
    t.push(Op::OmapSet {
        coll: COLLECTION.into(),
        oid: "x".into(),
        entries: (0u8..10).map(|i| (vec![i], vec![i; 3])).collect(),
    });
    s.apply(&t).unwrap();
    assert_eq!(s.getattrs(COLLECTION, "x").unwrap()["k"], b"v");
    let page = s.omap_get(COLLECTION, "x", None, 4).unwrap();
    assert_eq!(page.len(), 4);
    let rest = s.omap_get(COLLECTION, "x", Some(&page[3].0), 100).unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(rest[0].0, vec![4]);
}

/// A store of format 1 (each object's whole extent map in its record) is converted to sharded
/// extent maps when mounted, and reads back the same.
#[test]
fn a_format_1_store_is_converted_at_mount() {
    use crate::onode::*;
    let (dir, s) = new_store(BackendChoice::Auto, 64 << 20);
    let mut t = Transaction::new();
    t.write(
        COLLECTION,
        "big",
        1000,
        &crate::torture::pattern(1, 600 * 1024),
    )
    .write(COLLECTION, "small", 0, b"abc");
    s.apply(&t).unwrap();
    let before = snapshot(&s).unwrap();

    // Rewrite the metadata as format 1 had it.
    let mut batch = rocksdb::WriteBatch::default();
    for oid in ["big", "small"] {
        let o = s.get_onode(COLLECTION, oid).unwrap().unwrap();
        let record = OnodeRecord {
            size: o.size,
            extents: o.extents.iter().map(ExtentRecord::from).collect(),
            attrs: o.attrs.clone(),
        };
        let shards = extent_shard_prefix(COLLECTION, oid);
        batch.delete_range(&shards, &prefix_end(&shards));
        batch.put(
            onode_key(COLLECTION, oid),
            prost::Message::encode_to_vec(&record),
        );
    }
    let superblock = |s: &ObjectStore| -> SuperblockRecord {
        prost::Message::decode(s.db.get(KEY_SUPERBLOCK).unwrap().unwrap().as_slice()).unwrap()
    };
    let mut sb = superblock(&s);
    assert_eq!(sb.format_version, 2);
    sb.format_version = 1;
    batch.put(KEY_SUPERBLOCK, prost::Message::encode_to_vec(&sb));
    s.db.write(batch).unwrap();
    drop(s);

    let s = ObjectStore::open(dir.path(), &config(BackendChoice::Auto)).unwrap();
    assert_eq!(superblock(&s).format_version, 2);
    assert_eq!(snapshot(&s).unwrap(), before);
    let record: OnodeRecord = prost::Message::decode(
        s.db.get(onode_key(COLLECTION, "big"))
            .unwrap()
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    assert!(record.extents.is_empty(), "the record still holds extents");
    let report = s.fsck(true).unwrap();
    assert!(report.is_clean(), "{report:?}");
}
