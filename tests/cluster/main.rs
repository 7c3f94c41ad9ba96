//! Integration tests: real `cairn-mon`, `cairn-osd` and `cairn-mds` processes on loopback, killed with
//! SIGKILL.
//! One test binary; each module is one area of behaviour.

mod auth;
mod cli;
mod containers;
mod fs;
mod healing;
mod linearizable;
mod manifests;
mod membership;
mod persistence;
mod quorum;
mod rados;
mod scrub;
mod store_crash;
mod thrash;
