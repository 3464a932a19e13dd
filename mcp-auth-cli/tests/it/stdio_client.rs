//! A minimal stdio MCP client around a running `mcp-auth proxy` (shared by the proxy tests).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// A stdio MCP client around a running `mcp-auth proxy`.
pub(crate) struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Messages read while waiting for another one.
    seen: Vec<Value>,
}

impl Client {
    pub(crate) fn spawn(store: &Path, url: &str, extra: &[&str]) -> Client {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
            .arg("--store")
            .arg(format!("sqlite:{}", store.display()))
            .args([
                "proxy",
                url,
                "--allow-http",
                "--headless",
                "--auth-timeout",
                "20",
            ])
            .args(extra)
            .env_remove("MCP_AUTH_STORE")
            .env("MCP_AUTH_TEST_SECRET_HEADER", "from-env")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Client {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, message: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next message matching `pred` (others are kept in `seen`), within 30 s.
    pub(crate) async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&pred) {
            return self.seen.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .expect("timed out waiting for a message from the proxy")
                .unwrap()
                .expect("the proxy closed stdout");
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("stdout carried a non-JSON line {line:?}: {e}"));
            if pred(&v) {
                return v;
            }
            self.seen.push(v);
        }
    }

    pub(crate) async fn request(&mut self, id: i64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        self.wait_for(|v| {
            v["id"] == json!(id) && (v.get("result").is_some() || v.get("error").is_some())
        })
        .await
    }

    pub(crate) async fn initialize(&mut self) -> Value {
        let r = self
            .request(
                0,
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {"sampling": {}},
                    "clientInfo": {"name": "proxy-test", "version": "1"},
                }),
            )
            .await;
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        r
    }

    /// The proxy's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Waits (20 s at most) for the proxy to exit, stdin still open.
    pub(crate) async fn wait(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the proxy did not exit")
            .unwrap()
    }

    /// Closes stdin and waits for the proxy to exit.
    pub(crate) async fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the proxy did not exit after stdin EOF")
            .unwrap()
    }
}
