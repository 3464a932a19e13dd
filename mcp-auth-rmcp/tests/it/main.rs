//! Integration tests of `mcp-auth-rmcp`, linked as one binary: one link of the crate and its
//! dependencies instead of one per file, which cost minutes and gigabytes of disk. Each file is a
//! module; nextest still runs every test in its own process.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod dpop;
mod new_user;
mod rmcp_flow;
