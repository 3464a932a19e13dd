//! Headless logins of the `mcp-auth` binary: `login --device` (RFC 8628) and the
//! paste-the-redirect-URL fallback of `login --no-browser`, against the testkit servers.
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};

fn command(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-auth"));
    cmd.arg("--store")
        .arg(format!("sqlite:{}", store.display()))
        .args(args)
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .kill_on_drop(true);
    cmd
}

async fn servers(configure: impl FnOnce(&mut AuthServerConfig)) -> (AuthServer, McpServer) {
    let mut config = AuthServerConfig::default();
    configure(&mut config);
    let as1 = AuthServer::start(config).await.unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    (as1, mcp)
}

/// Reads stderr lines until `pick` returns something; returns it and everything read so far.
async fn read_until(
    lines: &mut Lines<BufReader<ChildStderr>>,
    mut pick: impl FnMut(&str) -> Option<String>,
) -> (String, String) {
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(v) = pick(&line) {
                return Some(v);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(v)) => (v, seen),
        _ => panic!("stderr never showed what was expected:\n{seen}"),
    }
}

/// Waits for the child and returns (success, rest of stderr).
async fn finish(mut child: Child, mut lines: Lines<BufReader<ChildStderr>>) -> (bool, String) {
    let mut rest = String::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    (status.success(), rest)
}

async fn token_works(db: &Path, as1: &AuthServer, mcp: &McpServer) {
    let out = command(db, &["token", &mcp.url()]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(as1.introspect(&token).is_some(), "not a token of the AS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_device_then_token() {
    let (as1, mcp) = servers(|c| {
        c.device_authorization = true;
        c.device_interval = Duration::from_secs(1);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut child = command(&db, &["login", &mcp.url(), "--device"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (user_code, seen) = read_until(&mut lines, |l| {
        l.split_once("enter the code: ")
            .map(|(_, c)| c.trim().to_owned())
    })
    .await;
    assert!(seen.contains(&format!("{}/device", as1.issuer())), "{seen}");
    // The user approves in a browser elsewhere, after the CLI has polled once.
    let polled = tokio::time::timeout(Duration::from_secs(20), async {
        while as1
            .device_polls(&user_code)
            .is_none_or(|p| p.times.is_empty())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "the CLI never polled");
    assert!(
        as1.approve_device(&user_code),
        "unknown user code {user_code}"
    );
    let (ok, rest) = finish(child, lines).await;
    assert!(ok, "{seen}{rest}");
    assert!(rest.contains("Logged in"), "{rest}");
    for s in as1.issued_tokens() {
        assert!(!(seen.clone() + &rest).contains(&s), "a token leaked");
    }
    assert!(!(seen + &rest).contains("dc_"), "the device code leaked");
    assert_eq!(as1.device_polls(&user_code).unwrap().too_early, 0);
    token_works(&db, &as1, &mcp).await;
}

/// Starts `login --no-browser`, reads the authorization URL from stderr and lets the testkit AS
/// (which approves at once) answer it; returns the redirect it names, which the browser could
/// not deliver over SSH.
async fn start_paste_login(
    db: &Path,
    mcp: &McpServer,
) -> (Child, Lines<BufReader<ChildStderr>>, reqwest::Url, String) {
    let mut child = command(db, &["login", &mcp.url(), "--no-browser"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (auth_url, mut seen) = read_until(&mut lines, |l| {
        let l = l.trim();
        (l.starts_with("http://") && l.contains("/authorize?")).then(|| l.to_owned())
    })
    .await;
    // The CLI offers to take the redirect URL on standard input.
    let (hint, _) = read_until(&mut lines, |l| l.contains("paste").then(|| l.to_owned())).await;
    seen.push_str(&hint);
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http.get(&auth_url).send().await.unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .unwrap()
        .to_str()
        .unwrap();
    (child, lines, reqwest::Url::parse(location).unwrap(), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_login_accepts_a_pasted_redirect_url() {
    let (as1, mcp) = servers(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let (mut child, lines, redirect, seen) = start_paste_login(&db, &mcp).await;
    assert!(seen.contains("paste"), "{seen}");
    let mut stdin = child.stdin.take().unwrap();
    // A blank line first: skipped.
    stdin
        .write_all(format!("\n{redirect}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let (ok, rest) = finish(child, lines).await;
    assert!(ok, "{seen}{rest}");
    assert!(rest.contains("Logged in"), "{rest}");
    assert_eq!(as1.count(Endpoint::Token), 1);
    token_works(&db, &as1, &mcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_login_refuses_a_pasted_url_with_another_state() {
    let (as1, mcp) = servers(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let (mut child, lines, redirect, seen) = start_paste_login(&db, &mcp).await;
    let mut forged = redirect.clone();
    let pairs: Vec<(String, String)> = redirect
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                "an-attackers-state".to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    forged.query_pairs_mut().clear().extend_pairs(pairs);
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{forged}\n").as_bytes())
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    let (ok, rest) = finish(child, lines).await;
    assert!(
        !ok,
        "a pasted URL with another state was accepted:\n{seen}{rest}"
    );
    assert!(rest.contains("state"), "{rest}");
    assert_eq!(as1.count(Endpoint::Token), 0, "no code was redeemed");
    let out = command(&db, &["token", &mcp.url()]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(3), "still logged out");
}
