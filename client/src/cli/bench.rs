//! `cairn bench POOL SECONDS write|seq|rand`: like `rados bench`. `write` fills the pool with
//! objects of `-b` bytes from `-t` concurrent writers (kept with `--no-cleanup` for `seq`
//! and `rand`, which read them back); a line per second, then bandwidth, IOPS and latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::json;

use cairn_client::Rados;

use super::emit;
use crate::Format;

/// Names the objects of the last `write` run, for `seq` and `rand`.
const METADATA_OBJECT: &str = "cairn_bench_metadata";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Write,
    Seq,
    Rand,
    /// Remove the objects of the last `write` run.
    Cleanup,
}

#[derive(Args)]
pub struct BenchArgs {
    pub pool: String,
    pub seconds: u64,
    pub mode: Mode,
    /// Object size in bytes.
    #[arg(short = 'b', long = "block-size", default_value_t = 4 << 20)]
    pub block_size: usize,
    /// Operations in flight.
    #[arg(short = 't', long = "concurrent-ios", default_value_t = 16)]
    pub concurrency: usize,
    /// Keep the written objects (for a later `seq` or `rand`).
    #[arg(long)]
    pub no_cleanup: bool,
}

#[derive(Serialize, Deserialize)]
struct Metadata {
    prefix: String,
    objects: u64,
    size: usize,
}

/// What the workers share: counters for the per-second lines and every latency.
#[derive(Default)]
struct Tally {
    done: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<f64>>,
}

pub async fn run(rados: Arc<Rados>, a: &BenchArgs, format: Format) -> anyhow::Result<()> {
    if a.concurrency == 0 || a.block_size == 0 {
        anyhow::bail!("-t and -b must be positive");
    }
    if a.mode == Mode::Cleanup {
        let removed = cleanup(&rados, &a.pool).await?;
        println!("removed {removed} objects");
        return Ok(());
    }
    let meta = match a.mode {
        Mode::Write => Metadata {
            prefix: format!("bench_{:08x}", rand::random::<u32>()),
            objects: 0,
            size: a.block_size,
        },
        _ => {
            let raw = rados
                .read_all(&a.pool, METADATA_OBJECT, 1 << 20)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "no objects to read ({e}): run `cairn bench {} N write --no-cleanup` first",
                        a.pool
                    )
                })?;
            serde_json::from_slice(&raw)?
        }
    };
    if a.mode != Mode::Write && meta.objects == 0 {
        anyhow::bail!("the last write run left no objects");
    }
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let meta = Arc::new(meta);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (rados, tally, stop, next, meta) = (
            rados.clone(),
            tally.clone(),
            stop.clone(),
            next.clone(),
            meta.clone(),
        );
        let (pool, mode, size) = (a.pool.clone(), a.mode, a.block_size);
        workers.push(tokio::spawn(async move {
            let mut data = vec![0u8; size];
            rand::thread_rng().fill_bytes(&mut data);
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let (name, t0) = match mode {
                    Mode::Write => (format!("{}_{n}", meta.prefix), Instant::now()),
                    Mode::Seq if n >= meta.objects => break,
                    Mode::Seq => (format!("{}_{n}", meta.prefix), Instant::now()),
                    _ => (
                        format!(
                            "{}_{}",
                            meta.prefix,
                            rand::thread_rng().gen_range(0..meta.objects)
                        ),
                        Instant::now(),
                    ),
                };
                let result = match mode {
                    Mode::Write => rados
                        .write_full(&pool, &name, data.clone())
                        .await
                        .map(|_| size),
                    _ => rados
                        .read(&pool, &name, 0, meta.size as u64)
                        .await
                        .map(|d| d.len()),
                };
                match result {
                    Ok(bytes) => {
                        tally.done.fetch_add(1, Ordering::Relaxed);
                        tally.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                        tally
                            .latencies
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(t0.elapsed().as_secs_f64());
                    }
                    Err(e) => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{name}: {e}");
                    }
                }
            }
        }));
    }
    // A `seq` run ends early when every object was read once.
    let all_done = futures::future::join_all(workers);
    tokio::pin!(all_done);
    tokio::select! {
        _ = report_each_second(&tally, a.seconds, format) => {
            stop.store(true, Ordering::Relaxed);
            all_done.await;
        }
        _ = &mut all_done => {}
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = summarize(&tally, elapsed, a);
    if a.mode == Mode::Write {
        // Every name handed out was written or failed before its worker stopped.
        let written = Metadata {
            prefix: meta.prefix.clone(),
            objects: next.load(Ordering::Relaxed),
            size: a.block_size,
        };
        rados
            .write_full(&a.pool, METADATA_OBJECT, serde_json::to_vec(&written)?)
            .await?;
        if !a.no_cleanup {
            cleanup(&rados, &a.pool).await?;
        }
    }
    emit(format, &summary, || render(&summary))
}

/// Prints `sec  ops  MB/s  avg lat` every second until `seconds` pass.
async fn report_each_second(tally: &Tally, seconds: u64, format: Format) {
    if format == Format::Plain {
        println!(
            "{:>5} {:>10} {:>10} {:>12}",
            "sec", "ops", "cur MB/s", "avg lat(s)"
        );
    }
    let mut last_bytes = 0;
    for sec in 1..=seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let bytes = tally.bytes.load(Ordering::Relaxed);
        let done = tally.done.load(Ordering::Relaxed);
        let avg = {
            let l = tally.latencies.lock().unwrap_or_else(|p| p.into_inner());
            if l.is_empty() {
                0.0
            } else {
                l.iter().sum::<f64>() / l.len() as f64
            }
        };
        if format == Format::Plain {
            println!(
                "{sec:>5} {done:>10} {:>10.2} {avg:>12.6}",
                (bytes - last_bytes) as f64 / 1e6
            );
        }
        last_bytes = bytes;
    }
}

fn summarize(tally: &Tally, elapsed: f64, a: &BenchArgs) -> serde_json::Value {
    let mut lat = tally
        .latencies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    lat.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    let done = tally.done.load(Ordering::Relaxed);
    let bytes = tally.bytes.load(Ordering::Relaxed);
    json!({
        "mode": format!("{:?}", a.mode).to_lowercase(),
        "pool": a.pool,
        "block_size": a.block_size,
        "concurrency": a.concurrency,
        "seconds": elapsed,
        "ops": done,
        "errors": tally.errors.load(Ordering::Relaxed),
        "bandwidth_mb_s": bytes as f64 / 1e6 / elapsed,
        "iops": done as f64 / elapsed,
        "latency_avg_s": if lat.is_empty() { 0.0 } else { lat.iter().sum::<f64>() / lat.len() as f64 },
        "latency_p99_s": pct(0.99),
        "latency_max_s": lat.last().copied().unwrap_or(0.0),
    })
}

fn render(s: &serde_json::Value) -> String {
    format!(
        "Total time run:       {:.3}\nTotal ops:            {}\nErrors:               {}\nBandwidth (MB/s):     {:.3}\nAverage IOPS:         {:.1}\nAverage Latency(s):   {:.6}\np99 Latency(s):       {:.6}\nMax latency(s):       {:.6}\n",
        s["seconds"].as_f64().unwrap_or(0.0),
        s["ops"],
        s["errors"],
        s["bandwidth_mb_s"].as_f64().unwrap_or(0.0),
        s["iops"].as_f64().unwrap_or(0.0),
        s["latency_avg_s"].as_f64().unwrap_or(0.0),
        s["latency_p99_s"].as_f64().unwrap_or(0.0),
        s["latency_max_s"].as_f64().unwrap_or(0.0),
    )
}

/// Removes the objects the last write run left, and its metadata.
async fn cleanup(rados: &Rados, pool: &str) -> anyhow::Result<u64> {
    let Ok(raw) = rados.read_all(pool, METADATA_OBJECT, 1 << 20).await else {
        return Ok(0);
    };
    let meta: Metadata = serde_json::from_slice(&raw)?;
    let mut removed = 0;
    for n in 0..meta.objects {
        if rados
            .remove(pool, &format!("{}_{n}", meta.prefix))
            .await
            .is_ok()
        {
            removed += 1;
        }
    }
    rados.remove(pool, METADATA_OBJECT).await?;
    Ok(removed)
}
