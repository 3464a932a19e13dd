//! Interop with a real, OpenID Certified authorization server: `oidc-provider` 9.13.3 (pinned in
//! `interop/oidc-provider/package-lock.json`) set up as an MCP authorization server
//! (`interop/oidc-provider/as.mjs`), in front of a small MCP server that verifies its JWT access
//! tokens (`interop/oidc-provider/mcp.mjs`). The built `mcp-auth` binary is driven through
//! login, token, a call to the MCP server, refresh with rotation, eight concurrent refreshes,
//! logout with revocation, and a second login — under each AS configuration.
//!
//! Needs Node 22 and the installed npm package: `MCP_AUTH_TEST_NODE` and
//! `MCP_AUTH_TEST_OIDC_PROVIDER`, which `cargo xtask test-all` sets (`cargo xtask
//! interop-setup` installs them and prints the values for running these tests alone).
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mcp_auth_core::{
    ExposeSecret, IssuerId, RegistrationStore, ResourceUri, Timestamp, TokenKey, TokenSet,
    TokenStore,
};
use serde_json::{Value, json};

const NODE_ENV: &str = "MCP_AUTH_TEST_NODE";
const DIR_ENV: &str = "MCP_AUTH_TEST_OIDC_PROVIDER";

/// Node and the directory of `as.mjs`/`mcp.mjs` (with `node_modules/` installed).
fn toolchain() -> (PathBuf, PathBuf) {
    let get = |name: &str| {
        let value = std::env::var_os(name).unwrap_or_else(|| {
            panic!(
                "{name} is not set: run `cargo xtask test-all`, which installs Node 22 and \
                 oidc-provider (or `cargo xtask interop-setup`, which prints the variables to run \
                 these tests alone)"
            )
        });
        PathBuf::from(value)
    };
    let (node, dir) = (get(NODE_ENV), get(DIR_ENV));
    assert!(
        node.is_file(),
        "{NODE_ENV}={} is not a file: run `cargo xtask interop-setup`",
        node.display()
    );
    assert!(
        dir.join("node_modules/oidc-provider/package.json")
            .is_file(),
        "{DIR_ENV}={} has no installed oidc-provider: run `cargo xtask interop-setup`",
        dir.display()
    );
    (node, dir)
}

/// A Node server started by a test; killed when dropped. Its stderr goes to a file that is
/// printed when the test fails.
struct NodeServer {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// What the server printed after `READY `: the issuer or the MCP endpoint URL.
    url: String,
}

impl NodeServer {
    fn start(
        name: &'static str,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
        logs: &Path,
    ) -> Self {
        let (node, dir) = toolchain();
        let log = logs.join(format!("{name}.log"));
        let mut child = Command::new(node)
            .arg(dir.join(script))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = Self {
            name,
            child,
            log,
            url: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("READY ") => {
                server.url = line["READY ".len()..].trim().to_owned();
            }
            other => panic!(
                "{name} did not start ({other:?}):\n{}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            ),
        }
        server
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let mut text = String::new();
            if let Ok(mut f) = File::open(&self.log) {
                let _ = f.read_to_string(&mut text);
            }
            eprintln!("----- {} log ({}) -----\n{text}", self.name, self.url);
        }
    }
}

/// The AS (one configuration of `as.mjs`) and the MCP server in front of it, with a temporary
/// SQLite store.
struct Setup {
    // Dropped first: the MCP server, then the AS.
    mcp: NodeServer,
    auth: NodeServer,
    db: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Setup {
    fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// [`Setup::start`] with environment variables for `as.mjs`.
    fn start_with(config: &str, as_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let auth = NodeServer::start("as", "as.mjs", &[config, "0"], as_env, dir.path());
        let mcp = NodeServer::start("mcp", "mcp.mjs", &[&auth.url, "0"], &[], dir.path());
        Self {
            db: dir.path().join("credentials.db"),
            mcp,
            auth,
            dir,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    fn issuer(&self) -> &str {
        &self.auth.url
    }

    fn server(&self) -> &str {
        &self.mcp.url
    }

    /// Runs `mcp-auth --store sqlite:DB ARGS` in test mode (plain http to loopback).
    async fn cli(&self, args: &[&str]) -> Output {
        cli(&self.db, args, &[]).await
    }

    /// Every event and request the AS saw so far.
    async fn events(&self) -> Vec<Value> {
        self.get_json(&format!("{}/_events", self.issuer())).await
    }

    /// Every request the MCP server saw so far.
    async fn mcp_log(&self) -> Vec<Value> {
        let origin = self.server().trim_end_matches("/mcp").to_owned();
        self.get_json(&format!("{origin}/_log")).await
    }

    async fn get_json(&self, url: &str) -> Vec<Value> {
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "GET {url}");
        response.json().await.unwrap()
    }

    /// A JSON-RPC call to the MCP server with `token`; answers the status and the body.
    async fn call(&self, token: &str, method: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.server())
            .bearer_auth(token)
            .header("Accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    fn key(&self) -> TokenKey {
        TokenKey::new(
            IssuerId::new(self.issuer()).unwrap(),
            ResourceUri::new(self.server()).unwrap(),
        )
    }

    async fn store(&self) -> mcp_auth_store_sqlite::SqliteStore {
        mcp_auth_store_sqlite::SqliteStore::open(&self.db)
            .await
            .unwrap()
    }

    async fn stored_tokens(&self) -> TokenSet {
        self.store()
            .await
            .get_tokens(&self.key())
            .await
            .unwrap()
            .expect("no tokens stored")
            .value
    }

    /// Sets the stored access token's `expires_at` (the token itself is untouched), as a token
    /// reaching the end of its life would look to `mcp-auth token`.
    async fn set_expiry(&self, at: Timestamp) {
        let store = self.store().await;
        let current = store.get_tokens(&self.key()).await.unwrap().unwrap();
        let mut tokens = current.value.clone();
        tokens.expires_at = Some(at);
        store
            .put_tokens(
                &self.key(),
                &tokens,
                mcp_auth_core::Expect::Version(current.version),
            )
            .await
            .unwrap();
    }

    /// `mcp-auth token`, which must succeed; answers the printed token.
    async fn token(&self) -> String {
        let out = self.cli(&["token", self.server()]).await;
        assert!(
            out.status.success(),
            "token failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        let token = text(&out.stdout).trim().to_owned();
        assert_eq!(
            text(&out.stdout),
            format!("{token}\n"),
            "token prints only the token"
        );
        token
    }

    /// Calls the MCP server with `token`: initialize and tools/list answer 200 and the server
    /// verified the JWT (signature by the AS's key, `iss`, `aud` = the server, `typ` at+jwt).
    /// Answers the verified claims the server logged.
    async fn assert_mcp_accepts(&self, token: &str) -> Value {
        let (status, body) = self.call(token, "initialize").await;
        assert_eq!(status, 200, "initialize: {body}");
        assert!(body["result"]["serverInfo"].is_object(), "{body}");
        let (status, body) = self.call(token, "tools/list").await;
        assert_eq!(status, 200, "tools/list: {body}");
        assert_eq!(body["result"]["tools"][0]["name"], "whoami", "{body}");
        let log = self.mcp_log().await;
        let last = log.last().unwrap().clone();
        assert_eq!(last["verified"], true, "{last}");
        assert_eq!(last["rpc"], "tools/list", "{last}");
        assert_eq!(
            last["aud"],
            self.server(),
            "aud must be the MCP server: {last}"
        );
        assert_eq!(last["sub"], "mcp-test-user", "{last}");
        assert!(
            last["scope"]
                .as_str()
                .unwrap()
                .split(' ')
                .any(|s| s == "mcp"),
            "{last}"
        );
        assert!(
            last["jti"].as_str().is_some_and(|j| !j.is_empty()),
            "{last}"
        );
        last
    }
}

async fn cli(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("--store")
        .arg(format!("sqlite:{}", db.display()))
        .args(args)
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .env_remove("MCP_AUTH_NAMESPACE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Events of `kind` (and `grant_type`, when given) at or after `since`.
fn count(events: &[Value], since: usize, kind: &str, grant_type: Option<&str>) -> usize {
    events[since..]
        .iter()
        .filter(|e| e["type"] == kind)
        .filter(|e| grant_type.is_none_or(|g| e["grant_type"] == g))
        .count()
}

fn describe(events: &[Value], since: usize) -> String {
    events[since..]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What one configuration should look like from the client's side.
struct Expected {
    config: &'static str,
    /// The authorization request asks for `offline_access` with `prompt=consent`.
    offline_access: bool,
    /// The client registered through DCR authenticates with this method.
    auth_method: &'static str,
    /// The RFC 8414 metadata path answers 404 (OpenID discovery only).
    oidc_discovery_only: bool,
}

/// login → token → MCP call → forced refresh (rotation) → 8 concurrent refreshes → logout →
/// token needs a login → login again.
async fn full_flow(expected: Expected) {
    let s = Setup::start(expected.config);
    let server = s.server().to_owned();

    // Nothing stored yet: a login is needed (exit code 3).
    let out = s.cli(&["token", &server]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // --- login --headless: discovery, DCR, authorization (3 redirects), code exchange.
    let out = s.cli(&["login", &server, "--headless"]).await;
    let events = s.events().await;
    assert!(
        out.status.success(),
        "login failed: {}\nAS events:\n{}",
        text(&out.stderr),
        describe(&events, 0)
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Logged in"), "{stderr}");
    assert!(
        !stderr.contains("issued no refresh token"),
        "[{}] the AS issued no refresh token: {stderr}\nAS events:\n{}",
        expected.config,
        describe(&events, 0)
    );

    // Discovery: the RFC 8414 path first; OpenID discovery where it is missing.
    let discovery: Vec<(String, u64)> = events
        .iter()
        .filter(|e| {
            e["type"] == "request" && e["path"].as_str().unwrap().starts_with("/.well-known/")
        })
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    if expected.oidc_discovery_only {
        assert_eq!(
            discovery,
            vec![
                ("/.well-known/oauth-authorization-server".to_owned(), 404),
                ("/.well-known/openid-configuration".to_owned(), 200),
            ],
            "discovery"
        );
    } else {
        assert_eq!(
            discovery,
            vec![("/.well-known/oauth-authorization-server".to_owned(), 200)],
            "discovery"
        );
    }

    // Registration: one native client with the expected authentication method.
    let registrations: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "registration_create.success")
        .collect();
    assert_eq!(registrations.len(), 1, "{}", describe(&events, 0));
    assert_eq!(
        registrations[0]["token_endpoint_auth_method"], expected.auth_method,
        "{}",
        registrations[0]
    );
    assert_eq!(registrations[0]["application_type"], "native");

    // The authorization request: PKCE S256, the resource, and offline_access with
    // prompt=consent exactly when the AS lists offline_access.
    let authorize: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "request" && e["path"] == "/auth")
        .collect();
    assert_eq!(authorize.len(), 1, "{}", describe(&events, 0));
    let request = authorize[0];
    assert_eq!(request["code_challenge_method"], "S256", "{request}");
    assert_eq!(request["resource"], server.as_str(), "{request}");
    let scope = request["scope"].as_str().unwrap_or_default();
    if expected.offline_access {
        assert!(scope.split(' ').any(|s| s == "offline_access"), "{request}");
        assert_eq!(request["prompt"], "consent", "{request}");
    } else {
        assert!(
            !scope.split(' ').any(|s| s == "offline_access"),
            "{request}"
        );
        assert!(request["prompt"].is_null(), "{request}");
    }
    assert!(scope.split(' ').any(|s| s == "mcp"), "{request}");
    // The whole authorization took 3 plain GET redirects inside the AS origin.
    let hops = events
        .iter()
        .filter(|e| {
            e["type"] == "request"
                && e["method"] == "GET"
                && (e["path"] == "/auth"
                    || e["path"].as_str().unwrap().starts_with("/auth/")
                    || e["path"].as_str().unwrap().starts_with("/interaction/"))
        })
        .count();
    assert_eq!(hops, 3, "{}", describe(&events, 0));

    // The code exchange issued a refresh token; a confidential client used HTTP Basic.
    let exchanges: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "grant.success" && e["grant_type"] == "authorization_code")
        .collect();
    assert_eq!(exchanges.len(), 1, "{}", describe(&events, 0));
    assert_eq!(
        exchanges[0]["refresh_token_issued"], true,
        "{}",
        exchanges[0]
    );
    for token_request in events
        .iter()
        .filter(|e| e["type"] == "request" && e["path"] == "/token")
    {
        assert_eq!(
            token_request["basic_auth"],
            expected.auth_method == "client_secret_basic",
            "{token_request}"
        );
    }

    let out = s.cli(&["status", "--json"]).await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["issuer"], s.issuer(), "{status}");
    assert_eq!(status[0]["registration"], "dynamic", "{status}");
    assert_eq!(
        status[0]["servers"][0]["refresh_available"], true,
        "{status}"
    );

    // --- token, and a call to the MCP server with it.
    let first = s.token().await;
    let stored = s.stored_tokens().await;
    assert_eq!(stored.access_token.expose_secret(), first);
    let first_refresh = stored
        .refresh_token
        .as_ref()
        .expect("a refresh token is stored")
        .expose_secret()
        .to_owned();
    s.assert_mcp_accepts(&first).await;
    // Without a token the server challenges with its resource metadata.
    let response = s.http.post(&server).json(&json!({})).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("resource_metadata="), "{challenge}");
    // The same token again: served from the store, nothing sent to the AS.
    let mark = s.events().await.len();
    assert_eq!(s.token().await, first);
    assert_eq!(count(&s.events().await, mark, "request", None), 0);

    // --- forced refresh: the stored token looks expired.
    s.set_expiry(Timestamp::from_unix_seconds(1)).await;
    let mark = s.events().await.len();
    let second = s.token().await;
    let events = s.events().await;
    assert_ne!(second, first, "a refreshed access token");
    assert_eq!(
        count(&events, mark, "grant.success", Some("refresh_token")),
        1,
        "{}",
        describe(&events, mark)
    );
    assert_eq!(
        count(&events, mark, "refresh_token.consumed", None),
        1,
        "rotated"
    );
    assert_eq!(
        count(&events, mark, "grant.error", None),
        0,
        "{}",
        describe(&events, mark)
    );
    let stored = s.stored_tokens().await;
    assert_eq!(stored.access_token.expose_secret(), second);
    let second_refresh = stored
        .refresh_token
        .as_ref()
        .expect("the rotated refresh token is stored")
        .expose_secret()
        .to_owned();
    assert_ne!(
        second_refresh, first_refresh,
        "the refresh token was rotated"
    );
    assert!(
        stored
            .expires_at
            .is_some_and(|at| at.unix_seconds() > Timestamp::now().unix_seconds() + 3000),
        "the new expiry is stored"
    );
    let claims = s.assert_mcp_accepts(&second).await;
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    // --- 8 concurrent `token` processes on an expired token: one refresh, none rejected.
    s.set_expiry(Timestamp::from_unix_seconds(1)).await;
    let mark = s.events().await.len();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (db, server) = (s.db.clone(), server.clone());
        handles.push(tokio::spawn(async move {
            cli(&db, &["token", &server], &[]).await
        }));
    }
    let mut printed = std::collections::BTreeSet::new();
    for handle in handles {
        let out = handle.await.unwrap();
        assert!(
            out.status.success(),
            "a concurrent token failed: {}",
            text(&out.stderr)
        );
        printed.insert(text(&out.stdout).trim().to_owned());
    }
    let events = s.events().await;
    assert_eq!(
        count(&events, mark, "grant.success", Some("refresh_token")),
        1,
        "exactly one refresh at the AS:\n{}",
        describe(&events, mark)
    );
    assert_eq!(
        count(&events, mark, "grant.error", None),
        0,
        "no refresh rejected:\n{}",
        describe(&events, mark)
    );
    assert_eq!(
        events[mark..]
            .iter()
            .filter(|e| e["type"] == "request" && e["path"] == "/token")
            .count(),
        1,
        "one token request:\n{}",
        describe(&events, mark)
    );
    assert_eq!(printed.len(), 1, "all eight print the same token");
    let third = printed.into_iter().next().unwrap();
    assert_ne!(third, second);
    s.assert_mcp_accepts(&third).await;

    // --- logout: the refresh token is revoked (RFC 7009); the JWT access token cannot be
    // (oidc-provider answers unsupported_token_type for structured tokens) and the CLI says so.
    let stored = s.stored_tokens().await;
    let last_refresh = stored.refresh_token.unwrap().expose_secret().to_owned();
    let registration = s
        .store()
        .await
        .get_registration(&IssuerId::new(s.issuer()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let mark = s.events().await.len();
    let out = s.cli(&["logout", &server]).await;
    let stderr = text(&out.stderr);
    let events = s.events().await;
    assert!(out.status.success(), "logout failed: {stderr}");
    eprintln!("[{}] logout said:\n{stderr}", expected.config);
    assert!(
        stderr.contains("refresh token revoked at the authorization server"),
        "{stderr}"
    );
    assert!(
        stderr.contains("access token NOT revoked") && stderr.contains("unsupported_token_type"),
        "{stderr}"
    );
    assert_eq!(
        count(&events, mark, "grant.revoked", None),
        1,
        "{}",
        describe(&events, mark)
    );
    assert!(!stderr.contains(&last_refresh) && !stderr.contains(&third));
    // The revoked refresh token is dead at the AS.
    let token_endpoint = format!("{}/token", s.issuer());
    let refresh = match &registration.client_secret {
        Some(secret) => s
            .http
            .post(&token_endpoint)
            .basic_auth(&registration.client_id, Some(secret.expose_secret()))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", last_refresh.as_str()),
            ]),
        None => s.http.post(&token_endpoint).form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", last_refresh.as_str()),
            ("client_id", registration.client_id.as_str()),
        ]),
    };
    let response = refresh.send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");

    // --- token now needs a login.
    let out = s.cli(&["token", &server]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("mcp-auth login"),
        "{}",
        text(&out.stderr)
    );

    // --- login again: the registration is reused (another loopback port: RFC 8252 §7.3).
    let mark = s.events().await.len();
    let out = s.cli(&["login", &server, "--headless"]).await;
    let events = s.events().await;
    assert!(
        out.status.success(),
        "second login failed: {}\n{}",
        text(&out.stderr),
        describe(&events, mark)
    );
    assert_eq!(count(&events, mark, "registration_create.success", None), 0);
    assert_eq!(
        count(&events, mark, "grant.success", Some("authorization_code")),
        1
    );
    let fourth = s.token().await;
    s.assert_mcp_accepts(&fourth).await;

    // Every token request named the MCP server as `resource` (RFC 8707 §2.2): the provider's
    // default `useGrantedResource` would otherwise answer with a token for its own userinfo
    // endpoint instead of a JWT for the server.
    let events = s.events().await;
    let grants: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "grant.success")
        .collect();
    assert_eq!(grants.len(), 4, "{}", describe(&events, 0));
    for grant in grants {
        assert_eq!(grant["resource"], server.as_str(), "{grant}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_issues_a_refresh_token_with_offline_access_and_consent() {
    full_flow(Expected {
        config: "default",
        offline_access: true,
        auth_method: "none",
        oidc_discovery_only: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_client_refresh_without_offline_access() {
    full_flow(Expected {
        config: "public-refresh",
        offline_access: false,
        auth_method: "none",
        oidc_discovery_only: false,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confidential_client_and_openid_discovery_only() {
    full_flow(Expected {
        config: "confidential-oidc-only",
        offline_access: true,
        auth_method: "client_secret_basic",
        oidc_discovery_only: true,
    })
    .await;
}

/// 30-second access tokens and no refresh token: `token` serves the token for its whole life
/// (the server accepts it), then exits 3 with the login hint. The end of life is reached by
/// editing the stored expiry, not by waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_access_tokens_without_refresh_token() {
    let s = Setup::start("no-refresh");
    let server = s.server().to_owned();
    let before = Timestamp::now().unix_seconds();
    let out = s.cli(&["login", &server, "--headless"]).await;
    let stderr = text(&out.stderr);
    assert!(
        out.status.success(),
        "login failed: {stderr}\n{}",
        describe(&s.events().await, 0)
    );
    assert!(stderr.contains("issued no refresh token"), "{stderr}");
    let events = s.events().await;
    let exchange = events
        .iter()
        .find(|e| e["type"] == "grant.success" && e["grant_type"] == "authorization_code")
        .unwrap();
    assert_eq!(exchange["refresh_token_issued"], false, "{exchange}");
    assert_eq!(exchange["expires_in"], 30, "{exchange}");

    let stored = s.stored_tokens().await;
    assert!(stored.refresh_token.is_none());
    let expires_at = stored
        .expires_at
        .expect("expires_at is stored")
        .unix_seconds();
    assert!(
        (before + 25..=Timestamp::now().unix_seconds() + 30).contains(&expires_at),
        "expires_at {expires_at} is not about 30 s after {before}"
    );
    let out = s.cli(&["status", "--json"]).await;
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status[0]["servers"][0]["refresh_available"], false,
        "{status}"
    );

    // Served while valid, and the server accepts it inside its lifetime.
    let token = s.token().await;
    let claims = s.assert_mcp_accepts(&token).await;
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        30
    );
    // Three seconds left (inside any refresh margin): with nothing to refresh it, the token is
    // still served, and nothing is sent to the AS.
    let mark = s.events().await.len();
    s.set_expiry(Timestamp::from_unix_seconds(
        Timestamp::now().unix_seconds() + 3,
    ))
    .await;
    assert_eq!(s.token().await, token);
    assert_eq!(count(&s.events().await, mark, "request", None), 0);

    // Expired: a login is needed, and the AS was not asked for anything.
    s.set_expiry(Timestamp::from_unix_seconds(
        Timestamp::now().unix_seconds() - 1,
    ))
    .await;
    let out = s.cli(&["token", &server]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("mcp-auth login {server}")),
        "{stderr}"
    );
    assert_eq!(count(&s.events().await, mark, "request", None), 0);
}

/// The login people use: `mcp-auth login` (no --headless) opens the browser named by $BROWSER
/// — here `browser.mjs`, which follows redirects and keeps cookies like a browser — and receives
/// the authorization response on its loopback listener. The AS gets no server-side cookie help
/// (`COOKIE_REPLAY=off`): its interaction and resume cookies must make the round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_keeps_the_providers_cookies() {
    let s = Setup::start_with("default", &[("COOKIE_REPLAY", "off")]);
    let server = s.server().to_owned();
    let (node, dir) = toolchain();
    let browser = format!("{} {}", node.display(), dir.join("browser.mjs").display());
    let browser_log = s.dir.path().join("browser.log");
    let env = [
        ("BROWSER", browser.as_str()),
        ("MCP_AUTH_TEST_BROWSER_LOG", browser_log.to_str().unwrap()),
    ];
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        cli(&s.db, &["login", &server], &env),
    )
    .await
    .expect("login through the browser did not finish in 30 s");
    let hops = std::fs::read_to_string(&browser_log).unwrap_or_default();
    let events = s.events().await;
    assert!(
        out.status.success(),
        "login failed: {}\nbrowser:\n{hops}\nAS events:\n{}",
        text(&out.stderr),
        describe(&events, 0)
    );
    assert!(
        !text(&out.stderr).contains("issued no refresh token"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !events.iter().any(|e| e["cookies_replayed"] == true),
        "the AS replayed cookies:\n{}",
        describe(&events, 0)
    );
    // /auth → /interaction/:uid → /auth/:uid → the loopback redirect URI, with cookies from the
    // second request on.
    let hops: Vec<Value> = hops
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hops.len(), 4, "{hops:?}");
    assert!(
        hops[1]["path"]
            .as_str()
            .unwrap()
            .starts_with("/interaction/"),
        "{hops:?}"
    );
    assert!(
        hops[1]["sent_cookies"] == true && hops[2]["sent_cookies"] == true,
        "{hops:?}"
    );
    assert!(
        hops[3]["path"].as_str().unwrap().starts_with("/callback"),
        "{hops:?}"
    );
    assert_eq!(hops[3]["status"], 200, "{hops:?}");

    let token = s.token().await;
    s.assert_mcp_accepts(&token).await;
}

/// A grant revoked at the AS behind the client's back (an administrator, or the provider's
/// refresh-token reuse detection): the next refresh is answered `invalid_grant`, `token` exits 3
/// with the login hint, the dead tokens are deleted, and a new login works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_revoked_at_the_authorization_server_needs_a_new_login() {
    let s = Setup::start("default");
    let server = s.server().to_owned();
    let out = s.cli(&["login", &server, "--headless"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stored = s.stored_tokens().await;
    let refresh_token = stored.refresh_token.unwrap().expose_secret().to_owned();
    let registration = s
        .store()
        .await
        .get_registration(&IssuerId::new(s.issuer()).unwrap())
        .await
        .unwrap()
        .unwrap()
        .value;
    let response = s
        .http
        .post(format!("{}/token/revocation", s.issuer()))
        .form(&[
            ("token", refresh_token.as_str()),
            ("token_type_hint", "refresh_token"),
            ("client_id", registration.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    s.set_expiry(Timestamp::from_unix_seconds(1)).await;
    let mark = s.events().await.len();
    let out = s.cli(&["token", &server]).await;
    let stderr = text(&out.stderr);
    let events = s.events().await;
    eprintln!("[default] token after the grant was revoked said:\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stderr}\n{}",
        describe(&events, mark)
    );
    assert!(
        stderr.contains(&format!("mcp-auth login {server}")),
        "{stderr}"
    );
    assert_eq!(
        count(&events, mark, "grant.error", Some("refresh_token")),
        1,
        "{}",
        describe(&events, mark)
    );
    assert!(
        s.store()
            .await
            .get_tokens(&s.key())
            .await
            .unwrap()
            .is_none(),
        "the rejected tokens are deleted"
    );
    // Asking again sends nothing: there is nothing left to refresh.
    let mark = s.events().await.len();
    assert_eq!(s.cli(&["token", &server]).await.status.code(), Some(3));
    assert_eq!(count(&s.events().await, mark, "request", None), 0);

    let out = s.cli(&["login", &server, "--headless"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = s.token().await;
    s.assert_mcp_accepts(&token).await;
}
