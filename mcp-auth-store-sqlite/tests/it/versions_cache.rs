//! `binding_and_token_versions` answers from a cache while the database's change stamp is
//! unchanged: every write — through this handle, another namespace over the same connection,
//! another connection to the file (another process, as far as SQLite can tell) — must still be
//! seen by the very next call.
use mcp_auth_core::{
    BindingStore, Expect, IssuerId, Namespace, ResourceBinding, ResourceUri, SecretString,
    TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_sqlite::SqliteStore;

fn key() -> TokenKey {
    TokenKey::new(
        IssuerId::new("https://as.example.com").unwrap(),
        ResourceUri::new("https://mcp.example.com/mcp").unwrap(),
    )
}

fn tokens(n: u32) -> TokenSet {
    TokenSet::new(SecretString::from(format!("access-{n}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_seen_by_the_next_versions_call() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let ours = SqliteStore::open(&path).await.unwrap();
    let theirs = SqliteStore::open(&path).await.unwrap(); // its own connection
    let k = key();

    assert_eq!(
        ours.binding_and_token_versions(&k).await.unwrap(),
        (None, None)
    );
    // Another connection writes: seen at once (the cached "absent" is not served).
    let v1 = theirs
        .put_tokens(&k, &tokens(1), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        ours.binding_and_token_versions(&k).await.unwrap(),
        (None, Some(v1.clone()))
    );
    // Repeated without a write: the same answer (now from the cache).
    assert_eq!(
        ours.binding_and_token_versions(&k).await.unwrap(),
        (None, Some(v1.clone()))
    );
    // Our own write.
    let v2 = ours
        .put_tokens(&k, &tokens(2), Expect::Version(v1))
        .await
        .unwrap();
    assert_eq!(
        ours.binding_and_token_versions(&k).await.unwrap(),
        (None, Some(v2.clone()))
    );
    // Another connection binds the resource, then rotates the tokens twice.
    let binding = ResourceBinding::new(k.resource.clone(), k.issuer.clone());
    let b1 = theirs.put_binding(&binding, Expect::Absent).await.unwrap();
    assert_eq!(
        ours.binding_and_token_versions(&k).await.unwrap(),
        (Some(b1.clone()), Some(v2.clone()))
    );
    let v3 = theirs
        .put_tokens(&k, &tokens(3), Expect::Version(v2))
        .await
        .unwrap();
    let v4 = theirs
        .put_tokens(&k, &tokens(4), Expect::Version(v3))
        .await
        .unwrap();
    assert_eq!(
        ours.binding_and_token_versions(&k).await.unwrap(),
        (Some(b1.clone()), Some(v4.clone()))
    );
    // Deleted elsewhere: gone at once.
    assert!(theirs.delete_tokens(&k, Expect::Any).await.unwrap());
    assert_eq!(
        ours.binding_and_token_versions(&k).await.unwrap(),
        (Some(b1), None)
    );
    // Namespaces share the connection and the cache, never their answers.
    let other = ours.with_namespace(Namespace::new("other").unwrap());
    let o1 = other
        .put_tokens(&k, &tokens(9), Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        other.binding_and_token_versions(&k).await.unwrap(),
        (None, Some(o1))
    );
    assert_eq!(ours.binding_and_token_versions(&k).await.unwrap().1, None);
}
