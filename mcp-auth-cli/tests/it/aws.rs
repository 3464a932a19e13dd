//! The `mcp-auth` binary with `--store aws-sm:PREFIX` (feature `aws`) against a moto server
//! (`MCP_AUTH_TEST_AWS_ENDPOINT`, started by `cargo xtask test-all`): `status`, `token` and
//! `logout` over Secrets Manager, and `migrate` sqlite → aws-sm → sqlite byte for byte. The
//! binary gets the standard AWS variables pointing at moto (loopback endpoint, region, static
//! credentials, no instance metadata, no profile files): it never reaches AWS.
#![cfg(feature = "aws")]
use std::path::Path;
use std::process::Output;

use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

fn moto() -> String {
    let endpoint = std::env::var("MCP_AUTH_TEST_AWS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "MCP_AUTH_TEST_AWS_ENDPOINT is not set: run `cargo xtask test-all`, which starts a moto server, or point it at one (http://127.0.0.1:PORT)"
        )
    });
    let host = endpoint
        .strip_prefix("http://")
        .and_then(|r| r.split([':', '/']).next())
        .unwrap_or_default();
    assert!(
        matches!(host, "127.0.0.1" | "localhost"),
        "MCP_AUTH_TEST_AWS_ENDPOINT={endpoint} is not a loopback moto server"
    );
    endpoint
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary with `args` and the AWS environment of a moto server only.
async fn run(dir: &Path, args: &[String]) -> Output {
    run_in(dir, args, Some("us-east-1")).await
}

async fn run_in(dir: &Path, args: &[String], region: Option<&str>) -> Output {
    let missing = dir.join("no-such-aws-file");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"));
    match region {
        Some(region) => command.env("AWS_REGION", region),
        None => command.env_remove("AWS_REGION"),
    };
    command
        .args(args)
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .env("AWS_ENDPOINT_URL", moto())
        .env_remove("AWS_DEFAULT_REGION")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", &missing)
        .env("AWS_SHARED_CREDENTIALS_FILE", &missing)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .output()
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

/// sqlite → aws-sm → sqlite: every record comes back byte for byte; `status`, `token` and
/// `logout` work on the AWS copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_sqlite_to_aws_secrets_manager_and_back_is_byte_identical() {
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
    let (a, c) = (dir.path().join("a.db"), dir.path().join("c.db"));
    // A fresh namespace keeps this run apart from anything else in the moto server.
    let ns = format!("cli-aws-{}", std::process::id());
    let aws = "aws-sm:mcp-auth-cli-test".to_owned();
    let sqlite = |p: &Path| format!("sqlite:{}", p.display());
    let args = |store: &str, rest: &[&str]| {
        let mut all = vec![
            "--namespace".to_owned(),
            ns.clone(),
            "--store".to_owned(),
            store.to_owned(),
        ];
        all.extend(rest.iter().map(|s| (*s).to_owned()));
        all
    };
    let secrets = || {
        let mut all = as1.issued_tokens();
        for c in as1.clients() {
            all.extend(c.client_secret);
        }
        all
    };
    let no_secret = |out: &Output| {
        let shown = text(&out.stdout) + &text(&out.stderr);
        for s in secrets() {
            assert!(!shown.contains(&s), "a secret leaked into output:\n{shown}");
        }
    };

    let out = run(
        dir.path(),
        &args(&sqlite(&a), &["login", &mcp.url(), "--headless"]),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    for (from, to) in [(sqlite(&a), aws.clone()), (aws.clone(), sqlite(&c))] {
        let out = run(
            dir.path(),
            &args(&sqlite(&a), &["migrate", "--from", &from, "--to", &to]),
        )
        .await;
        assert!(out.status.success(), "{from} → {to}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("verified"),
            "{}",
            text(&out.stderr)
        );
        no_secret(&out);
    }
    let original = records(&a);
    assert!(original.len() >= 3, "{}", original.len());
    assert_eq!(
        records(&c),
        original,
        "the sqlite → aws-sm → sqlite round trip changed a record"
    );

    let out = run(dir.path(), &args(&aws, &["status", "--json"])).await;
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    no_secret(&out);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["issuer"], as1.issuer());
    assert_eq!(status[0]["servers"][0]["resource"], mcp.url());

    let out = run(dir.path(), &args(&aws, &["token", &mcp.url()])).await;
    assert!(
        out.status.success(),
        "token from the AWS copy: {}",
        text(&out.stderr)
    );
    assert!(
        as1.issued_tokens()
            .contains(&text(&out.stdout).trim().to_owned())
    );

    let out = run(dir.path(), &args(&aws, &["logout", "--all"])).await;
    assert!(out.status.success(), "logout: {}", text(&out.stderr));
    let out = run(dir.path(), &args(&aws, &["status", "--json"])).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status[0]["servers"].as_array().is_none_or(Vec::is_empty),
        "tokens left after logout: {status}"
    );
}

/// Without a region the error says so; a bad prefix is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_aws_configuration_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &[
            "--store".to_owned(),
            "aws-sm:".to_owned(),
            "status".to_owned(),
        ],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("region"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        dir.path(),
        &[
            "--store".to_owned(),
            "aws-sm:bad prefix".to_owned(),
            "status".to_owned(),
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("name prefix"),
        "{}",
        text(&out.stderr)
    );
}
