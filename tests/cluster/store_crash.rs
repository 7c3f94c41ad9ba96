//! Crash consistency of the object store: a worker process applies random transactions from
//! several threads at once (each on its own objects, so commits share fdatasyncs) and is killed
//! with SIGKILL at random moments, many times, on the same store. After each kill every
//! acknowledged transaction must be there, each one in flight must be all or nothing, deep fsck
//! must be clean and no space may leak.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cairn_osd::torture::{snapshot, to_transaction, Model, TortureOp, COLLECTION};
use cairn_osd::{ObjectStore, StoreConfig, Transaction};
use cairn_tests::{bin_dir, seed};

/// Kill cycles in CI; `CAIRN_CRASH_CYCLES` raises it.
const CYCLES_DEFAULT: u64 = 25;

/// Worker threads committing concurrently.
const THREADS: u32 = 4;

/// One worker thread's transactions and whether each was acknowledged (`None`: in flight
/// when killed).
type ThreadLog = Vec<(Vec<TortureOp>, Option<bool>)>;

/// Runs the worker until killed after `run_for`; returns each thread's log.
fn run_and_kill(dir: &Path, backend: &str, seed: u64, run_for: Duration) -> Vec<ThreadLog> {
    let mut child = Command::new(bin_dir().join("cairn-osd"))
        .arg("--data")
        .arg(dir)
        .args([
            "--io-backend",
            backend,
            "torture",
            "--seed",
            &seed.to_string(),
            "--threads",
            &THREADS.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut logs: Vec<ThreadLog> = vec![Vec::new(); THREADS as usize];
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut words = line.splitn(3, ' ');
            let (verb, thread) = (
                words.next().unwrap_or(""),
                words.next().and_then(|t| t.parse::<usize>().ok()),
            );
            let Some(log) = thread.and_then(|t| logs.get_mut(t)) else {
                continue;
            };
            match verb {
                "begin" => log.push((
                    serde_json::from_str(words.next().unwrap_or("")).expect("begin line"),
                    None,
                )),
                "ack" | "fail" => {
                    if let Some(last) = log.last_mut() {
                        last.1 = Some(verb == "ack");
                    }
                }
                _ => {}
            }
        }
        logs
    });
    std::thread::sleep(run_for);
    // SAFETY: signals the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    reader.join().expect("reader")
}

fn crash_cycles(backend: &str) {
    let seed = seed(&format!("store crash ({backend})"));
    let cycles = std::env::var("CAIRN_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CYCLES_DEFAULT);
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::Builder::new()
        .prefix("cairn-crash-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path().join("store");
    let config = StoreConfig::default();
    ObjectStore::mkfs(&dir, Some(256 << 20), &config).unwrap();
    {
        let s = ObjectStore::open(&dir, &config).unwrap();
        let mut t = Transaction::new();
        t.create_collection(COLLECTION);
        s.apply(&t).unwrap();
    }
    let mut model = Model::default();
    model.collections.insert(COLLECTION.into());
    let mut acked_total = 0;
    let started = Instant::now();
    for cycle in 0..cycles {
        let run_for = Duration::from_millis(rng.gen_range(50..600));
        let logs = run_and_kill(
            &dir,
            backend,
            seed.wrapping_add(cycle * THREADS as u64),
            run_for,
        );
        let mut in_flight = Vec::new();
        for (thread, log) in logs.into_iter().enumerate() {
            for (ops, outcome) in log {
                let txn = to_transaction(&ops, thread as u32);
                match outcome {
                    Some(acked) => {
                        let applied = model.apply(&txn);
                        assert_eq!(
                            applied.is_ok(),
                            acked,
                            "seed {seed} cycle {cycle}: the model disagrees on {ops:?}"
                        );
                        acked_total += usize::from(acked);
                    }
                    None => in_flight.push(txn),
                }
            }
        }
        let store = ObjectStore::open(&dir, &config).unwrap();
        let found = snapshot(&store).unwrap();
        // Each transaction in flight may have committed, wholly: one subset of them must explain
        // what the store holds (threads touch disjoint objects, so order does not matter).
        let explained = (0u32..1 << in_flight.len()).find_map(|mask| {
            let mut m = model.clone();
            for (i, t) in in_flight.iter().enumerate() {
                if mask & (1 << i) != 0 && m.apply(t).is_err() {
                    return None;
                }
            }
            (m == found).then_some(m)
        });
        model = explained.unwrap_or_else(|| {
            panic!("seed {seed} cycle {cycle}: the store holds neither the acknowledged state nor it plus some of the {} transactions in flight", in_flight.len())
        });
        let report = store.fsck(true).unwrap();
        assert!(report.is_clean(), "seed {seed} cycle {cycle}: {report:?}");
        assert_eq!(store.statfs().used, report.used_blocks * 4096);
    }
    // Remove everything: all space comes back.
    let store = ObjectStore::open(&dir, &config).unwrap();
    let mut t = Transaction::new();
    for name in store.list(COLLECTION, None, usize::MAX).unwrap().0 {
        t.remove(COLLECTION, &name);
    }
    store.apply(&t).unwrap();
    assert_eq!(store.statfs().used, 0, "seed {seed}: space leaked");
    eprintln!(
        "store crash ({backend}): {cycles} kills, {acked_total} acknowledged transactions, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        acked_total > 100,
        "too few transactions to mean anything: {acked_total}"
    );
}

#[test]
fn acknowledged_transactions_survive_kill_9_io_uring() {
    crash_cycles("uring");
}

#[test]
fn acknowledged_transactions_survive_kill_9_threads() {
    crash_cycles("threads");
}

#[test]
fn the_osd_tool_makes_checks_and_measures_a_store() {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-osdtool-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let dir = tmp.path().join("osd.0");
    let osd = |args: &[&str]| {
        Command::new(bin_dir().join("cairn-osd"))
            .arg("--data")
            .arg(&dir)
            .args(args)
            .output()
            .expect("run cairn-osd")
    };
    let out = osd(&["mkfs", "--size", "64M"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !osd(&["mkfs", "--size", "64M"]).status.success(),
        "mkfs twice"
    );
    let fsck = osd(&["fsck", "--deep"]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    let statfs: serde_json::Value = serde_json::from_slice(&osd(&["statfs"]).stdout).unwrap();
    assert_eq!(statfs["total"], 64u64 << 20);
    assert_eq!(statfs["used"], 0);
    let bad = osd(&["mkfs", "--size", "lots"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid size"));
    let threads = osd(&["--io-backend", "threads", "fsck"]);
    assert!(threads.status.success());
    assert!(String::from_utf8_lossy(&threads.stderr).contains("pread/pwrite threads"));
    let missing = Command::new(bin_dir().join("cairn-osd"))
        .args(["--data", "/nonexistent/osd", "fsck"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
}
