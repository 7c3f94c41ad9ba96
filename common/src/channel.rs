//! gRPC channels to other Cairn processes, made alike everywhere.

use std::time::Duration;

use tonic::transport::Endpoint;

/// HTTP/2 pings on every connection, also idle ones: a peer that vanished without closing
/// (a container cut off the network, a machine powered off) fails the calls waiting on it
/// within interval + timeout, rather than when each call's own deadline runs out.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// An endpoint for `addr` (`host:port`); connections are made on first use and again after a
/// failure.
pub fn endpoint(addr: &str, connect_timeout: Duration) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("invalid address {addr:?}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}
