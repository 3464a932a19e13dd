//! A real MCP client drives `mcp-auth proxy`: the MCP Inspector's CLI (npm, pinned in
//! `interop/mcp-clients/`) spawns the proxy over stdio and talks to the reference server
//! `@modelcontextprotocol/server-everything` (streamable HTTP) behind a testkit [`Gate`] that
//! demands tokens from a testkit authorization server.
//!
//! Needs `MCP_AUTH_TEST_NODE` (Node 22) and `MCP_AUTH_TEST_MCP_CLIENTS` (the installed
//! `interop/mcp-clients/`): `cargo xtask interop-setup` installs both and prints them;
//! `cargo xtask test-all` sets them.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, Gate};
use serde_json::{Value, json};

use crate::stdio_client::Client;

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set: run `cargo xtask interop-setup` and set the variables it prints \
             (cargo xtask test-all sets them)"
        )
    });
    PathBuf::from(value)
}

struct Node {
    node: PathBuf,
    dir: PathBuf,
}

impl Node {
    fn from_env() -> Node {
        Node {
            node: env_path("MCP_AUTH_TEST_NODE"),
            dir: env_path("MCP_AUTH_TEST_MCP_CLIENTS"),
        }
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("node_modules/.bin").join(name)
    }

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

    /// server-everything in streamable-HTTP mode on a free port; its `/mcp` URL.
    async fn server_everything(&self) -> (tokio::process::Child, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&self.node)
            .arg(self.bin("mcp-server-everything"))
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
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

    /// `mcp-inspector --cli mcp-auth --store … proxy URL … --method METHOD ARGS…`: its JSON
    /// answer.
    async fn inspect(&self, store: &Path, url: &str, method: &[&str]) -> Value {
        let out = tokio::time::timeout(
            Duration::from_secs(90),
            tokio::process::Command::new(&self.node)
                .arg(self.bin("mcp-inspector"))
                .arg("--cli")
                .arg(env!("CARGO_BIN_EXE_mcp-auth"))
                .arg("--store")
                .arg(format!("sqlite:{}", store.display()))
                .args(["proxy", url, "--allow-http", "--headless"])
                .arg("--method")
                .args(method)
                .env("PATH", self.path_env())
                .env_remove("MCP_AUTH_STORE")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the inspector did not finish in 90 s")
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "inspector {method:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_drives_the_proxy_to_server_everything_behind_a_gate() {
    let node = Node::from_env();
    let (_server, upstream) = node.server_everything().await;
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let gate = Gate::start(&upstream, vec![as1.clone()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");

    // The first run logs in (discovery, registration, authorization, token).
    let tools = node.inspect(&db, &gate.url(), &["tools/list"]).await;
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{tools}");
    assert_eq!(as1.count(Endpoint::Register), 1);
    assert_eq!(as1.count(Endpoint::Token), 1);

    // Later runs: 0 requests to the AS.
    as1.clear_requests();
    let echo = node
        .inspect(
            &db,
            &gate.url(),
            &[
                "tools/call",
                "--tool-name",
                "echo",
                "--tool-arg",
                "message=hi",
            ],
        )
        .await;
    assert!(echo.to_string().contains("hi"), "{echo}");
    let resources = node.inspect(&db, &gate.url(), &["resources/list"]).await;
    let uri = resources["resources"][0]["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = node
        .inspect(&db, &gate.url(), &["resources/read", "--uri", &uri])
        .await;
    assert!(read["contents"].is_array(), "{read}");
    let prompts = node.inspect(&db, &gate.url(), &["prompts/list"]).await;
    let prompt = prompts["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["arguments"]
                .as_array()
                .is_none_or(|a| a.iter().all(|x| x["required"] != true))
        })
        .and_then(|p| p["name"].as_str())
        .unwrap()
        .to_owned();
    let got = node
        .inspect(&db, &gate.url(), &["prompts/get", "--prompt-name", &prompt])
        .await;
    assert!(got["messages"].is_array(), "{got}");
    assert!(as1.requests().is_empty(), "{:?}", as1.requests());
    // Every MCP request reached server-everything with a token of as1.
    assert!(
        gate.requests()
            .iter()
            .filter(|r| r.path == "/mcp")
            .all(|r| r.token_issuer.as_deref() == Some(as1.issuer().as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_to_client_sampling_and_progress_cross_the_proxy() {
    let node = Node::from_env();
    let (_server, upstream) = node.server_everything().await;
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let gate = Gate::start(&upstream, vec![as1.clone()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(&dir.path().join("c.db"), &gate.url(), &[]);
    let init = client.initialize().await;
    assert!(init.get("result").is_some(), "{init}");

    // Progress notifications for a long-running operation reach the client.
    client
        .send(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 1, "steps": 3},
            "_meta": {"progressToken": "tok-1"}}}),
        )
        .await;
    for step in 1..=3 {
        let p = client
            .wait_for(|v| {
                v["method"] == "notifications/progress" && v["params"]["progress"] == json!(step)
            })
            .await;
        assert_eq!(p["params"]["progressToken"], "tok-1");
    }
    let done = client
        .wait_for(|v| v["id"] == json!(1) && v.get("method").is_none())
        .await;
    assert!(done.get("result").is_some(), "{done}");

    // A sampling request from the server reaches the client, and the client's answer reaches
    // the server (which quotes it in the tool result).
    client
        .send(
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "trigger-sampling-request",
            "arguments": {"prompt": "hello", "maxTokens": 5}}}),
        )
        .await;
    let sampling = client
        .wait_for(|v| v["method"] == "sampling/createMessage")
        .await;
    let text = sampling["params"]["messages"][0]["content"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(text.contains("hello"), "{sampling}");
    client
        .send(json!({"jsonrpc": "2.0", "id": sampling["id"], "result": {
            "role": "assistant", "model": "stdio-test-model",
            "content": {"type": "text", "text": "answer-from-the-stdio-client"}}}))
        .await;
    let result = client
        .wait_for(|v| v["id"] == json!(2) && v.get("method").is_none())
        .await;
    assert!(
        result.to_string().contains("answer-from-the-stdio-client"),
        "{result}"
    );
    assert!(client.close().await.success());
}

// --- `mcp-auth proxy --transport sse` (legacy HTTP+SSE, MCP 2024-11-05) ---

impl Node {
    /// server-everything in its legacy HTTP+SSE mode on a free port; its `/sse` URL.
    async fn server_everything_sse(&self) -> (tokio::process::Child, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&self.node)
            .arg(self.bin("mcp-server-everything"))
            .arg("sse")
            .env("PORT", port.to_string())
            .env("PATH", self.path_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
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
                "server-everything (sse) did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (child, format!("http://127.0.0.1:{port}/sse"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_transport_drives_server_everything_behind_a_gate() {
    let node = Node::from_env();
    let (_server, upstream) = node.server_everything_sse().await;
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let gate = Gate::start(&upstream, vec![as1.clone()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(
        &dir.path().join("c.db"),
        &gate.url(),
        &["--transport", "sse"],
    );

    let init = client.initialize().await;
    assert!(
        init["result"]["protocolVersion"].is_string(),
        "initialize: {init}"
    );
    let tools = client.request(1, "tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("tools/list: {tools}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"echo"), "{tools}");
    let echo = client
        .request(
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "hi over legacy sse"}}),
        )
        .await;
    assert!(
        echo["result"].to_string().contains("hi over legacy sse"),
        "{echo}"
    );

    // Server-initiated messages on the stream: progress notifications, and a sampling request
    // whose answer the proxy POSTs back.
    client
        .send(
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "trigger-long-running-operation",
            "arguments": {"duration": 1, "steps": 2},
            "_meta": {"progressToken": "sse-tok"}}}),
        )
        .await;
    for step in 1..=2 {
        let p = client
            .wait_for(|v| {
                v["method"] == "notifications/progress" && v["params"]["progress"] == json!(step)
            })
            .await;
        assert_eq!(p["params"]["progressToken"], "sse-tok");
    }
    let done = client
        .wait_for(|v| v["id"] == json!(3) && v.get("method").is_none())
        .await;
    assert!(done.get("result").is_some(), "{done}");
    client
        .send(
            json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
            "name": "trigger-sampling-request",
            "arguments": {"prompt": "hello", "maxTokens": 5}}}),
        )
        .await;
    let sampling = client
        .wait_for(|v| v["method"] == "sampling/createMessage")
        .await;
    client
        .send(json!({"jsonrpc": "2.0", "id": sampling["id"], "result": {
            "role": "assistant", "model": "sse-test-model",
            "content": {"type": "text", "text": "answer-over-legacy-sse"}}}))
        .await;
    let result = client
        .wait_for(|v| v["id"] == json!(4) && v.get("method").is_none())
        .await;
    assert!(
        result.to_string().contains("answer-over-legacy-sse"),
        "{result}"
    );

    // An expired token on a POST: the gate answers 401, the proxy refreshes and retries.
    as1.expire_access_tokens();
    let again = client
        .request(
            5,
            "tools/call",
            json!({"name": "echo", "arguments": {"message": "after refresh"}}),
        )
        .await;
    assert!(
        again["result"].to_string().contains("after refresh"),
        "{again}"
    );
    assert!(client.close().await.success());

    let requests = gate.requests();
    let gets: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/sse")
        .collect();
    let posts: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/message")
        .collect();
    assert_eq!(gets.len(), 1, "one stream: {requests:?}");
    assert_eq!(gets[0].status, 200, "{requests:?}");
    assert_eq!(
        gets[0].token_issuer.as_deref(),
        Some(as1.issuer().as_str()),
        "{requests:?}"
    );
    // initialize, initialized, 3 + 1 tools/calls, tools/list, the sampling answer, the retry.
    assert!(posts.len() >= 8, "{requests:?}");
    assert!(
        posts
            .iter()
            .all(|r| r.token_issuer.as_deref() == Some(as1.issuer().as_str())),
        "{requests:?}"
    );
    assert!(posts.iter().any(|r| r.status == 401), "{requests:?}");
    assert!(
        posts.iter().filter(|r| r.status == 202).count() >= 7,
        "{requests:?}"
    );
}

/// A loopback HTTP server answering every request with `status` and the event-stream `body`
/// (kept open), counting the requests it received.
async fn sse_stub(body: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::body::{Body, Bytes};
    use futures::StreamExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&hits);
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            let stream =
                futures::stream::once(
                    async move { Ok::<Bytes, std::io::Error>(Bytes::from(body)) },
                )
                .chain(futures::stream::pending());
            axum::response::Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_transport_refuses_an_endpoint_on_another_origin() {
    // The "elsewhere" server must never see a request (it would get the bearer token).
    let (elsewhere, elsewhere_hits) = sse_stub(String::new()).await;
    let (hostile, _) = sse_stub(format!(
        "event: endpoint\ndata: {elsewhere}/message?sessionId=1\n\n"
    ))
    .await;
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let gate = Gate::start(&format!("{hostile}/sse"), vec![as1.clone()])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(
        &dir.path().join("c.db"),
        &gate.url(),
        &["--transport", "sse"],
    );
    client
        .send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "proxy-test", "version": "1"}}}),
        )
        .await;
    let answer = client.wait_for(|v| v["id"] == json!(0)).await;
    assert_eq!(answer["error"]["code"], json!(-32000), "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("another origin") && message.contains(&elsewhere),
        "{message}"
    );
    // The proxy gives up (stdin still open) with an error.
    let status = client.wait().await;
    assert!(!status.success(), "{status:?}");
    assert_eq!(
        elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the bearer token went to another origin"
    );
    // The stream itself was opened with a token.
    let gets: Vec<_> = gate
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/sse")
        .collect();
    assert!(
        gets.iter()
            .any(|r| r.status == 200 && r.token_issuer.as_deref() == Some(as1.issuer().as_str())),
        "{gets:?}"
    );
}

/// A minimal legacy HTTP+SSE MCP server: `GET /sse` opens session N (endpoint
/// `/message?session=N`); POSTs are answered on that session's stream. The method `drop`
/// closes the stream without answering.
#[derive(Clone, Default)]
struct LegacyServer {
    state: std::sync::Arc<std::sync::Mutex<LegacyState>>,
}

#[derive(Default)]
struct LegacyState {
    streams: Vec<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// (session, method) of every message received.
    received: Vec<(usize, String)>,
    /// Streams whose body was dropped (closed by the client or by `drop`).
    closed: usize,
}

/// Counts a stream as closed when its body is dropped.
struct ClosedGuard(LegacyServer);

impl Drop for ClosedGuard {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().closed += 1;
    }
}

impl LegacyServer {
    async fn start() -> (LegacyServer, String) {
        use axum::routing::{get, post};
        let server = LegacyServer::default();
        let app = axum::Router::new()
            .route("/sse", get(Self::stream))
            .route("/message", post(Self::message))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/sse", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (server, url)
    }

    async fn stream(
        axum::extract::State(server): axum::extract::State<LegacyServer>,
    ) -> axum::response::Response {
        use axum::body::{Body, Bytes};
        use futures::StreamExt as _;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let session = {
            let mut st = server.state.lock().unwrap();
            st.streams.push(Some(tx));
            st.streams.len()
        };
        let endpoint = format!("event: endpoint\ndata: /message?session={session}\n\n");
        let guard = ClosedGuard(server.clone());
        let messages = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            let m = rx.recv().await?;
            Some((format!("event: message\ndata: {m}\n\n"), (rx, guard)))
        });
        let body = futures::stream::once(async move { endpoint })
            .chain(messages)
            .map(|s| Ok::<Bytes, std::io::Error>(Bytes::from(s)));
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(body))
            .unwrap()
    }

    async fn message(
        axum::extract::State(server): axum::extract::State<LegacyServer>,
        axum::extract::Query(query): axum::extract::Query<
            std::collections::HashMap<String, String>,
        >,
        axum::Json(message): axum::Json<Value>,
    ) -> axum::http::StatusCode {
        let session: usize = query["session"].parse().unwrap();
        let method = message["method"]
            .as_str()
            .unwrap_or("(response)")
            .to_owned();
        let mut st = server.state.lock().unwrap();
        st.received.push((session, method.clone()));
        let Some(Some(tx)) = st.streams.get(session - 1).cloned() else {
            return axum::http::StatusCode::NOT_FOUND;
        };
        let answer = match method.as_str() {
            "initialize" => Some(json!({
                "protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                "serverInfo": {"name": "legacy", "version": "1"}})),
            "tools/list" => Some(json!({"tools": [], "session": session})),
            "drop" => {
                st.streams[session - 1] = None;
                None
            }
            _ => None,
        };
        if let Some(result) = answer {
            let _ = tx
                .send(json!({"jsonrpc": "2.0", "id": message["id"], "result": result}).to_string());
        }
        axum::http::StatusCode::ACCEPTED
    }

    fn received(&self, session: usize) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.received
            .iter()
            .filter(|(s, _)| *s == session)
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn closed(&self) -> usize {
        self.state.lock().unwrap().closed
    }
}

/// Waits (10 s at most) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_transport_fails_pending_requests_on_a_drop_and_reconnects_once() {
    let (server, upstream) = LegacyServer::start().await;
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let gate = Gate::start(&upstream, vec![as1.clone()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(
        &dir.path().join("c.db"),
        &gate.url(),
        &["--transport", "sse"],
    );
    let init = client.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "legacy", "{init}");
    let listed = client.request(1, "tools/list", json!({})).await;
    assert_eq!(listed["result"]["session"], json!(1), "{listed}");

    // The stream drops with a request pending: it gets an error (no hang).
    let lost = client.request(2, "drop", json!({})).await;
    assert_eq!(lost["error"]["code"], json!(-32000), "{lost}");
    assert!(
        lost["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dropped"),
        "{lost}"
    );

    // The next request opens a new stream: a new server session, initialized again by the
    // proxy (whose own initialize answer never reaches the client).
    client
        .send(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}}))
        .await;
    let listed = client
        .wait_for(|v| {
            assert!(v["id"] != json!(0) && !v["id"].is_string(), "relayed: {v}");
            v["id"] == json!(3)
        })
        .await;
    assert_eq!(listed["result"]["session"], json!(2), "{listed}");
    assert_eq!(
        server.received(1),
        [
            "initialize",
            "notifications/initialized",
            "tools/list",
            "drop"
        ]
    );
    assert_eq!(
        server.received(2),
        ["initialize", "notifications/initialized", "tools/list"]
    );

    // A second drop: the pending request fails and the proxy exits with an error.
    let lost = client.request(4, "drop", json!({})).await;
    assert_eq!(lost["error"]["code"], json!(-32000), "{lost}");
    let status = client.wait().await;
    assert!(!status.success(), "{status:?}");
    eventually("both streams closed", || server.closed() == 2).await;
    // Every request of the proxy carried a token.
    let requests = gate.requests();
    assert!(
        requests
            .iter()
            .filter(|r| r.path == "/sse" || r.path == "/message")
            .all(|r| r.status != 401 && r.token_issuer.as_deref() == Some(as1.issuer().as_str())),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_transport_closes_the_stream_on_eof() {
    let (server, upstream) = LegacyServer::start().await;
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let gate = Gate::start(&upstream, vec![as1.clone()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(
        &dir.path().join("c.db"),
        &gate.url(),
        &["--transport", "sse"],
    );
    let init = client.initialize().await;
    assert!(init.get("result").is_some(), "{init}");
    eventually("initialized", || server.received(1).len() == 2).await;
    assert_eq!(server.closed(), 0);
    assert!(client.close().await.success());
    eventually("the stream closed", || server.closed() == 1).await;
}
