//! Never lose a grant: an authorization server that rotates refresh tokens revokes the whole grant
//! when it sees a rotated-away token again. These tests put eight engines (eight "processes":
//! each has its own in-process locks, and only the store is shared) in front of a testkit AS
//! with faults, and count refresh requests and reuse detections.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use async_trait::async_trait;
use mcp_auth_core::{
    AuthError, ClientConfig, CredentialStore, Expect, ExposeSecret, HttpPolicy, IssuerId, McpAuth,
    MemoryStore, RefreshLease, RefreshState, ResourceUri, SecretString, StoreError, Timestamp,
    TokenKey, TokenSet, TokenStore, Version, Versioned,
};
use mcp_auth_testkit::{AuthServer, McpServer, TokenFault};

const PROCESSES: usize = 8;

fn key(as1: &AuthServer, mcp: &McpServer) -> TokenKey {
    TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource(mcp))
}

fn engines(
    store: &Arc<dyn CredentialStore>,
    config: impl Fn() -> ClientConfig,
    policy: impl Fn() -> HttpPolicy,
) -> Vec<Arc<McpAuth>> {
    (0..PROCESSES)
        .map(|_| {
            Arc::new(
                McpAuth::builder(Arc::clone(store))
                    .client(config().with_redirect_uri(REDIRECT))
                    .http_policy(policy())
                    .authorizer(headless())
                    .build()
                    .unwrap(),
            )
        })
        .collect()
}

/// Rewrites the stored token set so it expires `left` from now after living `lifetime`.
async fn age(store: &dyn CredentialStore, key: &TokenKey, lifetime: i64, left: i64) {
    let current = store.get_tokens(key).await.unwrap().unwrap();
    let mut t = current.value.clone();
    let now = Timestamp::now().unix_seconds();
    t.expires_at = Some(Timestamp::from_unix_seconds(now + left));
    t.obtained_at = Timestamp::from_unix_seconds(now + left - lifetime);
    store
        .put_tokens(key, &t, Expect::Version(current.version))
        .await
        .unwrap();
}

/// Logs in once and returns the store, with the access token already expired.
async fn logged_in_and_expired(
    as1: &AuthServer,
    mcp: &McpServer,
    store: Arc<dyn CredentialStore>,
) -> Arc<dyn CredentialStore> {
    engine(Arc::clone(&store))
        .access_token(&resource(mcp))
        .await
        .unwrap();
    age(store.as_ref(), &key(as1, mcp), 3600, -10).await;
    as1.clear_requests();
    store
}

/// Every engine calls `cached_access_token` at once.
async fn storm(
    engines: &[Arc<McpAuth>],
    resource: &ResourceUri,
) -> Vec<Result<SecretString, AuthError>> {
    let tasks: Vec<_> = engines
        .iter()
        .map(|auth| {
            let auth = Arc::clone(auth);
            let r = resource.clone();
            tokio::spawn(async move { auth.cached_access_token(&r).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

fn assert_valid_at(as1: &AuthServer, token: &SecretString) {
    let info = as1
        .introspect(token.expose_secret())
        .expect("the AS does not know the token");
    assert!(!info.expired && !info.revoked, "token not valid at the AS");
}

/// A store that fails the next `failures` saves of rotated tokens (puts without a refresh
/// state: the engine's in-flight and outcome markers pass) with `Unavailable`.
#[derive(Debug)]
struct FailingSaves {
    inner: MemoryStore,
    failures: AtomicUsize,
}

#[async_trait]
impl TokenStore for FailingSaves {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        self.inner.get_tokens(key).await
    }
    async fn put_tokens(
        &self,
        key: &TokenKey,
        t: &TokenSet,
        e: Expect,
    ) -> Result<Version, StoreError> {
        if t.refresh_state.is_none()
            && matches!(e, Expect::Version(_))
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(StoreError::unavailable("failing", "injected write failure"));
        }
        self.inner.put_tokens(key, t, e).await
    }
    async fn delete_tokens(&self, key: &TokenKey, e: Expect) -> Result<bool, StoreError> {
        self.inner.delete_tokens(key, e).await
    }
    async fn delete_issuer_tokens(&self, i: &IssuerId) -> Result<usize, StoreError> {
        self.inner.delete_issuer_tokens(i).await
    }
    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        self.inner.list_tokens().await
    }
    async fn try_acquire_refresh_lease(
        &self,
        k: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.inner.try_acquire_refresh_lease(k, ttl).await
    }
    async fn renew_refresh_lease(
        &self,
        l: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.inner.renew_refresh_lease(l, ttl).await
    }
    async fn release_refresh_lease(&self, l: &RefreshLease) -> Result<bool, StoreError> {
        self.inner.release_refresh_lease(l).await
    }
}

forward_untouched_stores!(FailingSaves, "failing");

/// The AS rotated the refresh token; the store then fails twice to record the new one. The
/// caller still gets the new token, the store holds it once the fault clears, and the next
/// refresh sends the new refresh token (no reuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tokens_survive_a_store_that_fails_twice() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let failing = Arc::new(FailingSaves {
        inner: MemoryStore::new(),
        failures: AtomicUsize::new(0),
    });
    let store: Arc<dyn CredentialStore> = failing.clone();
    // No retry budget inside one call: the failures reach the save logic itself.
    let config = || ClientConfig::default().with_store_retry_budget(Duration::ZERO);
    let auth = engine_with(Arc::clone(&store), config());
    auth.access_token(&resource(&mcp)).await.unwrap();
    let k = key(&as1, &mcp);
    let before = store.get_tokens(&k).await.unwrap().unwrap().value;
    age(store.as_ref(), &k, 3600, -10).await;
    as1.clear_requests();

    failing.failures.store(2, Ordering::SeqCst);
    let fresh = auth.cached_access_token(&resource(&mcp)).await.unwrap();
    assert_valid_at(&as1, &fresh);
    assert_ne!(fresh.expose_secret(), before.access_token.expose_secret());
    auth.flush().await.unwrap();
    assert_eq!(
        failing.failures.load(Ordering::SeqCst),
        0,
        "both faults hit"
    );
    let stored = store.get_tokens(&k).await.unwrap().unwrap().value;
    assert_eq!(stored.access_token.expose_secret(), fresh.expose_secret());
    assert!(stored.refresh_state.is_none(), "{:?}", stored.refresh_state);

    // Another "process" refreshes from what the store holds: the rotated refresh token.
    age(store.as_ref(), &k, 3600, -10).await;
    let other = engine_with(Arc::clone(&store), config());
    let next = other.cached_access_token(&resource(&mcp)).await.unwrap();
    assert_valid_at(&as1, &next);
    assert_eq!(as1.refresh_requests(), 2);
    assert_eq!(as1.reuse_detections(), 0);
}

/// An AS that answers after the HTTP timeout (but within the refresh timeout): the one refresh
/// is waited for, every process ends with its token, no refresh token is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_as_answer_after_the_http_timeout_is_kept() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = logged_in_and_expired(&as1, &mcp, memory()).await;
    as1.set_token_fault(TokenFault::Delay(Duration::from_millis(2500)));
    let engines = engines(&store, ClientConfig::default, || {
        HttpPolicy::allowing_loopback().with_timeout(Duration::from_secs(1))
    });
    let results = storm(&engines, &resource(&mcp)).await;
    let mut tokens = std::collections::HashSet::new();
    for r in results {
        let t = r.unwrap();
        assert_valid_at(&as1, &t);
        tokens.insert(t.expose_secret().to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(as1.refresh_requests(), 1);
    assert_eq!(as1.reuse_detections(), 0);
}

/// The lease holder's heartbeat keeps waiters off while an answer takes longer than two lease
/// TTLs (1 s lease, 2.5 s answer): one refresh, one token for everyone, no reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_holds_the_lease_through_a_slow_answer() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = logged_in_and_expired(&as1, &mcp, memory()).await;
    as1.set_token_fault(TokenFault::Delay(Duration::from_millis(2500)));
    let engines = engines(
        &store,
        || ClientConfig::default().with_lease_ttl(Duration::from_secs(1)),
        HttpPolicy::allowing_loopback,
    );
    let mut tokens = std::collections::HashSet::new();
    for r in storm(&engines, &resource(&mcp)).await {
        let t = r.unwrap();
        assert_valid_at(&as1, &t);
        tokens.insert(t.expose_secret().to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(as1.refresh_requests(), 1);
    assert_eq!(as1.reuse_detections(), 0);
}

/// An AS slower than even the refresh timeout: the outcome is unknown, so nobody resends the
/// refresh token (0 reuse), and every caller is told why, naming the AS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_a_lost_answer_is_never_resent() {
    for fault in [
        TokenFault::Delay(Duration::from_secs(3)),
        TokenFault::DropAfterProcessing,
    ] {
        let as1 = auth_server(|_| {}).await;
        let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
        let store = logged_in_and_expired(&as1, &mcp, memory()).await;
        as1.set_token_fault(fault.clone());
        let config = || ClientConfig::default().with_refresh_timeout(Duration::from_secs(1));
        let engines = engines(&store, config, HttpPolicy::allowing_loopback);
        for round in 0..2 {
            for r in storm(&engines, &resource(&mcp)).await {
                match r {
                    Err(e @ AuthError::RefreshOutcomeUnknown { .. }) => {
                        assert!(e.needs_login());
                        assert!(e.to_string().contains(&as1.issuer()), "{e}");
                    }
                    other => panic!("{fault:?} round {round}: {other:?}"),
                }
            }
        }
        assert_eq!(as1.refresh_requests(), 1, "{fault:?}");
        assert_eq!(as1.reuse_detections(), 0, "{fault:?}");
        let stored = store.get_tokens(&key(&as1, &mcp)).await.unwrap().unwrap();
        if fault == TokenFault::DropAfterProcessing {
            // Unknown is not "failed": no retry time ever makes the token sendable again.
            tokio::time::sleep(Duration::from_millis(5500)).await;
            for r in storm(&engines, &resource(&mcp)).await {
                assert!(
                    matches!(r, Err(AuthError::RefreshOutcomeUnknown { .. })),
                    "{r:?}"
                );
            }
            assert_eq!(as1.refresh_requests(), 1, "resent after a wait");
            assert_eq!(as1.reuse_detections(), 0);
        }
        assert!(
            matches!(
                stored.value.refresh_state,
                Some(RefreshState::Unknown { .. })
            ),
            "{:?}",
            stored.value.refresh_state
        );
    }
}

/// A failing AS (503 with Retry-After) is asked once, not once per waiter; the error names the
/// AS; after the retry time one process tries again and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_as_is_asked_once_then_again_after_retry_after() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = logged_in_and_expired(&as1, &mcp, memory()).await;
    as1.set_token_fault(TokenFault::Unavailable {
        status: 503,
        retry_after: Some(2),
    });
    let engines = engines(&store, ClientConfig::default, HttpPolicy::allowing_loopback);
    for r in storm(&engines, &resource(&mcp)).await {
        match r {
            Err(e @ AuthError::RefreshFailed { .. }) => {
                assert!(!e.needs_login());
                assert!(e.to_string().contains(&as1.issuer()), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(as1.refresh_requests(), 1);
    as1.set_token_fault(TokenFault::None);
    for r in storm(&engines, &resource(&mcp)).await {
        assert!(
            matches!(r, Err(AuthError::RefreshFailed { .. })),
            "retried before Retry-After: {r:?}"
        );
    }
    assert_eq!(as1.refresh_requests(), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    for r in storm(&engines, &resource(&mcp)).await {
        assert_valid_at(&as1, &r.unwrap());
    }
    assert_eq!(as1.refresh_requests(), 2);
    assert_eq!(as1.reuse_detections(), 0);
}

/// Tokens that live 30 s: a token just obtained is not refreshed because of the 60 s margin;
/// once it is really close to expiry, eight concurrent callers refresh exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_second_tokens_refresh_exactly_once() {
    let as1 = auth_server(|c| c.access_token_ttl = Duration::from_secs(30)).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    engine(Arc::clone(&store))
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    as1.clear_requests();
    let engines = engines(&store, ClientConfig::default, HttpPolicy::allowing_loopback);
    for r in storm(&engines, &resource(&mcp)).await {
        r.unwrap();
    }
    assert_eq!(
        as1.refresh_requests(),
        0,
        "a fresh 30 s token was refreshed"
    );

    age(store.as_ref(), &key(&as1, &mcp), 30, 5).await;
    for r in storm(&engines, &resource(&mcp)).await {
        assert_valid_at(&as1, &r.unwrap());
    }
    for r in storm(&engines, &resource(&mcp)).await {
        r.unwrap();
    }
    assert_eq!(as1.refresh_requests(), 1);
    assert_eq!(as1.reuse_detections(), 0);
}

/// Without a refresh token, the access token is served until it really expires, then a login
/// is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_refresh_token_the_access_token_serves_until_expiry() {
    let as1 = auth_server(|c| {
        c.issue_refresh_tokens = false;
        c.access_token_ttl = Duration::from_secs(30);
    })
    .await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(Arc::clone(&store));
    let first = auth.access_token(&resource(&mcp)).await.unwrap();
    let k = key(&as1, &mcp);
    age(store.as_ref(), &k, 30, 3).await;
    let again = auth.cached_access_token(&resource(&mcp)).await.unwrap();
    assert_eq!(again.expose_secret(), first.expose_secret());
    age(store.as_ref(), &k, 30, -1).await;
    let err = auth.cached_access_token(&resource(&mcp)).await.unwrap_err();
    assert!(err.needs_login(), "{err:?}");
}

/// A refresh marked in flight by a sender that holds no lease (it died) is resolved within a
/// few seconds: waiters do not stall for long, and do not resend the refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_refresh_is_resolved_within_seconds() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = logged_in_and_expired(&as1, &mcp, memory()).await;
    let k = key(&as1, &mcp);
    let current = store.get_tokens(&k).await.unwrap().unwrap();
    let mut marked = current.value.clone();
    marked.refresh_state = Some(RefreshState::InFlight {
        started_at: Timestamp::now(),
        holder: "a-process-that-died".to_owned(),
    });
    store
        .put_tokens(&k, &marked, Expect::Version(current.version))
        .await
        .unwrap();
    let engines = engines(&store, ClientConfig::default, HttpPolicy::allowing_loopback);
    let started = Instant::now();
    for r in storm(&engines, &resource(&mcp)).await {
        assert!(
            matches!(r, Err(AuthError::RefreshOutcomeUnknown { .. })),
            "{r:?}"
        );
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "waiters stalled for {took:?}"
    );
    assert_eq!(as1.refresh_requests(), 0);
}
