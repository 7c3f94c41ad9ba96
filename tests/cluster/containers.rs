//! The compose cluster (`containers/compose.yaml`) run as its users run it: images built from
//! this tree, the filesystem served by an active and a standby-replay MDS, data written
//! through the toolbox and from outside, `docker kill` of the active MDS and of an OSD, a mon
//! cut off the network (a follower, then the leader), a rolling restart of every mon and OSD
//! under a workload, the whole cluster stopped and started, and the OSD image under a seccomp
//! profile that refuses io_uring. Skipped, saying why, where no Docker engine answers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use cairn_client::{MonClient, Rados};
use cairn_common::config::Config;
use cairn_common::health::Severity;
use cairn_common::status::ClusterStatus;
use cairn_tests::{bin_dir, seed};

use crate::rados::payload;

const MONS: [&str; 3] = ["a", "b", "c"];
const OSDS: u32 = 4;
/// The MDS daemons (services mds-a, mds-b) and the filesystem the compose file makes.
const MDS: [&str; 2] = ["a", "b"];
const FS: &str = "myfs";
const REP: &str = "rep";
const EC: &str = "ec";
/// Generous: the cluster shares two cores with the other tests.
const HEALTHY_LIMIT: Duration = Duration::from_secs(120);
/// From `docker kill` of the active MDS to the standby-replay serving: the mons wait
/// `mon.mds_beacon_grace_ms` (2 s), then the successor replays the journal's tail.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compose_cluster_survives_kills_partitions_and_restarts() {
    let Some(compose) = Compose::prepare() else {
        return;
    };
    let seed = seed("compose_cluster_survives_kills_partitions_and_restarts");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let started = Instant::now();
    compose.run(&["up", "-d"]);
    let config = compose.client_config();
    let cluster = Cluster::new(&config);
    cluster.wait_healthy().await;
    eprintln!(
        "figure: compose cold start to HEALTH_OK in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    compose.cairn(&[
        "osd", "pool", "create", REP, "--size", "3", "--pg-num", "16",
    ]);
    compose.cairn(&[
        "osd",
        "pool",
        "create",
        EC,
        "--erasure",
        "--k",
        "2",
        "--m",
        "1",
        "--pg-num",
        "16",
    ]);
    cluster.wait_healthy().await;
    filesystem_served(&compose, &cluster).await;
    through_the_toolbox(&compose);
    probes_answer(&compose);
    killed_active_mds(&compose, &cluster).await;

    let rados = Rados::connect(&config).await.expect("client");
    let mut written = Written::default();
    written.write_some(&rados, &mut rng, "before", 20).await;

    killed_osd(&compose, &cluster, &rados, &mut written, &mut rng).await;
    cut_off_mon(&compose, &cluster, &rados, &mut written, &mut rng, false).await;
    cut_off_mon(&compose, &cluster, &rados, &mut written, &mut rng, true).await;
    rolling_restart(&compose, &cluster, &config, &mut written, seed).await;

    compose.run(&["stop", "-t", "15"]);
    stopped_cleanly(&compose);
    let restarted = Instant::now();
    compose.run(&["start"]);
    cluster.wait_healthy().await;
    eprintln!(
        "figure: whole cluster stopped and started, HEALTH_OK in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    let rados = Rados::connect(&config).await.expect("client");
    written.verify(&rados, seed).await;

    io_uring_blocked_falls_back(&compose);
}

/// A file written with `cairn rados put` in the toolbox reads back the same there.
fn through_the_toolbox(compose: &Compose) {
    let script = format!(
        "head -c 3000000 /dev/urandom > /tmp/in && cairn rados put {EC} toolbox-obj /tmp/in \
         && cairn rados get {EC} toolbox-obj /tmp/out && cmp /tmp/in /tmp/out \
         && cairn rados stat {EC} toolbox-obj"
    );
    let out = compose
        .exec("toolbox", &["sh", "-c", &script])
        .unwrap_or_else(|e| panic!("write and read back in the toolbox: {e}"));
    assert!(out.contains("3000000"), "stat in the toolbox: {out}");
}

/// `myfs` (made by the compose file's `filesystem` service) is served by an active MDS with a
/// standby-replay, as `cairn fs status` and `cairn status` in the toolbox show, with
/// HEALTH_OK; the toolbox reaches the active at the address it announced.
async fn filesystem_served(compose: &Compose, cluster: &Cluster) {
    let began = Instant::now();
    cluster.wait_fs_served().await;
    eprintln!(
        "figure: {FS} active with a standby-replay {:.1} s after the pools were HEALTH_OK",
        began.elapsed().as_secs_f64()
    );
    let fs = compose.cairn(&["fs", "status", FS]);
    assert!(
        fs.contains("up:active") && fs.contains("up:standby-replay") && fs.contains("journal:"),
        "cairn fs status {FS} in the toolbox: {fs}"
    );
    let status = compose.cairn(&["status"]);
    assert!(
        status.contains("HEALTH_OK")
            && status.contains(&format!("mds: {FS}:1 {{0="))
            && status.contains("=up:active} 1 up:standby-replay"),
        "cairn status in the toolbox: {status}"
    );
}

/// `docker kill` of the active MDS's container: the standby-replay takes the rank within
/// TAKEOVER_LIMIT; started again, the killed daemon becomes the standby-replay.
async fn killed_active_mds(compose: &Compose, cluster: &Cluster) {
    let status = cluster.status().await.expect("status");
    let active = active_mds(&status).expect("an active MDS").to_string();
    let container = compose.container(&format!("mds-{active}"));
    let killed = Instant::now();
    docker(&["kill", &container]);
    let after = cluster
        .wait_until(&format!("another MDS than mds.{active} active"), |s| {
            active_mds(s).is_some_and(|a| a != active)
        })
        .await;
    let took = killed.elapsed();
    eprintln!(
        "figure: active MDS container killed, mds.{} active after {:.2} s",
        active_mds(&after).unwrap_or("?"),
        took.as_secs_f64()
    );
    assert!(
        took < TAKEOVER_LIMIT,
        "the standby-replay took {took:?} to take over (limit {TAKEOVER_LIMIT:?})"
    );
    docker(&["start", &container]);
    cluster.wait_fs_served().await;
}

/// Every daemon's liveness and readiness endpoint answers, by service name on the network.
fn probes_answer(compose: &Compose) {
    let targets = MONS
        .iter()
        .map(|m| format!("mon-{m}:9283"))
        .chain((0..OSDS).map(|i| format!("osd-{i}:9284")))
        .chain(MDS.iter().map(|m| format!("mds-{m}:9285")));
    for target in targets {
        for probe in ["healthz", "readyz"] {
            let url = format!("http://{target}/{probe}");
            compose
                .exec("toolbox", &["wget", "-q", "-O", "-", &url])
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        }
    }
}

/// After `stop` (SIGTERM to tini, forwarded), every daemon exited by itself with status 0,
/// not by the SIGKILL that follows the grace period.
fn stopped_cleanly(compose: &Compose) {
    let services = MONS
        .iter()
        .map(|m| format!("mon-{m}"))
        .chain((0..OSDS).map(|i| format!("osd-{i}")));
    for service in services {
        let container = compose.container(&service);
        let code = docker_output(&["inspect", "-f", "{{.State.ExitCode}}", &container]);
        assert_eq!(
            code.trim(),
            "0",
            "{service} did not shut down cleanly on SIGTERM"
        );
    }
}

/// `docker kill` of an OSD container: the cluster sees it down, keeps serving degraded, and
/// is clean again once the container is started.
async fn killed_osd(
    compose: &Compose,
    cluster: &Cluster,
    rados: &Rados,
    written: &mut Written,
    rng: &mut rand::rngs::StdRng,
) {
    let container = compose.container("osd-1");
    let killed = Instant::now();
    docker(&["kill", &container]);
    cluster
        .wait_until("osd.1 down", |s| s.osds.up == OSDS - 1)
        .await;
    eprintln!(
        "figure: killed OSD container seen down in {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    written.write_some(rados, rng, "degraded", 20).await;
    written.verify(rados, 0).await;
    let restarted = Instant::now();
    docker(&["start", &container]);
    cluster.wait_healthy().await;
    eprintln!(
        "figure: OSD container restarted, HEALTH_OK (active+clean) in {:.2} s",
        restarted.elapsed().as_secs_f64()
    );
}

/// A mon disconnected from the network: with a follower the quorum holds; with the leader a
/// new one is elected. Either way writes go on, and the mon rejoins when reconnected.
async fn cut_off_mon(
    compose: &Compose,
    cluster: &Cluster,
    rados: &Rados,
    written: &mut Written,
    rng: &mut rand::rngs::StdRng,
    leader: bool,
) {
    let status = cluster.status().await.expect("status");
    let old_leader = status.leader.clone().expect("a leader");
    let name = if leader {
        old_leader.clone()
    } else {
        MONS.iter()
            .find(|m| **m != old_leader)
            .expect("a follower")
            .to_string()
    };
    let service = format!("mon-{name}");
    let container = compose.container(&service);
    let network = compose.network();
    let cut = Instant::now();
    docker(&["network", "disconnect", &network, &container]);
    let after = cluster
        .wait_until(&format!("mon.{name} out of quorum"), |s| {
            s.leader.is_some()
                && s.leader.as_deref() != Some(name.as_str())
                && s.mons.iter().any(|m| m.name == name && !m.in_quorum)
        })
        .await;
    eprintln!(
        "figure: mon.{name} ({}) cut off; quorum of {} with leader mon.{} after {:.2} s",
        if leader { "the leader" } else { "a follower" },
        after.mons.iter().filter(|m| m.in_quorum).count(),
        after.leader.as_deref().unwrap_or("?"),
        cut.elapsed().as_secs_f64()
    );
    written
        .write_some(rados, rng, &format!("without-mon-{name}"), 10)
        .await;
    let ip = compose.mon_ip(&name);
    docker(&["network", "connect", "--ip", &ip, &network, &container]);
    cluster.wait_healthy().await;
}

/// Every daemon restarted in turn (SIGTERM, start), each once the cluster is healthy again,
/// while a client writes: no error reaches it and every acknowledged write is there.
async fn rolling_restart(
    compose: &Compose,
    cluster: &Cluster,
    config: &Config,
    written: &mut Written,
    seed: u64,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Mutex::new(Written::default()));
    let workload = tokio::spawn(write_until_stopped(
        config.clone(),
        shared.clone(),
        stop.clone(),
        seed,
    ));
    let services = MONS
        .iter()
        .map(|m| format!("mon-{m}"))
        .chain((0..OSDS).map(|i| format!("osd-{i}")));
    for service in services {
        let began = Instant::now();
        compose.run(&["restart", "-t", "15", &service]);
        cluster.wait_healthy().await;
        eprintln!(
            "rolling restart: {service} back and HEALTH_OK in {:.1} s",
            began.elapsed().as_secs_f64()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let errors = workload.await.expect("workload");
    let acked = std::mem::take(&mut *shared.lock().unwrap());
    eprintln!(
        "rolling restart: {} acknowledged writes, {} client errors",
        acked.objects.len(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "seed {seed}: the client saw errors during the rolling restart: {errors:?}"
    );
    assert!(!acked.objects.is_empty(), "the workload wrote nothing");
    let rados = Rados::connect(config).await.expect("client");
    acked.verify(&rados, seed).await;
    written.objects.extend(acked.objects);
}

/// Writes new objects and overwrites earlier ones, alternating pools, recording what each
/// acknowledged write left; returns the errors seen.
async fn write_until_stopped(
    config: Config,
    written: Arc<Mutex<Written>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7011);
    let rados = Rados::connect(&config).await.expect("client");
    let mut errors = Vec::new();
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        // One write in four overwrites an object written earlier.
        let n = if i > 8 && rng.gen_range(0..4) == 0 {
            rng.gen_range(0..i)
        } else {
            i
        };
        let pool = if n % 2 == 0 { REP } else { EC };
        let name = format!("rolling-{n}");
        let len = rng.gen_range(1..300_000);
        let data = payload(&mut rng, len);
        match rados.write_full(pool, &name, data.clone()).await {
            Ok(_) => {
                written
                    .lock()
                    .unwrap()
                    .objects
                    .insert((pool.to_string(), name), data);
            }
            Err(e) => errors.push(format!("write {pool}/{name}: {e}")),
        }
        i += 1;
    }
    errors
}

/// The OSD image under a seccomp profile that refuses io_uring: the store says so and runs on
/// the thread-pool backend; under the profile shipped for OSDs it runs on io_uring.
fn io_uring_blocked_falls_back(compose: &Compose) {
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = compose.dir.join("k8s/seccomp/cairn-osd.json");
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&shipped).expect("the OSD profile"))
            .expect("the OSD profile is JSON");
    let mut blocking = profile.clone();
    blocking["syscalls"]
        .as_array_mut()
        .expect("a syscalls list")
        .push(serde_json::json!({
            "names": ["io_uring_setup", "io_uring_enter", "io_uring_register"],
            "action": "SCMP_ACT_ERRNO"
        }));
    let blocking_path = dir.path().join("no-io-uring.json");
    std::fs::write(&blocking_path, blocking.to_string()).expect("write profile");

    let volume = format!("{}-seccomp-check", compose.project);
    let store = |profile: &Path, args: &[&str]| {
        let seccomp = format!("seccomp={}", profile.display());
        let mount = format!("{volume}:/s");
        let mut all = vec![
            "run",
            "--rm",
            "--security-opt",
            &seccomp,
            "-v",
            &mount,
            "-e",
            "RUST_LOG=info",
            "cairn/osd:latest",
            "cairn-osd",
            "--data",
            "/s",
        ];
        all.extend_from_slice(args);
        docker_output(&all)
    };
    let result = std::panic::catch_unwind(|| {
        store(&shipped, &["mkfs", "--size", "64M"]);
        let uring = store(&shipped, &["statfs"]);
        assert!(
            uring.contains("block I/O backend: io_uring"),
            "under the shipped profile the OSD should use io_uring: {uring}"
        );
        let threads = store(&blocking_path, &["statfs"]);
        assert!(
            threads.contains("io_uring is unavailable")
                && threads.contains("pread/pwrite threads")
                && threads.contains("\"total\""),
            "with io_uring refused the OSD should fall back and still work: {threads}"
        );
    });
    let _ = Command::new("docker")
        .args(["volume", "rm", "-f", &volume])
        .output();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// Objects whose acknowledged content is known: (pool, name) → bytes.
#[derive(Default)]
struct Written {
    objects: BTreeMap<(String, String), Vec<u8>>,
}

impl Written {
    async fn write_some(
        &mut self,
        rados: &Rados,
        rng: &mut rand::rngs::StdRng,
        prefix: &str,
        n: u32,
    ) {
        for i in 0..n {
            let pool = if i % 2 == 0 { REP } else { EC };
            let name = format!("{prefix}-{i}");
            let len = rng.gen_range(1..400_000);
            let data = payload(rng, len);
            rados
                .write_full(pool, &name, data.clone())
                .await
                .unwrap_or_else(|e| panic!("write {pool}/{name}: {e}"));
            self.objects.insert((pool.to_string(), name), data);
        }
    }

    async fn verify(&self, rados: &Rados, seed: u64) {
        for ((pool, name), want) in &self.objects {
            let got = rados
                .read_all(pool, name, 1 << 20)
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: read {pool}/{name}: {e}"));
            assert!(
                got == *want,
                "seed {seed}: {pool}/{name} read back {} bytes, not the {} acknowledged",
                got.len(),
                want.len()
            );
        }
    }
}

/// The cluster as seen from the test's host, through the mons' addresses on the compose
/// network.
struct Cluster {
    monc: MonClient,
}

impl Cluster {
    fn new(config: &Config) -> Cluster {
        Cluster {
            monc: MonClient::from_config(config).expect("mon client"),
        }
    }

    async fn status(&self) -> Option<ClusterStatus> {
        self.monc.status().await.ok()
    }

    /// Polls the status until `ok`; on timeout the panic shows the last status and health
    /// detail, to say what never settled.
    async fn wait_until(&self, what: &str, ok: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
        let deadline = Instant::now() + HEALTHY_LIMIT;
        let mut last = String::from("no status answered");
        loop {
            match self.status().await {
                Some(s) if ok(&s) => return s,
                Some(s) => last = format!("{}\n{}", s.render(), s.health.render(true)),
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {} ms waiting for {what}; last status:\n{last}",
                HEALTHY_LIMIT.as_millis()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// HEALTH_OK with every mon in quorum and every OSD up and in.
    async fn wait_healthy(&self) -> ClusterStatus {
        self.wait_until("HEALTH_OK, 3 mons in quorum, 4 OSDs up and in", healthy)
            .await
    }

    /// As `wait_healthy`, and `myfs` served by an active MDS with a standby-replay (once the
    /// filesystem exists, HEALTH_OK says as much; before, it says nothing of it).
    async fn wait_fs_served(&self) -> ClusterStatus {
        self.wait_until(
            "HEALTH_OK, every mon and OSD, myfs active with a standby-replay",
            |s| healthy(s) && active_mds(s).is_some() && s.mds.standby_replay == 1,
        )
        .await
    }
}

fn healthy(s: &ClusterStatus) -> bool {
    s.health.status == Severity::Ok
        && s.mons.iter().filter(|m| m.in_quorum).count() == MONS.len()
        && s.osds.up == OSDS
        && s.osds.in_cluster == OSDS
}

/// The MDS serving `myfs`'s rank (`up:active`, not still replaying), if any.
fn active_mds(s: &ClusterStatus) -> Option<&str> {
    s.mds
        .filesystems
        .iter()
        .find(|f| f.name == FS)?
        .rank0
        .as_ref()
        .filter(|r| r.state == "up:active")
        .map(|r| r.daemon.as_str())
}

/// One compose project of `containers/compose.yaml`, torn down (volumes too) when dropped.
struct Compose {
    project: String,
    dir: PathBuf,
    subnet: String,
    tool: Vec<String>,
    conf_dir: tempfile::TempDir,
}

impl Compose {
    /// Builds the images and names a project; None (after saying why) without Docker.
    fn prepare() -> Option<Compose> {
        let engine = Command::new("docker").args(["info"]).output();
        if !engine.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!(
                "SKIPPED: no Docker engine answers `docker info`; the compose tests need one"
            );
            return None;
        }
        let tool = if Command::new("docker-compose")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            vec!["docker-compose".to_string()]
        } else if Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            vec!["docker".to_string(), "compose".to_string()]
        } else {
            eprintln!("SKIPPED: neither docker-compose nor `docker compose` is installed");
            return None;
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repo root")
            .join("containers");
        let built = Command::new(dir.join("build-images"))
            .env("CAIRN_BIN_DIR", bin_dir())
            .output()
            .expect("run containers/build-images");
        assert!(
            built.status.success(),
            "containers/build-images failed: {}{}",
            String::from_utf8_lossy(&built.stdout),
            String::from_utf8_lossy(&built.stderr)
        );
        eprintln!("images:\n{}", String::from_utf8_lossy(&built.stdout));
        let pid = std::process::id();
        Some(Compose {
            project: format!("cairntest{pid}"),
            dir,
            // A /24 of its own, so a second run (or a user's cluster) does not collide.
            subnet: format!("10.{}.{}", 90 + pid % 100, (pid / 100) % 250),
            tool,
            conf_dir: tempfile::tempdir().expect("tempdir"),
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.tool[0]);
        c.args(&self.tool[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(self.dir.join("compose.yaml"))
            // docker-compose 1.x reads the seccomp profile relative to the working directory.
            .current_dir(&self.dir)
            .env("CAIRN_SUBNET", &self.subnet);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().expect("compose");
        assert!(
            out.status.success(),
            "compose {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn exec(&self, service: &str, args: &[&str]) -> Result<String, String> {
        let out = self
            .command()
            .args(["exec", "-T", service])
            .args(args)
            .output()
            .expect("compose exec");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `cairn ARGS` in the toolbox, which must succeed.
    fn cairn(&self, args: &[&str]) -> String {
        let mut all = vec!["cairn"];
        all.extend_from_slice(args);
        self.exec("toolbox", &all)
            .unwrap_or_else(|e| panic!("cairn {args:?} in the toolbox: {e}"))
    }

    fn container(&self, service: &str) -> String {
        let id = self.run(&["ps", "-q", service]).trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn network(&self) -> String {
        format!("{}_cairn", self.project)
    }

    fn mon_ip(&self, name: &str) -> String {
        let index = MONS.iter().position(|m| *m == name).expect("a mon name");
        format!("{}.{}", self.subnet, 11 + index)
    }

    /// The cluster's config and keyring, copied out of the toolbox for a client on this host.
    fn client_config(&self) -> Config {
        let dir = self.conf_dir.path();
        for file in ["cairn.toml", "keyring"] {
            let text = wait_for_sync(Duration::from_secs(60), || {
                self.exec("toolbox", &["cat", &format!("/etc/cairn/{file}")])
                    .ok()
            });
            std::fs::write(dir.join(file), text).expect("write config");
        }
        Config::load(Some(&dir.join("cairn.toml")), &[])
            .expect("the cluster's config")
            .config
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self.command().args(["logs", "--tail", "30"]).output() {
                eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        let _ = self
            .command()
            .args(["down", "-v", "-t", "5", "--remove-orphans"])
            .output();
    }
}

fn wait_for_sync<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn docker(args: &[&str]) {
    docker_output(args);
}

/// Runs `docker ARGS`, which must succeed; returns stdout and stderr together.
fn docker_output(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "docker {args:?}: {text}");
    text
}
