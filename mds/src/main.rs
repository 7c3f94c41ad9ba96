//! `cairn-mds --id NAME`: a metadata server daemon.

use std::path::PathBuf;

use clap::Parser;

use cairn_common::telemetry::LogTo;

#[derive(Parser)]
#[command(name = "cairn-mds", version, about = "Cairn metadata server")]
struct Cli {
    /// The daemon's name: it authenticates as `mds.NAME`.
    #[arg(long, env = "CAIRN_MDS_ID")]
    id: String,
    /// The configuration file (default: $CAIRN_CONF, ./cairn.toml, /etc/cairn/cairn.toml).
    #[arg(long, short = 'c')]
    conf: Option<PathBuf>,
    /// Override a config option: `--set section.option=value` (repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("cairn-mds: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    cairn_common::maps::validate_daemon_name(&cli.id).map_err(anyhow::Error::msg)?;
    let loaded = cairn_common::config::Config::load(cli.conf.as_deref(), &cli.sets)?;
    cairn_common::telemetry::init_logging(&loaded.config.log, LogTo::Stdout);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(cairn_mds::daemon::run(loaded.config, &cli.id))
}
