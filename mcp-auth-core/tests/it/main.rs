//! Integration tests of `mcp-auth-core`, linked as one binary: one link of the crate and its
//! dependencies instead of one per file, which cost minutes and gigabytes of disk. Each file is a
//! module; nextest still runs every test in its own process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;
mod broken_stores;
mod conformance_memory;
mod debug_redaction;
mod encryption;
mod engine_assertion_grants;
mod engine_device;
mod engine_dpop;
mod engine_grant_safety;
mod engine_hostile;
mod engine_not_mcp;
mod engine_redirect_port;
mod engine_refresh;
mod engine_requirements;
mod engine_sep2352;
mod engine_tracing;
mod loopback_listener;
