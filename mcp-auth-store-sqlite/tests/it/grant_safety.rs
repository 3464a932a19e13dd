//! Never lose a grant, across real processes over one SQLite file: a refresh holder killed with
//! SIGKILL mid-request, and an authorization server that answers after the HTTP timeout. The AS
//! (testkit) counts refresh requests and refresh-token reuse (each reuse revokes the grant).
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_auth_core::{
    ClientConfig, Expect, ExposeSecret, HttpPolicy, IssuerId, McpAuth, ResourceUri, Timestamp,
    TokenKey, TokenStore,
};
use mcp_auth_store_sqlite::SqliteStore;
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig, TokenFault};

/// Worker process body: one `cached_access_token()`; prints `OK <token>` or `ERR <kind>`.
#[test]
#[ignore = "worker process body, started by the tests below"]
fn grant_worker() {
    let Ok(db) = std::env::var("GRANT_DB") else {
        return;
    };
    let resource = ResourceUri::new(std::env::var("GRANT_RESOURCE").unwrap()).unwrap();
    let http_timeout_ms: u64 = std::env::var("GRANT_HTTP_TIMEOUT_MS")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = SqliteStore::open(&db).await.unwrap();
        let auth = McpAuth::builder(Arc::new(store))
            .client(ClientConfig::default())
            .http_policy(
                HttpPolicy::allowing_loopback()
                    .with_timeout(Duration::from_millis(http_timeout_ms)),
            )
            .authorizer(Arc::new(
                mcp_auth_core::HeadlessAuthorizer::with_policy(
                    mcp_auth_core::HttpPolicy::allowing_loopback(),
                )
                .unwrap(),
            ))
            .build()
            .unwrap();
        match auth.cached_access_token(&resource).await {
            Ok(t) => {
                auth.flush().await.unwrap();
                println!("\nWORKER OK {}", t.expose_secret());
            }
            Err(e) => println!("\nWORKER ERR {e:?}"),
        }
    });
}

struct Setup {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    as1: AuthServer,
    _mcp: McpServer,
    resource: ResourceUri,
}

/// Logs in once into a fresh database and expires the access token.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("grant.db");
    let as1 = AuthServer::start(AuthServerConfig::default())
        .await
        .unwrap();
    let mcp = McpServer::start(McpServerConfig {
        authorization_servers: vec![as1.clone()],
        ..Default::default()
    })
    .await
    .unwrap();
    let resource = ResourceUri::new(mcp.url()).unwrap();
    let store = SqliteStore::open(&db).await.unwrap();
    McpAuth::builder(Arc::new(store.clone()))
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(
            mcp_auth_core::HeadlessAuthorizer::with_policy(
                mcp_auth_core::HttpPolicy::allowing_loopback(),
            )
            .unwrap(),
        ))
        .build()
        .unwrap()
        .access_token(&resource)
        .await
        .unwrap();
    let key = TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone());
    let current = store.get_tokens(&key).await.unwrap().unwrap();
    let mut expired = current.value.clone();
    expired.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(&key, &expired, Expect::Version(current.version))
        .await
        .unwrap();
    as1.clear_requests();
    Setup {
        _dir: dir,
        db,
        as1,
        _mcp: mcp,
        resource,
    }
}

fn worker(s: &Setup, http_timeout: Duration) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "grant_safety::grant_worker",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GRANT_DB", &s.db)
        .env("GRANT_RESOURCE", s.resource.as_str())
        .env(
            "GRANT_HTTP_TIMEOUT_MS",
            http_timeout.as_millis().to_string(),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn result_of(child: tokio::process::Child) -> String {
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("worker did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "worker failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("WORKER "))
        .expect("worker printed no result")
        .to_owned()
}

/// An AS that answers 2.5 s after a 1 s HTTP timeout, with 8 processes on one expired token:
/// exactly one refresh request, every process ends with the same valid token, 0 reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_answering_after_the_client_timeout_loses_nothing_across_8_processes() {
    let s = setup().await;
    s.as1
        .set_token_fault(TokenFault::Delay(Duration::from_millis(2500)));
    let children: Vec<_> = (0..8).map(|_| worker(&s, Duration::from_secs(1))).collect();
    let mut tokens = std::collections::HashSet::new();
    for child in children {
        let r = result_of(child).await;
        let token = r
            .strip_prefix("OK ")
            .unwrap_or_else(|| panic!("a process failed: {r}"));
        tokens.insert(token.to_owned());
    }
    assert_eq!(tokens.len(), 1, "processes ended with different tokens");
    let token = tokens.into_iter().next().unwrap();
    let info = s.as1.introspect(&token).unwrap();
    assert!(!info.expired && !info.revoked);
    assert_eq!(s.as1.refresh_requests(), 1);
    assert_eq!(s.as1.reuse_detections(), 0);
}

/// The lease holder is SIGKILLed while its refresh request hangs at the AS. The 7 waiting
/// processes proceed within 5 s of the kill (they do not wait out a long lease), and none
/// resends the refresh token whose fate is unknown: 0 reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_lease_holder_releases_the_waiters_within_5_s() {
    let s = setup().await;
    s.as1.set_token_fault(TokenFault::Hang);
    let mut holder = worker(&s, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.as1.refresh_requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "the holder never sent its refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiters: Vec<_> = (0..7)
        .map(|_| worker(&s, Duration::from_secs(10)))
        .collect();
    // Let the waiters start and queue behind the lease.
    tokio::time::sleep(Duration::from_millis(700)).await;
    holder.start_kill().unwrap();
    let killed = Instant::now();
    holder.wait().await.unwrap();
    for child in waiters {
        let r = result_of(child).await;
        assert!(
            r.starts_with("ERR RefreshOutcomeUnknown"),
            "a waiter ended with {r}"
        );
    }
    let took = killed.elapsed();
    println!("waiters proceeded {took:?} after the SIGKILL");
    assert!(
        took < Duration::from_secs(5),
        "waiters needed {took:?} after the kill"
    );
    assert_eq!(s.as1.refresh_requests(), 1);
    assert_eq!(s.as1.reuse_detections(), 0);
}
