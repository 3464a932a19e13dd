//! What several test modules share: the Redis server of `cargo xtask test-all`, a conformance
//! factory over it, the text of an error with its sources, a headless engine, and a stored token
//! set made expired.
use std::sync::Arc;

use async_trait::async_trait;
use mcp_auth_core::conformance::StoreFactory;
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    CredentialStore, Expect, HeadlessAuthorizer, HttpPolicy, McpAuth, McpAuthBuilder, Namespace,
    StoreError, Timestamp, TokenKey, TokenStore,
};
use mcp_auth_store_redis::{RedisOptions, RedisStore, write_raw_record};

/// `MCP_AUTH_TEST_REDIS_URL`: the server `cargo xtask test-all` starts.
pub(crate) fn redis_url() -> String {
    std::env::var("MCP_AUTH_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("MCP_AUTH_TEST_REDIS_URL is not set: run `cargo xtask test-all`, which starts redis-server, or point it at a disposable Redis")
    })
}

/// Every `open` is a new connection, like another replica, with `options` (its namespace
/// replaced by the one asked for).
pub(crate) struct RedisFactory {
    pub(crate) url: String,
    pub(crate) options: RedisOptions,
}

impl RedisFactory {
    /// The default options.
    pub(crate) fn new(url: String) -> Self {
        Self {
            url,
            options: RedisOptions::default(),
        }
    }
}

#[async_trait]
impl StoreFactory for RedisFactory {
    type Store = RedisStore;

    async fn open(&self, namespace: &Namespace) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with(
            &self.url,
            RedisOptions {
                namespace: namespace.clone(),
                ..self.options.clone()
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

/// The error and its sources, for messages and assertions.
pub(crate) fn chain(e: &StoreError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(" <- ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An engine for `store` as the tests run it: loopback servers allowed, and an authorizer that
/// approves at once (the testkit's authorization server needs no browser).
pub(crate) fn headless(store: Arc<dyn CredentialStore>) -> McpAuthBuilder {
    McpAuth::builder(store)
        .http_policy(HttpPolicy::allowing_loopback())
        .authorizer(Arc::new(
            HeadlessAuthorizer::with_policy(HttpPolicy::allowing_loopback()).unwrap(),
        ))
}

/// Rewrites the stored token set of `key` as expired (compare-and-swap on its version), so the
/// next `access_token()` refreshes it.
pub(crate) async fn expire_stored_tokens(store: &dyn TokenStore, key: &TokenKey) {
    let current = store.get_tokens(key).await.unwrap().unwrap();
    let mut expired = current.value.clone();
    expired.expires_at = Some(Timestamp::from_unix_seconds(1));
    store
        .put_tokens(key, &expired, Expect::Version(current.version))
        .await
        .unwrap();
}
