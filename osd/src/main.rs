//! `cairn-osd`: the object storage daemon (`cairn-osd --id N`), and the tool for its local
//! store: `mkfs`, `fsck`, `statfs`, and the crash-test worker.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use cairn_common::telemetry::LogTo;
use cairn_osd::io::BackendChoice;
use cairn_osd::{ObjectStore, StoreConfig};

#[derive(Parser)]
#[command(name = "cairn-osd", version, about = "Cairn object storage daemon")]
struct Cli {
    /// Run as the daemon of OSD N (without a subcommand).
    #[arg(long, global = true, env = "CAIRN_OSD_ID")]
    id: Option<u32>,
    /// The configuration file (default: $CAIRN_CONF, ./cairn.toml, /etc/cairn/cairn.toml).
    #[arg(long, short = 'c', global = true)]
    conf: Option<PathBuf>,
    /// Override a config option: `--set section.option=value` (repeatable).
    #[arg(long = "set", global = true)]
    sets: Vec<String>,
    /// The store's directory (RocksDB in `db/`, data in `block`); default `osd.data_dir`.
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Block I/O backend: auto (io_uring, else threads), uring, threads.
    #[arg(long, global = true, default_value = "auto", value_parser = parse_backend)]
    io_backend: BackendChoice,
    #[command(flatten)]
    first_start: FirstStart,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// How the daemon creates its store on first start (containers, where the first start is the
/// deployment): only when the data directory holds no store yet.
#[derive(clap::Args)]
struct FirstStart {
    /// Create the store first when the data directory holds none.
    #[arg(long)]
    mkfs_if_empty: bool,
    /// ... as a preallocated data file of this size (K, M, G, T suffixes).
    #[arg(long, value_parser = parse_size, requires = "mkfs_if_empty", conflicts_with = "mkfs_device")]
    mkfs_size: Option<u64>,
    /// ... on this block device (the data directory's `block` links to it).
    #[arg(long, requires = "mkfs_if_empty")]
    mkfs_device: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a store: a preallocated data file of --size bytes (K, M, G, T suffixes), or the
    /// block device `DATA/block` already links to.
    Mkfs {
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
    },
    /// Check the store's consistency; --deep also verifies every block's checksum.
    Fsck {
        #[arg(long)]
        deep: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Total, used and available bytes of the data device.
    Statfs,
    /// Crash-test worker: apply generated transactions, printing each before and after.
    #[command(hide = true)]
    Torture {
        #[arg(long)]
        seed: u64,
        /// Transactions per thread.
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Threads, each on its own objects.
        #[arg(long, default_value_t = 1)]
        threads: u32,
    },
}

fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "auto" => Ok(BackendChoice::Auto),
        "uring" => Ok(BackendChoice::Uring),
        "threads" => Ok(BackendChoice::Threads),
        other => Err(format!("unknown backend {other:?}: auto, uring or threads")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size {s:?}: a number with an optional K, M, G or T suffix"))
}

/// Creates the store in `dir` unless one is there. A device already linked as `dir/block` is
/// kept (it may be the device the deployment attached).
fn create_store_if_missing(
    dir: &std::path::Path,
    first: &FirstStart,
    config: &StoreConfig,
) -> anyhow::Result<()> {
    if ObjectStore::is_created(dir) {
        return Ok(());
    }
    if let Some(device) = &first.mkfs_device {
        let link = dir.join(cairn_osd::store::DATA_FILE);
        std::fs::create_dir_all(dir)?;
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(device, &link).with_context(|| {
                format!("cannot link {} to {}", link.display(), device.display())
            })?;
        }
    }
    ObjectStore::mkfs(dir, first.mkfs_size, config)?;
    tracing::info!(dir = %dir.display(), "created the object store (first start)");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("cairn-osd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let loaded = cairn_common::config::Config::load(cli.conf.as_deref(), &cli.sets)?;
    // The daemon logs to stdout (containers collect it); tools keep stdout for their output.
    let log_to = if cli.command.is_none() {
        LogTo::Stdout
    } else {
        LogTo::Stderr
    };
    cairn_common::telemetry::init_logging(&loaded.config.log, log_to);
    let dir = match (&cli.data, cli.id) {
        (Some(d), _) => d.clone(),
        (None, Some(id)) => loaded.config.osd_data_dir(id),
        (None, None) => anyhow::bail!("--data DIR (or --id N) is required"),
    };
    let config = StoreConfig {
        backend: cli.io_backend,
        ..StoreConfig::default()
    };
    let Some(command) = cli.command else {
        let id = cli
            .id
            .context("run the daemon with --id N, or give a subcommand")?;
        if cli.first_start.mkfs_if_empty {
            create_store_if_missing(&dir, &cli.first_start, &config)?;
        }
        let runtime = tokio::runtime::Runtime::new()?;
        return runtime.block_on(cairn_osd::daemon::run(loaded.config, id, dir, config));
    };
    match command {
        Cmd::Mkfs { size } => {
            ObjectStore::mkfs(&dir, size, &config)?;
            println!("created an object store in {}", dir.display());
        }
        Cmd::Fsck { deep, json } => {
            let store = ObjectStore::open(&dir, &config)?;
            let report = store.fsck(deep)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} collections, {} objects, {} omap entries, {} blocks used, {} free",
                    report.collections,
                    report.objects,
                    report.omap_entries,
                    report.used_blocks,
                    report.free_blocks
                );
                for e in &report.errors {
                    println!("error: {e}");
                }
                for d in &report.damaged {
                    println!(
                        "damaged: {}/{} bytes {}..{}",
                        d.collection,
                        d.object,
                        d.offset,
                        d.offset + d.length
                    );
                }
            }
            if !report.is_clean() {
                anyhow::bail!(
                    "fsck found {} errors and {} damaged ranges",
                    report.errors.len(),
                    report.damaged.len()
                );
            }
        }
        Cmd::Statfs => {
            let store = ObjectStore::open(&dir, &config)?;
            println!("{}", serde_json::to_string(&store.statfs())?);
        }
        Cmd::Torture {
            seed,
            count,
            threads,
        } => {
            let store = ObjectStore::open(&dir, &config)?;
            cairn_osd::torture::run_worker(&store, seed, count, threads)?;
        }
    }
    Ok(())
}
