//! The `cairn-mds` daemon's life: authenticate as `mds.NAME`, listen, beacon to the mons and
//! follow the role the FSMap gives; on SIGTERM write back, tell the mons (the standby-replay
//! takes over at once) and exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use cairn_client::{MonClient, Rados};
use cairn_common::auth::TicketAuthority;
use cairn_common::config::Config;
use cairn_common::keyring::Keyring;
use cairn_common::lifecycle::{shutdown_signal, stopped};
use cairn_common::proto::mds_server::MdsServer;
use cairn_common::proto::MdsBeaconRequest;
use cairn_common::telemetry;

use crate::node::MdsNode;
use crate::service::{MdsService, MdsTicketCheck, REQUEST_BYTES_MAX};

/// How long a starting MDS keeps asking the mons for its service key (mons started at the
/// same moment may not have a quorum yet).
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);
/// HTTP/2 pings to clients.
const SESSION_KEEPALIVE: Duration = Duration::from_secs(2);

pub async fn run(config: Config, name: &str) -> anyhow::Result<()> {
    let entity = format!("mds.{name}");
    let keyring = Keyring::load(&config.keyring)?;
    let key = keyring
        .key(&entity)
        .with_context(|| format!("no key for {entity} in {}", config.keyring.display()))?
        .clone();
    let addrs = config.monitors.iter().map(|m| m.addr.clone()).collect();
    let monc = MonClient::new(addrs, &entity, key, config.client.clone())?;
    let service_key = service_key(&monc).await?;
    let rados = Arc::new(Rados::with_monc(monc, config.client.clone()).await?);
    let metrics = telemetry::install_metrics()?;

    let listen = config.mds.addr.replace("{name}", name);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let public = cairn_common::channel::announced_addr(
        &config.mds.public_addr,
        listener.local_addr()?,
        &config.monitors,
    )
    .await
    .context("mds.public_addr")?;
    let lease = Duration::from_millis(config.mon.mds_beacon_grace_ms / 2);
    let node = Arc::new(MdsNode::new(
        name,
        public.to_string(),
        rados.clone(),
        config.mds.clone(),
        lease,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (server_stop_tx, server_stop_rx) = watch::channel(false);
    let authority = Arc::new(TicketAuthority::from_service_key(service_key));
    let server = tokio::spawn(serve(node.clone(), authority, listener, server_stop_rx));
    tokio::spawn(run_beacons(node.clone(), stop_rx.clone()));
    let writeback = {
        let (n, s) = (node.clone(), stop_rx.clone());
        tokio::spawn(async move { n.run_writeback(s).await })
    };
    if !config.mds.admin_addr.is_empty() {
        let admin: SocketAddr = config
            .mds
            .admin_addr
            .replace("{name}", name)
            .parse()
            .context("mds.admin_addr")?;
        tokio::spawn(telemetry::serve_admin(
            admin,
            metrics,
            // Ready once the mons know it (any role): a standby is as ready as it gets.
            Arc::new({
                let n = node.clone();
                move || n.rados.maps().fsmap.daemons.contains_key(&n.name)
            }),
            stopped(stop_rx.clone()),
        ));
    }
    tracing::info!(mds = name, addr = %public, "started");

    let roles = {
        let (n, s) = (node.clone(), stop_rx.clone());
        tokio::spawn(async move { n.follow_roles(s).await })
    };
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("SIGTERM: writing back, telling the mons, then stopping");
            Ok(())
        }
        ended = roles => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("the role task failed: {e}")),
        },
    };
    let _ = stop_tx.send(true);
    let _ = writeback.await;
    node.flush().await;
    let going_down = beacon(&node, true);
    if tokio::time::timeout(
        Duration::from_secs(3),
        node.rados.monc().mds_beacon(going_down),
    )
    .await
    .is_err()
    {
        tracing::warn!("the mons did not hear the shutdown in time");
    }
    let _ = server_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    tracing::info!("stopped");
    outcome
}

async fn service_key(monc: &MonClient) -> anyhow::Result<cairn_common::auth::SecretKey> {
    let deadline = std::time::Instant::now() + STARTUP_PATIENCE;
    loop {
        match monc.mds_service_key().await {
            Ok(key) => return Ok(key),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot get the mds service key yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("cannot get the mds service key from the mons"),
        }
    }
}

fn beacon(node: &MdsNode, going_down: bool) -> MdsBeaconRequest {
    MdsBeaconRequest {
        name: node.name.clone(),
        addr: node.addr.clone(),
        instance: node.rados.instance().to_string(),
        serving: node.serving(),
        going_down,
    }
}

/// Tells the mons this daemon lives (and whether it serves) every `beacon_interval_ms`.
async fn run_beacons(node: Arc<MdsNode>, mut stop: watch::Receiver<bool>) {
    let interval = Duration::from_millis(node.settings.beacon_interval_ms.max(10));
    loop {
        let call = node.rados.monc().mds_beacon(beacon(&node, false));
        let sent = std::time::Instant::now();
        match tokio::time::timeout(interval * 4, call).await {
            Ok(Ok(_)) => node.beacon_acked(sent),
            Ok(Err(cairn_client::ClientError::Refused(why))) => {
                // Blocklisted: this instance lost its role for good.
                node.fail(format!("the mons refuse this instance: {why}"));
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "beacon failed"),
            Err(_) => tracing::debug!("beacon timed out"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn serve(
    node: Arc<MdsNode>,
    authority: Arc<TicketAuthority>,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let service = MdsServer::new(MdsService { node: node.clone() })
        .max_decoding_message_size(REQUEST_BYTES_MAX)
        .max_encoding_message_size(64 << 20);
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        MdsTicketCheck { authority, node },
    );
    cairn_common::channel::server()
        // Finds clients that vanished without closing their connections (a dead host), so
        // their session streams end and their sessions can be evicted.
        .http2_keepalive_interval(Some(SESSION_KEEPALIVE))
        .http2_keepalive_timeout(Some(SESSION_KEEPALIVE * 2))
        .add_service(service)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop),
        )
        .await
        .context("mds server failed")
}
