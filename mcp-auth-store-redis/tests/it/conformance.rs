//! The store conformance suite against a real Redis server (`MCP_AUTH_TEST_REDIS_URL`, started
//! by `cargo xtask test-all`), plus reconnection after the server drops the connection.
use async_trait::async_trait;
use mcp_auth_core::conformance::StoreFactory;
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    Expect, IssuerId, Namespace, ResourceUri, SecretString, StoreError, TokenKey, TokenSet,
    TokenStore,
};
use mcp_auth_store_redis::{RedisOptions, RedisStore, write_raw_record};

fn redis_url() -> String {
    std::env::var("MCP_AUTH_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("MCP_AUTH_TEST_REDIS_URL is not set: run `cargo xtask test-all`, which starts redis-server, or point it at a disposable Redis")
    })
}

/// Every `open` is a new connection, like another replica.
struct RedisFactory {
    url: String,
}

#[async_trait]
impl StoreFactory for RedisFactory {
    type Store = RedisStore;

    async fn open(&self, namespace: &Namespace) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(
            &self.url,
            RedisOptions {
                namespace: namespace.clone(),
                ..RedisOptions::default()
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
        write_raw_record(&self.open(namespace).await?, key, bytes).await?;
        Ok(true)
    }
}

mcp_auth_core::store_conformance_tests!(RedisFactory { url: redis_url() });

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
