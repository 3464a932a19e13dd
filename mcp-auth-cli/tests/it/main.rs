//! Integration tests of `mcp-auth-cli`, linked as one binary: one link of the crate and its
//! dependencies instead of one per file, which cost minutes and gigabytes of disk. Each file is a
//! module; nextest still runs every test in its own process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aws;
mod browser;
mod cli;
mod cli_surface;
mod device;
mod dpop;
mod encryption;
mod interop_oidc_provider;
mod network;
mod proxy;
mod proxy_interop;
mod stdio_client;
