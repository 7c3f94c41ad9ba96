//! Shared by every Cairn crate: the wire protocol, the cluster maps, authentication, the
//! configuration format, health computation and telemetry.

pub mod auth;
pub mod channel;
pub mod command;
pub mod config;
pub mod fsmap;
pub mod fsops;
pub mod health;
pub mod keyring;
pub mod lifecycle;
pub mod maps;
pub mod pg_states;
pub mod placement;
pub mod status;
pub mod telemetry;

/// The gRPC protocol, generated at build time from `proto/cairn.proto`.
pub mod proto {
    tonic::include_proto!("cairn.v1");
}

/// Milliseconds since the Unix epoch, the time base of tickets and map stamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
