//! `cairn-mon`: a Cairn monitor.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use cairn_common::config::Config;
use cairn_common::telemetry::LogTo;
use cairn_mon::daemon;

#[derive(Parser)]
#[command(
    name = "cairn-mon",
    version,
    about = "Cairn monitor: holds the cluster maps in a Raft group"
)]
struct Cli {
    /// Config file (default: $CAIRN_CONF, ./cairn.toml, /etc/cairn/cairn.toml).
    #[arg(long, global = true)]
    conf: Option<PathBuf>,
    /// Override an option: section.option=value (repeatable).
    #[arg(long = "set", global = true, value_name = "OPTION=VALUE")]
    sets: Vec<String>,
    /// This mon's name (e.g. `a`).
    #[arg(long, global = true, env = "CAIRN_MON_NAME")]
    name: Option<String>,
    /// gRPC listen address (default: this mon's entry in [[monitors]]).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// Admin HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, global = true)]
    admin_addr: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create this mon's store (run once, before the first start).
    Mkfs {
        /// Create a mon that joins a running cluster through `cairn mon add`.
        #[arg(long)]
        join: bool,
    },
    /// Run the monitor (the default).
    Run {
        /// Create this mon's store first when its data directory is empty or missing, as one
        /// of the initial mon set (containers, whose first start is the bootstrap).
        #[arg(long)]
        mkfs_if_empty: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("cairn-mon: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let loaded = Config::load(cli.conf.as_deref(), &cli.sets)?;
    let config = loaded.config;
    cairn_common::telemetry::init_logging(&config.log, LogTo::Stdout);
    let name = cli
        .name
        .ok_or_else(|| anyhow::anyhow!("--name is required (or CAIRN_MON_NAME)"))?;
    let listen = daemon::listen_addrs(&config, &name, cli.addr, cli.admin_addr)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let command = cli.command.unwrap_or(Cmd::Run {
        mkfs_if_empty: false,
    });
    match command {
        Cmd::Mkfs { join } => runtime.block_on(async { daemon::mkfs(&config, &name, join) }),
        Cmd::Run { mkfs_if_empty } => {
            if mkfs_if_empty && daemon::store_is_empty(&config, &name)? {
                runtime.block_on(async { daemon::mkfs(&config, &name, false) })?;
                tracing::info!(mon = %name, "created the mon's store (first start)");
            }
            runtime.block_on(daemon::run(config, name, listen))
        }
    }
}
