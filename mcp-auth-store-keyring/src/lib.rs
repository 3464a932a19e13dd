#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use keyring_core::Entry;
use keyring_core::api::CredentialPersistence;
use mcp_auth_core::raw::{self, RawRecords};
use mcp_auth_core::record::{self, RecordKey, RecordKind};
use mcp_auth_core::{
    Expect, IssuerId, Namespace, PendingAuthorization, PendingAuthorizationStore, RefreshLease,
    StoreCapabilities, StoreError, StoreInfo, TokenKey, TokenSet, TokenStore, Version, Versioned,
};
use serde::{Deserialize, Serialize};

pub use keyring_core;

const BACKEND: &str = "keyring";

/// The `user` of the per-namespace index item. Record users always contain a `/`, so this
/// name never collides with a record.
const INDEX_USER: &str = "index";

/// Largest payload of a kernel `user` key, in bytes.
pub const KEYUTILS_MAX_PAYLOAD: usize = 32_767;

/// Which OS keyring holds the records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyringBackend {
    /// The freedesktop Secret Service over D-Bus (GNOME Keyring, KWallet, KeePassXC): durable,
    /// encrypted at rest by the keyring daemon. Crate feature `secret-service`, Linux only.
    SecretService,
    /// The Linux kernel keyring (keyutils), in the session keyring: in kernel memory, gone
    /// after a reboot, payloads of at most [`KEYUTILS_MAX_PAYLOAD`] bytes. Crate feature
    /// `keyutils`, Linux only.
    Keyutils,
}

impl KeyringBackend {
    fn label(self) -> &'static str {
        match self {
            Self::SecretService => "secret-service",
            Self::Keyutils => "keyutils",
        }
    }
}

/// Errors specific to this backend, kept as the `source` of a [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringStoreError {
    /// The blocking task that ran the keyring call failed (it panicked or was cancelled).
    #[error("the blocking keyring task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Options for [`KeyringStore::open`].
#[derive(Clone, Debug, Default)]
pub struct KeyringOptions {
    /// The tenant: records of different namespaces never see each other.
    pub namespace: Namespace,
}

/// A credential store in the OS keyring, for desktop and CLI MCP clients of one user.
///
/// Each record is one keyring item with service `mcp-auth:<namespace key>` and user
/// `<record key>` (both injective encodings), holding a small JSON envelope
/// `{"ver": "<random hex>", "data": "<base64 record>"}`. A per-namespace `index` item lists the
/// record keys, for `list_*` and per-issuer deletion.
///
/// Compare-and-swap and refresh leases are exact **inside one process** (every store over the
/// same keyring and namespace in the process shares one lock and one lease table), not across
/// processes: the keyring has no conditional write. See the crate documentation.
///
/// Every keyring call runs on tokio's blocking pool when called inside a tokio runtime (the
/// Secret Service client blocks, and panics if it runs on a runtime worker), and inline
/// otherwise.
#[derive(Clone)]
pub struct KeyringStore {
    inner: Arc<Inner>,
}

struct Inner {
    keyring: KeyringHandle,
    label: String,
    namespace: Namespace,
    /// `mcp-auth:<namespace key>`
    service: String,
    max_payload: Option<usize>,
    durable: bool,
    shared: Arc<Shared>,
}

/// What every store over one keyring and namespace in this process shares.
#[derive(Default)]
struct Shared {
    /// Serialises every mutation (read, check, write) of the namespace.
    write: Mutex<()>,
    /// Refresh leases: token key storage key -> (holder token, expiry).
    leases: Mutex<HashMap<String, (String, SystemTime)>>,
}

static SHARED: LazyLock<Mutex<HashMap<String, Weak<Shared>>>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the keyring half-written in a way the lock
    // protects against better than continuing does: every item write is atomic on its own.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shared_for(key: String) -> Arc<Shared> {
    let mut map = lock(&SHARED);
    if let Some(shared) = map.get(&key).and_then(Weak::upgrade) {
        return shared;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let shared = Arc::new(Shared::default());
    map.insert(key, Arc::downgrade(&shared));
    shared
}

/// Owns the keyring-core store and never drops it on a thread inside a tokio runtime: the
/// Secret Service client's drop blocks on its own runtime and would panic there.
struct KeyringHandle(Option<Arc<keyring_core::CredentialStore>>);

impl KeyringHandle {
    fn get(&self) -> Option<&Arc<keyring_core::CredentialStore>> {
        self.0.as_ref()
    }
}

impl Drop for KeyringHandle {
    fn drop(&mut self) {
        if let Some(store) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            // A plain thread is outside every runtime. If it cannot be started, the store is
            // dropped here, which is what would have happened anyway.
            let _ = std::thread::Builder::new()
                .name("mcp-auth-keyring-drop".to_owned())
                .spawn(move || drop(store));
        }
    }
}

impl fmt::Debug for KeyringStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringStore")
            .field("keyring", &self.inner.label)
            .field("namespace", &self.inner.namespace)
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

/// The stored value: the record bytes with their version.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    ver: String,
    data: String,
}

fn new_version() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn corrupt(what: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: what.to_owned(),
        reason: reason.into(),
    }
}

/// Maps a keyring error (other than `NoEntry`, which callers handle) without keeping anything
/// that may hold secret bytes or keyring objects: the secret-carrying variants become
/// `Corrupt`, and `Ambiguous` (which holds entries) is reduced to a count.
fn map_keyring(what: &str, e: keyring_core::Error) -> StoreError {
    use keyring_core::Error as E;
    match e {
        E::NoStorageAccess(source) => StoreError::PermissionDenied {
            backend: BACKEND,
            source,
        },
        E::PlatformFailure(source) => StoreError::Unavailable {
            backend: BACKEND,
            source,
        },
        E::BadEncoding(_) | E::BadDataFormat(_, _) => {
            corrupt(what, "the keyring returned malformed secret data")
        }
        E::Ambiguous(entries) => corrupt(
            what,
            format!("{} keyring items match this record", entries.len()),
        ),
        other => StoreError::backend(BACKEND, other),
    }
}

/// Runs `f` on tokio's blocking pool inside a runtime, inline outside one.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::backend(BACKEND, KeyringStoreError::Task(e))),
        }
    } else {
        f()
    }
}

fn build_keyring(
    backend: KeyringBackend,
) -> Result<Arc<keyring_core::CredentialStore>, StoreError> {
    match backend {
        KeyringBackend::SecretService => {
            #[cfg(all(target_os = "linux", feature = "secret-service"))]
            {
                let store = zbus_secret_service_keyring_store::Store::new()
                    .map_err(|e| map_keyring("keyring", e))?;
                Ok(store)
            }
            #[cfg(not(all(target_os = "linux", feature = "secret-service")))]
            Err(StoreError::Unsupported {
                backend: BACKEND,
                operation: "the Secret Service (crate feature `secret-service`, Linux only)",
            })
        }
        KeyringBackend::Keyutils => {
            #[cfg(all(target_os = "linux", feature = "keyutils"))]
            {
                // `service_no_divider`: key descriptions `keyring:<user>@<service>` stay
                // unambiguous (neither part can contain '@' here anyway).
                let config = HashMap::from([("service_no_divider", "true")]);
                let store = linux_keyutils_keyring_store::Store::new_with_configuration(&config)
                    .map_err(|e| map_keyring("keyring", e))?;
                Ok(store)
            }
            #[cfg(not(all(target_os = "linux", feature = "keyutils")))]
            Err(StoreError::Unsupported {
                backend: BACKEND,
                operation: "the kernel keyring (crate feature `keyutils`, Linux only)",
            })
        }
    }
}

impl KeyringStore {
    /// Opens the namespace of `options` in `backend`, and checks that the keyring answers (by
    /// reading the namespace's index).
    ///
    /// Errors: the backend is not compiled in ([`StoreError::Unsupported`]), the keyring service
    /// cannot be reached ([`StoreError::Unavailable`]), it is locked or refuses access
    /// ([`StoreError::PermissionDenied`]).
    pub async fn open(
        backend: KeyringBackend,
        options: KeyringOptions,
    ) -> Result<Self, StoreError> {
        let max_payload = match backend {
            KeyringBackend::Keyutils => Some(KEYUTILS_MAX_PAYLOAD),
            KeyringBackend::SecretService => None,
        };
        blocking(move || {
            let keyring = build_keyring(backend)?;
            Self::assemble(keyring, backend.label().to_owned(), max_payload, options)
        })
        .await
    }

    /// Opens the namespace of `options` in a keyring-core store you built (for example the
    /// Apple or Windows store crates). Prefer [`KeyringStore::open`] on Linux.
    pub async fn open_with_store(
        keyring: Arc<keyring_core::CredentialStore>,
        options: KeyringOptions,
    ) -> Result<Self, StoreError> {
        blocking(move || {
            let label = format!("{} ({})", keyring.vendor(), keyring.id());
            Self::assemble(keyring, label, None, options)
        })
        .await
    }

    /// Runs on a blocking thread (or outside a runtime).
    fn assemble(
        keyring: Arc<keyring_core::CredentialStore>,
        label: String,
        max_payload: Option<usize>,
        options: KeyringOptions,
    ) -> Result<Self, StoreError> {
        let durable = matches!(keyring.persistence(), CredentialPersistence::UntilDelete);
        let service = format!("mcp-auth:{}", options.namespace.storage_key());
        let inner = Inner {
            shared: shared_for(format!("{label}\n{service}")),
            keyring: KeyringHandle(Some(keyring)),
            label,
            namespace: options.namespace,
            service,
            max_payload,
            durable,
        };
        inner.read_index()?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The same keyring, seen through another (isolated) namespace.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        let service = format!("mcp-auth:{}", namespace.storage_key());
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                keyring: KeyringHandle(inner.keyring.get().cloned()),
                label: inner.label.clone(),
                shared: shared_for(format!("{}\n{service}", inner.label)),
                namespace,
                service,
                max_payload: inner.max_payload,
                durable: inner.durable,
            }),
        }
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || f(&inner)).await
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<String, (String, SystemTime)>> {
        lock(&self.inner.shared.leases)
    }
}

/// Synchronous keyring access; every method runs on a blocking thread (or outside a runtime).
impl Inner {
    fn entry(&self, what: &str, user: &str) -> Result<Entry, StoreError> {
        let keyring = self.keyring.get().ok_or_else(|| {
            StoreError::backend(BACKEND, "the keyring store was already released")
        })?;
        Entry::new_in_store(keyring, &self.service, user).map_err(|e| map_keyring(what, e))
    }

    fn read_item(&self, what: &str, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.entry(what, user)?.get_secret() {
            Ok(bytes) => Ok(Some(bytes)),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(map_keyring(what, e)),
        }
    }

    fn write_item(&self, what: &str, user: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.check_size(what, bytes.len())?;
        self.entry(what, user)?
            .set_secret(bytes)
            .map_err(|e| map_keyring(what, e))
    }

    fn check_size(&self, what: &str, size: usize) -> Result<(), StoreError> {
        match self.max_payload {
            Some(limit) if size > limit => Err(StoreError::TooLarge {
                key: what.to_owned(),
                size,
                limit,
            }),
            _ => Ok(()),
        }
    }

    fn remove_item(&self, what: &str, user: &str) -> Result<bool, StoreError> {
        match self.entry(what, user)?.delete_credential() {
            Ok(()) => Ok(true),
            Err(keyring_core::Error::NoEntry) => Ok(false),
            Err(e) => Err(map_keyring(what, e)),
        }
    }

    fn read_record(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let what = key.to_string();
        let Some(raw) = self.read_item(&what, &key.storage_key())? else {
            return Ok(None);
        };
        let envelope: Envelope = serde_json::from_slice(&raw)
            .map_err(|_| corrupt(&what, "the keyring item is not an mcp-auth envelope"))?;
        if envelope.ver.is_empty() {
            return Err(corrupt(&what, "the keyring item has an empty version"));
        }
        let data = BASE64
            .decode(envelope.data.as_bytes())
            .map_err(|_| corrupt(&what, "the keyring item's data is not base64"))?;
        Ok(Some((data, Version::new(envelope.ver))))
    }

    /// Builds the item value for `bytes` and checks it fits, before anything is written.
    fn envelope(&self, key: &RecordKey, bytes: &[u8]) -> Result<(Version, Vec<u8>), StoreError> {
        let ver = new_version();
        let envelope = Envelope {
            ver: ver.clone(),
            data: BASE64.encode(bytes),
        };
        let value =
            serde_json::to_vec(&envelope).map_err(|e| StoreError::backend(BACKEND, Box::new(e)))?;
        self.check_size(&key.to_string(), value.len())?;
        Ok((Version::new(ver), value))
    }

    /// Adds `key` to the index, then writes the item built by [`Inner::envelope`].
    fn store_record(
        &self,
        key: &RecordKey,
        (version, value): (Version, Vec<u8>),
    ) -> Result<Version, StoreError> {
        self.index_add(key)?;
        self.write_item(&key.to_string(), &key.storage_key(), &value)?;
        Ok(version)
    }

    fn read_index(&self) -> Result<BTreeSet<String>, StoreError> {
        match self.read_item(INDEX_USER, INDEX_USER)? {
            None => Ok(BTreeSet::new()),
            Some(raw) => serde_json::from_slice(&raw).map_err(|_| {
                corrupt(
                    INDEX_USER,
                    "the namespace index is not a JSON array of record keys",
                )
            }),
        }
    }

    fn write_index(&self, index: &BTreeSet<String>) -> Result<(), StoreError> {
        if index.is_empty() {
            self.remove_item(INDEX_USER, INDEX_USER).map(|_| ())
        } else {
            let value =
                serde_json::to_vec(index).map_err(|e| StoreError::backend(BACKEND, Box::new(e)))?;
            self.write_item(INDEX_USER, INDEX_USER, &value)
        }
    }

    /// Adds `key` to the index if missing. Called before the record is written, so the index
    /// always covers every record (a failed write or a crash can leave an extra entry, which
    /// listing skips).
    fn index_add(&self, key: &RecordKey) -> Result<(), StoreError> {
        let mut index = self.read_index()?;
        if index.insert(key.storage_key()) {
            self.write_index(&index)?;
        }
        Ok(())
    }

    fn index_remove(&self, key: &RecordKey) -> Result<(), StoreError> {
        let mut index = self.read_index()?;
        if index.remove(&key.storage_key()) {
            self.write_index(&index)?;
        }
        Ok(())
    }

    /// The current version for a conditional write; `None` when absent. An unreadable record
    /// fails any expectation but `Any` (checked by the caller before reading).
    fn check(&self, key: &RecordKey, expect: &Expect) -> Result<bool, StoreError> {
        let exists_only = matches!(expect, Expect::Absent);
        let current = if exists_only {
            self.read_item(&key.to_string(), &key.storage_key())?
                .map(|_| Version::new(""))
        } else {
            match self.read_record(key) {
                Ok(found) => found.map(|(_, v)| v),
                Err(StoreError::Corrupt { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        };
        Ok(expect.holds(current.as_ref()))
    }

    fn put(&self, key: &RecordKey, bytes: &[u8], expect: &Expect) -> Result<Version, StoreError> {
        let item = self.envelope(key, bytes)?;
        let _guard = lock(&self.shared.write);
        if !matches!(expect, Expect::Any) && !self.check(key, expect)? {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        self.store_record(key, item)
    }

    fn delete(&self, key: &RecordKey, expect: &Expect) -> Result<bool, StoreError> {
        let _guard = lock(&self.shared.write);
        if !matches!(expect, Expect::Any) && !self.check(key, expect)? {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        let removed = self.remove_item(&key.to_string(), &key.storage_key())?;
        self.index_remove(key)?;
        Ok(removed)
    }

    fn list(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        let mut keys = Vec::new();
        for member in self.read_index()? {
            let key = RecordKey::from_storage_key(&member).ok_or_else(|| {
                corrupt(INDEX_USER, "the namespace index holds an unrecognised key")
            })?;
            // The index may name a record being written right now, or one a crash left out.
            if key.kind() == kind
                && self
                    .read_item(&key.to_string(), &key.storage_key())?
                    .is_some()
            {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let _guard = lock(&self.shared.write);
        let mut index = self.read_index()?;
        let matching: Vec<String> = index
            .iter()
            .filter(|m| m.starts_with(prefix))
            .cloned()
            .collect();
        let mut deleted = 0;
        for member in matching {
            if self.remove_item("tokens", &member)? {
                deleted += 1;
            }
            index.remove(&member);
        }
        self.write_index(&index)?;
        Ok(deleted)
    }

    fn insert_pending(&self, pending_bytes: &[u8], state: &str) -> Result<(), StoreError> {
        let key = RecordKey::Pending(state.to_owned());
        let item = self.envelope(&key, pending_bytes)?;
        let _guard = lock(&self.shared.write);
        match self.read_record(&key) {
            Ok(None) => {}
            // An expired flow no longer holds its state.
            Ok(Some((bytes, _)))
                if record::decode_pending(state, &bytes).is_ok_and(|p| p.expires_at.is_past()) => {}
            Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
        self.store_record(&key, item).map(|_| ())
    }

    fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let key = RecordKey::Pending(state.to_owned());
        let _guard = lock(&self.shared.write);
        let Some((bytes, _)) = self.read_record(&key)? else {
            return Ok(None);
        };
        // Decode before deleting: a corrupt record is reported and left in place.
        let pending = record::decode_pending(state, &bytes)?;
        self.remove_item(&key.to_string(), &key.storage_key())?;
        self.index_remove(&key)?;
        Ok((!pending.expires_at.is_past()).then_some(pending))
    }
}

/// Writes raw bytes as a record, bypassing encoding. For conformance tests that plant corrupt
/// data; not part of the supported API.
#[doc(hidden)]
pub async fn write_raw_record(
    store: &KeyringStore,
    key: &RecordKey,
    bytes: &[u8],
) -> Result<(), StoreError> {
    store
        .put_record(key, bytes.to_vec(), Expect::Any)
        .await
        .map(|_| ())
}

#[async_trait]
impl RawRecords for KeyringStore {
    async fn get_record(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let key = key.clone();
        self.run(move |inner| inner.read_record(&key)).await
    }

    async fn put_record(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        let key = key.clone();
        self.run(move |inner| inner.put(&key, &bytes, &expect))
            .await
    }

    async fn delete_record(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError> {
        let key = key.clone();
        self.run(move |inner| inner.delete(&key, &expect)).await
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        self.run(move |inner| inner.list(kind)).await
    }
}

mcp_auth_core::impl_record_stores!(KeyringStore);

impl StoreInfo for KeyringStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> StoreCapabilities {
        // The keyring has no conditional write: CAS and leases hold inside this process only.
        StoreCapabilities::NONE
            .with_durable(self.inner.durable)
            .with_list(true)
    }
}

#[async_trait]
impl TokenStore for KeyringStore {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        raw::get_tokens(self, key).await
    }

    async fn put_tokens(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        raw::put_tokens(self, key, tokens, expect).await
    }

    async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError> {
        raw::delete_tokens(self, key, expect).await
    }

    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
        // Token storage keys are `tokens/<issuer key>.<resource key>`; the '.' ends the issuer
        // part, so one issuer's prefix never matches another issuer's keys.
        let prefix = format!("{}/{}.", RecordKind::Tokens.as_str(), issuer.storage_key());
        self.run(move |inner| inner.delete_prefix(&prefix)).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        raw::list_tokens(self).await
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let mut leases = self.leases();
        let slot = key.storage_key();
        if let Some((_, expires_at)) = leases.get(&slot)
            && *expires_at > SystemTime::now()
        {
            return Ok(None);
        }
        let lease = RefreshLease::new(key.clone(), ttl);
        leases.insert(slot, (lease.token().to_owned(), lease.expires_at()));
        Ok(Some(lease))
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let mut leases = self.leases();
        let slot = lease.key().storage_key();
        if let Some((token, expires_at)) = leases.get(&slot)
            && token != lease.token()
            && *expires_at > SystemTime::now()
        {
            return Ok(None);
        }
        let renewed = lease.renewed(ttl);
        leases.insert(slot, (renewed.token().to_owned(), renewed.expires_at()));
        Ok(Some(renewed))
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        let mut leases = self.leases();
        let slot = lease.key().storage_key();
        match leases.get(&slot) {
            Some((token, _)) if token == lease.token() => {
                leases.remove(&slot);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl PendingAuthorizationStore for KeyringStore {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        let bytes = record::encode_pending(pending)?;
        let state = pending.state.clone();
        self.run(move |inner| inner.insert_pending(&bytes, &state))
            .await
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let state = state.to_owned();
        self.run(move |inner| inner.take_pending(&state)).await
    }
}
