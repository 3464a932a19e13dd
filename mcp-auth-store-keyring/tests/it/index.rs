//! The namespace index on the real keyrings: a missing or damaged index is rebuilt from the
//! keyring's own search, and an entry whose item is gone is skipped by listing and dropped by
//! the next write. Run through `scripts/with-keyrings.sh` (see the README).
use std::collections::BTreeSet;

use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    BindingStore, ClientRegistration, Expect, IssuerId, Namespace, RegistrationKind,
    RegistrationStore, ResourceBinding, ResourceUri, SecretString, TokenKey, TokenSet, TokenStore,
};
use mcp_auth_store_keyring::testing::{index_item, remove_record_item, set_index_item};
use mcp_auth_store_keyring::{KeyringBackend, KeyringOptions, KeyringStore};

const HOW: &str = "the keyring tests need a private session keyring, a D-Bus session and an \
unlocked gnome-keyring: run them through mcp-auth-store-keyring/scripts/with-keyrings.sh (see \
the crate README; MCP_AUTH_TEST_KEYRINGS is not set)";

fn issuer(i: usize) -> IssuerId {
    IssuerId::new(format!("https://as-{i}.example")).unwrap()
}

fn resource(i: usize) -> ResourceUri {
    ResourceUri::new(format!("https://mcp-{i}.example/mcp")).unwrap()
}

fn token_key(i: usize, r: usize) -> TokenKey {
    TokenKey::new(issuer(i), resource(r))
}

fn tokens() -> TokenSet {
    TokenSet::new(SecretString::from("index-test-access"))
}

async fn open(backend: KeyringBackend) -> KeyringStore {
    if std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_none() {
        panic!("{HOW}");
    }
    KeyringStore::open(
        backend,
        KeyringOptions {
            namespace: Namespace::random("keyring-index"),
        },
    )
    .await
    .unwrap()
}

/// Three token sets (two issuers), a binding and a registration.
async fn seed(store: &KeyringStore) {
    for key in [token_key(0, 0), token_key(0, 1), token_key(1, 0)] {
        store
            .put_tokens(&key, &tokens(), Expect::Absent)
            .await
            .unwrap();
    }
    store
        .put_binding(
            &ResourceBinding::new(resource(0), issuer(0)),
            Expect::Absent,
        )
        .await
        .unwrap();
    let registration = ClientRegistration::new(issuer(0), "client", RegistrationKind::Dynamic);
    store
        .put_registration(&registration, Expect::Absent)
        .await
        .unwrap();
}

/// Deletes everything the tests here create (kernel keys outlive the test's session keyring:
/// the store links them into the user's persistent keyring), and the namespace's lock files.
async fn wipe(store: &KeyringStore) {
    for i in 0..2 {
        store
            .delete_registration(&issuer(i), Expect::Any)
            .await
            .unwrap();
        store
            .delete_binding(&resource(i), Expect::Any)
            .await
            .unwrap();
        for r in 0..2 {
            store
                .delete_tokens(&token_key(i, r), Expect::Any)
                .await
                .unwrap();
        }
    }
    set_index_item(store, None).await.unwrap();
    let lock = store.lock_file().unwrap();
    let _ = std::fs::remove_file(lock.with_extension("leases.lock"));
    let _ = std::fs::remove_file(lock);
}

async fn token_keys(store: &KeyringStore) -> BTreeSet<TokenKey> {
    store.list_tokens().await.unwrap().into_iter().collect()
}

fn seeded_tokens() -> BTreeSet<TokenKey> {
    [token_key(0, 0), token_key(0, 1), token_key(1, 0)]
        .into_iter()
        .collect()
}

async fn index_members(store: &KeyringStore) -> BTreeSet<String> {
    let raw = index_item(store).await.unwrap().expect("no index item");
    serde_json::from_slice(&raw).expect("the index item is not a list of keys")
}

/// Deleted or damaged index: listing finds every record again, and saves the rebuilt index.
async fn a_lost_index_is_rebuilt_by_listing(backend: KeyringBackend) {
    for damage in [
        None,
        Some(b"{ not an index".to_vec()),
        Some(b"[1, 2]".to_vec()),
    ] {
        let store = open(backend).await;
        seed(&store).await;
        let before = index_members(&store).await;
        assert_eq!(before.len(), 5);
        set_index_item(&store, damage.clone()).await.unwrap();
        assert_eq!(
            token_keys(&store).await,
            seeded_tokens(),
            "damage {damage:?}"
        );
        assert_eq!(store.list_bindings().await.unwrap(), vec![resource(0)]);
        assert_eq!(store.list_registrations().await.unwrap(), vec![issuer(0)]);
        assert_eq!(
            index_members(&store).await,
            before,
            "the rebuilt index was not saved"
        );
        wipe(&store).await;
    }
}

/// A write on a lost index rebuilds it first instead of starting an empty one; so does the
/// per-issuer deletion, which finds every token set of the issuer.
async fn writes_rebuild_a_lost_index(backend: KeyringBackend) {
    let store = open(backend).await;
    seed(&store).await;
    set_index_item(&store, None).await.unwrap();
    store
        .put_tokens(&token_key(1, 1), &tokens(), Expect::Absent)
        .await
        .unwrap();
    let mut expected = seeded_tokens();
    expected.insert(token_key(1, 1));
    assert_eq!(token_keys(&store).await, expected);
    assert_eq!(store.list_bindings().await.unwrap(), vec![resource(0)]);

    set_index_item(&store, Some(b"garbage".to_vec()))
        .await
        .unwrap();
    assert_eq!(store.delete_issuer_tokens(&issuer(0)).await.unwrap(), 2);
    assert_eq!(
        token_keys(&store).await,
        [token_key(1, 0), token_key(1, 1)].into_iter().collect()
    );
    assert_eq!(store.list_registrations().await.unwrap(), vec![issuer(0)]);
    wipe(&store).await;
}

/// An index entry whose item is gone is skipped by listing, and the next write drops it.
async fn an_entry_without_its_item_is_skipped_then_dropped(backend: KeyringBackend) {
    let store = open(backend).await;
    seed(&store).await;
    let gone = RecordKey::Tokens(token_key(0, 1));
    assert!(remove_record_item(&store, &gone).await.unwrap());
    let mut expected = seeded_tokens();
    expected.remove(&token_key(0, 1));
    assert_eq!(token_keys(&store).await, expected);
    assert!(
        index_members(&store).await.contains(&gone.storage_key()),
        "listing wrote the index"
    );
    // Another store object of this process: the stale entry is shared through the namespace.
    let other = store.with_namespace(store.namespace().clone());
    other
        .put_binding(
            &ResourceBinding::new(resource(1), issuer(1)),
            Expect::Absent,
        )
        .await
        .unwrap();
    let members = index_members(&store).await;
    assert!(!members.contains(&gone.storage_key()), "{members:?}");
    assert_eq!(members.len(), 5, "{members:?}");
    assert_eq!(token_keys(&store).await, expected);
    wipe(&store).await;
}

/// Entries this version does not know (a newer one wrote them) are kept, and not listed.
async fn unknown_entries_are_kept(backend: KeyringBackend) {
    let store = open(backend).await;
    seed(&store).await;
    let mut members = index_members(&store).await;
    members.insert("future-kind/abc".to_owned());
    set_index_item(&store, Some(serde_json::to_vec(&members).unwrap()))
        .await
        .unwrap();
    assert_eq!(token_keys(&store).await, seeded_tokens());
    store
        .put_tokens(&token_key(1, 1), &tokens(), Expect::Absent)
        .await
        .unwrap();
    assert!(index_members(&store).await.contains("future-kind/abc"));
    wipe(&store).await;
}

mod secret_service {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_index_is_rebuilt_by_listing() {
        super::a_lost_index_is_rebuilt_by_listing(KeyringBackend::SecretService).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_rebuild_a_lost_index() {
        super::writes_rebuild_a_lost_index(KeyringBackend::SecretService).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_without_its_item_is_skipped_then_dropped() {
        super::an_entry_without_its_item_is_skipped_then_dropped(KeyringBackend::SecretService)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_entries_are_kept() {
        super::unknown_entries_are_kept(KeyringBackend::SecretService).await;
    }
}

mod keyutils {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_index_is_rebuilt_by_listing() {
        super::a_lost_index_is_rebuilt_by_listing(KeyringBackend::Keyutils).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_rebuild_a_lost_index() {
        super::writes_rebuild_a_lost_index(KeyringBackend::Keyutils).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_without_its_item_is_skipped_then_dropped() {
        super::an_entry_without_its_item_is_skipped_then_dropped(KeyringBackend::Keyutils).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_entries_are_kept() {
        super::unknown_entries_are_kept(KeyringBackend::Keyutils).await;
    }
}
