//! Starting and stopping a monitor: `mkfs` creates its store; `run` opens it, joins the Raft
//! group, serves gRPC and the admin endpoint, and shuts down cleanly on SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use openraft::SnapshotPolicy;
use tokio::sync::{watch, Semaphore};
use tonic::service::interceptor::InterceptedService;

use cairn_common::auth::TicketAuthority;
use cairn_common::command::{Command, NewEntity, Proposal};
use cairn_common::config::Config;
use cairn_common::keyring::{Keyring, MON_SECRET_ENTITY};
use cairn_common::lifecycle::{shutdown_signal, stopped};
use cairn_common::maps::{mon_node_id, validate_daemon_name, MonInfo};
use cairn_common::proto::auth_server::AuthServer;
use cairn_common::proto::mon_peer_server::MonPeerServer;
use cairn_common::proto::mon_server::MonServer;
use cairn_common::telemetry;

use crate::db::{Bootstrap, Identity, Store, KEY_BOOTSTRAP, KEY_IDENTITY};
use crate::log_store::LogStore;
use crate::network::PeerNetwork;
use crate::node::MonNode;
use crate::quorum::Liveness;
use crate::raft_types::Raft;
use crate::service::{AuthService, MonService, PeerService};
use crate::state_machine::StateMachineStore;
use crate::ticket_check::{MonCredentials, TicketCheck};

/// Where a mon listens: from flags, else from its `[[monitors]]` entry.
#[derive(Clone, Debug)]
pub struct Listen {
    pub addr: String,
    pub admin_addr: Option<String>,
}

pub fn listen_addrs(
    config: &Config,
    name: &str,
    addr: Option<String>,
    admin: Option<String>,
) -> anyhow::Result<Listen> {
    let entry = config.monitor(name);
    let addr = addr
        .or_else(|| entry.map(|e| e.addr.clone()))
        .with_context(|| {
            format!("mon.{name} has no address: pass --addr or list it in [[monitors]]")
        })?;
    let admin_addr = admin.or_else(|| entry.and_then(|e| e.admin_addr.clone()));
    Ok(Listen { addr, admin_addr })
}

/// Whether this mon has no store yet: its data directory is missing or empty.
pub fn store_is_empty(config: &Config, name: &str) -> anyhow::Result<bool> {
    let dir = config.mon_data_dir(name);
    match std::fs::read_dir(&dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// Creates a mon's store. Without `join` it records the initial mon set and entities, so the
/// first start bootstraps the cluster; with `join` it waits to be added by `cairn mon add`.
pub fn mkfs(config: &Config, name: &str, join: bool) -> anyhow::Result<()> {
    validate_daemon_name(name).map_err(anyhow::Error::msg)?;
    let fsid = config
        .fsid
        .context("the config has no fsid: create the cluster with `cairn bootstrap` first")?;
    let keyring = Keyring::load(&config.keyring)?;
    keyring.key(MON_SECRET_ENTITY)?;
    let dir = config.mon_data_dir(name);
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} already holds a mon store; remove it to start over",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = Store::open(&dir, &config.mon, true)?;
    let node_id = mon_node_id(name);
    store.put_meta(
        KEY_IDENTITY,
        &Identity {
            fsid,
            name: name.to_string(),
            node_id,
        },
    )?;
    if !join {
        let members: BTreeMap<u64, MonInfo> = config
            .monitors
            .iter()
            .map(|m| {
                (
                    mon_node_id(&m.name),
                    MonInfo {
                        name: m.name.clone(),
                        addr: m.addr.clone(),
                    },
                )
            })
            .collect();
        // The listening address may differ from the listed one (a wildcard address, or a DNS
        // name peers resolve), so the name decides.
        if !members.contains_key(&node_id) {
            bail!("mon.{name} is not in the config's [[monitors]]: list the initial mons there, or use --join");
        }
        let entities = keyring
            .entries
            .iter()
            .filter(|(n, _)| n.as_str() != MON_SECRET_ENTITY)
            .map(|(n, e)| {
                (
                    n.clone(),
                    NewEntity {
                        key: e.key.clone(),
                        caps: e.caps.clone(),
                    },
                )
            })
            .collect();
        store.put_meta(KEY_BOOTSTRAP, &Bootstrap { members, entities })?;
    }
    println!("created mon.{name} (fsid {fsid}) in {}", dir.display());
    Ok(())
}

fn raft_config(config: &Config, fsid: uuid::Uuid) -> anyhow::Result<openraft::Config> {
    let m = &config.mon;
    let c = openraft::Config {
        cluster_name: fsid.to_string(),
        heartbeat_interval: m.heartbeat_interval_ms,
        election_timeout_min: m.election_timeout_min_ms,
        election_timeout_max: m.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(m.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: m.logs_kept_after_snapshot,
        install_snapshot_timeout: m.commit_timeout_ms,
        ..Default::default()
    };
    c.validate().context("invalid raft settings")
}

/// Runs a mon until SIGTERM or SIGINT.
pub async fn run(config: Config, name: String, listen: Listen) -> anyhow::Result<()> {
    let dir = config.mon_data_dir(&name);
    let store = Store::open(&dir, &config.mon, false).with_context(|| {
        format!("no mon store for mon.{name}: run `cairn-mon mkfs --name {name}` first")
    })?;
    let identity: Identity = store
        .get_meta(KEY_IDENTITY)?
        .context("the mon store has no identity")?;
    if identity.name != name {
        bail!(
            "{} belongs to mon.{}, not mon.{name}",
            dir.display(),
            identity.name
        );
    }
    let keyring = Keyring::load(&config.keyring)?;
    let mon_secret = keyring.key(MON_SECRET_ENTITY)?;
    let authority = Arc::new(TicketAuthority::from_mon_secret(mon_secret));
    let osd_service_key = TicketAuthority::service_key(mon_secret, "osd");
    let mds_service_key = TicketAuthority::service_key(mon_secret, "mds");
    let metrics = telemetry::install_metrics()?;
    let ticket_ttl_ms = config.mon.ticket_ttl_secs * 1000;
    let credentials = Arc::new(MonCredentials::new(authority.clone(), &name, ticket_ttl_ms));
    let liveness = Arc::new(Liveness::default());
    let network = PeerNetwork {
        credentials: credentials.clone(),
        liveness: liveness.clone(),
        connect_timeout: Duration::from_millis(config.mon.heartbeat_interval_ms * 5),
        message_bytes_max: config.mon.request_bytes_max.max(64 << 20),
    };
    let sm = StateMachineStore::open(store.clone())?;
    let shared = sm.shared();
    let raft = Raft::new(
        identity.node_id,
        Arc::new(raft_config(&config, identity.fsid)?),
        network,
        LogStore::new(store.clone()),
        sm,
    )
    .await
    .context("cannot start raft")?;
    let bootstrap: Option<Bootstrap> = store.get_meta(KEY_BOOTSTRAP)?;
    if let Some(b) = &bootstrap {
        if !raft.is_initialized().await? {
            tracing::info!(members = b.members.len(), "initializing the monitor group");
            raft.initialize(b.members.clone())
                .await
                .context("cannot initialize raft")?;
        }
    }
    let node = Arc::new(MonNode::new(
        identity.node_id,
        name.clone(),
        identity.fsid,
        raft.clone(),
        shared.clone(),
        config.mon.clone(),
        authority.clone(),
        credentials,
        liveness,
        osd_service_key,
        mds_service_key,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(b) = bootstrap {
        tokio::spawn(seed_cluster(
            node.clone(),
            identity.fsid,
            b,
            stop_rx.clone(),
        ));
    }
    tokio::spawn(export_metrics(node.clone(), stop_rx.clone()));
    tokio::spawn(crate::osd_watch::watch_osds(node.clone(), stop_rx.clone()));
    let admin = match &listen.admin_addr {
        Some(a) => {
            let addr: SocketAddr = a
                .parse()
                .with_context(|| format!("invalid admin address {a:?}"))?;
            let ready_node = node.clone();
            let ready: telemetry::Readiness = Arc::new(move || {
                ready_node.raft.metrics().borrow().current_leader.is_some()
                    && ready_node.shared.maps().fsid.is_some()
            });
            Some(tokio::spawn(telemetry::serve_admin(
                addr,
                metrics,
                ready,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let served = serve_grpc(
        &config,
        node.clone(),
        &listen.addr,
        stopped(stop_rx.clone()),
    );
    tokio::pin!(served);
    tracing::info!(mon = %name, addr = %listen.addr, fsid = %identity.fsid, "monitor starting");
    let mut failed = None;
    tokio::select! {
        r = &mut served => r?,
        _ = shutdown_signal() => tracing::info!("shutdown requested"),
        e = raft_failure(&raft) => failed = Some(e),
    }
    // Stop taking requests, let those in flight finish (bounded), then stop Raft.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, &mut served)
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {} ms; stopping anyway",
            SHUTDOWN_GRACE.as_millis()
        );
    }
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not shut down cleanly");
    }
    if let Some(a) = admin {
        let _ = tokio::time::timeout(Duration::from_secs(2), a).await;
    }
    tracing::info!(mon = %name, "monitor stopped");
    match failed {
        Some(e) => bail!("raft stopped: {e}"),
        None => Ok(()),
    }
}

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves when Raft stops on its own (a storage error): the mon must exit rather than
/// answer every request with an error.
async fn raft_failure(raft: &Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(e) = &metrics.borrow().running_state {
            tracing::error!(error = %e, "raft stopped; the monitor exits");
            return e.to_string();
        }
        if metrics.changed().await.is_err() {
            return "raft metrics closed".into();
        }
    }
}

async fn serve_grpc(
    config: &Config,
    node: Arc<MonNode>,
    addr: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let sock: SocketAddr = addr
        .parse()
        .with_context(|| format!("invalid mon address {addr:?}"))?;
    let check = TicketCheck {
        authority: node.authority.clone(),
        shared: node.shared.clone(),
    };
    let max = config.mon.request_bytes_max;
    // Raft messages (snapshots, batches of entries) may exceed a client request's bound.
    let peer_max = max.max(64 << 20);
    let mon = MonServer::new(MonService {
        node: node.clone(),
        subscribers: Arc::new(Semaphore::new(config.mon.subscribers_max)),
    })
    .max_decoding_message_size(max);
    let peer = MonPeerServer::new(PeerService { node: node.clone() })
        .max_decoding_message_size(peer_max)
        .max_encoding_message_size(peer_max);
    let auth = AuthServer::new(AuthService { node }).max_decoding_message_size(max);
    cairn_common::channel::server()
        .concurrency_limit_per_connection(config.mon.requests_in_flight_per_connection_max)
        .add_service(auth)
        .add_service(InterceptedService::new(mon, check.clone()))
        .add_service(InterceptedService::new(peer, check))
        .serve_with_shutdown(sock, shutdown)
        .await
        .with_context(|| format!("cannot serve on {addr}"))
}

/// On the first leader of a new cluster: commit the fsid and the initial entities.
async fn seed_cluster(
    node: Arc<MonNode>,
    fsid: uuid::Uuid,
    b: Bootstrap,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = node.raft.metrics();
    loop {
        if node.shared.maps().fsid.is_some() || *stop.borrow() {
            return;
        }
        let leader = metrics.borrow().current_leader;
        if leader == Some(node.id) {
            let cmd = Proposal {
                request: None,
                command: Command::Bootstrap {
                    fsid,
                    entities: b.entities.clone(),
                },
            };
            match node.raft.client_write(cmd).await {
                Ok(_) => {
                    tracing::info!(%fsid, "cluster bootstrapped");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "bootstrap not committed yet"),
            }
        }
        tokio::select! {
            _ = metrics.changed() => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

async fn export_metrics(node: Arc<MonNode>, stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        node.export_metrics();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
