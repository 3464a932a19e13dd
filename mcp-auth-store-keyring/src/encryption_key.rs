//! [`KeyringKey`]: the data-encryption key of `mcp_auth_core::encryption::EncryptedStore`, kept
//! in the OS keyring and generated on first use (crate feature `encryption`).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use keyring_core::Entry;
use keyring_core::api::CredentialPersistence;
use mcp_auth_core::StoreError;
use mcp_auth_core::encryption::{EncryptionKey, KEY_LEN, KeyError, KeyProvider};
use zeroize::Zeroizing;

use crate::{KeyringBackend, KeyringId, blocking, build_keyring, map_keyring};

const PROVIDER: &str = "keyring";

enum Source {
    Backend(KeyringBackend),
    Store(Arc<keyring_core::CredentialStore>),
}

/// An encryption key in the OS keyring: read from the item (`service`, `user`), or, when there
/// is none, 32 random bytes generated, stored there as 64 hex digits, and read back. Two
/// processes using it for the first time at once store one key (on Unix the generation holds a
/// lock file beside the keyring store's own).
///
/// A keyring that forgets its items (the kernel keyring forgets them at reboot) would make every
/// record sealed with the key unreadable: such a keyring is refused unless
/// [`KeyringKey::allow_non_durable`] says otherwise (for tests, or a key copied elsewhere).
pub struct KeyringKey {
    source: Source,
    service: String,
    user: String,
    allow_non_durable: bool,
}

impl KeyringKey {
    /// The default item: service `mcp-auth-encryption`.
    pub const DEFAULT_SERVICE: &'static str = "mcp-auth-encryption";
    /// The default item: user `data-key`.
    pub const DEFAULT_USER: &'static str = "data-key";

    /// The key in `backend`, under the default item.
    pub fn new(backend: KeyringBackend) -> Self {
        Self::from_source(Source::Backend(backend))
    }

    /// The key in a keyring-core store you built (the Apple or Windows store crates).
    pub fn with_store(keyring: Arc<keyring_core::CredentialStore>) -> Self {
        Self::from_source(Source::Store(keyring))
    }

    fn from_source(source: Source) -> Self {
        Self {
            source,
            service: Self::DEFAULT_SERVICE.to_owned(),
            user: Self::DEFAULT_USER.to_owned(),
            allow_non_durable: false,
        }
    }

    /// Another item: one key per (service, user), e.g. one per deployment.
    pub fn item(mut self, service: impl Into<String>, user: impl Into<String>) -> Self {
        self.service = service.into();
        self.user = user.into();
        self
    }

    /// Accept a keyring that forgets its items (the kernel keyring, at reboot).
    pub fn allow_non_durable(mut self, yes: bool) -> Self {
        self.allow_non_durable = yes;
        self
    }
}

impl fmt::Debug for KeyringKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Backend(b) => b.label().to_owned(),
            Source::Store(s) => format!("{} ({})", s.vendor(), s.id()),
        };
        f.debug_struct("KeyringKey")
            .field("keyring", &source)
            .field("service", &self.service)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

fn provider_error(e: impl Into<mcp_auth_core::BoxError>) -> KeyError {
    KeyError::Provider {
        provider: PROVIDER,
        source: e.into(),
    }
}

/// Reads the item; `None` when there is none.
fn read(
    entry: &Entry,
    origin: &str,
) -> Result<Option<Result<EncryptionKey, KeyError>>, StoreError> {
    match entry.get_secret() {
        Ok(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let parsed = match std::str::from_utf8(&bytes) {
                Ok(text) => EncryptionKey::parse(text, origin),
                Err(_) => Err(KeyError::Malformed {
                    origin: origin.to_owned(),
                    reason: "not text",
                }),
            };
            Ok(Some(parsed))
        }
        Err(keyring_core::Error::NoEntry) => Ok(None),
        Err(e) => Err(map_keyring(origin, e)),
    }
}

fn load(
    keyring: &Arc<keyring_core::CredentialStore>,
    service: &str,
    user: &str,
    allow_non_durable: bool,
) -> Result<Result<EncryptionKey, KeyError>, StoreError> {
    let origin = format!("keyring item {service}/{user}");
    if !allow_non_durable && !matches!(keyring.persistence(), CredentialPersistence::UntilDelete) {
        return Ok(Err(provider_error(
            "this keyring forgets its items (the kernel keyring does at reboot), which would make \
             every record sealed with the key unreadable; use the Secret Service, or allow it with \
             KeyringKey::allow_non_durable",
        )));
    }
    let entry = Entry::new_in_store(keyring, service, user).map_err(|e| map_keyring(&origin, e))?;
    if let Some(found) = read(&entry, &origin)? {
        return Ok(found);
    }
    // First use: generate under a lock, and re-check under it (another process may have won).
    #[cfg(unix)]
    let _lock = {
        let id = KeyringId::of(keyring.as_ref());
        crate::lock::FileLock::acquire(
            &id.lock_stem(&format!("encryption-key\n{service}\n{user}")),
            crate::lock::LockKind::Records,
            crate::lock::LOCK_TIMEOUT,
        )?
    };
    #[cfg(not(unix))]
    let _ = KeyringId::of;
    if let Some(found) = read(&entry, &origin)? {
        return Ok(found);
    }
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    if let Err(e) = getrandom::fill(bytes.as_mut()) {
        return Ok(Err(provider_error(format!(
            "the OS random source failed: {e}"
        ))));
    }
    let text = Zeroizing::new(data_encoding::HEXLOWER.encode(bytes.as_ref()));
    entry
        .set_secret(text.as_bytes())
        .map_err(|e| map_keyring(&origin, e))?;
    // What the keyring holds now is the key (read back: it must have kept it).
    match read(&entry, &origin)? {
        Some(found) => Ok(found),
        None => Ok(Err(provider_error(
            "the keyring did not keep the generated key",
        ))),
    }
}

#[async_trait]
impl KeyProvider for KeyringKey {
    async fn load_key(&self) -> Result<EncryptionKey, KeyError> {
        let source = match &self.source {
            Source::Backend(b) => Source::Backend(*b),
            Source::Store(s) => Source::Store(Arc::clone(s)),
        };
        let (service, user, allow) = (
            self.service.clone(),
            self.user.clone(),
            self.allow_non_durable,
        );
        let result = blocking(move || {
            let keyring = match source {
                Source::Backend(b) => build_keyring(b)?,
                Source::Store(s) => s,
            };
            load(&keyring, &service, &user, allow)
        })
        .await;
        match result {
            Ok(loaded) => loaded,
            Err(e) => Err(provider_error(e)),
        }
    }
}
