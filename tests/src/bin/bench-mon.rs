//! Monitor benchmarks (figures for BENCHMARKS.md, not a timed test):
//! - cold start: `cairn dev up`-equivalent bring-up of 3 mons to HEALTH_OK;
//! - map-update commits: throughput and latency percentiles at several concurrencies, next to
//!   the disk's durable-write rate (write + fdatasync) measured in the same run;
//! - failover: kill -9 of the leader → next committed write.
//!
//! Usage: bench-mon [--rounds N] [--seconds S]

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_common::command::Command;
use cairn_tests::TestCluster;

struct Args {
    rounds: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 5,
        seconds: 10,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--rounds", Some(v)) => a.rounds = v as usize,
            ("--seconds", Some(v)) => a.seconds = v,
            _ => {
                eprintln!("usage: bench-mon [--rounds N] [--seconds S]");
                std::process::exit(2);
            }
        }
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Durable 4 KiB writes per second on the disk holding the mon stores (the bound on commits).
fn disk_fdatasync_rate(dir: &std::path::Path, seconds: f64) -> f64 {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let buf = vec![0u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
}

async fn cold_start(rounds: usize) {
    let mut times = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let c = TestCluster::start(3, &[]).await;
        times.push(t.elapsed());
        drop(c);
    }
    times.sort();
    println!(
        "cold start, 3 mons to HEALTH_OK: median {:.2} s, min {:.2} s, max {:.2} s ({rounds} runs)",
        percentile(&times, 0.5).as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
}

async fn commits(c: &Arc<TestCluster>, concurrency: usize, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let c = c.clone();
            tokio::spawn(async move {
                let client = c.admin();
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client
                        .command(Command::ConfigSet {
                            name: format!("bench.w{w}"),
                            value: i.to_string(),
                        })
                        .await
                        .expect("commit");
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("worker"));
    }
    lat.sort();
    println!(
        "map-update commits, 3 mons, {concurrency:>3} in flight: {:>7.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len() as f64 / seconds as f64,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0)),
    );
}

/// Time until a surviving mon names a new leader.
async fn new_leader_after(c: &TestCluster, old: &str, killed: Instant) -> Duration {
    let old_id = cairn_common::maps::mon_node_id(old);
    let others: Vec<_> = c
        .config()
        .monitors
        .into_iter()
        .filter(|m| m.name != old)
        .map(|m| m.addr)
        .collect();
    let probe = c.admin();
    loop {
        for addr in &others {
            if let Ok(p) = probe.ping(addr).await {
                if p.has_leader && p.leader_id != old_id {
                    return killed.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn failover(c: &TestCluster, rounds: usize) {
    let admin = c.admin();
    let mut times = Vec::new();
    let mut elections = Vec::new();
    for round in 0..rounds {
        c.wait_healthy(Duration::from_secs(30)).await;
        admin
            .command(Command::ConfigSet {
                name: "bench.failover".into(),
                value: format!("before-{round}"),
            })
            .await
            .expect("write before");
        let leader = c.leader().await;
        let killed = Instant::now();
        c.kill(&leader);
        let elected = new_leader_after(c, &leader, killed);
        let write = async {
            let r = admin
                .command(Command::ConfigSet {
                    name: "bench.failover".into(),
                    value: format!("after-{round}"),
                })
                .await;
            (r, killed.elapsed())
        };
        let (elected, write) = tokio::join!(elected, write);
        write.0.expect("write after");
        times.push(write.1);
        elections.push(elected);
        c.start_mon(&leader);
    }
    times.sort();
    elections.sort();
    println!(
        "failover, kill -9 of the leader -> a surviving mon names a new leader: median {:.0} ms, max {:.0} ms",
        ms(percentile(&elections, 0.5)),
        ms(elections[elections.len() - 1]),
    );
    println!(
        "failover, kill -9 of the leader -> next committed write: median {:.0} ms, max {:.0} ms ({rounds} runs; goal <= 1500 ms)",
        ms(percentile(&times, 0.5)),
        ms(times[times.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let c = Arc::new(TestCluster::start(3, &[]).await);
    let limit = disk_fdatasync_rate(c.dir(), 3.0);
    println!("machine: durable 4 KiB writes (write + fdatasync) on this disk: {limit:.0}/s");
    for concurrency in [1, 16, 64] {
        commits(&c, concurrency, a.seconds).await;
    }
    failover(&c, a.rounds).await;
    drop(c);
    cold_start(a.rounds).await;
}
