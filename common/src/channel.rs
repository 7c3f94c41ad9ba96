//! gRPC channels to other Cairn processes, made alike everywhere.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};

use tonic::transport::{Endpoint, Server};

/// HTTP/2 pings on every connection, also idle ones: a peer that vanished without closing
/// (a container cut off the network, a machine powered off) fails the calls waiting on it
/// within interval + timeout, rather than when each call's own deadline runs out.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest HTTP/2 frame each side accepts (the protocol's default is 16 KiB). Object and
/// shard data then cross a connection in a few frames, each one write and one read, rather
/// than a system call per 16 KiB: at 16 KiB, loopback TCP and h2's framing took about half an
/// OSD's CPU during recovery.
pub const FRAME_BYTES_MAX: u32 = 1 << 20;

/// A gRPC server built as every Cairn daemon builds it.
pub fn server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .max_frame_size(FRAME_BYTES_MAX)
}

/// An endpoint for `addr` (`host:port`); connections are made on first use and again after a
/// failure.
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .max_frame_size(FRAME_BYTES_MAX)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The address peers and clients reach a daemon at: `public` (an IP) with the listening port,
/// else the listening address, else (listening on every interface, as in a container) the
/// local address of the route towards the mons.
pub async fn announced_addr(
    public: &str,
    local: SocketAddr,
    monitors: &[crate::config::MonEndpoint],
) -> anyhow::Result<SocketAddr> {
    if !public.is_empty() {
        let ip: std::net::IpAddr = public
            .parse()
            .context("the public address must be an IP address")?;
        return Ok(SocketAddr::new(ip, local.port()));
    }
    if !local.ip().is_unspecified() {
        return Ok(local);
    }
    for mon in monitors {
        match route_source(&mon.addr).await {
            Ok(ip) => return Ok(SocketAddr::new(ip, local.port())),
            Err(e) => tracing::warn!(mon = %mon.addr, error = %e, "no route towards this mon"),
        }
    }
    bail!("listening on every interface and no mon is reachable to pick the address others should use: set the public address")
}

/// The local address the kernel would send from to reach `addr` (a connected UDP socket
/// sends nothing).
async fn route_source(addr: &str) -> anyhow::Result<std::net::IpAddr> {
    let target = tokio::net::lookup_host(addr)
        .await?
        .next()
        .context("the name resolves to no address")?;
    let any: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = tokio::net::UdpSocket::bind(any).await?;
    socket.connect(target).await?;
    Ok(socket.local_addr()?.ip())
}
