//! The Cairn client library (monitor access today; objects with the RADOS issue) and the local
//! dev-cluster harness shared by `cairn dev` and the integration tests.

pub mod dev;
pub mod error;
pub mod monc;

pub use error::ClientError;
pub use monc::MonClient;
