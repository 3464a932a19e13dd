//! `cargo xtask bench`: `mcp-auth proxy` beside `mcp-remote` (npm, pinned in
//! `interop/mcp-clients/`), both stdio MCP servers forwarding to the same remote streamable-HTTP
//! MCP server: `@modelcontextprotocol/server-everything` behind a testkit [`Gate`] that demands
//! tokens of a testkit authorization server.
//!
//! Both run warm: `mcp-auth proxy` on a SQLite store holding a valid token (one `mcp-auth login`
//! before the runs), mcp-remote with that same token in `--header Authorization: Bearer …`. So
//! neither obtains a token during the runs (mcp-remote still fetches the gate's and the
//! authorization server's metadata at every start: its discovery is unconditional; the count is
//! reported). Measured:
//!
//! * spawn → `initialize` → `notifications/initialized` → first `tools/list` answer, wall time,
//!   median of [`SPAWNS`] spawns (mcp-remote run as `node …/mcp-remote/dist/proxy.js`, the lower
//!   bound of `npx mcp-remote`, which is timed as well when `npx` is on PATH);
//! * [`CALLS`] sequential `tools/call` of the `echo` tool through each proxy, and the same calls
//!   made directly over HTTP to the gate (reqwest, one session); per-request overhead = proxy
//!   per-call − direct per-call; median of [`RUNS`] runs;
//! * peak RSS (`VmHWM` of the proxy process, the node process for mcp-remote), read after the
//!   last answer, before stdin closes.
//!
//! Prints a table with the ratios mcp-auth / mcp-remote and writes it as JSON to
//! `target/bench/proxy_vs_mcp_remote.json`. A benchmark, not a test: it asserts nothing about
//! time, only that every answer arrives and that `mcp-auth proxy` makes no request to the
//! authorization server (and mcp-remote no token, registration or authorization request).
//!
//! Needs `MCP_AUTH_TEST_NODE` (Node 22) and `MCP_AUTH_TEST_MCP_CLIENTS` (the installed
//! `interop/mcp-clients/`); `cargo xtask bench` sets them (`cargo xtask interop-setup` prints them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, Gate};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Spawns per proxy for the time to the first answer.
const SPAWNS: usize = 10;
/// Sequential `tools/call`s per run.
const CALLS: usize = 1_000;
/// Runs of the `CALLS` calls per client.
const RUNS: usize = 3;
/// How long one answer may take before the benchmark fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
const PROTOCOL_VERSION: &str = "2025-06-18";
/// The variable mcp-remote's `--header` reads the `Authorization` value from.
const AUTH_HEADER_VAR: &str = "MCP_AUTH_BENCH_AUTHORIZATION";

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set: run `cargo xtask bench` (or `cargo xtask interop-setup` and set \
             the variables it prints)"
        )
    });
    PathBuf::from(value)
}

/// A count from the environment, or `default`.
fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn median<T: Copy + Ord>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `VmHWM` (peak resident set) of a live process, in KiB.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Everything the runs share.
struct Setup {
    node: PathBuf,
    mcp_clients: PathBuf,
    mcp_auth: PathBuf,
    npx: Option<PathBuf>,
    url: String,
    /// server-everything's own URL (no gate).
    upstream: String,
    store: PathBuf,
    token: String,
    /// mcp-remote's config directory (`MCP_REMOTE_CONFIG_DIR`), empty: no tokens of its own.
    remote_config: PathBuf,
    /// Calls per run.
    calls: usize,
}

impl Setup {
    /// PATH with Node 22's directory first.
    fn path_env(&self) -> std::ffi::OsString {
        let mut dirs: Vec<PathBuf> = self
            .node
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(dirs).unwrap()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proxy {
    /// `mcp-auth --store sqlite:… proxy URL --allow-http` (release build).
    McpAuth,
    /// `node node_modules/mcp-remote/dist/proxy.js URL --allow-http --header …`.
    McpRemote,
    /// `npx --no mcp-remote URL …` in `interop/mcp-clients/` (time to first answer only).
    Npx,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::McpAuth => "mcp-auth proxy",
            Proxy::McpRemote => "mcp-remote (node)",
            Proxy::Npx => "npx mcp-remote",
        }
    }

    fn command(self, s: &Setup) -> Command {
        let mut c = match self {
            Proxy::McpAuth => {
                let mut c = Command::new(&s.mcp_auth);
                c.arg("--store")
                    .arg(format!("sqlite:{}", s.store.display()))
                    .args(["proxy", &s.url, "--allow-http", "--no-browser"])
                    .env_remove("MCP_AUTH_STORE")
                    .env_remove("MCP_AUTH_INSECURE_LOOPBACK");
                c
            }
            Proxy::McpRemote => {
                let mut c = Command::new(&s.node);
                c.arg(s.mcp_clients.join("node_modules/mcp-remote/dist/proxy.js"));
                c
            }
            Proxy::Npx => {
                let mut c = Command::new(s.npx.as_ref().unwrap());
                c.args(["--no", "mcp-remote"])
                    .current_dir(&s.mcp_clients)
                    .env("npm_config_offline", "true")
                    .env("npm_config_update_notifier", "false");
                c
            }
        };
        if self != Proxy::McpAuth {
            c.args([
                &s.url,
                "--allow-http",
                "--header",
                &format!("Authorization:${{{AUTH_HEADER_VAR}}}"),
            ])
            .env(AUTH_HEADER_VAR, format!("Bearer {}", s.token))
            .env("MCP_REMOTE_CONFIG_DIR", &s.remote_config);
        }
        c.env("PATH", s.path_env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        c
    }
}

/// A stdio MCP client around a spawned proxy.
struct StdioClient {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl StdioClient {
    fn spawn(mut command: Command) -> StdioClient {
        let mut child = command.spawn().unwrap();
        let pid = child.id().unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        StdioClient {
            child,
            pid,
            stdin,
            stdout,
        }
    }

    async fn send(&mut self, message: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The answer to request `id` (server requests are answered, notifications skipped).
    async fn answer(&mut self, id: i64) -> Value {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no answer to request {id} in {ANSWER_TIMEOUT:?}"))
                .unwrap()
                .unwrap_or_else(|| panic!("the proxy closed stdout before answering {id}"));
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout carried a non-JSON line {line:?}: {e}"));
            if v.get("method").is_some() {
                if let Some(rid) = v.get("id") {
                    // A server request (ping): answer it so the server is not kept waiting.
                    let reply = json!({"jsonrpc": "2.0", "id": rid, "result": {}});
                    self.send(&reply).await;
                }
                continue;
            }
            if v["id"] == json!(id) {
                assert!(v.get("result").is_some(), "request {id} failed: {v}");
                return v;
            }
        }
    }

    async fn request(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.answer(id).await
    }

    async fn initialize(&mut self) {
        self.request(0, "initialize", initialize_params()).await;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
    }

    /// Closes stdin and waits for the exit (killing the process after 10 s).
    async fn close(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("(process {} did not exit on stdin EOF; killed)", self.pid);
            let _ = self.child.kill().await;
        }
    }
}

fn initialize_params() -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "mcp-auth-bench", "version": "1"},
    })
}

fn echo_params(i: usize) -> Value {
    json!({"name": "echo", "arguments": {"message": format!("m{i}")}})
}

fn assert_echo(answer: &Value, i: usize) {
    let text = answer.to_string();
    assert!(text.contains(&format!("m{i}")), "echo {i}: {answer}");
}

/// Spawn → initialize → initialized → first `tools/list` answer; and the VmHWM then.
async fn first_answer(s: &Setup, proxy: Proxy) -> (Duration, Option<u64>) {
    let started = Instant::now();
    let mut client = StdioClient::spawn(proxy.command(s));
    client.initialize().await;
    let tools = client.request(1, "tools/list", json!({})).await;
    let took = started.elapsed();
    let has_echo = tools["result"]["tools"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["name"] == "echo"));
    assert!(
        has_echo,
        "{}: tools/list without echo: {tools}",
        proxy.name()
    );
    let rss = (proxy != Proxy::Npx).then(|| vm_hwm(client.pid)).flatten();
    client.close().await;
    (took, rss)
}

/// `s.calls` sequential echo calls through the proxy (after initialize): total time and VmHWM.
async fn calls_through(s: &Setup, proxy: Proxy) -> (Duration, Option<u64>) {
    let mut client = StdioClient::spawn(proxy.command(s));
    client.initialize().await;
    let started = Instant::now();
    for i in 0..s.calls {
        let id = i64::try_from(i).unwrap() + 2;
        let answer = client.request(id, "tools/call", echo_params(i)).await;
        assert_echo(&answer, i);
    }
    let took = started.elapsed();
    let rss = vm_hwm(client.pid);
    client.close().await;
    (took, rss)
}

/// Where direct calls go: the gate (with the token) or, to show what the gate itself costs,
/// server-everything without it.
#[derive(Clone, Copy)]
enum Direct {
    Gate,
    Upstream,
}

impl Direct {
    fn url(self, s: &Setup) -> &str {
        match self {
            Direct::Gate => &s.url,
            Direct::Upstream => &s.upstream,
        }
    }

    fn authorize(self, s: &Setup, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Direct::Gate => request.bearer_auth(&s.token),
            Direct::Upstream => request,
        }
    }
}

/// One POST of a JSON-RPC message; the answer to `id` (from JSON or SSE), if any.
async fn post(
    http: &reqwest::Client,
    s: &Setup,
    to: Direct,
    session: Option<&str>,
    message: &Value,
) -> (reqwest::header::HeaderMap, Option<Value>) {
    let mut request = to
        .authorize(s, http.post(to.url(s)))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(message.to_string());
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", PROTOCOL_VERSION);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    assert!(status.is_success(), "direct POST: HTTP {status}");
    let headers = response.headers().clone();
    let Some(id) = message.get("id") else {
        return (headers, None);
    };
    let sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = response.text().await.unwrap();
    let answer = if sse {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id") == Some(id) && v.get("method").is_none())
    } else {
        serde_json::from_str(&body).ok()
    };
    let answer = answer.unwrap_or_else(|| panic!("direct POST: no answer to {id}: {body}"));
    assert!(
        answer.get("result").is_some(),
        "direct POST failed: {answer}"
    );
    (headers, Some(answer))
}

/// The same `s.calls` calls made directly over HTTP (one session, one reqwest client): total time.
async fn calls_direct(s: &Setup, to: Direct) -> Duration {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": initialize_params()});
    let (headers, _) = post(&http, s, to, None, &init).await;
    let session = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let session = session.as_deref();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    post(&http, s, to, session, &initialized).await;
    let started = Instant::now();
    for i in 0..s.calls {
        let id = i64::try_from(i).unwrap() + 2;
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": echo_params(i)});
        let (_, answer) = post(&http, s, to, session, &call).await;
        assert_echo(&answer.unwrap(), i);
    }
    let took = started.elapsed();
    if let Some(session) = session {
        let _ = to
            .authorize(s, http.delete(to.url(s)))
            .header("mcp-session-id", session)
            .send()
            .await;
    }
    took
}

/// server-everything in streamable-HTTP mode on a free port; its `/mcp` URL.
async fn server_everything(node: &Path, mcp_clients: &Path) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(node)
        .arg(mcp_clients.join("node_modules/.bin/mcp-server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server-everything did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, format!("http://127.0.0.1:{port}/mcp"))
}

/// `mcp-auth --store sqlite:… ARGS` (loopback allowed): its stdout.
async fn run_cli(bin: &Path, store: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .arg("--store")
        .arg(format!("sqlite:{}", store.display()))
        .args(args)
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "mcp-auth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `target/` (the bench binary runs from `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Requests the AS received since the last call (then forgotten), by endpoint.
fn take_as_requests(as1: &AuthServer) -> Vec<Endpoint> {
    let seen = as1.requests().iter().map(|r| r.endpoint).collect();
    as1.clear_requests();
    seen
}

/// Every request the gate received since the last call was authorized with a token of `as1`
/// (no 401); forgets them.
fn check_gate(gate: &Gate, as1: &AuthServer, who: &str) {
    for r in gate.requests() {
        if r.path.starts_with("/.well-known/") {
            continue;
        }
        assert_eq!(
            r.token_issuer.as_deref(),
            Some(as1.issuer().as_str()),
            "{who}: {r:?}"
        );
        assert_ne!(r.status, 401, "{who}: {r:?}");
    }
    gate.clear_requests();
}

#[derive(Default)]
struct Tally {
    first: Vec<Duration>,
    first_rss: Vec<u64>,
    calls: Vec<Duration>,
    calls_rss: Vec<u64>,
    /// AS requests during this client's runs (metadata only, for mcp-remote).
    as_requests: usize,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

async fn bench() {
    let node = env_path("MCP_AUTH_TEST_NODE");
    // Smaller counts for a quick look (the defaults are what `cargo xtask bench` reports).
    let spawns = count("MCP_AUTH_BENCH_SPAWNS", SPAWNS);
    let calls = count("MCP_AUTH_BENCH_CALLS", CALLS);
    let runs = count("MCP_AUTH_BENCH_RUNS", RUNS);
    let mcp_clients = env_path("MCP_AUTH_TEST_MCP_CLIENTS");
    let mcp_auth = PathBuf::from(env!("CARGO_BIN_EXE_mcp-auth"));
    let remote_manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(mcp_clients.join("node_modules/mcp-remote/package.json"))
            .expect("mcp-remote is not installed: run `cargo xtask interop-setup`"),
    )
    .unwrap();
    let remote_version = remote_manifest["version"].as_str().unwrap().to_owned();
    let node_version = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let (_server, upstream) = server_everything(&node, &mcp_clients).await;
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let gate = Gate::start(&upstream, vec![as1.clone()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("bench.db");
    let remote_config = dir.path().join("mcp-remote");
    std::fs::create_dir_all(&remote_config).unwrap();
    // One login, then the token both proxies use.
    run_cli(&mcp_auth, &store, &["login", &gate.url(), "--headless"]).await;
    let token = run_cli(&mcp_auth, &store, &["token", &gate.url()])
        .await
        .trim()
        .to_owned();
    assert!(!token.is_empty());
    let s = Setup {
        node,
        mcp_clients,
        mcp_auth,
        npx: find_on_path("npx"),
        url: gate.url(),
        upstream,
        store,
        token,
        remote_config,
        calls,
    };
    as1.clear_requests();
    gate.clear_requests();

    let mut proxies = vec![Proxy::McpAuth, Proxy::McpRemote];
    if s.npx.is_some() {
        proxies.push(Proxy::Npx);
    }
    let mut tallies: Vec<Tally> = proxies.iter().map(|_| Tally::default()).collect();
    let mut direct: Vec<Duration> = Vec::new();
    let mut upstream_direct: Vec<Duration> = Vec::new();

    println!(
        "\nmcp-auth proxy vs mcp-remote {remote_version} (node {node_version}): server-everything \
         behind a testkit gate, same token, warm store"
    );
    println!("spawn → initialize → initialized → first tools/list answer (ms), {spawns} spawns");
    for spawn in 1..=spawns {
        let mut line = format!("  spawn {spawn:>2}:");
        for (proxy, tally) in proxies.iter().zip(tallies.iter_mut()) {
            let (took, rss) = first_answer(&s, *proxy).await;
            tally.first.push(took);
            tally.first_rss.extend(rss);
            check_gate(&gate, &as1, proxy.name());
            record_as(&as1, *proxy, tally);
            line.push_str(&format!("  {} {:>8.1}", proxy.name(), ms(took)));
        }
        println!("{line}");
    }

    println!("\n{calls} sequential tools/call echo, per call (µs), {runs} runs");
    for run in 1..=runs {
        let d = calls_direct(&s, Direct::Gate).await;
        check_gate(&gate, &as1, "direct");
        direct.push(d);
        let u = calls_direct(&s, Direct::Upstream).await;
        upstream_direct.push(u);
        let mut line = format!(
            "  run {run}:  direct HTTP {:>8.1}  (no gate {:>8.1})",
            us(d) / calls as f64,
            us(u) / calls as f64
        );
        for (proxy, tally) in proxies.iter().zip(tallies.iter_mut()) {
            if *proxy == Proxy::Npx {
                continue;
            }
            let (took, rss) = calls_through(&s, *proxy).await;
            tally.calls.push(took);
            tally.calls_rss.extend(rss);
            check_gate(&gate, &as1, proxy.name());
            record_as(&as1, *proxy, tally);
            line.push_str(&format!(
                "  {} {:>8.1}",
                proxy.name(),
                us(took) / calls as f64
            ));
        }
        println!("{line}");
    }

    // Medians.
    let per_call = |d: Duration| us(d) / calls as f64;
    let direct_us = per_call(median(direct.clone()));
    let upstream_us = per_call(median(upstream_direct.clone()));
    let first_ms = |t: &Tally| ms(median(t.first.clone()));
    let calls_us = |t: &Tally| per_call(median(t.calls.clone()));
    let hwm = |v: &[u64]| (!v.is_empty()).then(|| mib(median(v.to_vec())));
    let [ours, theirs] = [&tallies[0], &tallies[1]];
    let npx = proxies
        .iter()
        .position(|p| *p == Proxy::Npx)
        .map(|i| first_ms(&tallies[i]));

    let row = |label: &str, a: f64, b: f64, unit: &str| {
        println!(
            "{label:<44} {a:>12.1} {b:>12.1} {:>8.2}x   {unit}",
            ratio(a, b)
        );
    };
    println!(
        "\n{:<44} {:>12} {:>12} {:>9}",
        "medians", "mcp-auth", "mcp-remote", "ratio"
    );
    row(
        "time to first tools/list answer",
        first_ms(ours),
        first_ms(theirs),
        "ms",
    );
    if let Some(npx) = npx {
        row("  … mcp-remote through npx", first_ms(ours), npx, "ms");
    }
    row(
        &format!("per call through the proxy ({calls} calls)"),
        calls_us(ours),
        calls_us(theirs),
        "µs",
    );
    println!(
        "{:<44} {direct_us:>12.1} {direct_us:>12.1}   µs",
        "per call, direct HTTP to the gate"
    );
    println!(
        "{:<44} {upstream_us:>12.1} {upstream_us:>12.1}   µs",
        "  (direct to server-everything, no gate)"
    );
    if direct_us - upstream_us > 10_000.0 {
        println!(
            "  note: the gate adds {:.1} ms to every call; a stall that long is usually Nagle's \
             algorithm waiting for a delayed ACK (a listener without TCP_NODELAY), and it \
             dwarfs the proxies' own overhead",
            (direct_us - upstream_us) / 1e3
        );
    }
    let overhead = |t: &Tally| calls_us(t) - direct_us;
    row(
        "overhead per call (proxy − direct)",
        overhead(ours),
        overhead(theirs),
        "µs",
    );
    let rss = |a: Option<f64>, b: Option<f64>, label: &str| {
        if let (Some(a), Some(b)) = (a, b) {
            row(label, a, b, "MiB");
        } else {
            println!("{label:<44} (VmHWM unavailable)");
        }
    };
    rss(
        hwm(&ours.first_rss),
        hwm(&theirs.first_rss),
        "peak RSS at the first answer",
    );
    rss(
        hwm(&ours.calls_rss),
        hwm(&theirs.calls_rss),
        &format!("peak RSS after {calls} calls"),
    );
    println!(
        "requests to the authorization server: mcp-auth {}, mcp-remote {} (metadata discovery at \
         each start){}",
        ours.as_requests,
        theirs.as_requests,
        npx.map_or(String::new(), |_| format!(
            ", npx mcp-remote {}",
            tallies[2].as_requests
        ))
    );

    let peak = |t: &Tally| {
        hwm(&t.calls_rss)
            .into_iter()
            .chain(hwm(&t.first_rss))
            .fold(0.0, f64::max)
    };
    let report = json!({
        "benchmark": "proxy_vs_mcp_remote",
        "mcp_remote_version": remote_version,
        "node_version": node_version,
        "spawns": spawns,
        "calls": calls,
        "runs": runs,
        "first_answer_ms": {
            "mcp_auth": first_ms(ours),
            "mcp_remote": first_ms(theirs),
            "npx_mcp_remote": npx,
            "ratio": ratio(first_ms(ours), first_ms(theirs)),
            "samples_mcp_auth": ours.first.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "samples_mcp_remote": theirs.first.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        },
        "per_call_us": {
            "direct": direct_us,
            "direct_without_gate": upstream_us,
            "mcp_auth": calls_us(ours),
            "mcp_remote": calls_us(theirs),
            "ratio": ratio(calls_us(ours), calls_us(theirs)),
        },
        "overhead_per_call_us": {
            "mcp_auth": overhead(ours),
            "mcp_remote": overhead(theirs),
            "ratio": ratio(overhead(ours), overhead(theirs)),
        },
        "peak_rss_mib": {
            "first_answer": {
                "mcp_auth": hwm(&ours.first_rss),
                "mcp_remote": hwm(&theirs.first_rss),
            },
            "after_calls": {
                "mcp_auth": hwm(&ours.calls_rss),
                "mcp_remote": hwm(&theirs.calls_rss),
            },
            "peak": {
                "mcp_auth": peak(ours),
                "mcp_remote": peak(theirs),
                "ratio": ratio(peak(ours), peak(theirs)),
            },
        },
        "as_requests": {
            "mcp_auth": ours.as_requests,
            "mcp_remote": theirs.as_requests,
        },
        "goals": {
            "faster_first_answer": first_ms(ours) < first_ms(theirs),
            "at_most_half_the_memory": peak(ours) <= peak(theirs) / 2.0,
        },
    });
    let out = target_dir().join("bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("proxy_vs_mcp_remote.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("written to {}", path.display());
}

/// Checks the AS requests of one run: none for mcp-auth; metadata only for mcp-remote (its
/// discovery at every start), never a token, registration or authorization request.
fn record_as(as1: &AuthServer, proxy: Proxy, tally: &mut Tally) {
    let seen = take_as_requests(as1);
    match proxy {
        Proxy::McpAuth => assert!(
            seen.is_empty(),
            "mcp-auth proxy made requests to the AS: {seen:?}"
        ),
        Proxy::McpRemote | Proxy::Npx => assert!(
            seen.iter().all(|e| *e == Endpoint::Metadata),
            "{} made requests to the AS beyond metadata: {seen:?}",
            proxy.name()
        ),
    }
    tally.as_requests += seen.len();
}
