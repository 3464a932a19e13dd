//! `KeyringKey` (feature `encryption`): the key of an `EncryptedStore` kept in the OS keyring,
//! generated on first use, the same key on every later load (and for concurrent first uses);
//! the kernel keyring, which forgets its items at reboot, refused unless allowed; and the
//! conformance suite through `EncryptedStore` over the kernel-keyring store with such a key.
//! Run through `scripts/with-keyrings.sh` (see `conformance.rs`).
#![cfg(feature = "encryption")]

use async_trait::async_trait;
use mcp_auth_core::conformance::StoreFactory;
use mcp_auth_core::encryption::{EncryptedFactory, KeyError, KeyProvider, KeySet};
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{Namespace, StoreError};
use mcp_auth_store_keyring::{
    KeyringBackend, KeyringKey, KeyringOptions, KeyringStore, write_raw_record,
};

fn require_keyrings() {
    if std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_none() {
        panic!(
            "the keyring tests need a private session keyring and an unlocked gnome-keyring: run \
             `keyctl session - dbus-run-session -- mcp-auth-store-keyring/scripts/with-keyrings.sh \
             cargo nextest run -p mcp-auth-store-keyring --all-features` (MCP_AUTH_TEST_KEYRINGS is not set)"
        );
    }
}

fn fresh_item() -> String {
    Namespace::random("mcp-auth-test-key").as_str().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_service_key_is_generated_once_and_kept() {
    require_keyrings();
    let service = fresh_item();
    let provider = KeyringKey::new(KeyringBackend::SecretService).item(&service, "data-key");
    // Concurrent first uses store one key.
    let (a, b) = tokio::join!(provider.load_key(), provider.load_key());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.id(), b.id());
    // A later load (a new provider, as in another process) reads the same key.
    let again = KeyringKey::new(KeyringBackend::SecretService)
        .item(&service, "data-key")
        .load_key()
        .await
        .unwrap();
    assert_eq!(again.id(), a.id());
    // Another item is another key.
    let other = KeyringKey::new(KeyringBackend::SecretService)
        .item(&service, "other-key")
        .load_key()
        .await
        .unwrap();
    assert_ne!(other.id(), a.id());
    let shown = format!("{provider:?} {a:?}");
    assert!(
        shown.contains(a.id()) || shown.contains("data-key"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_keyring_is_refused_unless_allowed() {
    require_keyrings();
    let service = fresh_item();
    let err = KeyringKey::new(KeyringBackend::Keyutils)
        .item(&service, "data-key")
        .load_key()
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::Provider { .. }), "{err}");
    assert!(err.to_string().contains("keyring"), "{err}");
    let allowed = KeyringKey::new(KeyringBackend::Keyutils)
        .item(&service, "data-key")
        .allow_non_durable(true);
    let first = allowed.load_key().await.unwrap();
    assert_eq!(allowed.load_key().await.unwrap().id(), first.id());
}

struct KeyutilsFactory;

#[async_trait]
impl StoreFactory for KeyutilsFactory {
    type Store = KeyringStore;

    async fn open(&self, namespace: &Namespace) -> Result<KeyringStore, StoreError> {
        KeyringStore::open(
            KeyringBackend::Keyutils,
            KeyringOptions {
                namespace: namespace.clone(),
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

fn encrypted_keyutils() -> EncryptedFactory<KeyutilsFactory> {
    require_keyrings();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let key = rt
        .block_on(
            KeyringKey::new(KeyringBackend::Keyutils)
                .item("mcp-auth-test-conformance-key", "data-key")
                .allow_non_durable(true)
                .load_key(),
        )
        .unwrap();
    EncryptedFactory::new(KeyutilsFactory, KeySet::new(key))
}

mod conformance {
    use super::*;

    mcp_auth_core::store_conformance_tests!(encrypted_keyutils());
}
