//! Object store benchmark (figures for BENCHMARKS.md, not a timed test): the store's
//! throughput next to fio (io_uring, O_DIRECT) on a file of the same size on the same file
//! system, in the same run.
//!
//! Usage: bench-store [--dir DIR] [--seconds S] [--backend auto|uring|threads]
//! DIR (default /var/tmp) is where the file system is measured: the run works in a fresh
//! directory made inside it and removes only that.
//! Needs `fio` on the PATH for the reference figures (`apt-get install fio`).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_osd::io::BackendChoice;
use cairn_osd::{Bytes, ObjectStore, StoreConfig, Transaction};

const STORE_BYTES: u64 = 2 << 30;
const OBJECT_BYTES: u64 = 4 << 20;
const RANDOM_OBJECTS: u64 = 64;

struct Args {
    dir: std::path::PathBuf,
    seconds: u64,
    backend: BackendChoice,
}

fn args() -> Args {
    let mut a = Args {
        dir: "/var/tmp".into(),
        seconds: 8,
        backend: BackendChoice::Auto,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--dir", Some(v)) => a.dir = v.into(),
            ("--seconds", Some(v)) => a.seconds = v.parse().unwrap_or(8),
            ("--backend", Some(v)) => {
                a.backend = match v.as_str() {
                    "uring" => BackendChoice::Uring,
                    "threads" => BackendChoice::Threads,
                    _ => BackendChoice::Auto,
                }
            }
            _ => {
                eprintln!(
                    "usage: bench-store [--dir DIR] [--seconds S] [--backend auto|uring|threads]"
                );
                std::process::exit(2);
            }
        }
    }
    a
}

/// Runs fio with `extra` on a file of STORE_BYTES; returns (bytes/s, IOPS).
fn fio(dir: &std::path::Path, name: &str, seconds: u64, extra: &[&str]) -> Option<(f64, f64)> {
    let file = dir.join("fio-file");
    let out = Command::new("fio")
        .args([
            "--name",
            name,
            "--filename",
            file.to_str()?,
            "--size",
            &STORE_BYTES.to_string(),
            "--ioengine=io_uring",
            "--direct=1",
            "--time_based",
            "--runtime",
            &seconds.to_string(),
            "--output-format=json",
        ])
        .args(extra)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "fio {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = &v["jobs"][0];
    let side = if job["write"]["io_bytes"].as_u64().unwrap_or(0) > 0 {
        "write"
    } else {
        "read"
    };
    Some((job[side]["bw_bytes"].as_f64()?, job[side]["iops"].as_f64()?))
}

/// Operations per second, and the process's CPU time per operation (all its threads,
/// RocksDB's included): a figure a noisy disk moves less than the rate.
struct Rate {
    per_sec: f64,
    cpu_us_per_op: f64,
}

/// User plus system CPU time of the whole process so far, in microseconds.
fn process_cpu_us() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Runs `op` from `threads` threads for `seconds`.
fn drive(threads: usize, seconds: u64, op: impl Fn(usize, u64) + Send + Sync + 'static) -> Rate {
    let op = Arc::new(op);
    let cpu_before = process_cpu_us();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (op, done) = (op.clone(), done.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    op(t, i);
                    i += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let ops = done.load(Ordering::Relaxed).max(1) as f64;
    Rate {
        per_sec: ops / started.elapsed().as_secs_f64(),
        cpu_us_per_op: (process_cpu_us() - cpu_before) / ops,
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn row(what: &str, store: f64, cpu_us_per_op: f64, fio: Option<f64>, unit: &str, goal: f64) {
    match fio {
        Some(f) if f > 0.0 => {
            let pct = 100.0 * store / f;
            let verdict = if pct >= goal { "met" } else { "MISSED" };
            println!("{what:<44} store {store:>10.1} {unit}   fio {f:>10.1} {unit}   {pct:>5.1} % (goal >= {goal:.0} %: {verdict})   CPU {cpu_us_per_op:.0} us/op");
        }
        _ => println!(
            "{what:<44} store {store:>10.1} {unit}   fio n/a   CPU {cpu_us_per_op:.0} us/op"
        ),
    }
}

fn main() {
    let a = args();
    let work = tempfile::Builder::new()
        .prefix("cairn-bench-store.")
        .tempdir_in(&a.dir)
        .expect("a fresh directory inside --dir");
    let dir = work.path();
    let mib = |b: f64| b / (1 << 20) as f64;

    let fio_seq = fio(
        dir,
        "seqwrite",
        a.seconds,
        &["--rw=write", "--bs=4M", "--iodepth=4", "--fdatasync=1"],
    );
    let fio_randw = fio(
        dir,
        "randwrite",
        a.seconds,
        &["--rw=randwrite", "--bs=4k", "--iodepth=32", "--fdatasync=1"],
    );
    let fio_randr = fio(
        dir,
        "randread",
        a.seconds,
        &["--rw=randread", "--bs=4k", "--iodepth=32"],
    );
    let _ = std::fs::remove_file(dir.join("fio-file"));

    let store_dir = dir.join("store");
    let config = StoreConfig {
        backend: a.backend,
        ..StoreConfig::default()
    };
    ObjectStore::mkfs(&store_dir, Some(STORE_BYTES), &config).expect("mkfs");
    let store = Arc::new(ObjectStore::open(&store_dir, &config).expect("open"));
    let mut t = Transaction::new();
    t.create_collection("bench");
    store.apply(&t).expect("collection");
    println!("store backend: {}", store.backend_name());

    // 4 MiB sequential writes, 4 in flight, each durable when apply returns; objects are
    // rewritten round-robin so the device never fills. The data is handed over as the OSD
    // hands over what it received, without a copy.
    let data = Bytes::from(vec![0x5au8; OBJECT_BYTES as usize]);
    let s = store.clone();
    let d = data.clone();
    let seq_ops = drive(4, a.seconds, move |t, i| {
        let mut txn = Transaction::new();
        txn.write_bytes("bench", &format!("seq-{t}-{}", i % 32), 0, d.clone());
        s.apply(&txn).expect("seq write");
    });
    row(
        "4 MiB sequential writes, durable, 4 in flight",
        mib(seq_ops.per_sec * OBJECT_BYTES as f64),
        seq_ops.cpu_us_per_op,
        fio_seq.map(|f| mib(f.0)),
        "MiB/s",
        85.0,
    );

    // Prefill the objects the random tests use.
    for o in 0..RANDOM_OBJECTS {
        let mut txn = Transaction::new();
        txn.write("bench", &format!("rand-{o}"), 0, &data);
        store.apply(&txn).expect("prefill");
    }
    let blocks = OBJECT_BYTES / 4096;
    let s = store.clone();
    let block = Arc::new(vec![0xa5u8; 4096]);
    let randw = drive(32, a.seconds, move |t, i| {
        let r = xorshift((t as u64 + 1) * 0x9e37_79b9 + i);
        let mut txn = Transaction::new();
        txn.write(
            "bench",
            &format!("rand-{}", r % RANDOM_OBJECTS),
            (r / RANDOM_OBJECTS % blocks) * 4096,
            &block,
        );
        s.apply(&txn).expect("random write");
    });
    row(
        "4 KiB random writes, durable, 32 in flight",
        randw.per_sec,
        randw.cpu_us_per_op,
        fio_randw.map(|f| f.1),
        "IOPS",
        60.0,
    );

    let s = store.clone();
    let randr = drive(32, a.seconds, move |t, i| {
        let r = xorshift((t as u64 + 7) * 0x2545_f491 + i);
        let got = s
            .read(
                "bench",
                &format!("rand-{}", r % RANDOM_OBJECTS),
                (r / RANDOM_OBJECTS % blocks) * 4096,
                4096,
            )
            .expect("random read");
        assert_eq!(got.len(), 4096);
    });
    row(
        "4 KiB random reads, 32 in flight",
        randr.per_sec,
        randr.cpu_us_per_op,
        fio_randr.map(|f| f.1),
        "IOPS",
        80.0,
    );
    println!(
        "peak RSS of the process (store + RocksDB + buffers): {:.0} MiB",
        peak_rss_mib()
    );
    let report = store.fsck(false).expect("fsck");
    assert!(report.is_clean(), "{report:?}");
    drop(store);
}
