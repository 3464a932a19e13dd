//! The network options every command shares (`--allow-http`, `--allow-private-network`,
//! `--use-system-proxy`, their environment variables) and the login's stable redirect port.
//! Every request goes to loopback: refusals happen before any connection.
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `mcp-auth --store sqlite:STORE ARGS` with only the environment given here.
async fn mcp_auth(store: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"));
    command
        .arg("--store")
        .arg(format!("sqlite:{}", store.display()))
        .args(args)
        .env_remove("MCP_AUTH_STORE");
    for name in [
        "MCP_AUTH_INSECURE_LOOPBACK",
        "MCP_AUTH_ALLOW_HTTP",
        "MCP_AUTH_ALLOW_PRIVATE_NETWORK",
        "MCP_AUTH_USE_SYSTEM_PROXY",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().await.unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn servers(config: AuthServerConfig) -> (AuthServer, McpServer) {
    let as1 = AuthServer::start(config).await.unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    (as1, mcp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_http_by_flag_or_environment_and_the_refusal_names_it() {
    let (_as1, mcp) = servers(AuthServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = mcp.url();
    let login = ["login", url.as_str(), "--headless"];
    let refused = mcp_auth(&dir.path().join("a.db"), &login, &[]).await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--allow-http"),
        "{}",
        stderr(&refused)
    );
    for value in ["0", "false", "no"] {
        let out = mcp_auth(
            &dir.path().join("b.db"),
            &login,
            &[("MCP_AUTH_ALLOW_HTTP", value)],
        )
        .await;
        assert!(!out.status.success(), "MCP_AUTH_ALLOW_HTTP={value}");
    }
    for (i, value) in ["1", "true", "yes"].iter().enumerate() {
        let db = dir.path().join(format!("env{i}.db"));
        let out = mcp_auth(&db, &login, &[("MCP_AUTH_ALLOW_HTTP", value)]).await;
        assert!(
            out.status.success(),
            "MCP_AUTH_ALLOW_HTTP={value}: {}",
            stderr(&out)
        );
    }
    let out = mcp_auth(
        &dir.path().join("flag.db"),
        &["--allow-http", "login", url.as_str(), "--headless"],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_network_servers_need_their_own_flag() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before any connection is made: nothing leaves loopback.
    for url in [
        "https://10.255.255.1/mcp",
        "https://192.168.255.1/mcp",
        "https://[fd00::1]/mcp",
    ] {
        let out = mcp_auth(&dir.path().join("a.db"), &["login", url, "--headless"], &[]).await;
        assert!(!out.status.success(), "{url}");
        let err = stderr(&out);
        assert!(err.contains("private"), "{url}: {err}");
    }
    // An MCP server's URL must be https unless it is on this machine: plain http never crosses
    // a network, whatever the flags.
    for url in ["http://10.255.255.1/mcp", "http://8.8.8.8/mcp"] {
        let out = mcp_auth(
            &dir.path().join("b.db"),
            &[
                "--allow-http",
                "--allow-private-network",
                "login",
                url,
                "--headless",
            ],
            &[],
        )
        .await;
        assert!(!out.status.success(), "{url}");
        assert!(
            stderr(&out).contains("https is required"),
            "{url}: {}",
            stderr(&out)
        );
    }
}

/// A forward proxy on loopback that records the first line of every connection and answers 502.
async fn recording_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                record
                    .lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_proxy_is_used_only_when_asked() {
    let (proxy_port, seen) = recording_proxy().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!(
        "https://127.0.0.1:{}/mcp",
        dead.local_addr().unwrap().port()
    );
    drop(dead);
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    let env = [
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("ALL_PROXY", proxy_url.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();

    let out = mcp_auth(
        &dir.path().join("a.db"),
        &["--allow-http", "login", target.as_str(), "--headless"],
        &env,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );

    let out = mcp_auth(
        &dir.path().join("b.db"),
        &[
            "--allow-http",
            "--use-system-proxy",
            "login",
            target.as_str(),
            "--headless",
        ],
        &env,
    )
    .await;
    assert!(!out.status.success());
    let authority = target
        .trim_start_matches("https://")
        .trim_end_matches("/mcp");
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("CONNECT {authority} HTTP/1.1")),
        "{lines:?}"
    );
}

/// The redirect ports of the authorization requests `as1` received.
fn redirect_ports(as1: &AuthServer) -> Vec<u16> {
    as1.requests()
        .iter()
        .filter(|r| r.endpoint == Endpoint::Authorize)
        .filter_map(|r| r.query.get("redirect_uri"))
        .map(|u| reqwest::Url::parse(u).unwrap().port().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_uses_one_stable_redirect_port_per_server_unless_told() {
    let (as1, mcp) = servers(AuthServerConfig {
        exact_redirect_uris: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let url = mcp.url();
    // Two separate stores: two new registrations, made on the same port.
    for db in ["a.db", "b.db"] {
        let out = mcp_auth(
            &dir.path().join(db),
            &["--allow-http", "login", url.as_str(), "--headless"],
            &[],
        )
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let ports = redirect_ports(&as1);
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0], ports[1]);

    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = mcp_auth(
        &dir.path().join("c.db"),
        &[
            "--allow-http",
            "login",
            url.as_str(),
            "--headless",
            "--callback-port",
            &free.to_string(),
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(redirect_ports(&as1).last(), Some(&free));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_is_no_mcp_server_gets_a_clear_error_and_no_registration() {
    // A web site: 404 for every metadata document, 200 for anything posted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let line = head.lines().next().unwrap_or_default().to_owned();
                let status = if line.starts_with("POST ") { 200 } else { 404 };
                record.lock().unwrap().push(line);
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let out = mcp_auth(
        &dir.path().join("a.db"),
        &["--allow-http", "login", url.as_str(), "--headless"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("is not an MCP server that requires authorization"),
        "{err}"
    );
    let lines = seen.lock().unwrap().clone();
    assert!(!lines.iter().any(|l| l.contains("register")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_token_on_a_missing_database_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("not-yet").join("store.db");
    let status = mcp_auth(&db, &["status"], &[]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("No credentials stored"));
    let json = mcp_auth(&db, &["status", "--json"], &[]).await;
    assert_eq!(String::from_utf8_lossy(&json.stdout).trim(), "[]");
    let token = mcp_auth(&db, &["token", "https://mcp.example.com/mcp"], &[]).await;
    assert_eq!(token.status.code(), Some(3), "{}", stderr(&token));
    assert!(stderr(&token).contains("mcp-auth login"));
    assert!(
        !db.exists() && !db.parent().unwrap().exists(),
        "nothing was created"
    );
}
