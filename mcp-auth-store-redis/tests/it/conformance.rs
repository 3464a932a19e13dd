//! The store conformance suite against a real Redis server (`MCP_AUTH_TEST_REDIS_URL`, started
//! by `cargo xtask test-all`), plus reconnection after the server drops the connection.
use mcp_auth_core::{
    Expect, IssuerId, Namespace, ResourceUri, SecretString, StoreError, TokenKey, TokenSet,
    TokenStore,
};
use mcp_auth_store_redis::{RedisOptions, RedisStore};

use crate::support::{RedisFactory, redis_url};

mcp_auth_core::store_conformance_tests!(RedisFactory::new(redis_url()));

/// After the server kills the connection, the next operations still succeed (retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_dropped_connection() {
    let ns = Namespace::random("redis-reconnect");
    let store = RedisStore::connect_with(
        &redis_url(),
        RedisOptions {
            namespace: ns,
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    let key = TokenKey::new(
        IssuerId::new("https://as.example").unwrap(),
        ResourceUri::new("https://mcp.example").unwrap(),
    );
    let v1 = store
        .put_tokens(
            &key,
            &TokenSet::new(SecretString::from("one")),
            Expect::Absent,
        )
        .await
        .unwrap();
    for round in 0..3 {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(killed >= 1, "round {round}: nothing was killed");
        let read = store
            .get_tokens(&key)
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(read.unwrap().version, v1);
    }
    // A CAS write right after a drop is applied exactly once.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut admin)
        .await
        .unwrap();
    let v2 = store
        .put_tokens(
            &key,
            &TokenSet::new(SecretString::from("two")),
            Expect::Version(v1.clone()),
        )
        .await
        .unwrap();
    assert_ne!(v1, v2);
    assert!(matches!(
        store
            .put_tokens(
                &key,
                &TokenSet::new(SecretString::from("stale")),
                Expect::Version(v1)
            )
            .await,
        Err(StoreError::Conflict { .. })
    ));
    store.delete_tokens(&key, Expect::Any).await.unwrap();
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let err = RedisStore::connect_with(
        "redis://127.0.0.1:1/",
        RedisOptions {
            retry_budget: std::time::Duration::from_millis(200),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(matches!(
        RedisStore::connect_with(
            &redis_url(),
            RedisOptions {
                key_prefix: "bad{prefix}".into(),
                ..RedisOptions::default()
            }
        )
        .await,
        Err(StoreError::Backend { .. })
    ));
}
