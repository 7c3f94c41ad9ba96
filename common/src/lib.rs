//! Shared by every Cairn crate: the wire protocol, the cluster maps, authentication, the
//! configuration format, health computation and telemetry.

pub mod auth;
pub mod channel;
pub mod codec;
pub mod command;
pub mod config;
pub mod df;
pub mod fsmap;
pub mod fsname;
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

    impl object_op::Op {
        /// The operation's name, for metrics and logs.
        pub fn name(&self) -> &'static str {
            use object_op::Op;
            match self {
                Op::WriteFull(_) => "write_full",
                Op::Write(_) => "write",
                Op::Append(_) => "append",
                Op::Read(_) => "read",
                Op::Stat(_) => "stat",
                Op::Remove(_) => "remove",
                Op::Truncate(_) => "truncate",
                Op::SetXattr(_) => "set_xattr",
                Op::RmXattr(_) => "rm_xattr",
                Op::GetXattrs(_) => "get_xattrs",
                Op::OmapSet(_) => "omap_set",
                Op::OmapRm(_) => "omap_rm",
                Op::OmapGet(_) => "omap_get",
                Op::List(_) => "list",
                Op::Scrub(_) => "scrub",
                Op::PgQuery(_) => "pg_query",
            }
        }
    }
}

/// Milliseconds since the Unix epoch, the time base of tickets and map stamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
