//! `mcp-auth proxy` driven over its stdio by a minimal MCP client written here, against the
//! testkit's authorization servers, its protected MCP server, and a [`Gate`] in front of a small
//! streamable-HTTP upstream (JSON and SSE answers, a server→client request, a resumable stream,
//! a standalone GET stream, a connection killed mid-response).
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, Gate, McpServer, McpServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::stdio_client::Client;

// ---------------------------------------------------------------------------------------------
// A small streamable-HTTP MCP server (no auth of its own: the gate adds it).

/// (method, session id, protocol version, X-Test header) of one request.
type Seen = (String, Option<String>, Option<String>, Option<String>);

#[derive(Default)]
struct Upstream {
    /// (method, session id, protocol version, X-Test header) of every request.
    seen: Vec<Seen>,
    /// Waiting for the client's answer to a server→client request, by its id.
    answers: HashMap<String, oneshot::Sender<Value>>,
    /// The request id a resumable stream still owes an answer to.
    owed: Option<Value>,
    deleted: bool,
}

type Shared = Arc<Mutex<Upstream>>;

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn sse(rx: mpsc::UnboundedReceiver<Result<String, std::io::Error>>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Bytes::from), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

async fn upstream(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let session = header(&headers, "mcp-session-id");
    let version = header(&headers, "mcp-protocol-version");
    let test = header(&headers, "x-test");
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let name = match method {
        Method::POST => msg["method"].as_str().unwrap_or("response").to_owned(),
        ref m => m.to_string(),
    };
    state
        .lock()
        .unwrap()
        .seen
        .push((name.clone(), session, version, test));
    match method {
        Method::DELETE => {
            state.lock().unwrap().deleted = true;
            StatusCode::OK.into_response()
        }
        Method::GET => {
            let (tx, rx) = mpsc::unbounded_channel();
            if header(&headers, "last-event-id").as_deref() == Some("r-1") {
                let owed = state.lock().unwrap().owed.take();
                let result = json!({"jsonrpc": "2.0", "id": owed, "result": {"resumed": true}});
                tx.send(Ok(format!("id: r-2\ndata: {result}\n\n"))).unwrap();
            } else {
                let log = json!({"jsonrpc": "2.0", "method": "notifications/message",
                    "params": {"level": "info", "data": "hello from the GET stream"}});
                tx.send(Ok(format!("id: g-1\ndata: {log}\n\n"))).unwrap();
                // Keep the stream open.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    drop(tx);
                });
            }
            sse(rx)
        }
        _ if msg.is_array() => {
            // A batch: one JSON array of answers.
            let answers: Vec<Value> = msg
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.get("id").cloned())
                .map(|id| json!({"jsonrpc": "2.0", "id": id, "result": {"tools": []}}))
                .collect();
            let mut resp = (StatusCode::OK, Value::from(answers).to_string()).into_response();
            resp.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            resp
        }
        _ => {
            let id = msg.get("id").cloned();
            if msg.get("method").is_none() {
                // The client's answer to a server→client request.
                if let Some(tx) = id
                    .as_ref()
                    .and_then(|i| state.lock().unwrap().answers.remove(&i.to_string()))
                {
                    let _ = tx.send(msg.clone());
                }
                return StatusCode::ACCEPTED.into_response();
            }
            let Some(id) = id else {
                return StatusCode::ACCEPTED.into_response();
            };
            let tool = msg["params"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match (name.as_str(), tool.as_str()) {
                ("initialize", _) => {
                    let r = json!({"jsonrpc": "2.0", "id": id, "result": {
                        "protocolVersion": msg["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "upstream", "version": "1"}}});
                    let mut resp = (StatusCode::OK, r.to_string()).into_response();
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    resp.headers_mut()
                        .insert("mcp-session-id", "session-1".parse().unwrap());
                    resp
                }
                ("tools/call", "ask") => {
                    // Progress, then a sampling request; the final answer carries the client's
                    // reply.
                    let (tx, rx) = mpsc::unbounded_channel();
                    let (answer_tx, answer_rx) = oneshot::channel();
                    state
                        .lock()
                        .unwrap()
                        .answers
                        .insert(json!("srv-1").to_string(), answer_tx);
                    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": "p", "progress": 1, "total": 2}});
                    let sampling = json!({"jsonrpc": "2.0", "id": "srv-1",
                        "method": "sampling/createMessage",
                        "params": {"messages": [], "maxTokens": 5}});
                    tx.send(Ok(format!("id: a-1\ndata: {progress}\n\n")))
                        .unwrap();
                    tx.send(Ok(format!("id: a-2\ndata: {sampling}\n\n")))
                        .unwrap();
                    tokio::spawn(async move {
                        if let Ok(answer) = answer_rx.await {
                            let r = json!({"jsonrpc": "2.0", "id": id, "result": {
                                "content": [{"type": "text", "text": "sampled"}],
                                "client_said": answer["result"]}});
                            let _ = tx.send(Ok(format!("id: a-3\ndata: {r}\n\n")));
                        }
                    });
                    sse(rx)
                }
                ("tools/call", "resumable") => {
                    // One event, then the stream drops; the answer comes on resumption.
                    state.lock().unwrap().owed = Some(id);
                    let (tx, rx) = mpsc::unbounded_channel();
                    let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": "q", "progress": 1}});
                    tx.send(Ok(format!("id: r-1\ndata: {progress}\n\n")))
                        .unwrap();
                    drop(tx);
                    sse(rx)
                }
                ("tools/call", "die") => {
                    // The server dies mid-response: the connection breaks.
                    let (tx, rx) = mpsc::unbounded_channel();
                    tx.send(Ok(": starting\n\n".to_owned())).unwrap();
                    tx.send(Err(std::io::Error::other("killed"))).unwrap();
                    sse(rx)
                }
                _ => {
                    let r = json!({"jsonrpc": "2.0", "id": id, "result": {"tools": []}});
                    let mut resp = (StatusCode::OK, r.to_string()).into_response();
                    resp.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    resp
                }
            }
        }
    }
}

async fn start_upstream() -> (String, Shared) {
    let state: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .fallback(upstream)
        .with_state(Arc::clone(&state));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://127.0.0.1:{port}/mcp"), state)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_response(v: &Value, id: i64) -> bool {
    v["id"] == json!(id) && (v.get("result").is_some() || v.get("error").is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_relays_both_directions_through_the_gate() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let (upstream_url, state) = start_upstream().await;
    let gate = Gate::start(&upstream_url, vec![as1.clone()]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");

    let mut client = Client::spawn(
        &db,
        &gate.url(),
        &["--header", "X-Test: ${MCP_AUTH_TEST_SECRET_HEADER}"],
    );
    let init = client.initialize().await;
    assert_eq!(init["result"]["serverInfo"]["name"], "upstream", "{init}");
    assert!(as1.count(Endpoint::Token) >= 1, "the first call logged in");

    // Server→client: progress and a sampling request reach the client; its answer reaches the
    // server, whose final result carries it.
    client
        .send(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "ask", "arguments": {}, "_meta": {"progressToken": "p"}}}))
        .await;
    let progress = client
        .wait_for(|v| v["method"] == "notifications/progress")
        .await;
    assert_eq!(progress["params"]["progress"], 1);
    let sampling = client
        .wait_for(|v| v["method"] == "sampling/createMessage")
        .await;
    assert_eq!(sampling["id"], "srv-1");
    client
        .send(json!({"jsonrpc": "2.0", "id": "srv-1", "result": {
            "role": "assistant", "model": "test",
            "content": {"type": "text", "text": "from the client"}}}))
        .await;
    let done = client.wait_for(|v| is_response(v, 1)).await;
    assert_eq!(
        done["result"]["client_said"]["content"]["text"], "from the client",
        "{done}"
    );

    // The standalone GET stream is relayed.
    let log = client
        .wait_for(|v| v["method"] == "notifications/message")
        .await;
    assert_eq!(log["params"]["data"], "hello from the GET stream");

    // A dropped stream is resumed with Last-Event-ID without losing the answer.
    let resumed = client
        .request(
            2,
            "tools/call",
            json!({"name": "resumable", "arguments": {}}),
        )
        .await;
    assert_eq!(resumed["result"]["resumed"], true, "{resumed}");

    // A batch is forwarded as one message.
    client
        .send(json!([{"jsonrpc": "2.0", "id": 3, "method": "tools/list"}]))
        .await;
    let batch = client.wait_for(|v| v.is_array() || is_response(v, 3)).await;
    assert!(batch.to_string().contains("\"tools\""), "{batch}");

    // The server dies mid-response: a JSON-RPC error, not a hang.
    let died = client
        .request(4, "tools/call", json!({"name": "die", "arguments": {}}))
        .await;
    assert_eq!(died["error"]["code"], -32000, "{died}");

    assert!(client.close().await.success());
    let (deleted, seen) = {
        let st = state.lock().unwrap();
        (st.deleted, st.seen.clone())
    };
    assert!(deleted, "the session was deleted on EOF");
    let after_init: Vec<_> = seen.iter().skip(1).collect();
    assert!(
        after_init
            .iter()
            .all(|(_, s, _, t)| s.as_deref() == Some("session-1")
                && t.as_deref() == Some("from-env")),
        "{after_init:?}"
    );
    assert!(
        after_init
            .iter()
            .filter(|(m, ..)| m != "DELETE")
            .all(|(_, _, v, _)| v.as_deref() == Some("2025-06-18")),
        "{after_init:?}"
    );

    // A second run uses the stored token: no request to the AS at all.
    as1.clear_requests();
    let mut client = Client::spawn(&db, &gate.url(), &[]);
    let init = client.initialize().await;
    assert!(init.get("result").is_some(), "{init}");
    assert!(client.close().await.success());
    assert!(as1.requests().is_empty(), "{:?}", as1.requests());
    // Every MCP request the gate saw carried a valid token (the first login discovered the AS
    // from the gate's own PRM).
    let requests = gate.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.starts_with("/.well-known/oauth-protected-resource"))
    );
    assert!(
        requests
            .iter()
            .filter(|r| r.path == "/mcp")
            .all(|r| r.status != 401 && r.token_issuer.as_deref() == Some(as1.issuer().as_str())),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_yields_json_rpc_errors() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gate = Gate::start(&format!("http://127.0.0.1:{dead}/mcp"), vec![as1])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(&dir.path().join("c.db"), &gate.url(), &[]);
    let r = client.request(7, "tools/list", json!({})).await;
    assert_eq!(r["error"]["code"], -32000, "{r}");
    // And directly: no server at all.
    let mut direct = Client::spawn(
        &dir.path().join("c.db"),
        &format!("http://127.0.0.1:{dead}/mcp"),
        &[],
    );
    let r = direct.request(8, "tools/list", json!({})).await;
    assert!(r.get("error").is_some(), "{r}");
    assert!(client.close().await.success());
    let _ = direct.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_moves_while_the_proxy_runs_dcr_client_reregisters() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let as2 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(&dir.path().join("c.db"), &mcp.url(), &[]);
    assert!(client.initialize().await.get("result").is_some());
    let r = client.request(1, "tools/list", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let as1_clients: Vec<String> = as1
        .registrations()
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    let as1_tokens = as1.issued_tokens();

    mcp.set_authorization_servers(vec![as2.clone()]);
    let r = client
        .request(2, "tools/call", json!({"name": "echo", "arguments": {}}))
        .await;
    assert_eq!(r["result"]["content"][0]["text"], "ok", "{r}");
    assert_eq!(as2.count(Endpoint::Register), 1, "registered at the new AS");
    for req in as2.requests() {
        assert!(
            req.client_id
                .as_ref()
                .is_none_or(|c| !as1_clients.contains(c)),
            "an AS1 client_id reached AS2: {req:?}"
        );
        for t in &as1_tokens {
            assert!(
                !req.form.values().any(|v| v == t),
                "an AS1 token reached AS2"
            );
        }
    }
    assert!(mcp.requests().iter().any(|r| r.status == 401));
    assert!(client.close().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_moves_with_pre_registered_credentials_names_both_issuers() {
    let as1 = AuthServer::start(AuthServerConfig {
        dynamic_registration: false,
        ..Default::default()
    })
    .await
    .unwrap();
    as1.preregister_client(
        "pre",
        Some("pre-secret-value"),
        "client_secret_basic",
        vec!["http://127.0.0.1/callback".into()],
    );
    let as2 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("--store")
        .arg(format!("sqlite:{}", db.display()))
        .args([
            "login",
            &mcp.url(),
            "--headless",
            "--client-id",
            "pre",
            "--issuer",
        ])
        .arg(as1.issuer())
        .env("MCP_AUTH_CLIENT_SECRET", "pre-secret-value")
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut client = Client::spawn(&db, &mcp.url(), &[]);
    assert!(client.initialize().await.get("result").is_some());
    mcp.set_authorization_servers(vec![as2.clone()]);
    let r = client.request(1, "tools/list", json!({})).await;
    let message = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains(&as1.issuer()), "{r}");
    assert!(message.contains(&as2.issuer()), "{r}");
    assert!(!message.contains("pre-secret-value"));
    assert!(
        as2.requests()
            .iter()
            .all(|q| q.endpoint == Endpoint::Metadata),
        "{:?}",
        as2.requests()
    );
    assert!(client.close().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_formats() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let run = |args: Vec<String>| {
        let db = db.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
                .arg("--store")
                .arg(format!("sqlite:{}", db.display()))
                .args(args)
                .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
                .env_remove("MCP_AUTH_STORE")
                .output()
                .await
                .unwrap()
        }
    };
    let url = mcp.url();
    let s = |a: &[&str]| a.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    assert!(
        run(s(&["login", &url, "--headless"]))
            .await
            .status
            .success()
    );
    let bare = run(s(&["token", &url])).await;
    let token = String::from_utf8(bare.stdout).unwrap().trim().to_owned();
    let header = run(s(&["token", "--format", "header-json", &url])).await;
    let header: Value = serde_json::from_slice(&header.stdout).unwrap();
    assert_eq!(header, json!({"Authorization": format!("Bearer {token}")}));
    let full = run(s(&["token", "--format", "json", &url])).await;
    let full: Value = serde_json::from_slice(&full.stdout).unwrap();
    assert_eq!(full["access_token"], token);
    let expires = full["expires_at"].as_str().unwrap();
    assert!(
        expires.len() == 20 && expires.ends_with('Z') && expires.as_bytes()[10] == b'T',
        "{expires}"
    );
    assert!(full["scopes"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_scope_steps_up_and_retries() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(&dir.path().join("c.db"), &mcp.url(), &[]);
    assert!(client.initialize().await.get("result").is_some());
    mcp.set_required_scopes(vec!["tools:write".into()]);
    let r = client.request(1, "tools/list", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    assert!(mcp.requests().iter().any(|q| q.status == 403));
    let last = as1
        .requests()
        .into_iter()
        .rfind(|q| q.endpoint == Endpoint::Authorize)
        .unwrap();
    assert!(
        last.query
            .get("scope")
            .is_some_and(|s| s.contains("tools:write")),
        "{last:?}"
    );
    assert!(client.close().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_login_that_never_completes_fails_pending_requests_with_a_hint() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1],
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    // No --headless: the loopback authorizer prints the URL on stderr and waits for a browser
    // that never comes.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("--store")
        .arg(format!("sqlite:{}", db.display()))
        .args([
            "proxy",
            &mcp.url(),
            "--allow-http",
            "--no-browser",
            "--auth-timeout",
            "2",
        ])
        .arg("--callback-port")
        .arg(free_port().to_string())
        .env_remove("MCP_AUTH_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("no answer after the authorization timeout")
        .unwrap()
        .unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("mcp-auth login"), "{r}");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/authorize?"),
        "the URL is on stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deletes_the_session_and_exits_cleanly() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let (upstream_url, state) = start_upstream().await;
    let gate = Gate::start(&upstream_url, vec![as1]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut client = Client::spawn(&dir.path().join("c.db"), &gate.url(), &[]);
    assert!(client.initialize().await.get("result").is_some());
    let pid = client.pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = client.wait().await;
    assert!(exit.success(), "{exit:?}");
    assert!(state.lock().unwrap().deleted, "the session was deleted");
}
