//! Issue 13's bulk methods on SQLite beyond the conformance suite: imports larger than one
//! transaction, scans large enough to be decoded on several threads, a corrupt row failing the
//! scan, and a read-only store refusing imports while still scanning.
use std::collections::HashMap;

use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    BindingStore, ClientRegistration, IssuerId, RegistrationKind, RegistrationStore,
    ResourceBinding, ResourceUri, SecretString, StoreError, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_sqlite::{SqliteOptions, SqliteStore, write_raw_record};

fn key(i: usize) -> TokenKey {
    TokenKey::new(
        IssuerId::new(format!("https://as{}.bulk.example", i % 7)).unwrap(),
        ResourceUri::new(format!("https://mcp{i}.bulk.example/mcp")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_over_several_transactions_and_scans_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bulk.db")).await.unwrap();
    // More than two import batches and above the parallel-decoding threshold.
    let n = 2_600;
    let tokens: Vec<(TokenKey, TokenSet)> = (0..n)
        .map(|i| (key(i), TokenSet::new(SecretString::from(format!("at-{i}")))))
        .collect();
    let versions = store.put_tokens_any(&tokens).await.unwrap();
    assert_eq!(versions.len(), n);
    // Overwrite a slice: the new versions are the current ones.
    let again = store.put_tokens_any(&tokens[..10]).await.unwrap();
    let scanned: HashMap<TokenKey, _> = store.scan_tokens().await.unwrap().into_iter().collect();
    assert_eq!(scanned.len(), n);
    for (i, (k, t)) in tokens.iter().enumerate() {
        let got = &scanned[k];
        let want = if i < 10 { &again[i] } else { &versions[i] };
        assert_eq!(&got.version, want, "{k}");
        assert_eq!(
            mcp_auth_core::ExposeSecret::expose_secret(&got.value.access_token),
            mcp_auth_core::ExposeSecret::expose_secret(&t.access_token)
        );
        assert_eq!(
            store.get_tokens(k).await.unwrap().unwrap().version,
            got.version
        );
    }
    let registrations: Vec<ClientRegistration> = (0..7)
        .map(|i| {
            ClientRegistration::new(
                key(i).issuer,
                format!("client-{i}"),
                RegistrationKind::Dynamic,
            )
        })
        .collect();
    store.put_registrations_any(&registrations).await.unwrap();
    assert_eq!(store.scan_registrations().await.unwrap().len(), 7);
    let bindings: Vec<ResourceBinding> = (0..n)
        .map(|i| ResourceBinding::new(key(i).resource, key(i).issuer))
        .collect();
    store.put_bindings_any(&bindings).await.unwrap();
    assert_eq!(store.scan_bindings().await.unwrap().len(), n);
    // Another namespace of the same file sees none of it.
    let other = store.with_namespace(mcp_auth_core::Namespace::new("other").unwrap());
    assert!(other.scan_tokens().await.unwrap().is_empty());
    assert!(other.scan_bindings().await.unwrap().is_empty());
}

/// Stores 3000 token sets (enough for a scan decoded on several threads), overwrites the rows
/// of `corrupt` with bytes that are not a record, and checks that each of `scans` scans fails
/// (no partial result) naming one of them.
async fn scans_fail_naming_a_corrupt_row(corrupt: &[usize], scans: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bulk.db")).await.unwrap();
    let tokens: Vec<(TokenKey, TokenSet)> = (0..3_000)
        .map(|i| (key(i), TokenSet::new(SecretString::from(format!("at-{i}")))))
        .collect();
    store.put_tokens_any(&tokens).await.unwrap();
    for &i in corrupt {
        write_raw_record(&store, &RecordKey::Tokens(key(i)), b"not json")
            .await
            .unwrap();
    }
    for _ in 0..scans {
        match store.scan_tokens().await {
            Err(StoreError::Corrupt { key: named, .. }) => assert!(
                corrupt
                    .iter()
                    .any(|i| named.contains(&format!("mcp{i}.bulk.example/"))),
                "{named}"
            ),
            other => panic!("expected Corrupt, got {:?}", other.map(|v| v.len())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_fails_the_scan_naming_it() {
    scans_fail_naming_a_corrupt_row(&[1_234], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_throughout_a_scan_fail_it_whichever_thread_decodes_them() {
    // The reading thread decodes chunks itself when the decoders are busy: a corrupt row in
    // every chunk is met by the reader and by a decoder alike, and either way the scan fails.
    let corrupt: Vec<usize> = (0..3_000).step_by(97).collect();
    scans_fail_naming_a_corrupt_row(&corrupt, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_scans_but_refuses_imports() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulk.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .put_tokens_any(&[(key(1), TokenSet::new(SecretString::from("at")))])
        .await
        .unwrap();
    drop(store);
    let read_only = SqliteStore::open_with(
        &path,
        SqliteOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(read_only.scan_tokens().await.unwrap().len(), 1);
    let refused = read_only
        .put_tokens_any(&[(key(2), TokenSet::new(SecretString::from("at")))])
        .await;
    assert!(
        matches!(refused, Err(StoreError::PermissionDenied { .. })),
        "{refused:?}"
    );
    // An empty import writes nothing and is not refused.
    assert!(read_only.put_tokens_any(&[]).await.unwrap().is_empty());
}
