//! `cargo xtask interop-setup`: what `mcp-auth-cli/tests/it/interop_oidc_provider.rs` runs on —
//! Node 22 (the conformance suite's, [`conformance::ensure_node`]) and `interop/oidc-provider/`
//! with its pinned npm dependencies (oidc-provider, jose) installed by `npm ci` from the committed
//! `package-lock.json`.
//!
//! The same step installs `interop/mcp-clients/` (the MCP Inspector CLI, mcp-remote and the
//! reference server `@modelcontextprotocol/server-everything`, pinned) for
//! `mcp-auth-cli/tests/it/proxy_interop.rs` and the proxy benchmark of `cargo xtask bench`
//! (`mcp-auth-cli/benches/proxy_vs_mcp_remote.rs`).
//!
//! The tests find them through [`NODE_ENV`], [`DIR_ENV`] and [`MCP_CLIENTS_ENV`]; `test-all`
//! installs them in the step before the tests and passes the variables to the tests step.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{conformance, project_root, services};

/// The Node binary the interop tests run the servers with.
pub(crate) const NODE_ENV: &str = "MCP_AUTH_TEST_NODE";
/// The directory holding `as.mjs`, `mcp.mjs` and their installed `node_modules/`.
pub(crate) const DIR_ENV: &str = "MCP_AUTH_TEST_OIDC_PROVIDER";
/// The interop package, relative to the workspace root.
const DIR: &str = "interop/oidc-provider";
/// The installed `interop/mcp-clients/` (MCP Inspector CLI, mcp-remote, server-everything).
pub(crate) const MCP_CLIENTS_ENV: &str = "MCP_AUTH_TEST_MCP_CLIENTS";
/// The MCP clients package, relative to the workspace root.
const MCP_CLIENTS_DIR: &str = "interop/mcp-clients";
/// mcp-remote's entry point inside the installed MCP clients package (run by `cargo xtask bench`
/// beside `mcp-auth proxy`).
pub(crate) const MCP_REMOTE: &str = "node_modules/mcp-remote/dist/proxy.js";
/// A copy of the lockfile `npm ci` last installed, inside `node_modules/`: when it equals the
/// committed lockfile, nothing is reinstalled.
const STAMP: &str = "node_modules/.mcp-auth-installed-lock.json";
/// The only place the lockfile may download from.
const REGISTRY: &str = "https://registry.npmjs.org/";

/// Where Node and the interop package are (installed or not).
pub(crate) struct Interop {
    pub(crate) node: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) mcp_clients: PathBuf,
}

impl Interop {
    /// The paths, without installing anything (the tests step's environment is built before
    /// the setup step runs).
    pub(crate) fn locate(root: &Path) -> Result<Self, String> {
        Ok(Self {
            node: conformance::node_path(root)?,
            dir: root.join(DIR),
            mcp_clients: root.join(MCP_CLIENTS_DIR),
        })
    }

    /// The variables the interop tests read.
    pub(crate) fn env(&self) -> [(&'static str, String); 3] {
        [
            (NODE_ENV, self.node.display().to_string()),
            (DIR_ENV, self.dir.display().to_string()),
            (MCP_CLIENTS_ENV, self.mcp_clients.display().to_string()),
        ]
    }
}

/// `cargo xtask interop-setup`: installs, then prints how to run the interop tests alone.
pub(crate) fn command(args: &[String]) -> Result<(), String> {
    if let Some(other) = args.first() {
        return Err(format!(
            "interop-setup: unknown option {other:?}\n\n{}",
            crate::USAGE
        ));
    }
    let interop = setup(&project_root())?;
    println!("==> interop: ready; to run the interop tests alone:");
    let vars: Vec<String> = interop
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "  {} cargo nextest run -p mcp-auth-cli --test interop_oidc_provider --test proxy_interop",
        vars.join(" ")
    );
    Ok(())
}

/// Installs Node 22 and the interop packages' dependencies (`npm ci`, skipped when the
/// installed lockfile is the committed one).
pub(crate) fn setup(root: &Path) -> Result<Interop, String> {
    let interop = Interop::locate(root)?;
    let node = conformance::ensure_node(root)?;
    install(&node, DIR, &interop.dir, &["as.mjs", "mcp.mjs"])?;
    install(
        &node,
        MCP_CLIENTS_DIR,
        &interop.mcp_clients,
        &[
            "node_modules/.bin/mcp-inspector",
            "node_modules/.bin/mcp-server-everything",
            MCP_REMOTE,
        ],
    )?;
    Ok(interop)
}

/// `npm ci` in `dir` (named `name`) unless its committed lockfile is installed already; then
/// checks that `required` files exist.
fn install(node: &Path, name: &str, dir: &Path, required: &[&str]) -> Result<(), String> {
    let lock_path = dir.join("package-lock.json");
    let manifest_path = dir.join("package.json");
    let lock = fs::read_to_string(&lock_path)
        .map_err(|e| format!("cannot read {}: {e}", lock_path.display()))?;
    let manifest = fs::read_to_string(&manifest_path)
        .map_err(|e| format!("cannot read {}: {e}", manifest_path.display()))?;
    check_manifest(&manifest).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    check_lockfile(&lock).map_err(|e| format!("{}: {e}", lock_path.display()))?;

    let stamp = dir.join(STAMP);
    let installed = fs::read_to_string(&stamp).is_ok_and(|s| s == lock);
    if installed && required.iter().all(|r| dir.join(r).exists()) {
        println!(
            "==> interop: dependencies of {name} already installed (Node {})",
            node.display()
        );
        return Ok(());
    }

    services::ensure_installed("npm", &["nodejs", "npm"])?;
    println!("==> interop: npm ci in {}", dir.display());
    // npm runs on Node 22 (first on PATH); no install scripts: nothing here needs one.
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"])
        .current_dir(dir)
        .env("PATH", path_with(node))
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !status.success() {
        return Err(format!("npm ci in {} failed ({status})", dir.display()));
    }
    for file in required {
        if !dir.join(file).exists() {
            return Err(format!("{name}/{file} is missing"));
        }
    }
    fs::write(&stamp, &lock).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(())
}

/// PATH with `node`'s directory first.
fn path_with(node: &Path) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = node.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_default()
}

/// Every download URL in the lockfile (`"resolved"`) is on the npm registry, and every package
/// carries an `integrity` hash.
fn check_lockfile(text: &str) -> Result<(), String> {
    let mut packages = 0usize;
    let mut integrity = 0usize;
    for line in text.lines().map(str::trim) {
        if let Some(url) = string_field(line, "resolved")
            && !url.starts_with(REGISTRY)
        {
            return Err(format!(
                "resolves a package outside the npm registry: {url}"
            ));
        }
        if line.starts_with("\"node_modules/") && line.ends_with('{') {
            packages += 1;
        }
        if string_field(line, "integrity").is_some() {
            integrity += 1;
        }
    }
    if packages == 0 {
        return Err("lists no packages".to_owned());
    }
    if integrity != packages {
        return Err(format!(
            "{packages} packages but {integrity} integrity hashes"
        ));
    }
    Ok(())
}

/// Every dependency in `package.json` is pinned to an exact version (`1.2.3`, no range).
fn check_manifest(text: &str) -> Result<(), String> {
    let mut in_dependencies = false;
    let mut pinned = 0usize;
    for line in text.lines().map(str::trim) {
        if line.starts_with("\"dependencies\"") || line.starts_with("\"devDependencies\"") {
            in_dependencies = true;
            continue;
        }
        if in_dependencies && line.starts_with('}') {
            in_dependencies = false;
            continue;
        }
        if in_dependencies {
            let Some((name, version)) = line.trim_end_matches(',').split_once(':') else {
                continue;
            };
            let version = version.trim().trim_matches('"');
            let exact = version.split('.').count() == 3
                && version
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !exact {
                return Err(format!(
                    "dependency {} is not pinned to an exact version: {version:?}",
                    name.trim()
                ));
            }
            pinned += 1;
        }
    }
    if pinned == 0 {
        return Err("declares no dependencies".to_owned());
    }
    Ok(())
}

/// The value of `"name": "value"` on one lockfile line.
fn string_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(&format!("\"{name}\":"))?.trim();
    rest.trim_end_matches(',')
        .strip_prefix('"')?
        .strip_suffix('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_lockfile_and_manifest_are_pinned_to_the_registry() {
        let dir = project_root().join(DIR);
        let lock = fs::read_to_string(dir.join("package-lock.json")).unwrap();
        check_lockfile(&lock).unwrap();
        let manifest = fs::read_to_string(dir.join("package.json")).unwrap();
        check_manifest(&manifest).unwrap();
        assert!(
            manifest.contains("\"oidc-provider\": \"9.13.3\""),
            "{manifest}"
        );
        assert!(lock.contains("\"node_modules/oidc-provider\": {"));
        let dir = project_root().join(MCP_CLIENTS_DIR);
        let lock = fs::read_to_string(dir.join("package-lock.json")).unwrap();
        check_lockfile(&lock).unwrap();
        let manifest = fs::read_to_string(dir.join("package.json")).unwrap();
        check_manifest(&manifest).unwrap();
        assert!(manifest.contains("\"@modelcontextprotocol/inspector\": \"2.12.0\""));
        assert!(manifest.contains("\"@modelcontextprotocol/server-everything\": \"2026.8.31\""));
        assert!(manifest.contains("\"mcp-remote\": \"0.15.1\""));
        assert!(lock.contains("\"node_modules/mcp-remote\": {"));
    }

    #[test]
    fn foreign_downloads_and_ranges_are_refused() {
        let lock = r#"{
  "packages": {
    "node_modules/a": {
      "version": "1.0.0",
      "resolved": "https://registry.npmjs.org/a/-/a-1.0.0.tgz",
      "integrity": "sha512-x"
    },
    "node_modules/b": {
      "version": "1.0.0",
      "resolved": "https://example.com/b.tgz",
      "integrity": "sha512-y"
    }
  }
}"#;
        let err = check_lockfile(lock).unwrap_err();
        assert!(err.contains("https://example.com/b.tgz"), "{err}");
        let without_resolved =
            lock.replace("      \"resolved\": \"https://example.com/b.tgz\",\n", "");
        check_lockfile(&without_resolved).unwrap();
        let unhashed = without_resolved.replace("      \"integrity\": \"sha512-y\"\n", "");
        assert!(check_lockfile(&unhashed).is_err());

        let manifest =
            "{\n  \"dependencies\": {\n    \"a\": \"1.2.3\",\n    \"b\": \"^1.2.3\"\n  }\n}";
        let err = check_manifest(manifest).unwrap_err();
        assert!(err.contains("\"b\""), "{err}");
        check_manifest(&manifest.replace("^1.2.3", "1.2.4")).unwrap();
    }
}
