//! Diagnostic logs: `-v`/`-vv`/`-vvv` (or `RUST_LOG`) to a `tracing` subscriber on stderr.
//!
//! Stdout is never written here: it carries the token of `token` and the JSON-RPC of `proxy`.
//! Without `-v` and without `RUST_LOG` no subscriber is installed (nothing is logged, and `token`
//! spends nothing on it).

use tracing_subscriber::EnvFilter;

/// The filter for `verbose` (`-v` count): info, debug, then trace for the mcp-auth crates only
/// (the target prefix `mcp_auth` matches this binary's `mcp_auth::…` and every `mcp_auth_*`
/// crate); `None` for 0. Other crates (HTTP, TLS) stay quiet: `RUST_LOG` reaches them.
fn directives(verbose: u8) -> Option<&'static str> {
    match verbose {
        0 => None,
        1 => Some("mcp_auth=info"),
        2 => Some("mcp_auth=debug"),
        _ => Some("mcp_auth=trace"),
    }
}

/// Installs the stderr subscriber: `RUST_LOG` when it is set and not empty (it wins over `-v`),
/// else the level of `verbose`.
pub(crate) fn init(verbose: u8) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty());
    let filter = match from_env {
        Some(value) => match EnvFilter::builder().parse(&value) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("mcp-auth: warning: RUST_LOG ignored ({e})");
                match directives(verbose) {
                    Some(d) => EnvFilter::new(d),
                    None => return,
                }
            }
        },
        None => match directives(verbose) {
            Some(d) => EnvFilter::new(d),
            None => return,
        },
    };
    // A second subscriber (none is expected) is not worth failing a command for.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_count() {
        assert_eq!(directives(0), None);
        assert_eq!(directives(1), Some("mcp_auth=info"));
        assert_eq!(directives(2), Some("mcp_auth=debug"));
        assert_eq!(directives(3), Some("mcp_auth=trace"));
        assert_eq!(directives(9), Some("mcp_auth=trace"));
        for verbose in 1..=3 {
            let d = directives(verbose).unwrap_or_default();
            assert!(EnvFilter::builder().parse(d).is_ok(), "{d}");
        }
    }
}
