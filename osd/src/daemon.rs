//! The `cairn-osd` daemon's life: authenticate as `osd.N`, open the store, listen, boot into
//! the OSD map, follow the maps, heartbeat and beacon; on SIGTERM tell the mons it is going
//! down (so it is marked down at once) and exit.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use tokio::sync::watch;

use cairn_client::MonClient;
use cairn_common::auth::TicketAuthority;
use cairn_common::command::Command;
use cairn_common::config::Config;
use cairn_common::keyring::Keyring;
use cairn_common::lifecycle::{shutdown_signal, stopped};
use cairn_common::proto::osd_server::OsdServer;
use cairn_common::proto::OsdBeaconRequest;
use cairn_common::telemetry;

use crate::heartbeat::{run_beacons, run_heartbeats, Heartbeats};
use crate::node::OsdNode;
use crate::service::{OsdService, OsdTicketCheck};
use crate::{ObjectStore, StoreConfig};

/// Bytes per unit of placement weight (weight 1.0 = 1 TiB, as in Ceph).
const WEIGHT_UNIT_BYTES: f64 = (1u64 << 40) as f64;
/// Lowest weight an OSD boots with, so small dev stores still receive data.
const WEIGHT_MIN: f64 = 0.001;
/// Pause between resubscriptions when a mon's map stream ends.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(500);

pub async fn run(
    config: Config,
    id: u32,
    data: std::path::PathBuf,
    store_config: StoreConfig,
) -> anyhow::Result<()> {
    let entity = format!("osd.{id}");
    let keyring = Keyring::load(&config.keyring)?;
    let key = keyring
        .key(&entity)
        .with_context(|| format!("no key for {entity} in {}", config.keyring.display()))?
        .clone();
    let addrs = config.monitors.iter().map(|m| m.addr.clone()).collect();
    let monc = Arc::new(MonClient::new(addrs, &entity, key, config.client.clone())?);
    let service_key = service_key(&monc).await?;
    let maps = monc.maps().await.context("cannot read the cluster maps")?;
    if maps.fsid.is_some() && config.fsid.is_some() && maps.fsid != config.fsid {
        bail!(
            "the mons serve cluster {:?}, not {:?}",
            maps.fsid,
            config.fsid
        );
    }
    let store =
        tokio::task::spawn_blocking(move || ObjectStore::open(&data, &store_config)).await??;
    tracing::info!(backend = store.backend_name(), "object store mounted");
    let capacity = store.statfs().total;
    let node = Arc::new(OsdNode::new(
        id,
        Arc::new(store),
        monc.clone(),
        config.osd.clone(),
        maps,
    ));
    let metrics = telemetry::install_metrics()?;

    let listener = tokio::net::TcpListener::bind(config.osd.addr.replace("{id}", &id.to_string()))
        .await
        .with_context(|| format!("cannot listen on {}", config.osd.addr))?;
    let local = listener.local_addr()?;
    let public =
        cairn_common::channel::announced_addr(&config.osd.public_addr, local, &config.monitors)
            .await
            .context("osd.public_addr")?;
    // The server stops last: it keeps answering peers while the mons hear of the shutdown.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (server_stop_tx, server_stop_rx) = watch::channel(false);
    let authority = Arc::new(TicketAuthority::from_service_key(service_key));
    let server = tokio::spawn(serve(node.clone(), authority, listener, server_stop_rx));

    let host = if config.osd.host.is_empty() {
        hostname()
    } else {
        config.osd.host.clone()
    };
    let weight = (capacity as f64 / WEIGHT_UNIT_BYTES).max(WEIGHT_MIN);
    let boot = Command::OsdBoot {
        id,
        addr: public.to_string(),
        host,
        weight: (weight * 1000.0).round() / 1000.0,
        capacity_bytes: capacity,
    };
    monc.command(boot.clone()).await.context("boot refused")?;
    tracing::info!(osd = id, addr = %public, "booted");

    let hb = Arc::new(Heartbeats::default());
    tokio::spawn(follow_maps(node.clone(), boot, stop_rx.clone()));
    tokio::spawn(run_heartbeats(node.clone(), hb.clone(), stop_rx.clone()));
    tokio::spawn(run_beacons(node.clone(), hb, stop_rx.clone()));
    tokio::spawn(crate::scrub::run_schedule(node.clone(), stop_rx.clone()));
    if !config.osd.admin_addr.is_empty() {
        let admin: SocketAddr = config
            .osd
            .admin_addr
            .replace("{id}", &id.to_string())
            .parse()
            .context("osd.admin_addr")?;
        let ready = node.clone();
        tokio::spawn(telemetry::serve_admin(
            admin,
            metrics,
            Arc::new(move || {
                ready
                    .maps()
                    .osdmap
                    .osds
                    .get(&ready.id)
                    .is_some_and(|o| o.up)
            }),
            stopped(stop_rx.clone()),
        ));
    }

    shutdown_signal().await;
    tracing::info!("SIGTERM: telling the mons, then stopping");
    // Background work first, so nothing boots this OSD again once it is marked down.
    let _ = stop_tx.send(true);
    let going_down = OsdBeaconRequest {
        osd: id,
        going_down: true,
        ..OsdBeaconRequest::default()
    };
    if tokio::time::timeout(Duration::from_secs(3), monc.osd_beacon(going_down))
        .await
        .is_err()
    {
        tracing::warn!("the mons did not hear the shutdown in time");
    }
    let _ = server_stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    tracing::info!("stopped");
    Ok(())
}

/// How long a starting OSD keeps asking the mons for its service key: mons started at the
/// same moment may not have a quorum, or their first entities, yet.
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

async fn service_key(monc: &MonClient) -> anyhow::Result<cairn_common::auth::SecretKey> {
    let deadline = std::time::Instant::now() + STARTUP_PATIENCE;
    loop {
        match monc.osd_service_key().await {
            Ok(key) => return Ok(key),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot get the osd service key yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("cannot get the osd service key from the mons"),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn serve(
    node: Arc<OsdNode>,
    authority: Arc<TicketAuthority>,
    listener: tokio::net::TcpListener,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let limit = node.settings.message_bytes_max;
    let service = OsdServer::new(OsdService::new(node.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let service = tonic::service::interceptor::InterceptedService::new(
        service,
        OsdTicketCheck { authority, node },
    );
    cairn_common::channel::server()
        .add_service(service)
        // The server's own tcp_nodelay applies only to listeners it binds: set it here, or
        // small replies wait for delayed ACKs (~40 ms each).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped(stop),
        )
        .await
        .context("osd server failed")
}

/// Keeps the node's maps current from a mon subscription (moving to another mon when one
/// goes away), and boots again if a map shows this OSD down while it runs.
async fn follow_maps(node: Arc<OsdNode>, boot: Command, mut stop: watch::Receiver<bool>) {
    tokio::spawn(act_on_map_changes(node.clone(), stop.clone()));
    loop {
        match node.monc.subscribe().await {
            Ok(stream) => {
                let mut stream = Box::pin(stream);
                loop {
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(maps)) => {
                                node.publish_maps(maps);
                                reboot_if_marked_down(&node, &boot).await;
                            }
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "map subscription ended");
                                break;
                            }
                            None => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to the maps"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Starts the background work of every map change, whoever installed the new map: the
/// subscription, or a request that carried a newer epoch and made the node fetch it first.
/// (Reacting only to the subscription missed changes a request had already installed: the
/// subscription's copy then looked old, and the PGs of that change were never activated.)
///
/// Every `PEERING_SWEEP` the PGs are gone over again too: a PG whose activation failed (a
/// member did not answer) is retried, one a client op activated gets its recovery, and stray
/// copies of PGs clean elsewhere are removed.
async fn act_on_map_changes(node: Arc<OsdNode>, mut stop: watch::Receiver<bool>) {
    let background = Arc::new(Background::default());
    let mut maps = node.subscribe_maps();
    let mut sweep = tokio::time::interval(PEERING_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = maps.changed() => {
                if changed.is_err() {
                    return;
                }
                after_map_change(&node, &background);
            }
            _ = sweep.tick() => {
                activate_in_background(&node, &background);
                let (n, b) = (node.clone(), background.clone());
                tokio::spawn(async move { crate::cleanup::remove_strays(&n, &b.removing_strays).await });
            }
            _ = stop.changed() => return,
        }
    }
}

const PEERING_SWEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Work a map change starts in the background, one run of each at a time.
#[derive(Default)]
struct Background {
    activating: AtomicBool,
    activate_again: AtomicBool,
    cleaning: AtomicBool,
    removing_strays: AtomicBool,
}

fn after_map_change(node: &Arc<OsdNode>, background: &Arc<Background>) {
    activate_in_background(node, background);
    let (n, b) = (node.clone(), background.clone());
    tokio::spawn(async move { crate::cleanup::collect_deleted_pools(&n, &b.cleaning).await });
}

fn activate_in_background(node: &Arc<OsdNode>, background: &Arc<Background>) {
    let (n, b) = (node.clone(), background.clone());
    tokio::spawn(async move {
        crate::primary::activate_primaries(&n, &b.activating, &b.activate_again).await
    });
}

async fn reboot_if_marked_down(node: &OsdNode, boot: &Command) {
    let marked_down = node.maps().osdmap.osds.get(&node.id).is_some_and(|o| !o.up);
    if marked_down {
        tracing::warn!("the map marks this osd down while it runs: booting again");
        if let Err(e) = node.monc.command(boot.clone()).await {
            tracing::warn!(error = %e, "boot refused");
        }
    }
}
