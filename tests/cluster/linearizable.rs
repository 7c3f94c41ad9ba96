//! Concurrent reads and writes of one option from several clients, across leader kills, form
//! a linearizable history (checked with stateright's linearizability tester).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

use cairn_common::command::Command;
use cairn_tests::{seed, TestCluster};

const KEY: &str = "lin.register";
const WORKERS: u64 = 3;
/// Upper bound on each worker's operations, which keeps the checker's search small.
const OPS_PER_WORKER_MAX: u64 = 80;
/// Pause between a worker's operations, so the history spans the leader kills.
const OP_PAUSE: Duration = Duration::from_millis(60);

type Tester = LinearizabilityTester<u64, Register<String>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_history_across_leader_kills_is_linearizable() {
    let seed = seed("linearizable");
    let c = Arc::new(TestCluster::start(3, &[]).await);
    let tester = Arc::new(Mutex::new(Tester::new(Register(String::new()))));

    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (c, done) = (c.clone(), done.clone());
        tokio::spawn(async move {
            for _ in 0..2 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let leader = c.leader().await;
                c.kill(&leader);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                c.start_mon(&leader);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            done.store(true, Ordering::Relaxed);
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (c, tester, done) = (c.clone(), tester.clone(), done.clone());
            tokio::spawn(async move { worker(&c, &tester, &done, w, seed).await })
        })
        .collect();
    let mut failed = 0;
    for w in workers {
        failed += w.await.expect("worker");
    }
    chaos.await.expect("chaos");

    let tester = tester.lock().unwrap();
    eprintln!("history: {} ops, {failed} failed (left open)", tester.len());
    assert!(
        tester.serialized_history().is_some(),
        "history is not linearizable (seed {seed}): {tester:?}"
    );
}

/// Runs random reads and writes; returns how many failed. A failed operation may or may not
/// have taken effect, so it stays open in the history and the worker continues as a new
/// thread id.
async fn worker(
    c: &TestCluster,
    tester: &Mutex<Tester>,
    done: &AtomicBool,
    w: u64,
    seed: u64,
) -> u64 {
    let client = c.admin();
    let mut rng = StdRng::seed_from_u64(seed ^ w);
    let mut thread = w;
    let mut failed = 0;
    for i in 0..OPS_PER_WORKER_MAX {
        if done.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(OP_PAUSE).await;
        let write = rng.gen_bool(0.5);
        if write {
            let value = format!("w{w}-{i}");
            tester
                .lock()
                .unwrap()
                .on_invoke(thread, RegisterOp::Write(value.clone()))
                .unwrap();
            let r = client
                .command(Command::ConfigSet {
                    name: KEY.into(),
                    value,
                })
                .await;
            match r {
                Ok(_) => {
                    tester
                        .lock()
                        .unwrap()
                        .on_return(thread, RegisterRet::WriteOk)
                        .unwrap();
                }
                Err(_) => {
                    failed += 1;
                    thread += WORKERS;
                }
            }
        } else {
            tester
                .lock()
                .unwrap()
                .on_invoke(thread, RegisterOp::Read)
                .unwrap();
            match client.maps().await {
                Ok(maps) => {
                    let v = maps.config.options.get(KEY).cloned().unwrap_or_default();
                    tester
                        .lock()
                        .unwrap()
                        .on_return(thread, RegisterRet::ReadOk(v))
                        .unwrap();
                }
                Err(_) => {
                    failed += 1;
                    thread += WORKERS;
                }
            }
        }
    }
    failed
}
