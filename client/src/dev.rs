//! A local cluster of real daemon processes on loopback, like Ceph's vstart: `cairn dev` uses
//! it, and so do the integration tests, so both exercise the same bring-up.
//!
//! Layout of a cluster directory:
//! `cairn.toml`, `keyring`, `mon.NAME/` and `osd.N/` (stores; an OSD's data file is
//! `osd.N/block`), `log/TYPE.NAME.log`, `run/TYPE.NAME.pid`. MDS daemons keep no local
//! state: the keyring's `mds.NAME` keys say which exist.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use cairn_common::auth::SecretKey;
use cairn_common::config::{Config, MonEndpoint};
use cairn_common::keyring::{Keyring, MON_SECRET_ENTITY};

pub const CONF_FILE: &str = "cairn.toml";
pub const KEYRING_FILE: &str = "keyring";

/// Daemon kinds `cairn dev` manages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Mon,
    Osd,
    Mds,
}

impl Kind {
    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        match s {
            "mon" => Ok(Kind::Mon),
            "osd" => Ok(Kind::Osd),
            "mds" => Ok(Kind::Mds),
            other => bail!("unknown daemon type {other:?}: expected mon, osd or mds"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mon => "mon",
            Kind::Osd => "osd",
            Kind::Mds => "mds",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Kind::Mon => "cairn-mon",
            Kind::Osd => "cairn-osd",
            Kind::Mds => "cairn-mds",
        }
    }
}

/// Caps of an OSD's entity: change the OSD map (boot, beacons) and talk to other OSDs.
pub fn osd_caps() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("mon".to_string(), "allow rw".to_string()),
        ("osd".to_string(), "allow *".to_string()),
    ])
}

/// Caps of an MDS's entity: beacons to the mons, its pools' objects, and its own service.
pub fn mds_caps() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("mon".to_string(), "allow rw".to_string()),
        ("osd".to_string(), "allow rw".to_string()),
        ("mds".to_string(), "allow *".to_string()),
    ])
}

/// Size of each dev OSD's data file unless `--osd-size` says otherwise.
pub const DEV_OSD_BYTES: u64 = 1 << 30;

/// Mon names in creation order: a, b, c, …
pub fn mon_name(index: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    if index < letters.len() {
        (letters[index] as char).to_string()
    } else {
        format!("m{index}")
    }
}

/// Reserves `n` distinct free loopback ports (held together so they differ).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot reserve loopback ports")?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// Writes a new cluster's config and keyring: a new fsid, `client.admin`, `mon.` and the keys
/// of OSDs `0..osds` and of the MDS daemons `mds`; every other setting (the initial mons among
/// them) comes from `config`. `overrides` (`section.option=value`) are validated and written
/// into the file.
pub fn bootstrap_files(
    dir: &Path,
    mut config: Config,
    osds: u32,
    mds: &[String],
    overrides: &[String],
) -> anyhow::Result<Config> {
    for name in mds {
        cairn_common::maps::validate_daemon_name(name)
            .map_err(|e| anyhow::anyhow!("mds.{name}: {e}"))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut keyring = Keyring::default();
    keyring.add(MON_SECRET_ENTITY, SecretKey::generate(), BTreeMap::new());
    keyring.add(
        "client.admin",
        SecretKey::generate(),
        BTreeMap::from([
            ("mon".to_string(), "allow *".to_string()),
            ("osd".to_string(), "allow *".to_string()),
            ("mds".to_string(), "allow *".to_string()),
        ]),
    );
    for id in 0..osds {
        keyring.add(&format!("osd.{id}"), SecretKey::generate(), osd_caps());
    }
    for name in mds {
        keyring.add(&format!("mds.{name}"), SecretKey::generate(), mds_caps());
    }
    keyring.save(&dir.join(KEYRING_FILE))?;
    config.fsid = Some(uuid::Uuid::new_v4());
    config.keyring = PathBuf::from(KEYRING_FILE);
    write_config(dir, &config)?;
    // Re-read through the loader so overrides are validated and paths resolved.
    let loaded = Config::load(Some(&dir.join(CONF_FILE)), overrides)?;
    if !overrides.is_empty() {
        let mut with_overrides = loaded.config.clone();
        with_overrides.keyring = config.keyring;
        with_overrides.mon.data_dir = config.mon.data_dir;
        with_overrides.osd.data_dir = config.osd.data_dir;
        write_config(dir, &with_overrides)?;
    }
    Ok(loaded.config)
}

/// The settings of a dev cluster: OSDs on loopback, each picking a free port, all on one
/// host (so pools spread over OSDs), stores inside the cluster's directory.
fn dev_config(mons: Vec<MonEndpoint>) -> Config {
    let mut config = Config {
        monitors: mons,
        ..Config::default()
    };
    config.osd.addr = "127.0.0.1:0".into();
    config.osd.host = "localhost".into();
    config.client.pool_failure_domain = cairn_common::maps::FailureDomain::Osd;
    config.mon.data_dir = "mon.{name}".into();
    config.osd.data_dir = "osd.{id}".into();
    config
}

/// Writes a dev cluster's config with paths relative to its directory.
fn save_config(dir: &Path, config: &Config) -> anyhow::Result<()> {
    let mut c = config.clone();
    c.keyring = PathBuf::from(KEYRING_FILE);
    c.mon.data_dir = "mon.{name}".into();
    c.osd.data_dir = "osd.{id}".into();
    write_config(dir, &c)
}

/// Writes `cairn.toml` atomically (by rename), so a reader never sees a half-written file.
fn write_config(dir: &Path, config: &Config) -> anyhow::Result<()> {
    let path = dir.join(CONF_FILE);
    let tmp = dir.join(format!("{CONF_FILE}.tmp"));
    std::fs::write(&tmp, config.to_toml())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A dev cluster in a directory, and the daemons this process started in it.
pub struct DevCluster {
    pub dir: PathBuf,
    bin_dir: PathBuf,
    children: Mutex<HashMap<(Kind, String), Child>>,
}

impl DevCluster {
    /// Opens the cluster in `dir`; daemons are run from `bin_dir`.
    pub fn open(dir: &Path, bin_dir: &Path) -> anyhow::Result<DevCluster> {
        let dir = std::path::absolute(dir)?;
        if !dir.join(CONF_FILE).exists() {
            bail!(
                "{} holds no dev cluster (no {CONF_FILE}); create one with `cairn dev up`",
                dir.display()
            );
        }
        Ok(DevCluster {
            dir,
            bin_dir: bin_dir.to_path_buf(),
            children: Mutex::new(HashMap::new()),
        })
    }

    /// Creates a cluster of `mons` monitors with free loopback ports and makes their stores.
    pub fn create(
        dir: &Path,
        bin_dir: &Path,
        mons: usize,
        osds: u32,
        osd_bytes: u64,
        overrides: &[String],
    ) -> anyhow::Result<DevCluster> {
        if mons == 0 {
            bail!("a cluster needs at least one mon");
        }
        if dir.join(CONF_FILE).exists() {
            bail!("{} already holds a cluster; `cairn dev down` it and remove it, or pick another --dir", dir.display());
        }
        let ports = free_ports(mons * 2)?;
        let endpoints = (0..mons)
            .map(|i| MonEndpoint {
                name: mon_name(i),
                addr: format!("127.0.0.1:{}", ports[2 * i]),
                admin_addr: Some(format!("127.0.0.1:{}", ports[2 * i + 1])),
            })
            .collect();
        bootstrap_files(dir, dev_config(endpoints), osds, &[], overrides)?;
        let cluster = DevCluster::open(dir, bin_dir)?;
        for name in cluster.mon_names()? {
            cluster.mkfs_mon(&name, false)?;
        }
        for id in 0..osds {
            cluster.mkfs_osd(id, osd_bytes)?;
        }
        Ok(cluster)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONF_FILE)
    }

    pub fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(Some(&self.config_path()), &[])?.config)
    }

    pub fn mon_names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .config()?
            .monitors
            .into_iter()
            .map(|m| m.name)
            .collect())
    }

    fn pid_file(&self, kind: Kind, name: &str) -> PathBuf {
        self.dir
            .join("run")
            .join(format!("{}.{name}.pid", kind.as_str()))
    }

    pub fn log_file(&self, kind: Kind, name: &str) -> PathBuf {
        self.dir
            .join("log")
            .join(format!("{}.{name}.log", kind.as_str()))
    }

    fn daemon_command(&self, kind: Kind, name: &str) -> Process {
        let mut cmd = Process::new(self.bin_dir.join(kind.binary()));
        cmd.arg("--conf").arg(self.config_path());
        match kind {
            Kind::Mon => cmd.arg("--name").arg(name),
            Kind::Osd | Kind::Mds => cmd.arg("--id").arg(name),
        };
        cmd
    }

    fn mkfs_mon(&self, name: &str, join: bool) -> anyhow::Result<()> {
        let mut cmd = self.daemon_command(Kind::Mon, name);
        cmd.arg("mkfs");
        if join {
            cmd.arg("--join");
        }
        run_tool(cmd, &format!("mkfs of mon.{name}"))
    }

    /// Creates OSD `id`'s store, a data file of `bytes`.
    pub fn mkfs_osd(&self, id: u32, bytes: u64) -> anyhow::Result<()> {
        let mut cmd = self.daemon_command(Kind::Osd, &id.to_string());
        cmd.arg("mkfs").arg("--size").arg(bytes.to_string());
        run_tool(cmd, &format!("mkfs of osd.{id}"))
    }

    /// Adds an entity's key to the cluster's keyring file (once the mons know it, by
    /// `cairn auth add`), so a daemon started here can authenticate as it.
    pub fn add_keyring_entry(
        &self,
        entity: &str,
        key: SecretKey,
        caps: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let path = self.dir.join(KEYRING_FILE);
        let mut keyring = Keyring::load(&path)?;
        keyring.add(entity, key, caps);
        keyring.save(&path)
    }

    /// Creates `mds.NAME`'s key (with the mons, then in the keyring) so the daemon can start.
    pub async fn add_mds(&self, monc: &crate::MonClient, name: &str) -> anyhow::Result<()> {
        cairn_common::maps::validate_daemon_name(name).map_err(anyhow::Error::msg)?;
        let entity = format!("mds.{name}");
        let key = SecretKey::generate();
        monc.command(cairn_common::command::Command::AuthAdd {
            entity: entity.clone(),
            caps: mds_caps(),
            key: Some(key.clone()),
        })
        .await
        .with_context(|| format!("cannot add {entity}"))?;
        self.add_keyring_entry(&entity, key, mds_caps())
    }

    /// OSD ids of the cluster: those with a store directory.
    pub fn osd_ids(&self) -> anyhow::Result<Vec<u32>> {
        let mut ids: Vec<u32> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("block").exists())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("osd.")?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Adds a mon to the config (new ports) and creates its store to join; `cairn mon add`
    /// then brings it into the group. Returns its gRPC address.
    pub fn prepare_mon(&self, name: &str) -> anyhow::Result<String> {
        let mut config = self.config()?;
        if config.monitor(name).is_some() {
            bail!(
                "mon.{name} already exists in {}",
                self.config_path().display()
            );
        }
        let ports = free_ports(2)?;
        let addr = format!("127.0.0.1:{}", ports[0]);
        config.monitors.push(MonEndpoint {
            name: name.to_string(),
            addr: addr.clone(),
            admin_addr: Some(format!("127.0.0.1:{}", ports[1])),
        });
        save_config(&self.dir, &config)?;
        self.mkfs_mon(name, true)?;
        Ok(addr)
    }

    /// Drops a mon from the config (after `cairn mon rm`), so clients stop trying it.
    pub fn forget_mon(&self, name: &str) -> anyhow::Result<()> {
        let mut config = self.config()?;
        config.monitors.retain(|m| m.name != name);
        save_config(&self.dir, &config)
    }

    /// Starts a daemon in the background; its output goes to `log/TYPE.NAME.log`.
    pub fn start(&self, kind: Kind, name: &str) -> anyhow::Result<u32> {
        if let Some(pid) = self.running_pid(kind, name) {
            bail!("{}.{name} is already running (pid {pid})", kind.as_str());
        }
        std::fs::create_dir_all(self.dir.join("run"))?;
        std::fs::create_dir_all(self.dir.join("log"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(kind, name))?;
        let mut cmd = self.daemon_command(kind, name);
        {
            use std::os::unix::process::CommandExt;
            // Own process group: a Ctrl-C at the terminal that ran `cairn dev up` leaves it be.
            cmd.process_group(0);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}",
                    self.bin_dir.join(kind.binary()).display()
                )
            })?;
        let pid = child.id();
        std::fs::write(self.pid_file(kind, name), format!("{pid}\n"))?;
        self.children_lock().insert((kind, name.to_string()), child);
        Ok(pid)
    }

    fn children_lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, String), Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pid of a running daemon, from its pid file.
    pub fn running_pid(&self, kind: Kind, name: &str) -> Option<u32> {
        self.reap(kind, name);
        let text = std::fs::read_to_string(self.pid_file(kind, name)).ok()?;
        let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1)?;
        // SAFETY: kill with signal 0 only checks that the process exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0;
        (exists && !is_zombie(pid)).then_some(pid as u32)
    }

    /// Collects a child of ours that exited, so it does not linger as a zombie.
    fn reap(&self, kind: Kind, name: &str) {
        let mut children = self.children_lock();
        let key = (kind, name.to_string());
        if let Some(child) = children.get_mut(&key) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                children.remove(&key);
            }
        }
    }

    fn signal(&self, kind: Kind, name: &str, sig: i32) -> anyhow::Result<Option<u32>> {
        let Some(pid) = self.running_pid(kind, name) else {
            return Ok(None);
        };
        // SAFETY: sends a signal to a pid this cluster started (read from its pid file).
        if unsafe { libc::kill(pid as i32, sig) } != 0 {
            bail!(
                "cannot signal {}.{name} (pid {pid}): {}",
                kind.as_str(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Some(pid))
    }

    /// SIGKILL, for chaos work. Returns whether it was running.
    pub fn kill(&self, kind: Kind, name: &str) -> anyhow::Result<bool> {
        let killed = self.signal(kind, name, libc::SIGKILL)?.is_some();
        self.wait_exit(kind, name, Duration::from_secs(10))?;
        Ok(killed)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(&self, kind: Kind, name: &str, grace: Duration) -> anyhow::Result<bool> {
        if self.signal(kind, name, libc::SIGTERM)?.is_none() {
            return Ok(false);
        }
        if self.wait_exit(kind, name, grace).is_err() {
            self.signal(kind, name, libc::SIGKILL)?;
            self.wait_exit(kind, name, Duration::from_secs(10))?;
        }
        Ok(true)
    }

    /// SIGSTOP / SIGCONT: a hung daemon, for failure-detection tests.
    pub fn pause(&self, kind: Kind, name: &str, paused: bool) -> anyhow::Result<bool> {
        let sig = if paused { libc::SIGSTOP } else { libc::SIGCONT };
        Ok(self.signal(kind, name, sig)?.is_some())
    }

    fn wait_exit(&self, kind: Kind, name: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.running_pid(kind, name).is_some() {
            if Instant::now() >= deadline {
                bail!(
                    "{}.{name} did not exit within {} ms",
                    kind.as_str(),
                    limit.as_millis()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.pid_file(kind, name));
        Ok(())
    }

    /// MDS names of the cluster: those with a key in its keyring.
    pub fn mds_names(&self) -> anyhow::Result<Vec<String>> {
        let keyring = Keyring::load(&self.dir.join(KEYRING_FILE))?;
        Ok(keyring
            .entries
            .keys()
            .filter_map(|e| e.strip_prefix("mds.").map(str::to_string))
            .collect())
    }

    /// Every daemon of the cluster, as (kind, name): mons first, so the others find them.
    pub fn daemons(&self) -> anyhow::Result<Vec<(Kind, String)>> {
        let mons = self.mon_names()?.into_iter().map(|n| (Kind::Mon, n));
        let osds = self
            .osd_ids()?
            .into_iter()
            .map(|id| (Kind::Osd, id.to_string()));
        let mdss = self.mds_names()?.into_iter().map(|n| (Kind::Mds, n));
        Ok(mons.chain(osds).chain(mdss).collect())
    }

    pub fn start_all(&self) -> anyhow::Result<()> {
        for (kind, name) in self.daemons()? {
            if self.running_pid(kind, name.as_str()).is_none() {
                self.start(kind, &name)?;
            }
        }
        Ok(())
    }

    /// Stops every daemon (SIGTERM, then SIGKILL after `grace`), in the reverse of start
    /// order: MDSs write back to OSDs, OSDs tell the mons they go down.
    pub fn stop_all(&self, grace: Duration) -> anyhow::Result<()> {
        for (kind, name) in self.daemons()?.into_iter().rev() {
            self.stop(kind, &name, grace)?;
        }
        Ok(())
    }
}

impl Drop for DevCluster {
    /// Reaps the children this process started and that already exited; running ones are
    /// left to run (`cairn dev up` exits while its cluster keeps going).
    fn drop(&mut self) {
        for child in self.children_lock().values_mut() {
            let _ = child.try_wait();
        }
    }
}

/// Whether a process has exited but not been reaped yet (its parent, here often init, has
/// not collected it): it no longer runs, though signal 0 still finds it.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Runs a daemon's tool command to completion; its stderr explains a failure.
fn run_tool(mut cmd: Process, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where the daemon binaries are: `$CAIRN_BIN_DIR`, else beside the running executable (for
/// test binaries in `target/*/deps`, the directory above).
pub fn default_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CAIRN_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    if dir.ends_with("deps") {
        return Ok(dir.parent().context("deps has no parent")?.to_path_buf());
    }
    Ok(dir.to_path_buf())
}
