//! Link the `mcp-auth` binary with packed relative relocations (`DT_RELR`) where the C library
//! can load them.
//!
//! `mcp-auth token` is started once per request by headers helpers, so process start is on the
//! hot path. A position-independent executable this size carries ~15 000 relative relocations;
//! as classic `RELA` entries they are ~370 KB the dynamic loader reads page by page on every
//! start, as `RELR` ~4 KB. Measured by `cargo bench -p mcp-auth-bench --bench token_process`:
//! 2.4 ms → 2.0 ms per `token` call (issue 13). ASLR is kept (the binary stays PIE).
//!
//! glibc loads `DT_RELR` from 2.36 on, and a binary linked this way requires it (the
//! `GLIBC_ABI_DT_RELR` symbol version), so the flag is added only when building for the machine
//! that builds (not cross-compiling) on Linux with glibc ≥ 2.36, with the default linker: a
//! linker configured for the target (`RUSTC_LINKER`, as `cargo zigbuild` or a sysroot toolchain
//! set, which may link against an older glibc than the one `getconf` reports), a linker given
//! in `RUSTFLAGS`, or a static C runtime (`crt-static`) leaves the flag out.
//! `MCP_AUTH_NO_RELR=1` turns it off too (to build a binary for older systems).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MCP_AUTH_NO_RELR");
    if std::env::var_os("MCP_AUTH_NO_RELR").is_some_and(|v| v != "0") {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let native = var("HOST") == var("TARGET");
    if !native || var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    let custom_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || var("CARGO_ENCODED_RUSTFLAGS").contains("linker");
    let static_crt = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    if custom_linker || static_crt {
        return;
    }
    if glibc_version().is_some_and(|v| v >= (2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build machine's glibc version, from `getconf GNU_LIBC_VERSION` ("glibc 2.36").
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.trim().strip_prefix("glibc ")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}
