//! The Cairn client library (monitors: `monc`; objects: `rados`) and the local
//! dev-cluster harness shared by `cairn dev` and the integration tests.

pub mod dev;
pub mod dirty;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod monc;
pub mod rados;

pub use error::ClientError;
pub use monc::MonClient;
pub use rados::Rados;
