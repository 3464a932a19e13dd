//! Encryption at rest in the CLI: the key options, where the keys come from, the guard that
//! keeps an envelope from ever being used as a secret, `status`'s view of the seals, and
//! `rekey`.
//!
//! The stack every command reads through (built by [`wrap`]):
//! `EncryptedStore` (only with a key) → [`SealCheck`] → the backend. The check turns the three
//! ways a record can fail to fit the keys given — sealed but no key given, sealed under a key id
//! not given, not sealed where a key is given — into [`SealError`]s that say what to do; the
//! `EncryptedStore` then only ever sees envelopes it has a key for.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use clap::Args;
use mcp_auth_core::encryption::{ENVELOPE_PREFIX, EncryptionKey, KeyError, envelope_key_id};
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    ClientRegistration, CredentialStore, EncryptedStore, EnvKey, Expect, ExposeSecret, FileKey,
    IssuerId, KeyProvider, KeySet, Namespace, PendingAuthorization, PendingAuthorizationStore,
    RefreshLease, RegistrationStore, ResourceUri, StoreCapabilities, StoreError, StoreInfo,
    TokenKey, TokenSet, TokenStore, Version, Versioned,
};

use crate::{EXIT_USAGE, Failure};

/// The environment variable holding the current key (never a flag: a command line is visible to
/// other local users).
pub(crate) const KEY_VAR: &str = "MCP_AUTH_KEY";
/// The environment variable holding one old key.
pub(crate) const OLD_KEY_VAR: &str = "MCP_AUTH_OLD_KEY";

/// What to tell someone whose store is encrypted when no key was given.
const PASS_THE_KEY: &str =
    "pass --encrypt with the key (MCP_AUTH_KEY, --key-file or the OS keyring)";

/// The encryption options every command shares.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct EncryptionArgs {
    /// Encrypt the secrets of every record (tokens, client secrets) with XChaCha20-Poly1305, and
    /// read only encrypted records. The key: MCP_AUTH_KEY (an environment variable holding 64
    /// hex digits or base64 of 32 bytes, e.g. from `openssl rand -hex 32`) if set, else
    /// --key-file, else the OS keyring (a key is generated there on first use). Setting
    /// MCP_AUTH_KEY or --key-file turns this on.
    #[arg(
        long,
        global = true,
        env = "MCP_AUTH_ENCRYPT",
        value_parser = clap::builder::BoolishValueParser::new(),
        num_args = 0,
        default_missing_value = "true"
    )]
    pub(crate) encrypt: bool,
    /// A file holding the current encryption key (64 hex digits, base64, or 32 raw bytes), that
    /// only its owner can read (chmod 600; anything looser is refused). Implies --encrypt.
    #[arg(long, global = true, env = "MCP_AUTH_KEY_FILE", value_name = "PATH")]
    pub(crate) key_file: Option<PathBuf>,
    /// A former key, so records sealed with it still open (repeatable; MCP_AUTH_OLD_KEY holds one
    /// more). Keep old keys until `mcp-auth rekey` reports every record re-sealed.
    #[arg(long, global = true, value_name = "PATH")]
    pub(crate) old_key_file: Vec<PathBuf>,
}

/// Whether an environment variable is set and not empty (as clap treats its `env`s).
fn env_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}

impl EncryptionArgs {
    /// Whether encryption is on: asked for, or a key given.
    pub(crate) fn enabled(&self) -> bool {
        self.encrypt || self.key_file.is_some() || env_set(KEY_VAR)
    }

    /// The keys, when encryption is on: the current one, then the old ones.
    pub(crate) async fn load(&self) -> Result<Option<KeySet>, Failure> {
        let has_old = !self.old_key_file.is_empty() || env_set(OLD_KEY_VAR);
        if !self.enabled() {
            if has_old {
                return Err(Failure {
                    code: EXIT_USAGE,
                    message: "an old key (--old-key-file, MCP_AUTH_OLD_KEY) was given but no \
                              current key: set MCP_AUTH_KEY or --key-file, or pass --encrypt to \
                              use the key in the OS keyring"
                        .to_owned(),
                });
            }
            return Ok(None);
        }
        let current = if env_set(KEY_VAR) {
            EnvKey::new(KEY_VAR).load_key().await.map_err(key_failure)?
        } else if let Some(path) = &self.key_file {
            FileKey::new(path).load_key().await.map_err(key_failure)?
        } else {
            keyring_key().await?
        };
        let mut keys = KeySet::new(current);
        for path in &self.old_key_file {
            let old = FileKey::new(path).load_key().await.map_err(key_failure)?;
            keys = keys.with_old(old).map_err(key_failure)?;
        }
        if env_set(OLD_KEY_VAR) {
            let old = EnvKey::new(OLD_KEY_VAR)
                .load_key()
                .await
                .map_err(key_failure)?;
            keys = keys.with_old(old).map_err(key_failure)?;
        }
        Ok(Some(keys))
    }
}

/// A key that could not be loaded: a usage error, unless the key's home itself failed.
fn key_failure(e: KeyError) -> Failure {
    let code = if matches!(e, KeyError::Provider { .. }) {
        1
    } else {
        EXIT_USAGE
    };
    Failure {
        code,
        message: format!("encryption key: {e}"),
    }
}

/// The key in the OS keyring (Secret Service), generated and stored there on first use — which
/// is said on stderr, since every record sealed with it is lost with it.
#[cfg(all(feature = "keyring", target_os = "linux"))]
async fn keyring_key() -> Result<EncryptionKey, Failure> {
    use mcp_auth_store_keyring::KeyringKey;
    use mcp_auth_store_keyring::keyring_core::{self, Entry};
    let unavailable = |e: String| Failure {
        code: 1,
        message: format!(
            "encryption key: cannot use the OS keyring ({e}); set MCP_AUTH_KEY or --key-file instead"
        ),
    };
    let looked_up = tokio::task::spawn_blocking(|| {
        let keyring: Arc<keyring_core::CredentialStore> =
            zbus_secret_service_keyring_store::Store::new().map_err(|e| e.to_string())?;
        let entry = Entry::new_in_store(
            &keyring,
            KeyringKey::DEFAULT_SERVICE,
            KeyringKey::DEFAULT_USER,
        )
        .map_err(|e| e.to_string())?;
        // Whether the item exists, without reading it.
        let existed = match entry.get_credential() {
            Ok(_) => true,
            Err(keyring_core::Error::NoEntry) => false,
            Err(e) => return Err(e.to_string()),
        };
        Ok((keyring, existed))
    })
    .await
    .map_err(|e| unavailable(e.to_string()))?;
    let (keyring, existed) = looked_up.map_err(unavailable)?;
    let key = KeyringKey::with_store(keyring)
        .load_key()
        .await
        .map_err(key_failure)?;
    if !existed {
        eprintln!(
            "mcp-auth: generated a new encryption key (key id {}) and stored it in the OS keyring \
             (item {}/{}). Records sealed with it cannot be read without it: keep a copy.",
            key.id(),
            KeyringKey::DEFAULT_SERVICE,
            KeyringKey::DEFAULT_USER
        );
    }
    Ok(key)
}

#[cfg(not(all(feature = "keyring", target_os = "linux")))]
async fn keyring_key() -> Result<EncryptionKey, Failure> {
    let why = if cfg!(feature = "keyring") {
        "the OS keyring is not available on this platform yet (Linux only)"
    } else {
        "this build has no OS keyring to keep the key in"
    };
    Err(Failure {
        code: EXIT_USAGE,
        message: format!("encryption key: {why}; set MCP_AUTH_KEY or --key-file"),
    })
}

// ---------------------------------------------------------------------------------------------
// The guard.

/// Why a record does not fit the keys given. Never holds a secret: key ids only.
#[derive(Debug)]
pub(crate) enum SealError {
    /// Sealed, and no key was given.
    Encrypted {
        /// The envelope's key id (`None`: an envelope format this version does not know).
        key_id: Option<String>,
    },
    /// Sealed under a key id that is neither the current key's nor an old key's.
    UnknownKey {
        /// The record.
        record: String,
        /// The envelope's key id.
        key_id: String,
        /// The current key's id.
        current: String,
    },
    /// Not sealed, and a key was given.
    NotEncrypted {
        /// The record.
        record: String,
    },
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Encrypted { key_id: Some(id) } => {
                write!(f, "the store is encrypted (key id {id}); {PASS_THE_KEY}")
            }
            Self::Encrypted { key_id: None } => write!(
                f,
                "the store is encrypted (in an envelope format this version of mcp-auth does not \
                 know: upgrade mcp-auth); {PASS_THE_KEY}"
            ),
            Self::UnknownKey {
                record,
                key_id,
                current,
            } => write!(
                f,
                "{record} is encrypted with key id {key_id}, which is not among the keys given \
                 (current key id {current}); provide that key with --old-key-file PATH or \
                 MCP_AUTH_OLD_KEY (or as the current key), then run `mcp-auth rekey` to move \
                 every record to the current key"
            ),
            Self::NotEncrypted { record } => write!(
                f,
                "{record} is not encrypted (it was written without --encrypt); run `mcp-auth \
                 rekey` with the same key to encrypt the store, or drop --encrypt"
            ),
        }
    }
}

impl std::error::Error for SealError {}

/// The [`SealError`] in `e` or its chain of sources.
pub(crate) fn seal_error_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a SealError> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<SealError>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// How a stored secret field is sealed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Seal {
    /// Not sealed.
    Plain,
    /// Sealed under this key id.
    Key(String),
    /// An envelope of a format this version does not know.
    UnknownFormat,
}

impl Seal {
    /// The seal of a record's primary secret field (where `EncryptedStore` puts the envelope).
    pub(crate) fn of(value: Option<&str>) -> Self {
        let Some(value) = value else {
            return Self::Plain;
        };
        if let Some(id) = envelope_key_id(value) {
            return Self::Key(id.to_owned());
        }
        // `mcpenc1.` with a bad key id, or `mcpenc<n>.` of another version.
        let other_version = value.strip_prefix("mcpenc").is_some_and(|rest| {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest.as_bytes().get(digits) == Some(&b'.')
        });
        if value.starts_with(ENVELOPE_PREFIX) || other_version {
            Self::UnknownFormat
        } else {
            Self::Plain
        }
    }

    pub(crate) fn of_tokens(t: &TokenSet) -> Self {
        Self::of(Some(t.access_token.expose_secret()))
    }

    pub(crate) fn of_registration(r: &ClientRegistration) -> Self {
        Self::of(r.client_secret.as_ref().map(ExposeSecret::expose_secret))
    }

    /// The key id, when sealed with one.
    pub(crate) fn key_id(&self) -> Option<&str> {
        match self {
            Self::Key(id) => Some(id),
            _ => None,
        }
    }
}

/// A store that refuses, on every read, a record that does not fit the keys given (see
/// [`SealError`]); writes, deletes, listings and leases pass through.
#[derive(Debug)]
pub(crate) struct SealCheck {
    inner: Arc<dyn CredentialStore>,
    keys: Option<KeySet>,
    accept_plaintext: bool,
}

impl SealCheck {
    fn check(&self, record: impl FnOnce() -> RecordKey, seal: Seal) -> Result<(), StoreError> {
        let refused = match (&self.keys, seal) {
            (None, Seal::Plain) => return Ok(()),
            (None, Seal::Key(id)) => SealError::Encrypted { key_id: Some(id) },
            (None, Seal::UnknownFormat) => SealError::Encrypted { key_id: None },
            // The wrapper reports an unknown format itself (as `Corrupt`, naming the record).
            (Some(_), Seal::UnknownFormat) => return Ok(()),
            (Some(_), Seal::Plain) if self.accept_plaintext => return Ok(()),
            (Some(_), Seal::Plain) => SealError::NotEncrypted {
                record: record().to_string(),
            },
            (Some(keys), Seal::Key(id)) if keys.get(&id).is_some() => return Ok(()),
            (Some(keys), Seal::Key(id)) => SealError::UnknownKey {
                record: record().to_string(),
                key_id: id,
                current: keys.current_id().to_owned(),
            },
        };
        Err(StoreError::backend(self.inner.backend_name(), refused))
    }

    fn check_tokens(&self, key: &TokenKey, t: &TokenSet) -> Result<(), StoreError> {
        self.check(|| RecordKey::Tokens(key.clone()), Seal::of_tokens(t))
    }

    fn check_registration(&self, r: &ClientRegistration) -> Result<(), StoreError> {
        self.check(
            || RecordKey::Registration(r.issuer.clone()),
            Seal::of_registration(r),
        )
    }
}

/// `raw` as the commands use it: through [`SealCheck`], and through `EncryptedStore` (bound to
/// `namespace`) when `keys` are given. `accept_plaintext` lets records that are not sealed be
/// read (a migration's source, `rekey`); writes are always sealed when `keys` are given.
pub(crate) fn wrap(
    raw: Arc<dyn CredentialStore>,
    namespace: &Namespace,
    keys: Option<&KeySet>,
    accept_plaintext: bool,
) -> Arc<dyn CredentialStore> {
    let checked: Arc<dyn CredentialStore> = Arc::new(SealCheck {
        inner: raw,
        keys: keys.cloned(),
        accept_plaintext,
    });
    match keys {
        None => checked,
        Some(keys) => Arc::new(
            EncryptedStore::new(checked, namespace.clone(), keys.clone())
                .accept_plaintext(accept_plaintext),
        ),
    }
}

/// Reads what `resource` will need (its binding's registration and tokens) so that a store
/// that does not fit the keys given fails now, with its own message, rather than at the first
/// request. Other errors are left for the command to meet and report.
pub(crate) async fn preflight(
    store: &dyn CredentialStore,
    resource: &ResourceUri,
) -> Result<(), Failure> {
    let Ok(Some(binding)) = store.get_binding(resource).await else {
        return Ok(());
    };
    let issuer = binding.value.issuer;
    let seal_failure = |e: StoreError| match seal_error_in(&e) {
        Some(_) => Err(Failure::from(e)),
        None => Ok(()),
    };
    if let Err(e) = store.get_registration(&issuer).await {
        seal_failure(e)?;
    }
    if let Err(e) = store
        .get_tokens(&TokenKey::new(issuer, resource.clone()))
        .await
    {
        seal_failure(e)?;
    }
    Ok(())
}

#[deny(clippy::missing_trait_methods)]
impl StoreInfo for SealCheck {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl RegistrationStore for SealCheck {
    async fn get_registration(
        &self,
        issuer: &IssuerId,
    ) -> Result<Option<Versioned<ClientRegistration>>, StoreError> {
        let found = self.inner.get_registration(issuer).await?;
        if let Some(r) = &found {
            self.check_registration(&r.value)?;
        }
        Ok(found)
    }

    async fn put_registration(
        &self,
        registration: &ClientRegistration,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.inner.put_registration(registration, expect).await
    }

    async fn delete_registration(
        &self,
        issuer: &IssuerId,
        expect: Expect,
    ) -> Result<bool, StoreError> {
        self.inner.delete_registration(issuer, expect).await
    }

    async fn list_registrations(&self) -> Result<Vec<IssuerId>, StoreError> {
        self.inner.list_registrations().await
    }

    async fn scan_registrations(&self) -> Result<Vec<Versioned<ClientRegistration>>, StoreError> {
        let found = self.inner.scan_registrations().await?;
        for r in &found {
            self.check_registration(&r.value)?;
        }
        Ok(found)
    }

    async fn put_registrations_any(
        &self,
        registrations: &[ClientRegistration],
    ) -> Result<Vec<Version>, StoreError> {
        self.inner.put_registrations_any(registrations).await
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl TokenStore for SealCheck {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        let found = self.inner.get_tokens(key).await?;
        if let Some(t) = &found {
            self.check_tokens(key, &t.value)?;
        }
        Ok(found)
    }

    async fn put_tokens(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.inner.put_tokens(key, tokens, expect).await
    }

    async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError> {
        self.inner.delete_tokens(key, expect).await
    }

    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
        self.inner.delete_issuer_tokens(issuer).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        self.inner.list_tokens().await
    }

    async fn scan_tokens(&self) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
        let found = self.inner.scan_tokens().await?;
        for (key, t) in &found {
            self.check_tokens(key, &t.value)?;
        }
        Ok(found)
    }

    async fn put_tokens_any(
        &self,
        tokens: &[(TokenKey, TokenSet)],
    ) -> Result<Vec<Version>, StoreError> {
        self.inner.put_tokens_any(tokens).await
    }

    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        self.inner.binding_and_token_versions(key).await
    }

    fn change_stamp(&self) -> Option<u64> {
        self.inner.change_stamp()
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.inner.try_acquire_refresh_lease(key, ttl).await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        self.inner.renew_refresh_lease(lease, ttl).await
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        self.inner.release_refresh_lease(lease).await
    }
}

// Bindings hold no secret: forwarded unchanged.
mcp_auth_core::forward_binding_store!([] SealCheck, inner);

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl PendingAuthorizationStore for SealCheck {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        self.inner.insert_pending(pending).await
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let found = self.inner.take_pending(state).await?;
        if let Some(p) = &found {
            self.check(
                || RecordKey::Pending(state.to_owned()),
                Seal::of(Some(p.pkce_verifier.expose_secret())),
            )?;
        }
        Ok(found)
    }
}

// ---------------------------------------------------------------------------------------------
// `rekey`.

/// `mcp-auth rekey`: re-seals every registration and token set of `raw` under the current key
/// (records under an old key given, and plaintext records), with a progress bar, and a summary.
/// Fails, naming each record left behind, when not every record could be re-sealed.
pub(crate) async fn rekey(
    raw: Arc<dyn CredentialStore>,
    namespace: &Namespace,
    keys: &KeySet,
) -> Result<(), Failure> {
    let total = (raw.list_registrations().await?.len() + raw.list_tokens().await?.len()) as u64;
    let store = EncryptedStore::new(raw, namespace.clone(), keys.clone()).accept_plaintext(true);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records re-sealed")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if total < 50 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let report = store
        .rekey_with(&|so_far| {
            let (r, t) = (so_far.registrations, so_far.tokens);
            let done = r.resealed
                + r.already_current
                + r.vanished
                + t.resealed
                + t.already_current
                + t.vanished
                + so_far.failed.len();
            bar.set_position(done as u64);
        })
        .await?;
    bar.finish_and_clear();
    let (r, t) = (report.registrations, report.tokens);
    let current = keys.current_id();
    eprintln!(
        "Re-sealed {} records under key id {current} ({} registrations, {} token sets); {} \
         already current; {} failed.",
        r.resealed + t.resealed,
        r.resealed,
        t.resealed,
        r.already_current + t.already_current,
        report.failed.len()
    );
    if r.vanished + t.vanished > 0 {
        eprintln!(
            "{} records were deleted by another process during the run.",
            r.vanished + t.vanished
        );
    }
    if report.is_complete() {
        eprintln!(
            "Every record is sealed under key id {current}: the old keys can be retired (logins \
             started in the last minutes with an old key may need to be restarted)."
        );
        return Ok(());
    }
    for e in &report.failed {
        match e {
            StoreError::Corrupt { key, reason } => eprintln!("  {key}: {reason}"),
            other => eprintln!("  {other}"),
        }
    }
    Err(Failure::from(format!(
        "rekey incomplete: {} records could not be re-sealed under key id {current}; keep the old \
         keys (--old-key-file, MCP_AUTH_OLD_KEY) until a rerun of `mcp-auth rekey` completes",
        report.failed.len()
    )))
}

// ---------------------------------------------------------------------------------------------
// `status`.

/// How the records of a store are sealed, for `status`.
#[derive(Debug, Default)]
pub(crate) struct SealCounts {
    /// Records per key id.
    pub(crate) by_key: std::collections::BTreeMap<String, usize>,
    /// Records not encrypted.
    pub(crate) plain: usize,
    /// Records in an envelope format this version does not know.
    pub(crate) unknown_format: usize,
}

impl SealCounts {
    pub(crate) fn add(&mut self, seal: &Seal) {
        match seal {
            Seal::Plain => self.plain += 1,
            Seal::Key(id) => *self.by_key.entry(id.clone()).or_default() += 1,
            Seal::UnknownFormat => self.unknown_format += 1,
        }
    }

    fn sealed(&self) -> usize {
        self.by_key.values().sum::<usize>() + self.unknown_format
    }

    /// The line `status` prints above its table; `None` when encryption is off and nothing is
    /// sealed (the store as it always was).
    pub(crate) fn summary(&self, keys: Option<&KeySet>) -> Option<String> {
        if keys.is_none() && self.sealed() == 0 {
            return None;
        }
        let mut parts: Vec<String> = self
            .by_key
            .iter()
            .map(|(id, n)| {
                let role = match keys {
                    Some(k) if k.current_id() == id => " (current)",
                    Some(k) if k.get(id).is_some() => " (old key given)",
                    Some(_) => " (KEY NOT GIVEN)",
                    None => "",
                };
                format!("{n} under key id {id}{role}")
            })
            .collect();
        if self.unknown_format > 0 {
            parts.push(format!(
                "{} in an envelope format this version does not know",
                self.unknown_format
            ));
        }
        if self.plain > 0 {
            parts.push(format!("{} not encrypted", self.plain));
        }
        let records = if parts.is_empty() {
            "no records".to_owned()
        } else {
            parts.join(", ")
        };
        Some(match keys {
            Some(k) => format!(
                "Encryption: on, current key id {}; records: {records}.",
                k.current_id()
            ),
            None => format!("Encrypted: yes, records: {records}; {PASS_THE_KEY} to read them."),
        })
    }
}
