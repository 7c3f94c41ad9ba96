//! `cairn bootstrap` and `cairn dev`: creating clusters and running one locally.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use cairn_client::dev::{self, DevCluster, Kind};
use cairn_client::MonClient;
use cairn_common::config::{Config, MonEndpoint};
use cairn_common::health::Severity;

use super::emit;
use crate::{Cli, Format};

/// How long `cairn dev up` waits for HEALTH_OK.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct BootstrapArgs {
    /// Directory for cairn.toml and keyring.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Initial monitors: NAME=HOST:PORT[/ADMIN_HOST:ADMIN_PORT] (repeatable); HOST is an IP
    /// address or a DNS name (a Kubernetes headless Service's pod names, say).
    #[arg(long = "mon", required = true)]
    mons: Vec<String>,
    /// Also create the keys of OSDs 0..N, for daemons that start from the keyring alone
    /// (containers); otherwise add OSDs with `cairn auth add osd.N`.
    #[arg(long, default_value_t = 0)]
    osds: u32,
    /// Also create the keys of these MDS daemons (`mds.NAME`; comma-separated or repeated),
    /// for daemons that start from the keyring alone (containers).
    #[arg(long = "mds", value_name = "NAMES", value_delimiter = ',')]
    mds: Vec<String>,
}

#[derive(Args, Clone)]
pub struct DirArg {
    /// The cluster's directory (default: $CAIRN_DEV_DIR, else the directory of $CAIRN_CONF or
    /// of ./cairn.toml, else ./cairn-dev).
    #[arg(long = "dir", env = "CAIRN_DEV_DIR")]
    explicit: Option<PathBuf>,
}

impl DirArg {
    fn dir(&self) -> PathBuf {
        if let Some(d) = &self.explicit {
            return d.clone();
        }
        match Config::locate(None) {
            Some(conf) if conf.exists() => conf
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                })
                .unwrap_or_else(|| PathBuf::from(".")),
            _ => PathBuf::from("cairn-dev"),
        }
    }
}

#[derive(Subcommand)]
pub enum DevCmd {
    /// Create (or restart) a local cluster and wait until it is healthy.
    Up {
        #[command(flatten)]
        dir: DirArg,
        /// Number of monitors.
        #[arg(long, default_value_t = 3)]
        mons: usize,
        /// Number of OSDs (file-backed, in DIR/osd.N/).
        #[arg(long, default_value_t = 3)]
        osds: u32,
        /// Size of each OSD's data file (bytes).
        #[arg(long, default_value_t = dev::DEV_OSD_BYTES)]
        osd_size: u64,
        /// Number of MDS daemons (named a, b, …).
        #[arg(long, default_value_t = 0)]
        mds: usize,
        /// Also create this filesystem, as the reference shape: metadata replicated 3 times,
        /// data erasure-coded 2+1 (replicated when fewer than 3 OSDs), standby-replay on.
        #[arg(long, requires = "mds")]
        fs: Option<String>,
        /// Create that filesystem even over a metadata pool that already holds objects (an
        /// earlier filesystem's), as `fs new --force` does.
        #[arg(long, requires = "fs")]
        force: bool,
    },
    /// Stop every daemon of the cluster (SIGTERM).
    Down {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Stop one daemon cleanly (SIGTERM): `cairn dev stop mon a`.
    Stop {
        kind: String,
        id: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Start one daemon.
    Start {
        kind: String,
        id: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Kill one daemon with SIGKILL, for chaos work.
    Kill {
        kind: String,
        id: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// List the cluster's daemons and their pids.
    Ps {
        #[command(flatten)]
        dir: DirArg,
    },
}

fn parse_mon(spec: &str) -> anyhow::Result<MonEndpoint> {
    let (name, rest) = spec.split_once('=').with_context(|| {
        format!("--mon {spec:?}: expected NAME=HOST:PORT[/ADMIN_HOST:ADMIN_PORT]")
    })?;
    cairn_common::maps::validate_daemon_name(name)
        .map_err(|e| anyhow::anyhow!("--mon {spec:?}: {e}"))?;
    let (addr, admin) = match rest.split_once('/') {
        Some((a, b)) => (a, Some(b.to_string())),
        None => (rest, None),
    };
    for a in std::iter::once(addr).chain(admin.as_deref()) {
        check_host_port(a).with_context(|| format!("--mon {spec:?}"))?;
    }
    Ok(MonEndpoint {
        name: name.to_string(),
        addr: addr.to_string(),
        admin_addr: admin,
    })
}

/// `IP:PORT`, `[IPv6]:PORT` or `dns.name:PORT`.
fn check_host_port(a: &str) -> anyhow::Result<()> {
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = a
        .rsplit_once(':')
        .with_context(|| format!("{a:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .with_context(|| format!("{a:?}: {port:?} is not a port"))?;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        bail!("{a:?}: {host:?} is neither an IP address nor a DNS name");
    }
    Ok(())
}

pub fn bootstrap(args: &BootstrapArgs, sets: &[String], format: Format) -> anyhow::Result<()> {
    if args.dir.join(dev::CONF_FILE).exists() {
        bail!("{} already holds a cluster config", args.dir.display());
    }
    let mons = args
        .mons
        .iter()
        .map(|m| parse_mon(m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = Config {
        monitors: mons,
        ..Config::default()
    };
    let config = dev::bootstrap_files(&args.dir, config, args.osds, &args.mds, sets)?;
    let fsid = config.fsid.map(|f| f.to_string()).unwrap_or_default();
    emit(format, &json!({ "fsid": fsid, "dir": args.dir }), || {
        format!(
            "created cluster {fsid}: {}/{} and {}/{} (keep the keyring secret)\n\
             next, on each mon host: cairn-mon --conf cairn.toml --name NAME mkfs, then cairn-mon --conf cairn.toml --name NAME\n",
            args.dir.display(),
            dev::CONF_FILE,
            args.dir.display(),
            dev::KEYRING_FILE
        )
    })
}

pub async fn run(cli: &Cli, cmd: &DevCmd) -> anyhow::Result<()> {
    let bin_dir = dev::default_bin_dir()?;
    match cmd {
        DevCmd::Up {
            dir,
            mons,
            osds,
            osd_size,
            mds,
            fs,
            force,
        } => {
            let shape = Shape {
                mons: *mons,
                osds: *osds,
                osd_bytes: *osd_size,
                mds: *mds,
                fs: fs.clone(),
                force_fs: *force,
            };
            up(&dir.dir(), &bin_dir, shape, &cli.sets, cli.format).await
        }
        DevCmd::Down { dir } => {
            let cluster = DevCluster::open(&dir.dir(), &bin_dir)?;
            cluster.stop_all(STOP_GRACE)?;
            println!("stopped the cluster in {}", cluster.dir.display());
            Ok(())
        }
        DevCmd::Stop { kind, id, dir } => one(&dir.dir(), &bin_dir, kind, id, Action::Stop),
        DevCmd::Start { kind, id, dir } => one(&dir.dir(), &bin_dir, kind, id, Action::Start),
        DevCmd::Kill { kind, id, dir } => one(&dir.dir(), &bin_dir, kind, id, Action::Kill),
        DevCmd::Ps { dir } => {
            let cluster = DevCluster::open(&dir.dir(), &bin_dir)?;
            let rows: Vec<_> = cluster
                .daemons()?
                .into_iter()
                .map(|(k, n)| {
                    let pid = cluster.running_pid(k, &n);
                    json!({ "type": k.as_str(), "id": n, "pid": pid, "running": pid.is_some() })
                })
                .collect();
            emit(cli.format, &rows, || {
                rows.iter()
                    .map(|r| {
                        let pid = r["pid"]
                            .as_u64()
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "stopped".into());
                        format!(
                            "{}.{}\t{pid}\n",
                            r["type"].as_str().unwrap_or(""),
                            r["id"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
        }
    }
}

enum Action {
    Stop,
    Start,
    Kill,
}

fn one(dir: &Path, bin_dir: &Path, kind: &str, id: &str, action: Action) -> anyhow::Result<()> {
    let cluster = DevCluster::open(dir, bin_dir)?;
    let kind = Kind::parse(kind)?;
    if !cluster.daemons()?.contains(&(kind, id.to_string())) {
        bail!(
            "the cluster in {} has no {}.{id}",
            cluster.dir.display(),
            kind.as_str()
        );
    }
    let label = format!("{}.{id}", kind.as_str());
    match action {
        Action::Start => {
            let pid = cluster.start(kind, id)?;
            println!("started {label} (pid {pid})");
        }
        Action::Stop => match cluster.stop(kind, id, STOP_GRACE)? {
            true => println!("stopped {label}"),
            false => println!("{label} was not running"),
        },
        Action::Kill => match cluster.kill(kind, id)? {
            true => println!("killed {label}"),
            false => println!("{label} was not running"),
        },
    }
    Ok(())
}

/// The daemons of a new dev cluster.
struct Shape {
    mons: usize,
    osds: u32,
    osd_bytes: u64,
    mds: usize,
    fs: Option<String>,
    /// Create `fs` over a metadata pool that holds objects.
    force_fs: bool,
}

async fn up(
    dir: &Path,
    bin_dir: &Path,
    shape: Shape,
    sets: &[String],
    format: Format,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = if dir.join(dev::CONF_FILE).exists() {
        DevCluster::open(dir, bin_dir)?
    } else {
        DevCluster::create(dir, bin_dir, shape.mons, shape.osds, shape.osd_bytes, sets)?
    };
    cluster.start_all()?;
    let config = cluster.config()?;
    let client = MonClient::from_config(&config)?;
    let osds = cluster.osd_ids()?.len();
    let mut status = wait_healthy(&client, &config, osds, HEALTHY_TIMEOUT).await?;
    if let Some(fs) = add_filesystem(&cluster, &client, &shape, osds).await? {
        wait_fs_active(&client, &fs, HEALTHY_TIMEOUT).await?;
        status = wait_pgs_active(&client, HEALTHY_TIMEOUT).await?;
    }
    let conf = cluster.config_path();
    emit(
        format,
        &json!({ "dir": cluster.dir, "conf": conf, "seconds": started.elapsed().as_secs_f64(), "status": status }),
        || {
            format!(
                "{}\ncluster up in {:.1} s; use it with:\n  export CAIRN_CONF={}\n",
                status.render(),
                started.elapsed().as_secs_f64(),
                conf.display()
            )
        },
    )
}

/// Adds the MDS daemons the shape asks for (a, b, …; those the cluster has are kept) and
/// starts them, then applies the reference filesystem spec when one is named (returned).
async fn add_filesystem(
    cluster: &DevCluster,
    client: &MonClient,
    shape: &Shape,
    osds: usize,
) -> anyhow::Result<Option<String>> {
    let have = cluster.mds_names()?;
    for name in (0..shape.mds).map(dev::mon_name) {
        if !have.contains(&name) {
            cluster.add_mds(client, &name).await?;
        }
        if cluster.running_pid(Kind::Mds, &name).is_none() {
            cluster.start(Kind::Mds, &name)?;
        }
    }
    let Some(name) = &shape.fs else {
        return Ok(None);
    };
    let data = if osds >= 3 {
        json!({ "erasureCoded": { "dataChunks": 2, "codingChunks": 1 } })
    } else {
        json!({ "replicated": { "size": osds.max(1) } })
    };
    let spec = json!({
        "name": name,
        "metadataPool": { "replicated": { "size": osds.clamp(1, 3) } },
        "dataPools": [data],
        "metadataServer": { "activeCount": 1, "activeStandby": shape.mds > 1 },
    });
    super::fs::apply_spec(client, &cluster.config()?, &spec, shape.force_fs).await?;
    Ok(Some(name.clone()))
}

/// Polls until filesystem `name`'s rank is served.
async fn wait_fs_active(client: &MonClient, name: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let maps = client.maps().await?;
        let serving = maps.fsmap.fs_by_name(name).is_some_and(|(id, _)| {
            maps.fsmap.active_of(id).is_some_and(|(_, d)| {
                matches!(
                    d.role,
                    cairn_common::fsmap::MdsRole::Active { serving: true, .. }
                )
            })
        });
        if serving {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "filesystem {name} has no serving MDS after {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until every PG is active: a new pool's PGs are `peering` until their primaries
/// report them (a beacon or so).
async fn wait_pgs_active(
    client: &MonClient,
    limit: Duration,
) -> anyhow::Result<cairn_common::status::ClusterStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let s = client.status().await?;
        if s.pg_states.keys().all(|state| state.starts_with("active")) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!(
                "the PGs did not become active within {} s: {:?}",
                limit.as_secs(),
                s.pg_states
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until every configured mon is in quorum, `osds` OSDs are up and health is OK.
pub async fn wait_healthy(
    client: &MonClient,
    config: &Config,
    osds: usize,
    limit: Duration,
) -> anyhow::Result<cairn_common::status::ClusterStatus> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match client.status().await {
            Ok(s)
                if s.health.status == Severity::Ok
                    && s.mons.len() == config.monitors.len()
                    && s.osds.up as usize == osds =>
            {
                return Ok(s)
            }
            Ok(s) => s.health.render(true),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "the cluster did not become healthy within {} s: {last}",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
