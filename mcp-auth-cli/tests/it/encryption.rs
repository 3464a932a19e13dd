//! `mcp-auth` with encryption at rest (`--encrypt`, `MCP_AUTH_KEY`, `--key-file`,
//! `--old-key-file`, `rekey`, `migrate`, `status`), end to end: the binary against the testkit
//! servers over real HTTP, real SQLite files read back byte for byte.
use std::path::{Path, PathBuf};
use std::process::Output;

use mcp_auth_core::EncryptionKey;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

const KEY1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const KEY3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// The key id `mcp-auth` derives for a key.
fn key_id(hex: &str) -> String {
    EncryptionKey::parse(hex, "test").unwrap().id().to_owned()
}

/// Runs `mcp-auth --store sqlite:DB ARGS` with `env` and none of the encryption variables of
/// the caller's environment.
async fn mcp_auth(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mcp-auth"));
    cmd.arg("--store")
        .arg(format!("sqlite:{}", db.display()))
        .args(args)
        .env("MCP_AUTH_ALLOW_HTTP", "true");
    for var in [
        "MCP_AUTH_STORE",
        "MCP_AUTH_KEY",
        "MCP_AUTH_OLD_KEY",
        "MCP_AUTH_KEY_FILE",
        "MCP_AUTH_ENCRYPT",
        "MCP_AUTH_CLIENT_SECRET",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().await.unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn all_output(out: &Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

/// An AS without dynamic registration that knows the client `enc-pre` with a secret (so the
/// store holds a client secret too), and an MCP server using it.
async fn servers() -> (AuthServer, McpServer) {
    let as1 = AuthServer::start(AuthServerConfig {
        dynamic_registration: false,
        ..Default::default()
    })
    .await
    .unwrap();
    as1.preregister_client(
        "enc-pre",
        Some("enc-client-secret-value"),
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

/// Every secret the AS issued or holds: access and refresh tokens, client secrets.
fn secrets(as1: &AuthServer) -> Vec<String> {
    let mut all = as1.issued_tokens();
    for c in as1.clients() {
        all.extend(c.client_secret);
    }
    assert!(
        all.len() >= 3,
        "expected tokens and a client secret: {}",
        all.len()
    );
    all
}

fn assert_no_secret(as1: &AuthServer, out: &str) {
    for s in secrets(as1) {
        assert!(!out.contains(&s), "a secret leaked:\n{out}");
    }
}

/// The bytes of the SQLite database and its write-ahead log, as a thief copying them would get.
fn raw_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    if let Ok(more) = std::fs::read(wal) {
        bytes.extend(more);
    }
    bytes
}

fn assert_no_secret_on_disk(as1: &AuthServer, db: &Path) {
    let bytes = raw_bytes(db);
    for s in secrets(as1) {
        assert!(
            !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
            "a secret is stored in the clear in {}",
            db.display()
        );
    }
}

/// A key file holding `hex`, mode 0600.
fn key_file(dir: &Path, name: &str, hex: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{hex}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

async fn login(db: &Path, as1: &AuthServer, mcp: &McpServer, env: &[(&str, &str)]) {
    let issuer = as1.issuer();
    let mut env = env.to_vec();
    env.push(("MCP_AUTH_CLIENT_SECRET", "enc-client-secret-value"));
    let out = mcp_auth(
        db,
        &[
            "login",
            &mcp.url(),
            "--headless",
            "--client-id",
            "enc-pre",
            "--issuer",
            &issuer,
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "login: {}", text(&out.stderr));
    assert_no_secret(as1, &all_output(&out));
}

/// The key ids `status --json` reports, over every registration and token set.
fn status_key_ids(json: &serde_json::Value) -> Vec<Option<String>> {
    let mut ids = Vec::new();
    for row in json.as_array().unwrap() {
        ids.push(row["registration_key_id"].as_str().map(str::to_owned));
        for server in row["servers"].as_array().unwrap() {
            ids.push(server["key_id"].as_str().map(str::to_owned));
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_login_keeps_secrets_off_disk_and_needs_the_key() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("enc.db");
    let key1 = [("MCP_AUTH_KEY", KEY1)];
    let id1 = key_id(KEY1);

    login(&db, &as1, &mcp, &key1).await;
    assert_no_secret_on_disk(&as1, &db);

    // With the key: the token the AS issued, and nothing else.
    let out = mcp_auth(&db, &["token", &mcp.url()], &key1).await;
    assert!(out.status.success(), "token: {}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    assert!(as1.issued_tokens().contains(&token), "{token:?}");
    assert_eq!(text(&out.stdout), format!("{token}\n"));

    // Without the key: a usage error naming the key id; no envelope printed, nothing sent.
    let requests = as1.requests().len();
    let mcp_requests = mcp.requests().len();
    let out = mcp_auth(&db, &["token", &mcp.url()], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(out.stdout.is_empty(), "printed: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("the store is encrypted (key id {id1})"))
            && stderr.contains("--encrypt"),
        "{stderr}"
    );
    assert!(!all_output(&out).contains("mcpenc"), "{}", all_output(&out));
    assert_eq!(as1.requests().len(), requests, "the AS was contacted");
    assert_eq!(
        mcp.requests().len(),
        mcp_requests,
        "the MCP server was contacted"
    );

    // A wrong key: named by the id of the key the records need, never a key.
    let out = mcp_auth(&db, &["token", &mcp.url()], &[("MCP_AUTH_KEY", KEY3)]).await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(out.stdout.is_empty(), "printed: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&id1) && stderr.contains("--old-key-file"),
        "{stderr}"
    );
    for leaked in [KEY1, KEY3, "mcpenc"] {
        assert!(!stderr.contains(leaked), "{stderr}");
    }
    assert_eq!(as1.requests().len(), requests, "the AS was contacted");

    // `login` without the key refuses too (it would otherwise send the sealed client secret).
    let out = mcp_auth(
        &db,
        &[
            "login",
            &mcp.url(),
            "--headless",
            "--client-id",
            "enc-pre",
            "--issuer",
            &as1.issuer(),
        ],
        &[("MCP_AUTH_CLIENT_SECRET", "enc-client-secret-value")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(
        text(&out.stderr).contains("the store is encrypted"),
        "{}",
        text(&out.stderr)
    );

    // `status` with the key: encryption on, the key id, the refresh token seen through the seal.
    let out = mcp_auth(&db, &["status"], &key1).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains(&format!(
            "Encryption: on, current key id {id1}; records: 2 under key id {id1} (current)."
        )),
        "{table}"
    );
    assert!(table.contains(&mcp.url()), "{table}");
    assert_no_secret(&as1, &table);
    let out = mcp_auth(&db, &["status", "--json"], &key1).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["servers"][0]["refresh_available"], true, "{json}");
    assert_eq!(json[0]["servers"][0]["encrypted"], true, "{json}");
    assert_eq!(status_key_ids(&json), vec![Some(id1.clone()); 2], "{json}");

    // `status` without the key: says so, instead of failing, and shows no envelope.
    let out = mcp_auth(&db, &["status"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains(&format!("Encrypted: yes, records: 2 under key id {id1}"))
            && table.contains("pass --encrypt"),
        "{table}"
    );
    assert!(!table.contains("mcpenc"), "{table}");
    let out = mcp_auth(&db, &["status", "--json"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("mcpenc"));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json[0]["servers"][0]["refresh_available"],
        serde_json::Value::Null
    );
    assert_eq!(status_key_ids(&json), vec![Some(id1.clone()); 2], "{json}");

    // `logout` without the key stops before deleting anything it could not revoke.
    let out = mcp_auth(&db, &["logout", &mcp.url()], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(
        text(&out.stderr).contains("the store is encrypted"),
        "{}",
        text(&out.stderr)
    );
    let out = mcp_auth(&db, &["token", &mcp.url()], &key1).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), token);

    // Still nothing in the clear after all of that.
    assert_no_secret_on_disk(&as1, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_moves_every_record_to_the_new_key() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rot.db");
    let (id1, id2) = (key_id(KEY1), key_id(KEY2));
    let key1_file = key_file(dir.path(), "key1", KEY1);
    let key1_path = key1_file.to_str().unwrap();

    // Records under key 1, given as a file this time.
    login(&db, &as1, &mcp, &[("MCP_AUTH_KEY_FILE", key1_path)]).await;
    let out = mcp_auth(&db, &["token", &mcp.url(), "--key-file", key1_path], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();

    // Key 2 alone cannot read them, and a rekey without the old key is incomplete: it says which
    // key is missing and to keep it.
    let key2 = [("MCP_AUTH_KEY", KEY2)];
    let out = mcp_auth(&db, &["token", &mcp.url()], &key2).await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    let out = mcp_auth(&db, &["rekey"], &key2).await;
    assert!(!out.status.success(), "{}", all_output(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Re-sealed 0 records") && stderr.contains("2 failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&id1) && stderr.contains("keep the old"),
        "{stderr}"
    );
    assert!(!stderr.contains(KEY1) && !stderr.contains(KEY2), "{stderr}");

    // With the old key: both records re-sealed.
    let out = mcp_auth(&db, &["rekey", "--old-key-file", key1_path], &key2).await;
    assert!(out.status.success(), "rekey: {}", all_output(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("Re-sealed 2 records under key id {id2}"))
            && stderr.contains("0 failed"),
        "{stderr}"
    );
    assert_no_secret(&as1, &all_output(&out));

    // No record under key 1 is left.
    let out = mcp_auth(&db, &["status", "--json"], &key2).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_key_ids(&json), vec![Some(id2.clone()); 2], "{json}");
    let out = mcp_auth(&db, &["status"], &key2).await;
    let table = text(&out.stdout);
    assert!(
        table.contains(&format!("records: 2 under key id {id2} (current).")),
        "{table}"
    );
    assert!(!table.contains(&id1), "{table}");

    // A second run has nothing to do.
    let out = mcp_auth(&db, &["rekey"], &key2).await;
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(
        text(&out.stderr).contains("2 already current"),
        "{}",
        text(&out.stderr)
    );

    // Key 2 alone serves the token; key 1 alone no longer does.
    let out = mcp_auth(&db, &["token", &mcp.url()], &key2).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), token);
    let out = mcp_auth(&db, &["token", &mcp.url(), "--key-file", key1_path], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(text(&out.stderr).contains(&id2), "{}", text(&out.stderr));
    assert_no_secret_on_disk(&as1, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_encrypts_a_plain_store_in_place() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    let key1 = [("MCP_AUTH_KEY", KEY1)];
    login(&db, &as1, &mcp, &[]).await;

    // A plain store read with a key: refused, saying how to encrypt it.
    let out = mcp_auth(&db, &["token", &mcp.url()], &key1).await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(
        text(&out.stderr).contains("mcp-auth rekey"),
        "{}",
        text(&out.stderr)
    );
    let out = mcp_auth(&db, &["status"], &key1).await;
    assert!(
        text(&out.stdout).contains("records: 2 not encrypted"),
        "{}",
        text(&out.stdout)
    );

    let out = mcp_auth(&db, &["rekey"], &key1).await;
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(
        text(&out.stderr).contains("Re-sealed 2 records"),
        "{}",
        text(&out.stderr)
    );
    let out = mcp_auth(&db, &["token", &mcp.url()], &key1).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        as1.issued_tokens()
            .contains(&text(&out.stdout).trim().to_owned())
    );
    let out = mcp_auth(&db, &["status", "--json"], &key1).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_key_ids(&json), vec![Some(key_id(KEY1)); 2], "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_a_plain_store_into_an_encrypted_one() {
    let (as1, mcp) = servers().await;
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.db");
    let sealed = dir.path().join("sealed.db");
    let key1 = [("MCP_AUTH_KEY", KEY1)];
    let id1 = key_id(KEY1);

    login(&plain, &as1, &mcp, &[]).await;
    let out = mcp_auth(&plain, &["token", &mcp.url()], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();

    // The check below can see a secret on disk: the plain store's access token is there.
    let bytes = raw_bytes(&plain);
    assert!(bytes.windows(token.len()).any(|w| w == token.as_bytes()));

    let to = format!("sqlite:{}", sealed.display());
    let from = format!("sqlite:{}", plain.display());
    let out = mcp_auth(&plain, &["migrate", "--from", &from, "--to", &to], &key1).await;
    assert!(out.status.success(), "migrate: {}", all_output(&out));
    assert!(
        text(&out.stderr).contains("Copied and verified 1 registrations, 1 token sets"),
        "{}",
        text(&out.stderr)
    );
    assert_no_secret(&as1, &all_output(&out));
    assert_no_secret_on_disk(&as1, &sealed);

    // The destination serves the same token with the key, and is refused without it.
    let out = mcp_auth(&sealed, &["token", &mcp.url()], &key1).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), token);
    let out = mcp_auth(&sealed, &["token", &mcp.url()], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    let out = mcp_auth(&sealed, &["status", "--json"], &key1).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_key_ids(&json), vec![Some(id1.clone()); 2], "{json}");

    // Migrating the encrypted store on without the key is refused before anything is copied.
    let third = dir.path().join("third.db");
    let out = mcp_auth(
        &sealed,
        &[
            "migrate",
            "--from",
            &to,
            "--to",
            &format!("sqlite:{}", third.display()),
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(
        text(&out.stderr).contains(&format!("the store is encrypted (key id {id1})")),
        "{}",
        text(&out.stderr)
    );
    let out = mcp_auth(&third, &["status", "--json"], &[]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!([]), "something was copied: {json}");
}
