//! Tokens: refresh with rotation, single flight under a storm, `invalid_grant` handling.
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use async_trait::async_trait;
use mcp_auth_core::{
    AuthError, CredentialStore, Expect, ExposeSecret, IssuerId, MemoryStore, RefreshLease,
    SecretString, StoreError, Timestamp, TokenKey, TokenSet, TokenStore, Version, Versioned,
};
use mcp_auth_testkit::{Endpoint, Misbehavior};

/// Makes the stored access token look expired to the client.
async fn expire_locally(store: &dyn CredentialStore, key: &TokenKey) {
    let current = store.get_tokens(key).await.unwrap().unwrap();
    let mut t = current.value.clone();
    t.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(key, &t, Expect::Version(current.version))
        .await
        .unwrap();
}

fn key(as1: &mcp_auth_testkit::AuthServer, mcp: &mcp_auth_testkit::McpServer) -> TokenKey {
    TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource(mcp))
}

/// 1000 concurrent `access_token()` calls on an expired token → exactly one token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_storm_makes_exactly_one_token_request() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = Arc::new(engine(store.clone()));
    auth.access_token(&resource(&mcp)).await.unwrap();
    expire_locally(store.as_ref(), &key(&as1, &mcp)).await;
    as1.clear_requests();

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let auth = Arc::clone(&auth);
        let r = resource(&mcp);
        tasks.push(tokio::spawn(async move { auth.access_token(&r).await }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().expose_secret().to_owned());
    }
    assert_eq!(
        as1.count(Endpoint::Token),
        1,
        "{:?}",
        as1.requests()
            .iter()
            .map(|r| &r.endpoint)
            .collect::<Vec<_>>()
    );
    assert_eq!(tokens.len(), 1, "callers got different tokens");
    assert_eq!(
        as1.requests().len(),
        1,
        "only the token endpoint may be contacted"
    );
}

/// R33: a rotated refresh token replaces the old one; the AS's reuse detection never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_refresh_tokens_are_saved_and_used() {
    let as1 = auth_server(|c| c.rotate_refresh_tokens = true).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(store.clone());
    auth.access_token(&resource(&mcp)).await.unwrap();
    let k = key(&as1, &mcp);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        expire_locally(store.as_ref(), &k).await;
        let token = auth.access_token(&resource(&mcp)).await.unwrap();
        assert_eq!(
            call(&mcp, &token).await.0,
            200,
            "the refreshed token is refused (grant revoked?)"
        );
        let rt = store
            .get_tokens(&k)
            .await
            .unwrap()
            .unwrap()
            .value
            .refresh_token
            .unwrap();
        assert!(
            seen.insert(rt.expose_secret().to_owned()),
            "the refresh token was not rotated/saved"
        );
    }
    // R14 inferred: every refresh grant carried the resource.
    for r in as1
        .requests()
        .iter()
        .filter(|r| r.grant_type.as_deref() == Some("refresh_token"))
    {
        assert_eq!(
            r.form.get("resource").map(String::as_str),
            Some(mcp.url().as_str())
        );
    }
}

/// An AS that does not rotate omits `refresh_token`: the stored one is kept, not erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omitted_refresh_token_is_kept() {
    let as1 = auth_server(|c| c.rotate_refresh_tokens = false).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(store.clone());
    auth.access_token(&resource(&mcp)).await.unwrap();
    let k = key(&as1, &mcp);
    let before = store
        .get_tokens(&k)
        .await
        .unwrap()
        .unwrap()
        .value
        .refresh_token
        .unwrap();
    for _ in 0..2 {
        expire_locally(store.as_ref(), &k).await;
        auth.access_token(&resource(&mcp)).await.unwrap();
    }
    let after = store
        .get_tokens(&k)
        .await
        .unwrap()
        .unwrap()
        .value
        .refresh_token
        .unwrap();
    assert_eq!(before.expose_secret(), after.expose_secret());
    assert_eq!(as1.count(Endpoint::Token), 3);
}

/// R19: no refresh token issued → no crash; an expired token leads to a new authorization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_without_refresh_tokens() {
    let as1 = auth_server(|c| c.issue_refresh_tokens = false).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    let auth = engine(store.clone());
    auth.access_token(&resource(&mcp)).await.unwrap();
    expire_locally(store.as_ref(), &key(&as1, &mcp)).await;
    let err = auth.cached_access_token(&resource(&mcp)).await.unwrap_err();
    assert!(matches!(err, AuthError::LoginRequired { .. }), "{err:?}");
    let token = auth.access_token(&resource(&mcp)).await.unwrap();
    assert_eq!(call(&mcp, &token).await.0, 200);
    assert_eq!(as1.count(Endpoint::Authorize), 2);
}

/// A store that, just before the engine deletes the rejected token record, lets "another
/// process" save a newer one — the engine's CAS delete must leave that newer record alone.
#[derive(Debug)]
struct Interleaving {
    inner: MemoryStore,
    newer: std::sync::Mutex<Option<(TokenKey, TokenSet)>>,
}

#[async_trait]
impl TokenStore for Interleaving {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        self.inner.get_tokens(key).await
    }
    async fn put_tokens(
        &self,
        key: &TokenKey,
        t: &TokenSet,
        e: Expect,
    ) -> Result<Version, StoreError> {
        self.inner.put_tokens(key, t, e).await
    }
    async fn delete_tokens(&self, key: &TokenKey, e: Expect) -> Result<bool, StoreError> {
        let newer = self.newer.lock().unwrap().take();
        if let Some((k, t)) = newer {
            self.inner.put_tokens(&k, &t, Expect::Any).await?;
        }
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

forward_untouched_stores!(Interleaving, "interleaving");

/// `invalid_grant` deletes the token record only if it is still the exact version rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_deletes_only_the_rejected_version() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;

    // 1. Nobody interferes: the rejected record is deleted.
    let plain = memory();
    let auth = engine(plain.clone());
    auth.access_token(&resource(&mcp)).await.unwrap();
    let k = key(&as1, &mcp);
    expire_locally(plain.as_ref(), &k).await;
    as1.set_misbehavior(Misbehavior::TokenResponse(
        400,
        r#"{"error":"invalid_grant"}"#.into(),
    ));
    let err = auth.cached_access_token(&resource(&mcp)).await.unwrap_err();
    assert!(matches!(err, AuthError::RefreshRejected { .. }), "{err:?}");
    assert!(
        plain.get_tokens(&k).await.unwrap().is_none(),
        "the rejected record was kept"
    );

    // 2. Another process saves newer tokens just before the delete: they survive.
    as1.set_misbehavior(Misbehavior::None);
    let store = Arc::new(Interleaving {
        inner: MemoryStore::new(),
        newer: Default::default(),
    });
    let auth = engine(store.clone());
    auth.access_token(&resource(&mcp)).await.unwrap();
    expire_locally(store.as_ref(), &k).await;
    let mut newer = TokenSet::new(SecretString::from("saved-by-another-process"));
    newer.refresh_token = Some(SecretString::from("newer-refresh"));
    *store.newer.lock().unwrap() = Some((k.clone(), newer));
    as1.set_misbehavior(Misbehavior::TokenResponse(
        400,
        r#"{"error":"invalid_grant"}"#.into(),
    ));
    let err = auth.cached_access_token(&resource(&mcp)).await.unwrap_err();
    assert!(matches!(err, AuthError::RefreshRejected { .. }), "{err:?}");
    let kept = store
        .get_tokens(&k)
        .await
        .unwrap()
        .expect("the newer record was deleted");
    assert_eq!(
        kept.value.access_token.expose_secret(),
        "saved-by-another-process"
    );
}

/// After a restart, a refresh goes to the AS's token endpoint from the stored metadata — never
/// to the MCP server's origin, and with no discovery request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_after_restart_uses_stored_metadata() {
    let as1 = auth_server(|_| {}).await;
    let mcp = mcp_server(vec![as1.clone()], |_| {}).await;
    let store = memory();
    engine(store.clone())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    expire_locally(store.as_ref(), &key(&as1, &mcp)).await;
    as1.clear_requests();
    mcp.clear_requests();
    let token = engine(store.clone())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    assert_eq!(as1.count(Endpoint::Token), 1);
    assert_eq!(as1.count(Endpoint::Metadata), 0);
    assert!(
        mcp.requests().is_empty(),
        "the MCP server received a request during refresh"
    );
    assert_eq!(call(&mcp, &token).await.0, 200);
}

/// SEP-2207 + OpenID Connect Core §11: an OpenID provider grants `offline_access` only with
/// `prompt=consent`; the client sends it, and so gets a refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_provider_gets_prompt_consent_with_offline_access() {
    let as1 = auth_server(|c| {
        c.oidc_offline_access = true;
        c.scopes_supported = Some(vec!["mcp".into(), "offline_access".into()]);
    })
    .await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.scopes_supported = Some(vec!["mcp".into()]);
    })
    .await;
    let store = memory();
    engine(store.clone())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    let authorize = as1
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    assert_eq!(
        authorize.query.get("prompt").map(String::as_str),
        Some("consent")
    );
    assert!(
        authorize.query["scope"]
            .split(' ')
            .any(|s| s == "offline_access")
    );
    let tokens = store.get_tokens(&key(&as1, &mcp)).await.unwrap().unwrap();
    assert!(
        tokens.value.refresh_token.is_some(),
        "the OpenID provider issued no refresh token"
    );
}

/// A plain OAuth server (no OpenID metadata) gets no `prompt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_oauth_server_gets_no_prompt() {
    let as1 = auth_server(|c| {
        c.scopes_supported = Some(vec!["mcp".into(), "offline_access".into()]);
    })
    .await;
    let mcp = mcp_server(vec![as1.clone()], |c| {
        c.scopes_supported = Some(vec!["mcp".into()]);
    })
    .await;
    engine(memory())
        .access_token(&resource(&mcp))
        .await
        .unwrap();
    let authorize = as1
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Endpoint::Authorize)
        .unwrap();
    assert!(
        !authorize.query.contains_key("prompt"),
        "{:?}",
        authorize.query
    );
}
