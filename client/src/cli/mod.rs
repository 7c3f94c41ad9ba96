//! The `cairn` commands.

pub mod admin;
pub mod bench;
pub mod dev;
pub mod fs;
pub mod keyring;
pub mod mount;
pub mod osd;
pub mod pg;
pub mod rados;

use anyhow::Context;
use serde::Serialize;

use cairn_client::MonClient;
use cairn_common::config::{Config, MonEndpoint};

use crate::{Cli, Cmd, Format};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Bootstrap(args) => dev::bootstrap(args, &cli.sets, cli.format),
        Cmd::Dev(cmd) => dev::run(&cli, cmd).await,
        Cmd::Keyring(cmd) => keyring::run(cmd),
        Cmd::Status => admin::status(&connect(&cli)?, cli.format).await,
        Cmd::Health { detail } => {
            admin::health(&connect(&cli)?, detail.is_some(), cli.format).await
        }
        Cmd::Mon(cmd) => admin::mon(&connect(&cli)?, cmd, cli.format).await,
        Cmd::Auth(cmd) => admin::auth(&connect(&cli)?, cmd, cli.format).await,
        Cmd::Config(cmd) => admin::config(&connect(&cli)?, cmd, cli.format).await,
        Cmd::Osd(cmd) => {
            let domain = load_config(&cli)?.client.pool_failure_domain;
            osd::run(&connect(&cli)?, cmd, domain, cli.format).await
        }
        Cmd::Fs(cmd) => fs::run(&connect(&cli)?, cmd, &load_config(&cli)?, cli.format).await,
        Cmd::Mount(args) => mount::run(load_config(&cli)?, args).await,
        Cmd::Rados(cmd) => rados::run(&connect_rados(&cli).await?, cmd, cli.format).await,
        Cmd::Pg(cmd) => pg::run(&connect_rados(&cli).await?, cmd, cli.format).await,
        Cmd::Df => osd::df(&connect(&cli)?, cli.format).await,
        Cmd::Bench(args) => {
            let rados = std::sync::Arc::new(connect_rados(&cli).await?);
            bench::run(rados, args, cli.format).await
        }
    }
}

/// The configuration with the command line's overrides applied.
pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.conf.as_deref(), &cli.sets)?.config;
    if let Some(entity) = &cli.entity {
        config.client.name = entity.clone();
    }
    if let Some(k) = &cli.keyring {
        config.keyring = k.clone();
    }
    if !cli.mon_host.is_empty() {
        config.monitors = cli
            .mon_host
            .iter()
            .enumerate()
            .map(|(i, addr)| MonEndpoint {
                name: format!("m{i}"),
                addr: addr.clone(),
                admin_addr: None,
            })
            .collect();
    }
    Ok(config)
}

fn connect(cli: &Cli) -> anyhow::Result<MonClient> {
    let config = load_config(cli)?;
    MonClient::from_config(&config).context("cannot set up the monitor client")
}

async fn connect_rados(cli: &Cli) -> anyhow::Result<cairn_client::Rados> {
    let config = load_config(cli)?;
    let monc = MonClient::from_config(&config).context("cannot set up the monitor client")?;
    Ok(cairn_client::Rados::with_monc(monc, config.client).await?)
}

/// Prints `value` as JSON, or `plain` as text.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    plain: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Plain => print!("{}", plain()),
    }
    Ok(())
}
