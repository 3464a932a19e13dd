//! Encryption at rest over SQLite (`mcp_auth_core::encryption`): the conformance suite through
//! `EncryptedStore`; after a login, a refresh with rotation and a key rotation, the database
//! file and its `-wal` hold no token, client secret or DPoP key; and a rekey SIGKILLed midway
//! leaves every record readable, then finishes when run again.
//!
//! The rekey worker is this test binary re-executed with `MCP_AUTH_ENC_WORKER_DB` set, running
//! the ignored `encrypted::rekey_worker` test.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use data_encoding::{BASE64, BASE64URL_NOPAD};
use mcp_auth_core::conformance::StoreFactory;
use mcp_auth_core::encryption::{
    EncryptedFactory, EncryptedStore, EncryptionKey, KeySet, envelope_key_id,
};
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    ClientConfig, CredentialStore, DpopMode, Expect, ExposeSecret, HttpPolicy, IssuerId, McpAuth,
    Namespace, RegistrationStore, ResourceUri, SecretString, StoreError, Timestamp, TokenKey,
    TokenSet, TokenStore,
};
use mcp_auth_store_sqlite::{SqliteOptions, SqliteStore, write_raw_record};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

fn k1() -> EncryptionKey {
    EncryptionKey::from_bytes(&[0x11; 32])
}

fn k2() -> EncryptionKey {
    EncryptionKey::from_bytes(&[0x22; 32])
}

/// Every `open` is a new connection to the same file, like a restart.
struct SqliteFactory {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteFactory {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("credentials.db");
        Self { _dir: dir, path }
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    type Store = SqliteStore;

    async fn open(&self, namespace: &Namespace) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(
            &self.path,
            SqliteOptions {
                namespace: namespace.clone(),
                ..SqliteOptions::default()
            },
        )
        .await
    }

    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        let store = self.open(namespace).await?;
        write_raw_record(&store, key, bytes).await?;
        Ok(true)
    }
}

mod conformance {
    use super::*;

    mcp_auth_core::store_conformance_tests!(EncryptedFactory::new(
        SqliteFactory::new(),
        KeySet::new(k2()).with_old(k1()).unwrap()
    ));
}

fn encrypted(store: SqliteStore, keys: KeySet) -> Arc<EncryptedStore<SqliteStore>> {
    Arc::new(EncryptedStore::new(store, Namespace::default(), keys))
}

fn engine(store: Arc<dyn CredentialStore>) -> McpAuth {
    McpAuth::builder(store)
        .client(ClientConfig::default().with_dpop(DpopMode::IfSupported))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(
            mcp_auth_core::HeadlessAuthorizer::with_policy(
                mcp_auth_core::HttpPolicy::allowing_loopback(),
            )
            .unwrap(),
        ))
        .build()
        .unwrap()
}

/// Every file of the database: main, `-wal`, `-shm`.
fn database_bytes(db: &Path) -> Vec<(String, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            std::fs::read(&path).ok().map(|bytes| (path, bytes))
        })
        .collect()
}

/// The 32-byte private scalar inside a PKCS#8 P-256 key (`ECPrivateKey`: `INTEGER 1`, then
/// `OCTET STRING` of 32 bytes).
fn private_scalar(der: &[u8]) -> Vec<u8> {
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("a PKCS#8 EC private key");
    der[at + 5..at + 37].to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The secrets of the current records (read through the wrapper), in every form a raw scan
/// could find them: tokens and client secret as sent, the DPoP key as stored (base64url), in
/// standard base64, as raw DER and as its bare private scalar.
async fn secrets_of(store: &EncryptedStore<SqliteStore>, key: &TokenKey) -> Vec<Vec<u8>> {
    let t = store.get_tokens(key).await.unwrap().unwrap().value;
    let reg = store
        .get_registration(&key.issuer)
        .await
        .unwrap()
        .unwrap()
        .value;
    let mut out = vec![t.access_token.expose_secret().as_bytes().to_vec()];
    out.extend(
        t.refresh_token
            .map(|s| s.expose_secret().as_bytes().to_vec()),
    );
    let dpop = t.dpop_key.expect("DPoP-bound tokens");
    let der = BASE64URL_NOPAD
        .decode(dpop.expose_secret().as_bytes())
        .unwrap();
    out.push(dpop.expose_secret().as_bytes().to_vec());
    out.push(BASE64.encode(&der).into_bytes());
    out.push(private_scalar(&der));
    out.push(der);
    out.extend(
        reg.client_secret
            .map(|s| s.expose_secret().as_bytes().to_vec()),
    );
    out.extend(
        reg.registration_access_token
            .map(|s| s.expose_secret().as_bytes().to_vec()),
    );
    assert!(
        out.len() >= 6,
        "expected a refresh token and a client secret"
    );
    out
}

fn assert_no_secret_in_files(db: &Path, secrets: &[Vec<u8>], when: &str) {
    let files = database_bytes(db);
    assert!(!files.is_empty());
    for (path, bytes) in &files {
        for secret in secrets {
            assert!(
                !contains(bytes, secret),
                "{when}: a secret ({} bytes) is in plaintext in {path}",
                secret.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_refresh_and_rotation_leave_no_secret_in_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("enc.db");
    let as1 = AuthServer::start(AuthServerConfig {
        dpop: true,
        rotate_refresh_tokens: true,
        ..AuthServerConfig::default()
    })
    .await
    .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..McpServerConfig::default()
    })
    .await
    .unwrap();
    let resource = ResourceUri::new(mcp.url()).unwrap();
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    let mut secrets = Vec::new();

    // Log in.
    let store = encrypted(SqliteStore::open(&db).await.unwrap(), KeySet::new(k1()));
    let auth = engine(store.clone());
    let first = auth.access_credential(&resource).await.unwrap();
    assert!(first.is_dpop());
    auth.flush().await.unwrap();
    secrets.extend(secrets_of(&store, &key).await);
    assert_no_secret_in_files(&db, &secrets, "after login");

    // Refresh, rotating the refresh token.
    let current = store.get_tokens(&key).await.unwrap().unwrap();
    let mut expired = current.value.clone();
    expired.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(&key, &expired, Expect::Version(current.version))
        .await
        .unwrap();
    let refreshed = auth.access_credential(&resource).await.unwrap();
    assert_ne!(
        refreshed.token().expose_secret(),
        first.token().expose_secret()
    );
    auth.flush().await.unwrap();
    secrets.extend(secrets_of(&store, &key).await);
    assert_no_secret_in_files(&db, &secrets, "after refresh");
    drop(auth);
    drop(store);

    // Key rotation: key 2 current, key 1 old; rekey; a new engine serves the same token.
    let rotated = encrypted(
        SqliteStore::open(&db).await.unwrap(),
        KeySet::new(k2()).with_old(k1()).unwrap(),
    );
    let report = rotated.rekey().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.tokens.resealed, 1);
    let auth = engine(rotated.clone());
    let after = auth.access_credential(&resource).await.unwrap();
    assert_eq!(
        after.token().expose_secret(),
        refreshed.token().expose_secret()
    );
    secrets.extend(secrets_of(&rotated, &key).await);
    let sealed = rotated
        .inner()
        .get_tokens(&key)
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        envelope_key_id(sealed.access_token.expose_secret()),
        Some(k2().id())
    );
    assert_no_secret_in_files(&db, &secrets, "after key rotation");
    // Key 1 is no longer needed.
    let new_only = encrypted(SqliteStore::open(&db).await.unwrap(), KeySet::new(k2()));
    assert!(new_only.get_tokens(&key).await.unwrap().is_some());

    // Control: the same scan does find secrets written without encryption.
    let plain = SqliteStore::open(&db)
        .await
        .unwrap()
        .with_namespace(Namespace::new("control").unwrap());
    let t = rotated.get_tokens(&key).await.unwrap().unwrap().value;
    plain.put_tokens(&key, &t, Expect::Any).await.unwrap();
    let files = database_bytes(&db);
    for secret in [&t.access_token, t.dpop_key.as_ref().unwrap()] {
        assert!(
            files
                .iter()
                .any(|(_, bytes)| contains(bytes, secret.expose_secret().as_bytes())),
            "control: a plaintext write is invisible to the scan"
        );
    }
}

const CRASH_RECORDS: usize = 400;

fn crash_key(i: usize) -> TokenKey {
    TokenKey::new(
        IssuerId::new(format!("https://as-{}.example", i % 7)).unwrap(),
        ResourceUri::new(format!("https://mcp.example/{i}")).unwrap(),
    )
}

fn crash_tokens(i: usize) -> TokenSet {
    let mut t = TokenSet::new(SecretString::from(format!("ACCESS-{i}")));
    t.refresh_token = Some(SecretString::from(format!("REFRESH-{i}")));
    t
}

/// The rekey worker: key 2 current, key 1 old, a pause after each record so the parent can
/// kill it midway. Prints `WORKER <records done>` after each.
#[test]
#[ignore = "worker process body, started by rekey_killed_midway_leaves_every_record_readable"]
fn rekey_worker() {
    let Ok(db) = std::env::var("MCP_AUTH_ENC_WORKER_DB") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = encrypted(
            SqliteStore::open(&db).await.unwrap(),
            KeySet::new(k2()).with_old(k1()).unwrap(),
        );
        let report = store
            .rekey_with(&|progress| {
                let done = progress.tokens.resealed + progress.tokens.already_current;
                println!("WORKER {done}");
                std::thread::sleep(Duration::from_millis(3));
            })
            .await
            .unwrap();
        println!("WORKER finished {}", report.is_complete());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_killed_midway_leaves_every_record_readable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    {
        let store = encrypted(SqliteStore::open(&db).await.unwrap(), KeySet::new(k1()));
        let batch: Vec<_> = (0..CRASH_RECORDS)
            .map(|i| (crash_key(i), crash_tokens(i)))
            .collect();
        store.put_tokens_any(&batch).await.unwrap();
    }

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "encrypted::rekey_worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MCP_AUTH_ENC_WORKER_DB", &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_at = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let Some((_, payload)) = line.split_once("WORKER ") else {
            continue;
        };
        if let Ok(done) = payload.parse::<usize>()
            && done >= CRASH_RECORDS / 3
        {
            child.kill().unwrap(); // SIGKILL
            killed_at = Some(done);
            break;
        }
        assert!(
            !payload.starts_with("finished"),
            "the worker finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "the worker made no progress");
    }
    child.wait().unwrap();
    let killed_at = killed_at.expect("the worker printed no progress");
    assert!(killed_at < CRASH_RECORDS);

    // Every record opens with key 2 and key 1 as the old key; some are under each.
    let store = encrypted(
        SqliteStore::open(&db).await.unwrap(),
        KeySet::new(k2()).with_old(k1()).unwrap(),
    );
    let all = store.scan_tokens().await.unwrap();
    assert_eq!(all.len(), CRASH_RECORDS);
    for (key, t) in &all {
        let i: usize = key
            .resource
            .as_str()
            .rsplit('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(t.value.access_token.expose_secret(), format!("ACCESS-{i}"));
        assert_eq!(
            t.value.refresh_token.as_ref().unwrap().expose_secret(),
            format!("REFRESH-{i}")
        );
    }
    let count_under = |id: &str, rows: &[(TokenKey, mcp_auth_core::Versioned<TokenSet>)]| {
        rows.iter()
            .filter(|(_, t)| envelope_key_id(t.value.access_token.expose_secret()) == Some(id))
            .count()
    };
    let raw = store.inner().scan_tokens().await.unwrap();
    let (old, new) = (count_under(k1().id(), &raw), count_under(k2().id(), &raw));
    assert_eq!(old + new, CRASH_RECORDS);
    assert!(
        old > 0 && new >= killed_at,
        "killed midway: {old} under key 1, {new} under key 2"
    );

    // Run again: it finishes, and no record is left under key 1.
    let report = store.rekey().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.tokens.resealed, old);
    let raw = store.inner().scan_tokens().await.unwrap();
    assert_eq!(count_under(k2().id(), &raw), CRASH_RECORDS);
    let new_only = encrypted(SqliteStore::open(&db).await.unwrap(), KeySet::new(k2()));
    assert_eq!(new_only.scan_tokens().await.unwrap().len(), CRASH_RECORDS);
}
