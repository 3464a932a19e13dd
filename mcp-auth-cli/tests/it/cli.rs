//! End-to-end tests of the `mcp-auth` binary against the testkit servers, over real HTTP and
//! real SQLite files.
use std::path::Path;
use std::process::Output;

use mcp_auth_testkit::{AuthServer, AuthServerConfig, Endpoint, McpServer, McpServerConfig};

pub(crate) async fn mcp_auth(store: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("--store")
        .arg(format!("sqlite:{}", store.display()))
        .args(args)
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .output()
        .await
        .unwrap()
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) async fn servers() -> (AuthServer, McpServer) {
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
}

/// An AS without dynamic registration that knows the client `cli-pre` (secret
/// `cli-secret-value`, `client_secret_basic`), and an MCP server using it.
async fn pre_registered_servers() -> (AuthServer, McpServer) {
    let as1 = AuthServer::start(AuthServerConfig {
        dynamic_registration: false,
        ..Default::default()
    })
    .await
    .unwrap();
    as1.preregister_client(
        "cli-pre",
        Some("cli-secret-value"),
        "client_secret_basic",
        vec!["http://127.0.0.1/callback".into()],
    );
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    (as1, mcp)
}

/// Everything secret the AS ever issued or received.
fn secrets(as1: &AuthServer) -> Vec<String> {
    let mut all = as1.issued_tokens();
    for c in as1.clients() {
        all.extend(c.client_secret);
    }
    all
}

pub(crate) fn assert_no_secret(as1: &AuthServer, out: &str) {
    for s in secrets(as1) {
        assert!(!out.contains(&s), "a secret leaked into output:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_token_status_logout() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");

    let out = mcp_auth(&db, &["token", &mcp.url()]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "login required has its own exit code"
    );
    assert!(
        text(&out.stderr).contains("mcp-auth login"),
        "{}",
        text(&out.stderr)
    );

    let out = mcp_auth(&db, &["login", &mcp.url(), "--headless"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_no_secret(&as1, &(text(&out.stdout) + &text(&out.stderr)));
    assert!(text(&out.stderr).contains("Logged in"));

    let out = mcp_auth(&db, &["token", &mcp.url()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert_eq!(
        text(&out.stdout),
        format!("{token}\n"),
        "token prints only the token"
    );
    assert!(as1.issued_tokens().contains(&token));
    let probe = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = probe
        .post(mcp.url())
        .bearer_auth(&token)
        .json(&serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let out = mcp_auth(&db, &["status"]).await;
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(
        table.contains(&as1.issuer()) && table.contains("dynamic") && table.contains(&mcp.url()),
        "{table}"
    );
    assert_no_secret(&as1, &table);
    let out = mcp_auth(&db, &["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["issuer"], as1.issuer());
    assert_eq!(json[0]["servers"][0]["refresh_available"], true);
    assert_no_secret(&as1, &text(&out.stdout));

    let out = mcp_auth(&db, &["logout", &mcp.url()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        as1.count(Endpoint::Revoke) >= 1,
        "logout did not revoke at the AS"
    );
    assert_eq!(
        mcp_auth(&db, &["token", &mcp.url()]).await.status.code(),
        Some(3)
    );
    assert_no_secret(&as1, &(text(&out.stdout) + &text(&out.stderr)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_pre_registered_credentials_and_logout_by_issuer() {
    let (as1, mcp) = pre_registered_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let issuer = as1.issuer();
    let out = mcp_auth(
        &db,
        &[
            "login",
            &mcp.url(),
            "--headless",
            "--client-id",
            "cli-pre",
            "--client-secret",
            "cli-secret-value",
            "--issuer",
            &issuer,
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("cli-secret-value"));
    let out = mcp_auth(&db, &["status", "--json"]).await;
    assert!(!text(&out.stdout).contains("cli-secret-value"));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["registration"], "pre_registered");
    let out = mcp_auth(&db, &["logout", "--issuer", &issuer]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        mcp_auth(&db, &["token", &mcp.url()]).await.status.code(),
        Some(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_token_processes_refresh_once() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    assert!(
        mcp_auth(&db, &["login", &mcp.url(), "--headless"])
            .await
            .status
            .success()
    );
    // Expire the stored access token (the refresh token stays valid).
    {
        let store = mcp_auth_store_sqlite_open(&db).await;
        expire_access_token(&store, &as1, &mcp).await;
    }
    as1.clear_requests();
    let url = mcp.url();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (db, url) = (db.clone(), url.clone());
        handles.push(tokio::spawn(async move {
            mcp_auth(&db, &["token", &url]).await
        }));
    }
    let mut outputs = Vec::new();
    for h in handles {
        outputs.push(h.await.unwrap());
    }
    let tokens: std::collections::HashSet<String> = outputs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", text(&o.stderr));
            text(&o.stdout).trim().to_owned()
        })
        .collect();
    assert_eq!(
        as1.count(Endpoint::Token),
        1,
        "{} token requests",
        as1.count(Endpoint::Token)
    );
    assert_eq!(tokens.len(), 1);
}

/// Makes the stored access token of `mcp` look expired (its refresh token stays valid).
async fn expire_access_token(
    store: &dyn mcp_auth_core::TokenStore,
    as1: &AuthServer,
    mcp: &McpServer,
) {
    use mcp_auth_core::{Expect, IssuerId, ResourceUri, Timestamp, TokenKey};
    let key = TokenKey::new(
        IssuerId::new(as1.issuer()).unwrap(),
        ResourceUri::new(mcp.url()).unwrap(),
    );
    let current = store.get_tokens(&key).await.unwrap().unwrap();
    let mut t = current.value.clone();
    t.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(&key, &t, Expect::Version(current.version))
        .await
        .unwrap();
}

async fn mcp_auth_store_sqlite_open(db: &Path) -> mcp_auth_store_sqlite::SqliteStore {
    mcp_auth_store_sqlite::SqliteStore::open(db).await.unwrap()
}

async fn sqlite_in_namespace(db: &Path, namespace: &str) -> mcp_auth_store_sqlite::SqliteStore {
    mcp_auth_store_sqlite::SqliteStore::open_with(
        db,
        mcp_auth_store_sqlite::SqliteOptions {
            namespace: mcp_auth_core::Namespace::new(namespace).unwrap(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

fn records(db: &Path) -> Vec<(String, String, Vec<u8>)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT namespace, key, value FROM records ORDER BY namespace, key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_round_trip_is_byte_identical_and_idempotent() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.db"),
        dir.path().join("b.db"),
        dir.path().join("c.db"),
    );
    assert!(
        mcp_auth(&a, &["login", &mcp.url(), "--headless"])
            .await
            .status
            .success()
    );
    for (from, to) in [(&a, &b), (&b, &c), (&b, &c)] {
        let out = mcp_auth(
            &a,
            &[
                "migrate",
                "--from",
                &format!("sqlite:{}", from.display()),
                "--to",
                &format!("sqlite:{}", to.display()),
            ],
        )
        .await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("verified"));
        assert_no_secret(&as1, &(text(&out.stdout) + &text(&out.stderr)));
    }
    let original = records(&a);
    assert!(original.len() >= 3, "{}", original.len());
    assert_eq!(records(&c), original, "the round trip changed a record");
    // The copy works: a token comes out of the migrated store.
    let out = mcp_auth(&c, &["token", &mcp.url()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_to_completion() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("demo")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let narration = text(&out.stdout);
    for expected in [
        "registrations: AS1 1, AS2 1",
        "refused, as SEP-2352 asks",
        "new registrations: 0",
        "requests that reached AS2: 0",
    ] {
        assert!(
            narration.contains(expected),
            "missing {expected:?} in:\n{narration}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let out = mcp_auth(&db, &["token", "not a url"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid resource URI"),
        "{}",
        text(&out.stderr)
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .args(["--store", "ftp://x", "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unknown store"),
        "{}",
        text(&out.stderr)
    );
    // An unreachable Redis is a clear, retryable error.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .args(["--store", "redis://127.0.0.1:1/", "status"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Redis") || stderr.contains("redis"),
        "{stderr}"
    );
}

/// sqlite → redis → sqlite: every record comes back byte for byte, through every Redis
/// deployment test-all starts: a single server, a Redis Cluster (`redis+cluster://`), a TLS-only
/// server (`rediss://…?tls_ca=`) and a narrow ACL user (whose password never shows in output).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sqlite_to_redis_and_back_is_byte_identical() {
    let redis = std::env::var("MCP_AUTH_TEST_REDIS_URL").expect(
        "MCP_AUTH_TEST_REDIS_URL is not set: run `cargo xtask test-all`, which starts redis-server",
    );
    let mut deployments = vec![("single server", redis)];
    if let Ok(url) = std::env::var("MCP_AUTH_TEST_REDIS_CLUSTER_URL") {
        deployments.push(("cluster", url));
    }
    if let (Ok(url), Ok(ca)) = (
        std::env::var("MCP_AUTH_TEST_REDIS_TLS_URL"),
        std::env::var("MCP_AUTH_TEST_REDIS_TLS_CA"),
    ) {
        deployments.push(("TLS", format!("{url}?tls_ca={ca}")));
    }
    if let Ok(url) = std::env::var("MCP_AUTH_TEST_REDIS_ACL_URL") {
        deployments.push(("ACL user", url));
    }
    for (label, redis) in deployments {
        round_trip_through_redis(label, redis).await;
    }
}

#[cfg(feature = "redis")]
async fn round_trip_through_redis(label: &str, redis: String) {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, c) = (dir.path().join("a.db"), dir.path().join("c.db"));
    // A fresh namespace keeps this run apart from anything else in the Redis server.
    let ns = format!(
        "cli-migrate-{}-{}",
        std::process::id(),
        label.replace(' ', "-")
    );
    let password = redis
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_owned());
    let with_ns = |store: String, args: &[&str]| {
        let mut all = vec![
            "--namespace".to_owned(),
            ns.clone(),
            "--store".to_owned(),
            store,
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        all
    };
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
            .args(args)
            .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
            .output()
            .await
            .unwrap()
    };
    let sqlite = |p: &Path| format!("sqlite:{}", p.display());
    assert!(
        run(with_ns(sqlite(&a), &["login", &mcp.url(), "--headless"]))
            .await
            .status
            .success()
    );
    for (from, to) in [(sqlite(&a), redis.clone()), (redis.clone(), sqlite(&c))] {
        let out = run(with_ns(
            sqlite(&a),
            &["migrate", "--from", &from, "--to", &to],
        ))
        .await;
        let output = text(&out.stdout) + &text(&out.stderr);
        assert!(out.status.success(), "{label}: {output}");
        assert_no_secret(&as1, &output);
        if let Some(password) = &password {
            assert!(
                !output.contains(password.as_str()),
                "{label}: the store URL's password was printed: {output}"
            );
        }
    }
    let original = records(&a);
    assert!(original.len() >= 3);
    assert_eq!(
        records(&c),
        original,
        "{label}: the sqlite → redis → sqlite round trip changed a record"
    );
    for args in [vec!["token", mcp.url().as_str()], vec!["status"]] {
        let out = run(with_ns(redis.clone(), &args)).await;
        assert!(
            out.status.success(),
            "{label}: {args:?} on the Redis copy: {}",
            text(&out.stderr)
        );
    }
    assert!(
        run(with_ns(redis, &["logout", "--all"]))
            .await
            .status
            .success()
    );
}

/// The whole round trip with the OS keyring (Secret Service) as the store.
#[cfg(feature = "keyring")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_store_round_trip() {
    assert!(
        std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_some(),
        "needs throwaway keyrings: run `cargo xtask test-all`, or see mcp-auth-store-keyring/scripts/with-keyrings.sh"
    );
    let (as1, mcp) = servers().await;
    let ns = format!("cli-keyring-{}", std::process::id());
    let run = |args: &[&str]| {
        let mut all = vec![
            "--namespace".to_owned(),
            ns.clone(),
            "--store".to_owned(),
            "keyring:".to_owned(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
                .args(all)
                .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(&["login", &mcp.url(), "--headless"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["token", &mcp.url()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        as1.issued_tokens()
            .contains(&text(&out.stdout).trim().to_owned())
    );
    let out = run(&["status", "--json"]).await;
    assert_no_secret(&as1, &text(&out.stdout));
    assert!(text(&out.stdout).contains(&as1.issuer()));

    // Eight `token` processes on an expired token, in two different environments (runtime
    // dir, temp dir): the keyring's lock derives from the keyring itself, so the AS sees one
    // refresh and no reuse.
    {
        use mcp_auth_core::Namespace;
        use mcp_auth_store_keyring::{KeyringBackend, KeyringOptions, KeyringStore};
        let store = KeyringStore::open(
            KeyringBackend::SecretService,
            KeyringOptions {
                namespace: Namespace::new(ns.clone()).unwrap(),
            },
        )
        .await
        .unwrap();
        expire_access_token(&store, &as1, &mcp).await;
    }
    as1.clear_requests();
    let url = mcp.url();
    let mut handles = Vec::new();
    let envs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for i in 0..8 {
        let env = envs[i % 2].path().to_owned();
        let mut all = vec!["--namespace".to_owned(), ns.clone(), "--store".to_owned()];
        all.extend(["keyring:".to_owned(), "token".to_owned(), url.clone()]);
        handles.push(tokio::spawn(async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
                .args(all)
                .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
                .env("XDG_RUNTIME_DIR", &env)
                .env("TMPDIR", &env)
                .output()
                .await
                .unwrap()
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for h in handles {
        let out = h.await.unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        tokens.insert(text(&out.stdout).trim().to_owned());
    }
    assert_eq!(
        as1.count(Endpoint::Token),
        1,
        "{} token requests",
        as1.count(Endpoint::Token)
    );
    assert_eq!(as1.reuse_detections(), 0);
    assert_eq!(tokens.len(), 1, "processes printed different tokens");

    assert!(run(&["logout", "--all"]).await.status.success());
    assert_eq!(run(&["token", &mcp.url()]).await.status.code(), Some(3));
}

/// `migrate` sqlite → redis while 8 `token` processes refresh an expired token through the
/// source (the AS answers slowly, so the copy runs while the refresh is in flight): the copy
/// waits for the refresh and holds the source's latest token set, and using the copy's refresh
/// token causes no reuse detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_while_eight_processes_refresh_copies_the_latest_tokens() {
    use mcp_auth_testkit::TokenFault;
    let redis = std::env::var("MCP_AUTH_TEST_REDIS_URL").expect(
        "MCP_AUTH_TEST_REDIS_URL is not set: run `cargo xtask test-all`, which starts redis-server",
    );
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, c) = (dir.path().join("a.db"), dir.path().join("c.db"));
    let ns = format!("cli-migrate-race-{}", std::process::id());
    let sqlite = |p: &Path| format!("sqlite:{}", p.display());
    let run = {
        let ns = ns.clone();
        move |store: String, args: Vec<String>| {
            let ns = ns.clone();
            async move {
                tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
                    .args(["--namespace", &ns, "--store", &store])
                    .args(args)
                    .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
                    .output()
                    .await
                    .unwrap()
            }
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let url = mcp.url();
    assert!(
        run(sqlite(&a), args(&["login", &url, "--headless"]))
            .await
            .status
            .success()
    );
    {
        let store = sqlite_in_namespace(&a, &ns).await;
        expire_access_token(&store, &as1, &mcp).await;
    }
    as1.clear_requests();
    as1.set_token_fault(TokenFault::Delay(std::time::Duration::from_millis(1500)));
    let mut refreshers = Vec::new();
    for _ in 0..8 {
        refreshers.push(tokio::spawn(run(sqlite(&a), args(&["token", &url]))));
    }
    while as1.refresh_requests() == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let out = run(
        sqlite(&a),
        args(&["migrate", "--from", &sqlite(&a), "--to", &redis]),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for r in refreshers {
        let o = r.await.unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    as1.set_token_fault(TokenFault::None);
    assert_eq!(as1.refresh_requests(), 1);
    // Bring the Redis copy back into a file and compare it with the source's records.
    let out = run(
        sqlite(&a),
        args(&["migrate", "--from", &redis, "--to", &sqlite(&c)]),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        records(&c),
        records(&a),
        "the destination does not hold the source's latest token set"
    );
    // Use the copy: its refresh token must be the live one.
    {
        let store = sqlite_in_namespace(&c, &ns).await;
        expire_access_token(&store, &as1, &mcp).await;
    }
    let o = run(sqlite(&c), args(&["token", &url])).await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(as1.refresh_requests(), 2);
    assert_eq!(as1.reuse_detections(), 0);
    assert!(
        run(redis, args(&["logout", "--all"]))
            .await
            .status
            .success()
    );
}

/// Issue-10 hardening of the command line: a secret needs `--issuer`; a secret given on the
/// command line is warned about (it shows in the process list); `--client-secret-file` works
/// without a warning; no secret reaches the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_rules() {
    let (as1, mcp) = pre_registered_servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let url = mcp.url();
    let issuer = as1.issuer();
    let base = [
        "login",
        url.as_str(),
        "--headless",
        "--client-id",
        "cli-pre",
    ];

    let mut no_issuer = base.to_vec();
    no_issuer.extend(["--client-secret", "cli-secret-value"]);
    let out = mcp_auth(&db, &no_issuer).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--issuer"),
        "{}",
        text(&out.stderr)
    );
    assert!(as1.requests().is_empty(), "the secret's AS was contacted");

    let mut on_cmdline = base.to_vec();
    on_cmdline.extend(["--client-secret", "cli-secret-value", "--issuer", &issuer]);
    let out = mcp_auth(&db, &on_cmdline).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("visible to other local users"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("cli-secret-value"));

    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "cli-secret-value\n").unwrap();
    let secret_path = secret_file.display().to_string();
    let mut from_file = base.to_vec();
    from_file.extend(["--client-secret-file", &secret_path, "--issuer", &issuer]);
    let out = mcp_auth(&db, &from_file).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("visible to other local users"));
    assert!(!text(&out.stderr).contains("cli-secret-value"));
}

/// The CLI runs with core dumps disabled (a core file would hold its secrets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_dumps_are_disabled() {
    let (_as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .arg("--store")
        .arg(format!("sqlite:{}", db.display()))
        .args(["login", &mcp.url(), "--no-browser"])
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut limit = String::new();
    for _ in 0..100 {
        limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or_default()
            .to_owned();
        let fields: Vec<&str> = limit.split_whitespace().collect();
        if fields.get(4..6) == Some(&["0", "0"][..]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    let fields: Vec<&str> = limit.split_whitespace().collect();
    assert_eq!(fields.get(4..6), Some(&["0", "0"][..]), "{limit:?}");
}

/// `logout --all` goes on past a damaged record, reports it (exit 1), logs out of the rest and
/// says what the authorization server revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_survives_a_damaged_record_and_reports_revocation() {
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            McpServer::start(McpServerConfig {
                authorization_servers: vec![as1.clone()],
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    for mcp in &servers {
        let out = mcp_auth(&db, &["login", &mcp.url(), "--headless"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // Damage the binding of the second server.
    let damaged = servers[1].url();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n = conn
            .execute(
                "UPDATE records SET value = CAST('not a record' AS BLOB)
                 WHERE instr(CAST(value AS TEXT), '\"binding\"') > 0
                   AND instr(CAST(value AS TEXT), ?1) > 0",
                [damaged.as_str()],
            )
            .unwrap();
        assert_eq!(n, 1, "binding record not found");
    }
    let out = mcp_auth(&db, &["logout", "--all"]).await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("Logged out of {}", servers[0].url())),
        "{err}"
    );
    assert!(
        err.contains("refresh token revoked at the authorization server"),
        "{err}"
    );
    assert!(err.contains("1 problem(s) during logout"), "{err}");
    assert!(err.contains(&damaged), "{err}");
    assert_eq!(as1.count(Endpoint::Revoke), 2);
    for mcp in &servers {
        assert_eq!(
            mcp_auth(&db, &["token", &mcp.url()]).await.status.code(),
            Some(3)
        );
    }
}

/// 100 trials of two concurrent `mcp-auth login`s (to two servers) over one kernel keyring:
/// afterwards `status` lists both servers every time (no lost index entry).
#[cfg(feature = "keyring")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_over_one_keyring_lose_no_server() {
    assert!(
        std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_some(),
        "needs throwaway keyrings: run `cargo xtask test-all`, or see mcp-auth-store-keyring/scripts/with-keyrings.sh"
    );
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            McpServer::start(McpServerConfig {
                authorization_servers: vec![as1.clone()],
                ..Default::default()
            })
            .await
            .unwrap(),
        );
    }
    let urls: Vec<String> = servers.iter().map(McpServer::url).collect();
    let run = |ns: String, args: Vec<String>| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
            .args(["--namespace", &ns, "--store", "keyring:keyutils"])
            .args(args)
            .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
            .output()
            .await
            .unwrap()
    };
    let mut lost = 0;
    for trial in 0..100 {
        let ns = format!("cli-logins-{}-{trial}", std::process::id());
        let logins: Vec<_> = urls
            .iter()
            .map(|u| {
                tokio::spawn(run(
                    ns.clone(),
                    vec!["login".into(), u.clone(), "--headless".into()],
                ))
            })
            .collect();
        for l in logins {
            let out = l.await.unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        let out = run(ns.clone(), vec!["status".into(), "--json".into()]).await;
        let status = text(&out.stdout);
        lost += urls.iter().filter(|u| !status.contains(u.as_str())).count();
        assert!(
            run(ns, vec!["logout".into(), "--all".into()])
                .await
                .status
                .success()
        );
    }
    assert_eq!(lost, 0, "{lost} servers vanished from status in 100 trials");
}
