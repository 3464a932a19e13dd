//! Issue 13's `scan_*` on Redis beyond the conformance suite: more keys than one pipeline holds.
use std::collections::HashMap;

use mcp_auth_core::{
    IssuerId, Namespace, ResourceUri, SecretString, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_redis::{RedisOptions, RedisStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_spans_several_pipelines() {
    let url = crate::support::redis_url();
    let store = RedisStore::connect_with(
        &url,
        RedisOptions {
            namespace: Namespace::random("bulk"),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    let tokens: Vec<(TokenKey, TokenSet)> = (0..1_234)
        .map(|i| {
            (
                TokenKey::new(
                    IssuerId::new(format!("https://as{}.bulk.example", i % 5)).unwrap(),
                    ResourceUri::new(format!("https://mcp{i}.bulk.example/mcp")).unwrap(),
                ),
                TokenSet::new(SecretString::from(format!("at-{i}"))),
            )
        })
        .collect();
    let versions = store.put_tokens_any(&tokens).await.unwrap();
    let scanned: HashMap<TokenKey, _> = store.scan_tokens().await.unwrap().into_iter().collect();
    assert_eq!(scanned.len(), tokens.len());
    for ((key, _), version) in tokens.iter().zip(&versions) {
        assert_eq!(&scanned[key].version, version, "{key}");
    }
    for i in 0..5 {
        store
            .delete_issuer_tokens(&IssuerId::new(format!("https://as{i}.bulk.example")).unwrap())
            .await
            .unwrap();
    }
    assert!(store.scan_tokens().await.unwrap().is_empty());
}
