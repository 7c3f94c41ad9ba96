//! `cairn mount`: a Cairn shared filesystem as a local directory, through FUSE.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use cairn_client::fs::FsClient;
use cairn_client::fuse::{self, MountOptions};
use cairn_common::config::Config;
use cairn_common::telemetry;

/// How often to look whether the mount was taken away from outside (`umount`).
const UNMOUNT_POLL: Duration = Duration::from_secs(1);

#[derive(clap::Args)]
pub struct MountArgs {
    /// The filesystem's name.
    fs: String,
    /// An existing empty directory.
    mountpoint: std::path::PathBuf,
    /// Mount this directory of the filesystem instead of its root.
    #[arg(long, default_value = "/")]
    path: String,
    /// Let users other than the one mounting use the mount (mode bits still apply).
    #[arg(long)]
    allow_other: bool,
    /// Serve Prometheus metrics (FUSE, MDS and RADOS op latencies) on this address, with
    /// `/healthz` and `/readyz`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Read-ahead of sequential reads, in KiB (0 keeps the kernel's 128 KiB).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(0..=65536))]
    readahead_kb: u32,
}

pub async fn run(config: Config, args: &MountArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.metrics {
        let metrics = telemetry::install_metrics()?;
        // Until the mount ends with the process, which is what `/healthz` says.
        let ready = Arc::new(|| true);
        tokio::spawn(async move {
            let served = telemetry::serve_admin(addr, metrics, ready, std::future::pending());
            if let Err(e) = served.await {
                eprintln!("no metrics: {e:#}");
            }
        });
    }
    let opts = MountOptions {
        allow_other: args.allow_other,
        read_only: false,
        readahead_kb: args.readahead_kb,
    };
    mount(config, &args.fs, &args.mountpoint, &args.path, opts).await
}

/// Mounts `path` of filesystem `fs_name` at `mountpoint` and serves it until SIGTERM or
/// SIGINT, then unmounts; returns too when the mount is unmounted from outside.
pub async fn mount(
    config: Config,
    fs_name: &str,
    mountpoint: &Path,
    path: &str,
    opts: MountOptions,
) -> anyhow::Result<()> {
    // Watched from the start, so a signal sent as soon as the mount appears still unmounts.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    let fs = FsClient::mount(&config, fs_name, path)
        .await
        .with_context(|| format!("cannot open {path} of file system {fs_name}"))?;
    let runtime = tokio::runtime::Handle::current();
    let target = mountpoint.to_path_buf();
    // Mounting waits for the kernel's first request: not on a runtime thread.
    let session = tokio::task::spawn_blocking(move || fuse::mount(fs, runtime, &target, &opts))
        .await?
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    eprintln!("mounted {fs_name} at {}", mountpoint.display());

    let mut poll = tokio::time::interval(UNMOUNT_POLL);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = poll.tick() => {
                if session.guard.is_finished() {
                    eprintln!("{} was unmounted", mountpoint.display());
                    return session.join().context("the FUSE session failed");
                }
            }
        }
    }
    // Dropping the session unmounts.
    drop(session);
    eprintln!("unmounted {}", mountpoint.display());
    Ok(())
}
