//! A real MCP client drives `mcp-auth proxy`: the MCP Inspector's CLI (npm, pinned in
//! `interop/mcp-clients/`) spawns the proxy over stdio and talks to the reference server
//! `@modelcontextprotocol/server-everything` (streamable HTTP) behind a testkit [`Gate`] that
//! demands tokens from a testkit authorization server.
//!
//! Needs `MCP_AUTH_TEST_NODE` (Node 22) and `MCP_AUTH_TEST_MCP_CLIENTS` (the installed
//! `interop/mcp-clients/`): `cargo xtask interop-setup` installs both and prints them;
//! `cargo xtask test-all` sets them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, Gate};
use serde_json::{Value, json};

#[path = "support/stdio_client.rs"]
#[allow(dead_code)] // Shared with tests/proxy.rs, which uses all of it.
mod stdio_client;
use stdio_client::Client;

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
