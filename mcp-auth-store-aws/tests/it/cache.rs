//! The read cache and the call counter, over moto: a warm `access_token()` makes no AWS call
//! while the cache is fresh (two without it), writes through the store and lease operations drop
//! what they touch, and another process's write is seen after at most the TTL.
use crate::common;

use std::sync::Arc;
use std::time::Duration;

use mcp_auth_core::{
    Expect, ExposeSecret, HttpPolicy, IssuerId, McpAuth, Namespace, ResourceUri, SecretString,
    TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_aws::{AwsOptions, AwsSecretsStore};
use mcp_auth_testkit::{AuthServer, AuthServerConfig, McpServer, McpServerConfig};

fn store_with_ttl(namespace: &Namespace, ttl: Duration) -> AwsSecretsStore {
    AwsSecretsStore::from_client(
        &common::client(),
        AwsOptions {
            cache_ttl: ttl,
            ..common::options(namespace)
        },
    )
    .unwrap()
}

fn key() -> TokenKey {
    TokenKey::new(
        IssuerId::new("https://as.cache.example").unwrap(),
        ResourceUri::new("https://mcp.cache.example/mcp").unwrap(),
    )
}

fn tokens(tag: &str) -> TokenSet {
    TokenSet::new(SecretString::from(format!("at-{tag}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_access_token_makes_no_aws_call_while_the_cache_is_fresh() {
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
    let ns = Namespace::random("aws-cache");
    for (ttl, per_call) in [(Duration::from_secs(30), 0), (Duration::ZERO, 2)] {
        let store = store_with_ttl(&ns, ttl);
        let auth = McpAuth::builder(Arc::new(store.clone()))
            .http_policy(HttpPolicy::allowing_loopback())
            .authorizer(Arc::new(
                mcp_auth_core::HeadlessAuthorizer::with_policy(
                    mcp_auth_core::HttpPolicy::allowing_loopback(),
                )
                .unwrap(),
            ))
            .build()
            .unwrap();
        let first = auth.access_token(&resource).await.unwrap();
        auth.cached_access_token(&resource).await.unwrap();
        let before = store.calls();
        for _ in 0..20 {
            let token = auth.cached_access_token(&resource).await.unwrap();
            assert_eq!(token.expose_secret(), first.expose_secret());
        }
        let calls = store.calls().since(&before);
        assert_eq!(
            calls.total(),
            20 * per_call,
            "cache ttl {ttl:?}: {calls} for 20 warm access_token() calls"
        );
        assert_eq!(calls.total(), calls.get_secret_value);
    }
    store_with_ttl(&ns, Duration::ZERO)
        .delete_tokens(
            &TokenKey::new(IssuerId::new(as1.issuer()).unwrap(), resource.clone()),
            Expect::Any,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_lease_operations_drop_what_they_touch() {
    let ns = Namespace::random("aws-cache");
    let store = store_with_ttl(&ns, Duration::from_secs(30));
    let other = store_with_ttl(&ns, Duration::from_secs(30));
    let k = key();
    let v1 = store
        .put_tokens(&k, &tokens("1"), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v1);
    // Another process writes: this cache still serves v1 (that is the point of a cache) ...
    let v2 = other
        .put_tokens(&k, &tokens("2"), Expect::Version(v1.clone()))
        .await
        .unwrap();
    let before = store.calls();
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v1);
    assert_eq!(store.calls().since(&before).total(), 0);
    // ... but a write expecting it is checked by AWS, fails, and drops the entry.
    assert!(matches!(
        store
            .put_tokens(&k, &tokens("stale"), Expect::Version(v1))
            .await,
        Err(mcp_auth_core::StoreError::Conflict { .. })
    ));
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v2);
    // A write through the store drops its entry.
    let v3 = store
        .put_tokens(&k, &tokens("3"), Expect::Version(v2))
        .await
        .unwrap();
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v3);
    // Any lease operation on the key makes the next read of its tokens fresh.
    let v4 = other
        .put_tokens(&k, &tokens("4"), Expect::Version(v3))
        .await
        .unwrap();
    let lease = store
        .try_acquire_refresh_lease(&k, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v4);
    // While this store holds the lease, its reads of those tokens never come from the cache.
    let v5 = other
        .put_tokens(&k, &tokens("5"), Expect::Version(v4))
        .await
        .unwrap();
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v5);
    // A waiter that could not take the lease reads fresh too.
    let v6 = store
        .put_tokens(&k, &tokens("6"), Expect::Version(v5))
        .await
        .unwrap();
    assert_eq!(other.get_tokens(&k).await.unwrap().unwrap().version, v6);
    let v7 = store
        .put_tokens(&k, &tokens("7"), Expect::Version(v6))
        .await
        .unwrap();
    assert!(
        other
            .try_acquire_refresh_lease(&k, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(other.get_tokens(&k).await.unwrap().unwrap().version, v7);
    assert!(store.release_refresh_lease(&lease).await.unwrap());
    store.delete_tokens(&k, Expect::Any).await.unwrap();
    assert!(store.get_tokens(&k).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_processs_write_is_seen_after_the_ttl() {
    let ns = Namespace::random("aws-cache");
    let store = store_with_ttl(&ns, Duration::from_millis(400));
    let other = store_with_ttl(&ns, Duration::ZERO);
    let k = key();
    let v1 = store
        .put_tokens(&k, &tokens("1"), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v1);
    let v2 = other
        .put_tokens(&k, &tokens("2"), Expect::Version(v1.clone()))
        .await
        .unwrap();
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.get_tokens(&k).await.unwrap().unwrap().version, v2);
    store.delete_tokens(&k, Expect::Any).await.unwrap();
}
