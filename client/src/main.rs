//! `cairn`: the admin and client tool.

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn storage cluster: admin and client tool"
)]
pub struct Cli {
    /// Config file (default: $CAIRN_CONF, ./cairn.toml, /etc/cairn/cairn.toml).
    #[arg(long, global = true)]
    pub conf: Option<PathBuf>,
    /// Override an option: section.option=value (repeatable).
    #[arg(long = "set", global = true, value_name = "OPTION=VALUE")]
    pub sets: Vec<String>,
    /// Entity to authenticate as (default: client.name from the config, client.admin).
    #[arg(long = "name", short = 'n', id = "as_entity", global = true)]
    pub entity: Option<String>,
    /// Keyring file (default: keyring from the config).
    #[arg(long, short = 'k', global = true)]
    pub keyring: Option<PathBuf>,
    /// Monitor addresses to contact, comma separated (default: [[monitors]] from the config).
    #[arg(long = "mon-host", short = 'm', global = true, value_delimiter = ',')]
    pub mon_host: Vec<String>,
    /// Output format.
    #[arg(long, short = 'f', global = true, value_enum, default_value_t = Format::Plain)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Plain,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Cluster status, like `ceph status`.
    Status,
    /// Cluster health: HEALTH_OK, HEALTH_WARN or HEALTH_ERR.
    Health {
        /// `detail` lists every check and what it names.
        detail: Option<cli::admin::Detail>,
    },
    /// Monitors.
    #[command(subcommand)]
    Mon(cli::admin::MonCmd),
    /// Entities, keys and capabilities.
    #[command(subcommand)]
    Auth(cli::admin::AuthCmd),
    /// Cluster-wide configuration.
    #[command(subcommand)]
    Config(cli::admin::ConfigCmd),
    /// OSDs, the placement hierarchy and pools.
    #[command(subcommand)]
    Osd(cli::osd::OsdCmd),
    /// Objects: put, get, rm, ls, stat.
    #[command(subcommand)]
    Rados(cli::rados::RadosCmd),
    /// Placement groups.
    #[command(subcommand)]
    Pg(cli::pg::PgCmd),
    /// Filesystems: create, list, change, remove, status, apply a spec.
    #[command(subcommand)]
    Fs(cli::fs::FsCmd),
    /// Mount a filesystem through FUSE and serve it until SIGTERM or ^C.
    Mount(cli::mount::MountArgs),
    /// Raw space of the OSDs, and the pools.
    Df,
    /// Benchmark a pool like `rados bench`: write, seq or rand for SECONDS.
    Bench(cli::bench::BenchArgs),
    /// Create a new cluster's config and keyring (fsid, initial mons, client.admin key).
    Bootstrap(cli::dev::BootstrapArgs),
    /// A local cluster of real processes on loopback, for development and tests.
    #[command(subcommand)]
    Dev(cli::dev::DevCmd),
    /// Keyring files, offline: give each daemon only the keys it needs.
    #[command(subcommand)]
    Keyring(cli::keyring::KeyringCmd),
}

fn main() {
    // Output piped into `head` and the like: end quietly when the reader goes, as Unix tools
    // do, instead of failing on every later write.
    // SAFETY: restoring the default disposition of a signal, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(cli::run(cli)) {
        eprintln!("cairn: error: {e:#}");
        std::process::exit(1);
    }
}
