//! Integration tests: real `cairn-mon` processes on loopback, killed with SIGKILL.
//! One test binary; each module is one area of behaviour.

mod auth;
mod cli;
mod linearizable;
mod membership;
mod persistence;
mod quorum;
mod store_crash;
