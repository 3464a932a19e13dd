//! `cargo xtask bench`: the `mcp-auth token URL` process, as scripts and MCP client
//! configurations run it, on a valid token in a SQLite store, beside the least a process can do to
//! read that token: `minimal_reader` (this crate's `src/bin/minimal_reader.rs`: rusqlite opens the
//! file, one `SELECT` of the row, its length printed).
//!
//! The store is made by the CLI itself (`mcp-auth --store sqlite:DB login URL --headless` against a
//! testkit authorization server and MCP server). Measured: wall time from spawn to exit, median of
//! 30 spawns of each (interleaved, after a warm-up), their ratio; peak RSS of each (GNU time's
//! `%M`, median of 5 runs; skipped with a note when `/usr/bin/time` is missing, Debian package
//! `time`); and the HTTP requests the authorization server saw during the runs, which must be 0.
//! `MCP_AUTH_BENCH_HOLD=SECS` prints both command lines and keeps the store and servers up that
//! long before timing, for profiling by hand.
//!
//! The CLI is the release binary: `MCP_AUTH_BIN`, else `target/release/mcp-auth` (`cargo build
//! --release -p mcp-auth-cli --bin mcp-auth`). Writes `target/bench/token_process.json`. A
//! benchmark, not a test: it asserts nothing about time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mcp_auth_bench::{Table, median, millis, ratio, target_dir};
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{IssuerId, Namespace, ResourceUri, TokenKey};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};
use serde_json::json;

/// Timed spawns of each process.
const SPAWNS: usize = 30;
/// Untimed spawns of each first.
const WARMUP_SPAWNS: usize = 3;
/// Runs of each under GNU time for the peak RSS.
const RSS_RUNS: usize = 5;
const GNU_TIME: &str = "/usr/bin/time";

/// The release CLI: `MCP_AUTH_BIN`, else `target/release/mcp-auth`.
fn cli_binary() -> PathBuf {
    let bin = std::env::var_os("MCP_AUTH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release").join("mcp-auth"));
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p mcp-auth-cli --bin mcp-auth` \
         (or set MCP_AUTH_BIN)",
        bin.display()
    );
    bin
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One of the two processes.
struct Process {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// What a correct run prints on stdout.
    expected_stdout: String,
}

impl Process {
    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        // As in the CLI's own tests: the testkit servers are plain-HTTP loopback servers.
        c.env_remove("MCP_AUTH_STORE")
            .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    fn check(&self, out: &Output) {
        assert!(
            out.status.success(),
            "{} failed: {}",
            self.name,
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), self.expected_stdout, "{}", self.name);
    }

    /// One spawn to exit, checked; its wall time.
    fn run(&self) -> Duration {
        let mut c = self.command(&self.program);
        c.args(&self.args);
        let t = Instant::now();
        let out = c.output().unwrap();
        let took = t.elapsed();
        self.check(&out);
        took
    }

    /// Peak RSS of one run in KiB, measured by GNU time (`-f %M`, written to a file so it cannot
    /// mix with the program's own stderr).
    fn peak_rss_kib(&self, scratch: &Path) -> u64 {
        let report = scratch.join(format!("{}.rss", self.name.replace(' ', "_")));
        let mut c = self.command(Path::new(GNU_TIME));
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&report)
            .arg(&self.program)
            .args(&self.args);
        let out = c.output().unwrap();
        self.check(&out);
        std::fs::read_to_string(&report)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

fn main() {
    let mcp_auth = cli_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (as1, mcp) = rt.block_on(async {
        let as1 = AuthServer::start(AuthServerConfig::default())
            .await
            .unwrap();
        let mcp = McpServer::start(McpServerConfig {
            authorization_servers: vec![as1.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
        (as1, mcp)
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let store_arg = format!("sqlite:{}", db.display());

    // One login with the CLI (the testkit authorizes without a browser).
    let login = Command::new(&mcp_auth)
        .args(["--store", &store_arg, "login", &mcp.url(), "--headless"])
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(login.status.success(), "login: {}", text(&login.stderr));
    let token_args = vec![
        "--store".to_owned(),
        store_arg.clone(),
        "token".to_owned(),
        mcp.url(),
    ];
    let first = Command::new(&mcp_auth)
        .args(&token_args)
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .output()
        .unwrap();
    assert!(first.status.success(), "token: {}", text(&first.stderr));
    let token = text(&first.stdout).trim().to_owned();
    assert!(
        as1.issued_tokens().contains(&token),
        "`mcp-auth token` printed a token the AS never issued"
    );

    // The row `mcp-auth token` reads: the CLI's default namespace, the token record's key.
    let key = TokenKey::new(
        IssuerId::new(as1.issuer()).unwrap(),
        ResourceUri::new(mcp.url()).unwrap(),
    );
    let reader_args = vec![
        db.display().to_string(),
        Namespace::default().as_str().to_owned(),
        RecordKey::Tokens(key).storage_key(),
    ];
    let row = Command::new(env!("CARGO_BIN_EXE_minimal_reader"))
        .args(&reader_args)
        .output()
        .unwrap();
    assert!(
        row.status.success(),
        "minimal_reader: {}",
        text(&row.stderr)
    );
    let processes = [
        Process {
            name: "mcp-auth token",
            program: mcp_auth.clone(),
            args: token_args,
            expected_stdout: format!("{token}\n"),
        },
        Process {
            name: "minimal_reader",
            program: PathBuf::from(env!("CARGO_BIN_EXE_minimal_reader")),
            args: reader_args,
            expected_stdout: text(&row.stdout),
        },
    ];

    if let Some(secs) = std::env::var("MCP_AUTH_BENCH_HOLD")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        // For profiling by hand (perf, strace, callgrind): the live store and servers stay up.
        for p in &processes {
            println!(
                "hold: {} {}",
                p.program.display(),
                p.args
                    .iter()
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        std::thread::sleep(Duration::from_secs(secs));
    }
    as1.clear_requests();
    mcp.clear_requests();
    for _ in 0..WARMUP_SPAWNS {
        for p in &processes {
            p.run();
        }
    }
    let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); processes.len()];
    for _ in 0..SPAWNS {
        for (p, w) in processes.iter().zip(walls.iter_mut()) {
            w.push(p.run());
        }
    }
    let gnu_time = Path::new(GNU_TIME).is_file();
    let rss: Vec<Option<u64>> = processes
        .iter()
        .map(|p| {
            gnu_time.then(|| median((0..RSS_RUNS).map(|_| p.peak_rss_kib(dir.path())).collect()))
        })
        .collect();
    if !gnu_time {
        println!(
            "note: {GNU_TIME} is missing (Debian package `time`: apt-get install time): peak RSS \
             not measured"
        );
    }
    let as_requests = as1.requests().len();
    let mcp_requests = mcp.requests().len();

    let wall_ms: Vec<f64> = walls.into_iter().map(|w| millis(median(w))).collect();
    let mib = |kib: Option<u64>| kib.map(|k| k as f64 / 1024.0);
    let mut table = Table::new(
        format!(
            "the `mcp-auth token URL` process on a valid stored token (SQLite), {SPAWNS} spawns \
             each, medians"
        ),
        &["process", "wall ms", "ratio", "peak RSS MiB", "ratio"],
    );
    for (i, p) in processes.iter().enumerate() {
        table.row(&[
            p.name.to_owned(),
            format!("{:.2}", wall_ms[i]),
            format!("{:.2}x", ratio(wall_ms[i], wall_ms[1])),
            mib(rss[i]).map_or("-".to_owned(), |m| format!("{m:.1}")),
            match (rss[i], rss[1]) {
                (Some(a), Some(b)) => format!("{:.2}x", ratio(a as f64, b as f64)),
                _ => "-".to_owned(),
            },
        ]);
    }
    table.print();
    println!(
        "HTTP requests during the runs: authorization server {as_requests}, MCP server \
         {mcp_requests}"
    );
    assert_eq!(
        as_requests, 0,
        "`mcp-auth token` contacted the authorization server with a valid stored token"
    );

    mcp_auth_bench::report_json(
        "token_process",
        &json!({
            "benchmark": "token_process",
            "binary": mcp_auth.display().to_string(),
            "spawns": SPAWNS,
            "wall_ms": {
                "mcp_auth_token": wall_ms[0],
                "minimal_reader": wall_ms[1],
                "ratio": ratio(wall_ms[0], wall_ms[1]),
            },
            "peak_rss_mib": {
                "mcp_auth_token": mib(rss[0]),
                "minimal_reader": mib(rss[1]),
                "ratio": match (rss[0], rss[1]) {
                    (Some(a), Some(b)) => Some(ratio(a as f64, b as f64)),
                    _ => None,
                },
                "runs": RSS_RUNS,
            },
            "as_requests": as_requests,
            "mcp_requests": mcp_requests,
        }),
    );
}
