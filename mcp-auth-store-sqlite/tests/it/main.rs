//! Integration tests of `mcp-auth-store-sqlite`, linked as one binary: one link of the crate and its
//! dependencies instead of one per file, which cost minutes and gigabytes of disk. Each file is a
//! module; nextest still runs every test in its own process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bulk;
mod conformance;
mod damaged_and_read_only;
mod dpop_restart;
mod encrypted;
mod grant_safety;
mod multiprocess;
mod no_secret_left_behind;
mod open_settings;
mod refresh_storm;
mod schema_migration;
mod versions_cache;
