//! The store conformance suite against the real OS keyrings: the Secret Service (gnome-keyring
//! on a private D-Bus session) and the kernel keyring (a private session keyring). Run through
//! `scripts/with-keyrings.sh`, which sets `MCP_AUTH_TEST_KEYRINGS`; see the README.
use async_trait::async_trait;
use mcp_auth_core::conformance::StoreFactory;
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{Namespace, StoreError};
use mcp_auth_store_keyring::{KeyringBackend, KeyringOptions, KeyringStore, write_raw_record};

const HOW: &str = "the keyring tests need a private session keyring, a D-Bus session and an \
unlocked gnome-keyring: apt-get install -y --no-install-recommends gnome-keyring keyutils, then \
run `keyctl session - dbus-run-session -- mcp-auth-store-keyring/scripts/with-keyrings.sh \
cargo nextest run -p mcp-auth-store-keyring` (MCP_AUTH_TEST_KEYRINGS is not set)";

/// Every `open` is a new store object (for the Secret Service: a new D-Bus connection), as
/// after a restart.
struct KeyringFactory {
    backend: KeyringBackend,
}

impl KeyringFactory {
    fn new(backend: KeyringBackend) -> Self {
        if std::env::var_os("MCP_AUTH_TEST_KEYRINGS").is_none() {
            panic!("{HOW}");
        }
        Self { backend }
    }
}

#[async_trait]
impl StoreFactory for KeyringFactory {
    type Store = KeyringStore;

    async fn open(&self, namespace: &Namespace) -> Result<KeyringStore, StoreError> {
        KeyringStore::open(
            self.backend,
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

mod secret_service {
    use super::*;

    mcp_auth_core::store_conformance_tests!(KeyringFactory::new(KeyringBackend::SecretService));
}

mod keyutils {
    use super::*;

    mcp_auth_core::store_conformance_tests!(KeyringFactory::new(KeyringBackend::Keyutils));
}

/// Backend-specific behaviour beyond the suite: size limits, declared capabilities, and use
/// from a current-thread runtime and from plain threads without a runtime.
mod extra {
    use mcp_auth_core::{
        Expect, IssuerId, ResourceUri, SecretString, StoreInfo, TokenKey, TokenSet, TokenStore,
    };

    use super::*;

    fn key() -> TokenKey {
        TokenKey::new(
            IssuerId::new("https://as.example").unwrap(),
            ResourceUri::new("https://mcp.example").unwrap(),
        )
    }

    async fn open(backend: KeyringBackend) -> KeyringStore {
        KeyringFactory::new(backend)
            .open(&Namespace::random("keyring-extra"))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keyutils_refuses_items_above_its_payload_limit() {
        let store = open(KeyringBackend::Keyutils).await;
        assert!(
            !store.capabilities().durable,
            "keyutils is cleared on reboot"
        );
        let big = TokenSet::new(SecretString::from("x".repeat(40 * 1024)));
        let err = store
            .put_tokens(&key(), &big, Expect::Absent)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("xxxx"));
        assert!(store.get_tokens(&key()).await.unwrap().is_none());
        assert!(store.list_tokens().await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn secret_service_holds_large_records_on_a_current_thread_runtime() {
        let store = open(KeyringBackend::SecretService).await;
        let caps = store.capabilities();
        assert!(caps.durable);
        assert!(caps.atomic_cas && caps.cross_process_lease, "{caps:?}");
        let big = TokenSet::new(SecretString::from("y".repeat(40 * 1024)));
        let v = store
            .put_tokens(&key(), &big, Expect::Absent)
            .await
            .unwrap();
        let got = store.get_tokens(&key()).await.unwrap().unwrap();
        assert_eq!(got.version, v);
        assert!(
            store
                .delete_tokens(&key(), Expect::Version(v))
                .await
                .unwrap()
        );
        drop(store); // dropped inside the runtime: must not panic
    }

    #[test]
    fn works_without_a_runtime() {
        for backend in [KeyringBackend::SecretService, KeyringBackend::Keyutils] {
            let store = futures_lite_block_on(open(backend));
            let tokens = TokenSet::new(SecretString::from("plain"));
            futures_lite_block_on(store.put_tokens(&key(), &tokens, Expect::Absent)).unwrap();
            let keys = futures_lite_block_on(store.list_tokens()).unwrap();
            assert_eq!(keys, vec![key()]);
            futures_lite_block_on(store.delete_tokens(&key(), Expect::Any)).unwrap();
        }
    }

    /// A minimal executor: the store's futures outside a runtime complete without waking.
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::pin::pin;
        use std::task::{Context, Poll, Waker};
        let mut f = pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::yield_now();
        }
    }
}
