//! Project automation. `cargo xtask test-all` is the one command that proves the workspace:
//! formatting, lints, docs, every test and doc test, with the services they need started here,
//! and last the official MCP conformance suite (`cargo xtask conformance`).

mod conformance;
mod interop;
mod services;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test-all [--keep-going]   fmt check, clippy -D warnings, docs, interop setup, nextest,
                            doc tests, conformance (starts the services the tests need;
                            --keep-going runs every step and reports all failures at the end)
  interop-setup             installs what the interop tests against oidc-provider
                            (mcp-auth-cli/tests/it/interop_oidc_provider.rs) run on: Node 22
                            (as for conformance) and `npm ci` in interop/oidc-provider/
                            (oidc-provider 9.13.3, pinned by its package-lock.json) and in
                            interop/mcp-clients/ (MCP Inspector 2.12.0, server-everything, for
                            mcp-auth-cli/tests/it/proxy_interop.rs; mcp-remote 0.15.1, for the
                            proxy benchmark of `bench`); prints the MCP_AUTH_TEST_NODE,
                            MCP_AUTH_TEST_OIDC_PROVIDER and MCP_AUTH_TEST_MCP_CLIENTS values
                            that run those tests alone
  conformance [--keep-going]
                            the official MCP conformance suite, pinned to
                            @modelcontextprotocol/conformance@0.2.0-alpha.12 on Node 22
                            (both installed with npm into target/conformance-cache/ on first
                            use), against `mcp-auth-rmcp --example conformance-client`. Runs:
                            --requirements 2026-07-28, --suite auth --spec-version 2025-11-25,
                            --suite backcompat, and each auth extension scenario alone.
                            Results (checks.json per scenario, runner output) go to
                            target/conformance-results/<run>/; a table of every scenario is
                            printed. Fails on a FAILURE check (or no SUCCESS check) in a
                            scenario that must pass, or a scenario that left no results.
                            Every scenario must pass, each auth extension scenario included
                            (nothing is excused), except those the 2026-07-28 requirements
                            run but do not score: reported, never fatal.
                            Stops after the first failing run unless --keep-going.
                            MCP_AUTH_CONFORMANCE_CLIENT=/path/to/client tests that binary
                            instead of building the example.
  bench                     what users run, beside the cheapest baseline of each
                            (mcp-auth-bench, a Redis server is started): access_token()
                            over memory, SQLite and Redis vs a map lookup, rmcp's
                            in-memory get_access_token(), one SELECT and one HGET, plus a
                            1000-task refresh storm; the `mcp-auth token` process vs a
                            minimal reader of the row (wall time, peak RSS); store get/put
                            at 1k and 100k records, Redis Cluster included, and how 10k
                            namespaces spread over its masters (JSON in target/bench/access_token.json,
                            token_process.json, store_scale.json); `status` and `migrate`
                            at 1k and 10k servers vs one SELECT (bulk.json). Then store
                            benchmarks: medians of each store beside the raw
                            client doing the same work, and their ratio; for the AWS
                            Secrets Manager store (against a moto server it starts) the
                            AWS API calls of each operation, cache on and off; then
                            `mcp-auth proxy` beside mcp-remote (interop/mcp-clients/, set
                            up as by interop-setup) in front of server-everything behind a
                            testkit gate, same token: time to the first tools/list answer,
                            per-call overhead over 1000 echo calls against direct HTTP, and
                            peak RSS, with ratios (also written to
                            target/bench/proxy_vs_mcp_remote.json). Prints only; nothing is
                            asserted about time
  redis-services            starts what the Redis store's tests run against (a plain
                            redis-server with an ACL user, a 3-master Redis Cluster with a
                            replica each, a TLS-only redis-server with a CA made at start),
                            prints the MCP_AUTH_TEST_REDIS_* variables that point tests at
                            them, and keeps them up until Enter (or end of input)
  help                      this text
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test-all") => test_all(&args[1..]),
        Some("conformance") => conformance::command(&args[1..]),
        Some("interop-setup") => interop::command(&args[1..]),
        Some("bench") => bench(),
        Some("redis-services") => redis_services(),
        Some("help" | "--help" | "-h") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `$CARGO` when run through cargo, so the same toolchain is used throughout.
fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Environment for the cargo builds `test-all` runs: no incremental compilation unless the caller
/// asks for it. Incremental state is most of a fresh debug `target/` (2.3 GB of 5.5 GB measured on
/// a fresh clone) and buys nothing in a run that builds everything once; a CI disk ran out of
/// space on it.
pub(crate) fn build_env() -> Vec<(String, String)> {
    if env::var_os("CARGO_INCREMENTAL").is_some() {
        Vec::new()
    } else {
        vec![("CARGO_INCREMENTAL".to_owned(), "0".to_owned())]
    }
}

/// What a fresh run of `test-all` writes, measured on a fresh clone: about 1.8 GB of debug
/// builds, 0.55 GB of npm and pip installs under `target/`, and Debian's chromium.
const DISK_NEEDED_GIB: f64 = 3.5;

/// Prints the free space where `target/` lives, with a warning when a fresh run would not fit
/// (a build that runs out of disk fails with errors that do not say so).
fn report_free_disk() {
    let root = project_root();
    let output = Command::new("df").args(["-Pk"]).arg(&root).output();
    let free_kib = output.ok().and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .nth(1)?
            .split_whitespace()
            .nth(3)?
            .parse::<u64>()
            .ok()
    });
    let Some(free_kib) = free_kib else {
        return;
    };
    let free_gib = free_kib as f64 / (1024.0 * 1024.0);
    println!("==> disk: {free_gib:.1} GiB free at {}", root.display());
    if free_gib < DISK_NEEDED_GIB {
        println!(
            "==> warning: a fresh run needs about {DISK_NEEDED_GIB} GiB (builds, npm and pip \
             installs, chromium); with {free_gib:.1} GiB free, steps may fail with \
             'No space left on device'. Free space, or remove old builds with `cargo clean`."
        );
    }
}

/// One step of `test-all`: a command, the environment it needs, and what to tell the developer
/// when it fails.
struct Step {
    name: &'static str,
    action: Action,
    env: Vec<(String, String)>,
    /// A command the cargo invocation runs inside (e.g. private keyring sessions).
    wrapper: Vec<String>,
    on_failure: &'static str,
}

/// What a step runs.
enum Action {
    /// `cargo <args>`.
    Cargo(Vec<&'static str>),
    /// An xtask routine run in this process, shown as `cargo xtask <command>`.
    Routine {
        command: &'static str,
        routine: Box<dyn Fn() -> Result<(), String>>,
    },
}

impl Step {
    fn new(name: &'static str, args: &[&'static str], on_failure: &'static str) -> Self {
        Self {
            name,
            action: Action::Cargo(args.to_vec()),
            env: build_env(),
            wrapper: Vec::new(),
            on_failure,
        }
    }

    /// A step that calls `routine` directly (it prints its own progress and reasons).
    fn routine(
        name: &'static str,
        command: &'static str,
        routine: impl Fn() -> Result<(), String> + 'static,
        on_failure: &'static str,
    ) -> Self {
        Self {
            name,
            action: Action::Routine {
                command,
                routine: Box::new(routine),
            },
            env: Vec::new(),
            wrapper: Vec::new(),
            on_failure,
        }
    }

    /// Runs the cargo command inside `wrapper` (program and arguments).
    fn wrapped(mut self, wrapper: Vec<String>) -> Self {
        self.wrapper = wrapper;
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    fn envs(mut self, vars: &[(&'static str, String)]) -> Self {
        for (key, value) in vars {
            self = self.env(key, value);
        }
        self
    }

    fn run(&self) -> Result<Duration, String> {
        let args = match &self.action {
            Action::Cargo(args) => args,
            Action::Routine { command, routine } => {
                println!("\n==> {}: cargo xtask {command}", self.name);
                let started = Instant::now();
                return match routine() {
                    Ok(()) => Ok(started.elapsed()),
                    Err(message) => Err(format!(
                        "{} failed ({message}): {}",
                        self.name, self.on_failure
                    )),
                };
            }
        };
        let prefix = if self.wrapper.is_empty() {
            String::new()
        } else {
            format!("{} ", self.wrapper.join(" "))
        };
        println!("\n==> {}: {prefix}cargo {}", self.name, args.join(" "));
        let started = Instant::now();
        let mut command = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(cargo());
                c
            }
            None => Command::new(cargo()),
        };
        let status = command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(project_root())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if status.success() {
            Ok(started.elapsed())
        } else {
            Err(format!(
                "{} failed ({status}): {}",
                self.name, self.on_failure
            ))
        }
    }
}

fn test_all(args: &[String]) -> Result<(), String> {
    let mut keep_going = false;
    for arg in args {
        match arg.as_str() {
            "--keep-going" | "-k" => keep_going = true,
            other => return Err(format!("test-all: unknown option {other:?}\n\n{USAGE}")),
        }
    }
    report_free_disk();
    ensure_nextest()?;
    // Real services for the backend tests; stopped when `_redis` and `_moto` drop, on every exit
    // path.
    let (_redis, redis_url) = services::start_redis()?;
    // Cluster, TLS and ACL deployments of Redis (MCP_AUTH_TEST_REDIS_CLUSTER_URL, ..._TLS_*,
    // ..._ACL_URL); stopped when dropped.
    let redis_deployments = services::start_redis_deployments(redis_port(&redis_url)?)?;
    let keyrings = services::keyring_session()?;
    let (_moto, aws_endpoint) = services::start_moto()?;
    let aws_env = services::aws_test_env(&aws_endpoint);
    // Installed by the "interop setup" step; the tests step only needs the paths.
    let root = project_root();
    let interop = interop::Interop::locate(&root)?;
    let interop_env = interop.env();
    // The browser-path tests drive headless Chromium as the user's browser.
    let chromium = services::chromium()?.display().to_string();

    let steps = vec![
        Step::new(
            "format",
            &["fmt", "--all", "--", "--check"],
            "run `cargo fmt --all` and commit the result",
        ),
        Step::new(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
            "fix the lints above (warnings are errors)",
        ),
        Step::new(
            "docs",
            &["doc", "--workspace", "--all-features", "--no-deps"],
            "fix the rustdoc warnings above (broken links, missing docs)",
        )
        .env("RUSTDOCFLAGS", "-D warnings"),
        // Every publishable crate packages (metadata, license files, README, versioned path
        // dependencies) and resolves against crates.io plus the workspace's other packages.
        // `--no-verify`: verifying builds every package's copy in a target directory of its own,
        // from scratch (well over 3 minutes on 2 cores); the steps above and below build the same
        // sources. `--allow-dirty`: test-all runs before a commit.
        Step::new(
            "publish dry run",
            &[
                "publish",
                "--dry-run",
                "--workspace",
                "--no-verify",
                "--allow-dirty",
            ],
            "a crate cannot be published: see the error above (description, license, a \
             `version` on a path dependency, a file missing from the package, `publish = false` \
             for a crate that must stay private)",
        ),
        Step::routine(
            "interop setup",
            "interop-setup",
            move || interop::setup(&root).map(drop),
            "Node 22 or the npm dependencies of interop/oidc-provider or interop/mcp-clients \
             could not be installed \
             (see above; rerun alone with `cargo xtask interop-setup`)",
        ),
        Step::new(
            "tests",
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ],
            "a test failed; rerun it alone with `cargo nextest run -E 'test(NAME)' --all-features` \
             (backend tests need MCP_AUTH_TEST_REDIS_URL and MCP_AUTH_TEST_AWS_ENDPOINT (a moto \
             server), the interop tests MCP_AUTH_TEST_NODE \
             MCP_AUTH_TEST_OIDC_PROVIDER and MCP_AUTH_TEST_MCP_CLIENTS, the browser tests \
             MCP_AUTH_TEST_CHROMIUM (e.g. /usr/bin/chromium); test-all sets them, and \
             `cargo xtask interop-setup` prints the interop ones)",
        )
        .env("MCP_AUTH_TEST_REDIS_URL", &redis_url)
        .envs(&redis_deployments.env)
        .env("MCP_AUTH_TEST_CHROMIUM", &chromium)
        .env(interop_env[0].0, &interop_env[0].1)
        .env(interop_env[1].0, &interop_env[1].1)
        .env(interop_env[2].0, &interop_env[2].1)
        .envs(&aws_env)
        .wrapped(keyrings),
        Step::new(
            "doc tests",
            &["test", "--doc", "--workspace", "--all-features"],
            "a documentation example failed to compile or run",
        )
        .env("MCP_AUTH_TEST_REDIS_URL", &redis_url)
        .envs(&aws_env),
        Step::routine(
            "conformance",
            if keep_going {
                "conformance --keep-going"
            } else {
                "conformance"
            },
            move || conformance::run(keep_going),
            "see the conformance table and problems above; results are in \
             target/conformance-results/<run>/ (rerun alone with `cargo xtask conformance`)",
        ),
    ];

    let mut passed = Vec::new();
    let mut failed = Vec::new();
    for step in &steps {
        match step.run() {
            Ok(took) => passed.push((step.name, took)),
            Err(message) => {
                eprintln!("\nxtask: {message}");
                failed.push((step.name, message));
                if !keep_going {
                    break;
                }
            }
        }
    }

    println!("\n==> summary");
    for (name, took) in &passed {
        println!("  ok    {name} ({:.1}s)", took.as_secs_f64());
    }
    for (name, message) in &failed {
        println!("  FAIL  {name}: {message}");
    }
    let skipped = steps.len() - passed.len() - failed.len();
    if skipped > 0 {
        println!("  ({skipped} step(s) not run; use --keep-going to run every step)");
    }
    if failed.is_empty() {
        println!("all {} steps passed", passed.len());
        Ok(())
    } else {
        Err(format!("{} step(s) failed", failed.len()))
    }
}

/// The port of the `redis://127.0.0.1:PORT/` URL that [`services::start_redis`] returns.
fn redis_port(url: &str) -> Result<u16, String> {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {url}"))
}

/// `cargo xtask redis-services`: every Redis deployment the tests use, until Enter.
fn redis_services() -> Result<(), String> {
    let (_redis, redis_url) = services::start_redis()?;
    let deployments = services::start_redis_deployments(redis_port(&redis_url)?)?;
    println!("\nexport MCP_AUTH_TEST_REDIS_URL='{redis_url}'");
    for (var, value) in &deployments.env {
        println!("export {var}='{value}'");
    }
    println!("\n(press Enter to stop them)");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}

/// Runs every store benchmark and the proxy benchmark (release builds) and lets each print its
/// table.
fn bench() -> Result<(), String> {
    // The Redis rows of the hot-path and scale benchmarks, and the release CLI that the
    // token-process benchmark spawns.
    let (_redis, redis_url) = services::start_redis()?;
    // The Redis Cluster rows of the scale benchmark (3 masters, 1 replica each).
    let (_cluster, cluster_url) = services::start_redis_cluster(3, 1)?;
    let benches = [
        Step::new(
            "release mcp-auth binary",
            &[
                "build",
                "--release",
                "--package",
                "mcp-auth-cli",
                "--bin",
                "mcp-auth",
            ],
            "the release mcp-auth binary (for the token_process benchmark) failed to build",
        ),
        Step::new(
            "sqlite store benchmark",
            &[
                "bench",
                "--package",
                "mcp-auth-store-sqlite",
                "--bench",
                "store",
            ],
            "the SQLite benchmark failed to build or run",
        ),
        Step::new(
            "access_token() benchmark",
            &[
                "bench",
                "--package",
                "mcp-auth-bench",
                "--bench",
                "access_token",
            ],
            "the access_token() benchmark failed to build or run",
        )
        .env("MCP_AUTH_TEST_REDIS_URL", &redis_url),
        Step::new(
            "mcp-auth token process benchmark",
            &[
                "bench",
                "--package",
                "mcp-auth-bench",
                "--bench",
                "token_process",
            ],
            "the token process benchmark failed to build or run",
        ),
        Step::new(
            "bulk commands benchmark (status, migrate)",
            &[
                "bench",
                "--package",
                "mcp-auth-store-sqlite",
                "--bench",
                "bulk",
            ],
            "the bulk benchmark failed to build or run (its JSON is in target/bench/bulk.json)",
        ),
        Step::new(
            "store scale benchmark",
            &[
                "bench",
                "--package",
                "mcp-auth-bench",
                "--bench",
                "store_scale",
            ],
            "the store scale benchmark failed to build or run",
        )
        .env("MCP_AUTH_TEST_REDIS_URL", &redis_url)
        .env("MCP_AUTH_TEST_REDIS_CLUSTER_URL", &cluster_url),
    ];
    for step in &benches {
        step.run()?;
    }
    {
        // The AWS Secrets Manager store against moto (latency is moto's, the call counts are
        // AWS's); moto stops at the end of this block.
        let (_moto, aws_endpoint) = services::start_moto()?;
        Step::new(
            "aws store benchmark",
            &[
                "bench",
                "--package",
                "mcp-auth-store-aws",
                "--bench",
                "store",
            ],
            "the AWS store benchmark failed to build or run",
        )
        .envs(&services::aws_test_env(&aws_endpoint))
        .run()?;
    }
    // `mcp-auth proxy` beside mcp-remote, both in front of server-everything: Node 22 and
    // interop/mcp-clients/ (mcp-remote, server-everything) come from the interop setup.
    let interop = interop::setup(&project_root())?;
    Step::new(
        "proxy vs mcp-remote benchmark",
        &[
            "bench",
            "--package",
            "mcp-auth-cli",
            "--bench",
            "proxy_vs_mcp_remote",
        ],
        "the proxy benchmark failed to build or run (Node 22 and mcp-remote come from \
         `cargo xtask interop-setup`; the table's JSON is in target/bench/)",
    )
    .envs(&interop.env())
    .run()?;
    Ok(())
}

/// cargo-nextest ships with this machine's toolchain; install it if a machine lacks it.
fn ensure_nextest() -> Result<(), String> {
    let present = Command::new(cargo())
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    println!("==> installing cargo-nextest (not found)");
    let status = Command::new(cargo())
        .args(["install", "cargo-nextest", "--locked"])
        .status()
        .map_err(|e| format!("cannot run cargo install: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("cargo install cargo-nextest failed; install it by hand".to_owned())
    }
}
