//! Integration tests of `mcp-auth-store-redis`, linked as one binary: one link of the crate and its
//! dependencies instead of one per file, which cost minutes and gigabytes of disk. Each file is a
//! module; nextest still runs every test in its own process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bulk;
mod cluster_faults;
mod conformance;
mod deployments;
mod encrypted;
mod faults;
mod refresh_storm;
mod support;
mod workers;
