//! The shared harness of Cairn's integration tests: real daemon processes in a temporary
//! directory on loopback ports, driven through `cairn_client::dev::DevCluster` — the same code
//! that runs `cairn dev up`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_client::dev::{default_bin_dir, DevCluster, Kind};
use cairn_client::MonClient;
use cairn_common::config::Config;
use cairn_common::health::Severity;
use cairn_common::status::ClusterStatus;

/// Settings every test cluster uses unless a test overrides them: short client bounds so a
/// failing test fails fast.
const TEST_OVERRIDES: &[&str] = &["client.op_timeout_ms=20000"];
/// Data file of each test OSD.
pub const TEST_OSD_BYTES: u64 = 512 << 20;

pub struct TestCluster {
    pub cluster: DevCluster,
    dir: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// Creates and starts `mons` monitors and waits until all are in quorum.
    pub async fn start(mons: usize, overrides: &[&str]) -> TestCluster {
        TestCluster::start_with_osds(mons, 0, overrides).await
    }

    /// Creates and starts `mons` monitors and `osds` OSDs (512 MiB data files) and waits
    /// until every one is up and health is OK.
    pub async fn start_with_osds(mons: usize, osds: u32, overrides: &[&str]) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .expect("temp dir");
        let sets: Vec<String> = TEST_OVERRIDES
            .iter()
            .chain(overrides)
            .map(|s| s.to_string())
            .collect();
        let bin_dir = bin_dir();
        let cluster = DevCluster::create(
            &dir.path().join("cluster"),
            &bin_dir,
            mons,
            osds,
            TEST_OSD_BYTES,
            &sets,
        )
        .expect("create cluster");
        cluster.start_all().expect("start daemons");
        let t = TestCluster {
            cluster,
            dir: Some(dir),
        };
        t.wait_healthy(Duration::from_secs(60)).await;
        t
    }

    pub fn dir(&self) -> &Path {
        &self.cluster.dir
    }

    pub fn config(&self) -> Config {
        self.cluster.config().expect("config")
    }

    /// A client as `client.admin`, knowing every mon of the config.
    pub fn admin(&self) -> MonClient {
        MonClient::from_config(&self.config()).expect("admin client")
    }

    /// A client that only talks to one mon.
    pub fn client_of(&self, mon: &str) -> MonClient {
        let mut config = self.config();
        config.monitors.retain(|m| m.name == mon);
        MonClient::from_config(&config).expect("client")
    }

    pub fn addr_of(&self, mon: &str) -> String {
        self.config()
            .monitor(mon)
            .unwrap_or_else(|| panic!("no mon.{mon}"))
            .addr
            .clone()
    }

    pub fn kill(&self, mon: &str) {
        assert!(
            self.cluster.kill(Kind::Mon, mon).expect("kill"),
            "mon.{mon} was not running"
        );
    }

    pub fn stop(&self, mon: &str) {
        self.cluster
            .stop(Kind::Mon, mon, Duration::from_secs(10))
            .expect("stop");
    }

    pub fn start_mon(&self, mon: &str) {
        self.cluster.start(Kind::Mon, mon).expect("start");
    }

    pub async fn status(&self) -> ClusterStatus {
        self.admin().status().await.expect("status")
    }

    pub async fn leader(&self) -> String {
        self.status().await.leader.expect("a leader")
    }

    /// Waits until every mon in the config is in quorum, every OSD is up and health is OK. On
    /// timeout the panic shows the last status and health detail, to say what never settled.
    pub async fn wait_healthy(&self, limit: Duration) -> ClusterStatus {
        let n = self.config().monitors.len();
        let osds = self.cluster.osd_ids().expect("osd ids").len() as u32;
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.admin().status().await {
                Ok(s)
                    if s.health.status == Severity::Ok
                        && s.mons.len() == n
                        && s.osds.up == osds =>
                {
                    return s;
                }
                Ok(s) => format!("{}\n{}", s.render(), s.health.render(true)),
                Err(e) => format!("status failed: {e}"),
            };
            assert!(
                Instant::now() < deadline,
                "timed out after {} ms waiting for HEALTH_OK with every mon in quorum and every osd up; last status:\n{last}",
                limit.as_millis()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for TestCluster {
    /// Kills every daemon; on a failing test keeps the directory and prints the log tails.
    fn drop(&mut self) {
        if let Ok(daemons) = self.cluster.daemons() {
            for (kind, name) in daemons {
                let _ = self.cluster.kill(kind, &name);
                if std::thread::panicking() {
                    let log = self.cluster.log_file(kind, &name);
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("--- last lines of {} ---", log.display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("cluster directory kept: {}", dir.keep().display());
            }
        }
    }
}

pub fn bin_dir() -> PathBuf {
    let dir = default_bin_dir().expect("bin dir");
    assert!(
        dir.join("cairn-mon").exists(),
        "{}/cairn-mon is missing: build the binaries first (cargo build --workspace --bins)",
        dir.display()
    );
    dir
}

/// Polls `probe` every 100 ms until it yields a value; panics after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {} ms waiting for {what}",
            limit.as_millis()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The seed of a randomized test: `CAIRN_TEST_SEED`, else a fixed default; always printed.
pub fn seed(test: &str) -> u64 {
    const DEFAULT_SEED: u64 = 0x5eed_ca1e;
    let seed = std::env::var("CAIRN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("{test}: seed {seed} (rerun with CAIRN_TEST_SEED={seed})");
    seed
}
