//! The thrash test: writers change objects in an erasure-coded 2+1 pool and a replicated
//! size-3 pool — whole writes, writes at odd offsets, appends, removes — and read them back,
//! while a thrasher driven by a printed seed kills OSDs with SIGKILL and restarts them,
//! marks OSDs out and in, adds an OSD, and kills the mon leader. Never more than one OSD is
//! down or out at once: the most these pools can lose.
//!
//! Every acknowledged change is in a model. A change that fails is resolved by reading the
//! object: it must be wholly there or wholly absent. A read must always match the model (no
//! stale or rolled-back data). When the thrashing stops, every PG must become active+clean
//! within a bound, every object read back byte-exact, removed ones stay removed, a deep scrub
//! find nothing, and every OSD's `fsck --deep` come out clean.
//!
//! `CAIRN_THRASH_SECS` sets how long the thrashing lasts (default 45 s; e.g. 1800 for the
//! long form); `CAIRN_TEST_SEED` replays a run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cairn_client::dev::{osd_caps, Kind};
use cairn_client::{ClientError, Rados};
use cairn_common::auth::SecretKey;
use cairn_common::command::Command;
use cairn_common::maps::{FailureDomain, PoolKind};
use cairn_tests::{seed, wait_for, TestCluster, TEST_OSD_BYTES};

use crate::rados::payload;

const REP: &str = "rep";
const EC: &str = "ec";
const WRITERS: usize = 3;
const OBJECTS_PER_WRITER: usize = 10;
/// How long the cluster may take to become clean once the thrashing stops.
const CLEAN_BOUND: Duration = Duration::from_secs(120);

fn thrash_duration() -> Duration {
    let secs = std::env::var("CAIRN_THRASH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    Duration::from_secs(secs)
}

type Key = (&'static str, String);
/// Object → its content (`None`: removed).
type Model = BTreeMap<Key, Option<Vec<u8>>>;

/// One change a writer makes.
enum Change {
    Full(Vec<u8>),
    At(u64, Vec<u8>),
    Append(Vec<u8>),
    Remove,
}

impl Change {
    fn random(rng: &mut StdRng, current: &Option<Vec<u8>>) -> Change {
        let size = current.as_ref().map_or(0, |d| d.len() as u64);
        fn bytes(rng: &mut StdRng, range: std::ops::Range<usize>) -> Vec<u8> {
            let len = rng.gen_range(range);
            payload(rng, len)
        }
        match rng.gen_range(0..10) {
            0..=2 => Change::Full(bytes(rng, 0..200_000)),
            3..=5 => {
                let offset = rng.gen_range(0..=size + 5000);
                Change::At(offset, bytes(rng, 1..40_000))
            }
            6..=7 => Change::Append(bytes(rng, 1..30_000)),
            _ if current.is_some() => Change::Remove,
            _ => Change::Full(bytes(rng, 0..5000)),
        }
    }

    /// The object after the change.
    fn apply(&self, current: &Option<Vec<u8>>) -> Option<Vec<u8>> {
        let mut data = current.clone().unwrap_or_default();
        match self {
            Change::Full(d) => return Some(d.clone()),
            Change::At(offset, d) => {
                let (o, end) = (*offset as usize, *offset as usize + d.len());
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[o..end].copy_from_slice(d);
            }
            Change::Append(d) => data.extend_from_slice(d),
            Change::Remove => return None,
        }
        Some(data)
    }

    async fn send(&self, rados: &Rados, pool: &str, name: &str) -> Result<(), ClientError> {
        match self {
            Change::Full(d) => rados.write_full(pool, name, d.clone()).await.map(|_| ()),
            Change::At(o, d) => rados.write(pool, name, *o, d.clone()).await.map(|_| ()),
            Change::Append(d) => rados.append(pool, name, d.clone()).await.map(|_| ()),
            Change::Remove => rados.remove(pool, name).await,
        }
    }
}

/// The object as the cluster serves it now (`None`: it does not exist).
async fn read(rados: &Rados, pool: &str, name: &str) -> Result<Option<Vec<u8>>, ClientError> {
    match rados.read_all(pool, name, 1 << 20).await {
        Ok(d) => Ok(Some(d)),
        Err(ClientError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads until the cluster answers (or `limit` passes).
async fn read_patiently(rados: &Rados, pool: &str, name: &str, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    loop {
        match read(rados, pool, name).await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("read of {pool}/{name} failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{pool}/{name} unreadable for {limit:?}: {e}"),
        }
    }
}

fn describe(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "absent".into(),
        Some(d) => format!("{} bytes (crc {:08x})", d.len(), crc32c::crc32c(d)),
    }
}

/// One writer: changes and reads its own objects until `stop`, keeping the model.
async fn writer(rados: Arc<Rados>, id: usize, seed: u64, stop: Arc<AtomicBool>) -> (Model, u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9));
    let mut model = Model::new();
    let keys: Vec<Key> = (0..OBJECTS_PER_WRITER)
        .map(|j| (if j % 2 == 0 { REP } else { EC }, format!("w{id}-{j}")))
        .collect();
    let mut acked = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = &keys[rng.gen_range(0..keys.len())];
        let (pool, name) = (key.0, key.1.as_str());
        let current = model.get(key).cloned().unwrap_or(None);
        if rng.gen_range(0..4) == 0 {
            // A read must match the model whenever it succeeds.
            if let Ok(got) = read(&rados, pool, name).await {
                assert!(
                    got == current,
                    "seed {seed}: {pool}/{name} read {} but the last acknowledged write left {}",
                    describe(&got),
                    describe(&current)
                );
            }
            continue;
        }
        let change = Change::random(&mut rng, &current);
        let after = change.apply(&current);
        match change.send(&rados, pool, name).await {
            Ok(()) => {
                acked += 1;
                model.insert(key.clone(), after);
            }
            Err(e) => {
                // Not acknowledged: it happened wholly or not at all.
                let got = read_patiently(&rados, pool, name, Duration::from_secs(90)).await;
                assert!(
                    got == current || got == after,
                    "seed {seed}: {pool}/{name} after a failed change ({e}) holds {}, neither the state before ({}) nor after ({})",
                    describe(&got),
                    describe(&current),
                    describe(&after)
                );
                model.insert(key.clone(), got);
            }
        }
    }
    (model, acked)
}

/// What the thrasher has disrupted and must undo.
#[derive(Default)]
struct Disruption {
    osd_down: Option<(u32, Instant)>,
    osd_out: Option<(u32, Instant)>,
    mon_down: Option<(String, Instant)>,
}

struct Thrasher<'a> {
    c: &'a TestCluster,
    rng: StdRng,
    osds: Vec<u32>,
    now: Disruption,
    log: Vec<String>,
    started: Instant,
}

impl Thrasher<'_> {
    fn note(&mut self, what: String) {
        let line = format!("{:>6.1}s {what}", self.started.elapsed().as_secs_f64());
        eprintln!("thrash: {line}");
        self.log.push(line);
    }

    fn pause(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(lo..hi))
    }

    /// One step: undo a disruption whose time has come, or make a new one.
    async fn step(&mut self) {
        let now = Instant::now();
        if let Some((osd, until)) = self.now.osd_down {
            if now >= until {
                self.c.cluster.start(Kind::Osd, &osd.to_string()).unwrap();
                self.now.osd_down = None;
                self.note(format!("restart osd.{osd}"));
            }
            return;
        }
        if let Some((osd, until)) = self.now.osd_out {
            if now >= until {
                self.command(Command::OsdIn { ids: vec![osd] }).await;
                self.now.osd_out = None;
                self.note(format!("mark osd.{osd} in"));
            }
            return;
        }
        if let Some((mon, until)) = self.now.mon_down.clone() {
            if now >= until {
                self.c.start_mon(&mon);
                self.now.mon_down = None;
                self.note(format!("restart mon.{mon}"));
            }
        }
        let osd = self.osds[self.rng.gen_range(0..self.osds.len())];
        match self.rng.gen_range(0..10) {
            0..=5 => {
                self.c.cluster.kill(Kind::Osd, &osd.to_string()).unwrap();
                let back = now + self.pause(1000, 6000);
                self.now.osd_down = Some((osd, back));
                self.note(format!("kill -9 osd.{osd}"));
            }
            6..=7 => {
                self.command(Command::OsdOut { ids: vec![osd] }).await;
                let back = now + self.pause(3000, 8000);
                self.now.osd_out = Some((osd, back));
                self.note(format!("mark osd.{osd} out"));
            }
            _ if self.now.mon_down.is_none() => {
                let leader = self.c.leader().await;
                self.c.kill(&leader);
                let back = now + self.pause(1000, 4000);
                self.now.mon_down = Some((leader.clone(), back));
                self.note(format!("kill -9 mon.{leader} (the leader)"));
            }
            _ => {}
        }
    }

    async fn command(&self, cmd: Command) {
        wait_for(Duration::from_secs(30), "a mon command", || async {
            self.c.admin().command(cmd.clone()).await.ok()
        })
        .await;
    }

    /// Registers, creates and starts a new OSD.
    async fn add_osd(&mut self) {
        let id = self.osds.iter().max().map_or(0, |m| m + 1);
        let key = SecretKey::generate();
        self.command(Command::AuthAdd {
            entity: format!("osd.{id}"),
            caps: osd_caps(),
            key: Some(key.clone()),
        })
        .await;
        self.c
            .cluster
            .add_keyring_entry(&format!("osd.{id}"), key, osd_caps())
            .unwrap();
        self.c.cluster.mkfs_osd(id, TEST_OSD_BYTES).unwrap();
        self.c.cluster.start(Kind::Osd, &id.to_string()).unwrap();
        self.osds.push(id);
        self.note(format!("add osd.{id}"));
    }

    /// Ends every disruption.
    async fn settle(&mut self) {
        if let Some((osd, _)) = self.now.osd_down.take() {
            self.c.cluster.start(Kind::Osd, &osd.to_string()).unwrap();
            self.note(format!("restart osd.{osd}"));
        }
        if let Some((osd, _)) = self.now.osd_out.take() {
            self.command(Command::OsdIn { ids: vec![osd] }).await;
            self.note(format!("mark osd.{osd} in"));
        }
        if let Some((mon, _)) = self.now.mon_down.take() {
            self.c.start_mon(&mon);
            self.note(format!("restart mon.{mon}"));
        }
    }
}

async fn create_pools(c: &TestCluster) {
    let pools = [
        (
            REP,
            PoolKind::Replicated {
                size: 3,
                min_size: 2,
            },
        ),
        (
            EC,
            PoolKind::Erasure {
                k: 2,
                m: 1,
                stripe_unit: 4096,
                min_size: 2,
            },
        ),
    ];
    for (name, kind) in pools {
        c.admin()
            .command(Command::PoolCreate {
                name: name.into(),
                pg_num: 16,
                kind,
                failure_domain: FailureDomain::Osd,
            })
            .await
            .expect("create pool");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thrashing_loses_nothing_and_heals() {
    let seed = seed("thrashing_loses_nothing_and_heals");
    let duration = thrash_duration();
    eprintln!("thrash: seed {seed}, {duration:?} of thrashing");
    let c = TestCluster::start_with_osds(3, 4, &[]).await;
    create_pools(&c).await;
    let rados = Arc::new(Rados::connect(&c.config()).await.expect("connect"));

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(rados.clone(), id, seed, stop.clone())))
        .collect();

    let mut t = Thrasher {
        c: &c,
        rng: StdRng::seed_from_u64(seed),
        osds: vec![0, 1, 2, 3],
        now: Disruption::default(),
        log: Vec::new(),
        started: Instant::now(),
    };
    let add_at = duration / 3;
    let mut added = false;
    while t.started.elapsed() < duration {
        let pause = t.pause(1500, 4000);
        tokio::time::sleep(pause).await;
        let calm = t.now.osd_down.is_none() && t.now.osd_out.is_none();
        if !added && calm && t.started.elapsed() >= add_at {
            t.add_osd().await;
            added = true;
        } else {
            t.step().await;
        }
    }
    assert!(
        added,
        "seed {seed}: the run ended before an OSD could be added"
    );
    t.settle().await;
    stop.store(true, Ordering::Relaxed);
    let mut model = Model::new();
    let mut acked = 0;
    for w in writers {
        let (m, n) = w.await.expect("writer");
        model.extend(m);
        acked += n;
    }
    eprintln!("thrash: {acked} acknowledged changes; the thrashing stopped");

    let settled = Instant::now();
    c.wait_healthy(CLEAN_BOUND).await;
    eprintln!(
        "thrash: every PG active+clean {:.1}s after the thrashing stopped (bound {CLEAN_BOUND:?})",
        settled.elapsed().as_secs_f64()
    );
    for ((pool, name), want) in &model {
        let got = read_patiently(&rados, pool, name, Duration::from_secs(30)).await;
        assert!(
            got == *want,
            "seed {seed}: {pool}/{name} holds {} but should hold {}",
            describe(&got),
            describe(want)
        );
    }
    let maps = rados.maps();
    let mut errors = 0;
    for (id, pool) in &maps.osdmap.pools {
        for pg in cairn_common::placement::all_pgs(*id, pool) {
            let r = rados.scrub(pg, true, false).await.expect("deep scrub");
            for line in &r.inconsistencies {
                eprintln!("thrash: {line}");
            }
            errors += r.errors;
        }
    }
    assert_eq!(errors, 0, "seed {seed}: deep scrub found inconsistencies");
    c.cluster.stop_all(Duration::from_secs(10)).unwrap();
    for osd in c.cluster.osd_ids().unwrap() {
        let dir = c.dir().join(format!("osd.{osd}"));
        let store = cairn_osd::ObjectStore::open(&dir, &cairn_osd::StoreConfig::default()).unwrap();
        let report = store.fsck(true).unwrap();
        assert!(report.is_clean(), "seed {seed}: osd.{osd} fsck: {report:?}");
    }
    eprintln!("thrash: log of seed {seed}:\n{}", t.log.join("\n"));
}
