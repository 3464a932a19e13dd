//! What a user of the `mcp-auth` command meets besides the flows themselves: `-v` logs (on
//! stderr, never a secret), shell completions and the man page, the exit codes in `--help`,
//! RFC 3339 timestamps in the JSON outputs, and `login`'s step lines.
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

use crate::cli::{assert_no_secret, servers, text};

/// `mcp-auth --store sqlite:STORE ARGS` with `RUST_LOG` set to `rust_log` (or unset).
async fn cli(store: &Path, args: &[&str], rust_log: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"));
    command
        .arg("--store")
        .arg(format!("sqlite:{}", store.display()))
        .args(args)
        .env("MCP_AUTH_INSECURE_LOOPBACK", "true")
        .env_remove("MCP_AUTH_STORE")
        .env_remove("RUST_LOG");
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    command.output().await.unwrap()
}

async fn mcp_auth(store: &Path, args: &[&str]) -> Output {
    cli(store, args, None).await
}

/// `mcp-auth ARGS` with no store option and no environment that could change the output.
async fn bare(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("MCP_AUTH_STORE")
        .output()
        .await
        .unwrap()
}

/// Log lines of the fmt subscriber (`<time> LEVEL [spans:] target: message`) from an mcp-auth
/// crate.
fn log_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            let mut words = l.split_whitespace();
            let time = words.next().unwrap_or_default();
            let level = words.next().unwrap_or_default();
            time.ends_with('Z')
                && time.contains('T')
                && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
                && l.contains("mcp_auth")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_logs_go_to_stderr_and_hold_no_secret() {
    // Access tokens of 2 s: the `token` below refreshes (a rotated refresh token and a new
    // access token pass through the engine while it logs at trace level).
    let as1 = AuthServer::start(AuthServerConfig {
        access_token_ttl: Duration::from_secs(2),
        rotate_refresh_tokens: true,
        ..Default::default()
    })
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

    let login = mcp_auth(&db, &["-vvv", "login", &mcp.url(), "--headless"]).await;
    let stderr = text(&login.stderr);
    assert!(login.status.success(), "{stderr}");
    assert!(
        !log_lines(&stderr).is_empty(),
        "-vvv logs the engine's work on stderr:\n{stderr}"
    );
    assert_eq!(text(&login.stdout), "", "login writes nothing on stdout");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let issued_before = as1.issued_tokens().len();
    let token = mcp_auth(&db, &["token", &mcp.url(), "-vvv"]).await;
    let (stdout, stderr) = (text(&token.stdout), text(&token.stderr));
    assert!(token.status.success(), "{stderr}");
    assert!(
        as1.issued_tokens().len() > issued_before,
        "the expired token was refreshed"
    );
    let printed = stdout.trim_end();
    assert!(as1.issued_tokens().iter().any(|t| t == printed), "{stdout}");
    assert_eq!(
        stdout,
        format!("{printed}\n"),
        "stdout holds the token only"
    );
    assert!(
        !log_lines(&stderr).is_empty(),
        "-vvv logs the token's work:\n{stderr}"
    );
    for out in [text(&login.stderr), stderr] {
        assert_no_secret(&as1, &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_replaces_the_verbose_filter_and_nothing_logs_without_either() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let quiet = mcp_auth(&db, &["login", &mcp.url(), "--headless"]).await;
    let stderr = text(&quiet.stderr);
    assert!(quiet.status.success(), "{stderr}");
    assert!(
        log_lines(&stderr).is_empty(),
        "no -v, no RUST_LOG: no log lines\n{stderr}"
    );

    let muted = cli(
        &db,
        &["-vvv", "login", &mcp.url(), "--headless"],
        Some("off"),
    )
    .await;
    let stderr = text(&muted.stderr);
    assert!(muted.status.success(), "{stderr}");
    assert!(
        log_lines(&stderr).is_empty(),
        "RUST_LOG=off wins over -vvv\n{stderr}"
    );

    let traced = cli(
        &db,
        &["login", &mcp.url(), "--headless"],
        Some("mcp_auth_core=trace"),
    )
    .await;
    let stderr = text(&traced.stderr);
    assert!(traced.status.success(), "{stderr}");
    assert!(
        !log_lines(&stderr).is_empty(),
        "RUST_LOG alone turns logging on\n{stderr}"
    );
    assert_eq!(text(&traced.stdout), "");
    assert_no_secret(&as1, &stderr);
}

#[tokio::test]
async fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = bare(&["completions", shell]).await;
        let script = text(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        assert!(
            script.contains("mcp-auth") && script.contains("migrate") && script.contains("token"),
            "{shell} completions name the subcommands:\n{script}"
        );
    }
    let out = bare(&["completions", "tcsh"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );

    let out = bare(&["man"]).await;
    let page = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        page.starts_with(".ie") || page.contains(".TH mcp-auth"),
        "roff with a title:\n{page}"
    );
    assert!(page.contains("token") && page.contains("login"), "{page}");
}

#[tokio::test]
async fn help_lists_every_exit_code() {
    let out = bare(&["--help"]).await;
    let help = text(&out.stdout);
    assert!(out.status.success());
    let section = help
        .split_once("Exit codes:")
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no exit codes in --help:\n{help}"));
    for (code, meaning) in [
        ("0", "success"),
        ("1", "failure"),
        ("2", "usage error"),
        ("3", "a login is needed"),
    ] {
        assert!(
            section
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code}  ")) && l.contains(meaning)),
            "exit code {code} ({meaning}) in:\n{section}"
        );
    }
}

/// Unix seconds of an RFC 3339 `YYYY-MM-DDTHH:MM:SSZ` (the only form the CLI writes); `None`
/// when `s` is anything else.
fn rfc3339_seconds(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let shape = b.len() == 20
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && b[19] == b'Z';
    if !shape {
        return None;
    }
    let num = |from: usize, to: usize| s.get(from..to)?.parse::<i64>().ok();
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[test]
fn rfc3339_reader_is_exact() {
    assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(rfc3339_seconds("2000-03-01T00:00:00Z"), Some(951_868_800));
    assert_eq!(rfc3339_seconds("in 59m59s"), None);
    assert_eq!(rfc3339_seconds("2000-03-01 00:00:00Z"), None);
    assert_eq!(rfc3339_seconds("2000-13-01T00:00:00Z"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_outputs_use_rfc3339_timestamps() {
    let (_as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let out = mcp_auth(&db, &["login", &mcp.url(), "--headless"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // The testkit's access tokens live an hour.
    let plausible = |at: i64| at > now + 3000 && at <= now + 3700;

    let out = mcp_auth(&db, &["token", "--format", "json", &mcp.url()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token_expiry = json["expires_at"].as_str().unwrap_or_default().to_owned();
    let at = rfc3339_seconds(&token_expiry)
        .unwrap_or_else(|| panic!("token expires_at is not RFC 3339: {json}"));
    assert!(plausible(at), "{token_expiry} is not an hour from now");

    let out = mcp_auth(&db, &["status", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let server = &json[0]["servers"][0];
    assert_eq!(
        server["expires_at"].as_str(),
        Some(token_expiry.as_str()),
        "status --json gives the same RFC 3339 expiry: {json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_step_lines_follow_what_happened() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let out = mcp_auth(&db, &["login", &mcp.url(), "--headless"]).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let at = |step: &str| {
        stderr
            .find(step)
            .unwrap_or_else(|| panic!("no {step} in:\n{stderr}"))
    };
    assert!(
        at("[1/3]") < at("[2/3]") && at("[2/3]") < at("[3/3]"),
        "{stderr}"
    );
    assert_no_secret(&as1, &stderr);

    // Discovery fails (nothing listens there): step 2 never started, so it is never printed.
    let unreachable = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/mcp")
    };
    let out = mcp_auth(&db, &["login", &unreachable, "--headless"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[1/3]"), "{stderr}");
    assert!(
        !stderr.contains("[2/3]"),
        "step 2 printed although discovery failed:\n{stderr}"
    );
}
