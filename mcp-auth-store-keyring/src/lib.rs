#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use data_encoding::BASE64;
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

#[cfg(feature = "encryption")]
mod encryption_key;
mod index;
mod lease;
#[cfg(unix)]
mod lock;
mod search;

#[cfg(feature = "encryption")]
pub use encryption_key::KeyringKey;

use index::{INDEX_USER, Plan, Step};
use lease::LeaseTable;
use search::Search;

const BACKEND: &str = "keyring";

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
    /// Another process held the namespace's lock file for too long (see the crate
    /// documentation for where lock files live). If no mcp-auth process is running, a process
    /// stopped while holding it (for example with SIGSTOP).
    #[error(
        "waited {waited:?} for the lock file {} held by another process; giving up",
        path.display()
    )]
    LockTimeout {
        /// The lock file.
        path: PathBuf,
        /// How long the call waited.
        waited: Duration,
    },
    /// A lock file (or the lease table beside it) could not be used.
    #[error("cannot {action} {}", path.display())]
    LockIo {
        /// The file or directory.
        path: PathBuf,
        /// What was attempted.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The lock directory is not private to this user, so it is not used.
    #[error("refusing the lock directory {}: it {reason}", path.display())]
    UnsafeLockDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<KeyringStoreError> for StoreError {
    fn from(e: KeyringStoreError) -> Self {
        match e {
            KeyringStoreError::UnsafeLockDir { .. } => StoreError::PermissionDenied {
                backend: BACKEND,
                source: Box::new(e),
            },
            KeyringStoreError::LockTimeout { .. } | KeyringStoreError::LockIo { .. } => {
                StoreError::unavailable(BACKEND, e)
            }
            KeyringStoreError::Task(_) => StoreError::backend(BACKEND, e),
        }
    }
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
/// `{"ver": "<random hex>", "data": "<base64 record>"}`. A per-namespace index (items `index`,
/// `index.1`, ..., each under the keyring's item limit) lists the record keys, for `list_*` and
/// per-issuer deletion.
///
/// The keyring has no conditional write, so every mutation of a namespace (a record and the
/// index, compare-and-swap, pending authorizations) runs under the namespace's lock: an
/// in-process mutex and an advisory `flock` on a lock file whose path derives from the keyring
/// and the namespace only (see the crate documentation); refresh leases live in a file beside
/// it, under a lock of their own. Compare-and-swap and refresh
/// leases are therefore exact across all processes of the user on Unix; elsewhere only inside
/// one process, and [`StoreInfo::capabilities`] says which.
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
    /// Which keyring this is, for the lock file name; see [`KeyringId`].
    id: KeyringId,
    namespace: Namespace,
    /// `mcp-auth:<namespace key>`
    service: String,
    /// The file name stem of the namespace's lock and lease files.
    lock_stem: String,
    max_payload: Option<usize>,
    durable: bool,
    shared: Arc<Shared>,
}

/// What every store over one keyring and namespace in this process shares.
#[derive(Default)]
struct Shared {
    /// Serialises every mutation (read, check, write) of the namespace inside this process; the
    /// lock file does the same between processes.
    write: Mutex<()>,
    /// Index entries a listing found without their item, dropped from the index by the next
    /// write (under the lock, once no writer can be between adding the entry and the item).
    stale: Mutex<BTreeSet<String>>,
    /// Serialises lease changes inside this process; the lease lock file does the same between
    /// processes.
    #[cfg(unix)]
    lease_write: Mutex<()>,
    /// Refresh leases where there is no lock file.
    #[cfg(not(unix))]
    leases: Mutex<LeaseTable>,
}

/// Which keyring a store is, independent of the process and its environment: the same keyring
/// and namespace give the same lock file in every process.
#[derive(Clone)]
struct KeyringId {
    /// `secret-service`, `keyutils` or `keyring` (any other keyring-core store).
    kind: &'static str,
    /// The keyring's identity within its kind: for the kernel keyring, its key-description
    /// format; for another store, its vendor string.
    identity: String,
    search: Search,
}

impl KeyringId {
    /// Recognises the two Linux stores (however they were opened) by their type.
    fn of(keyring: &keyring_core::CredentialStore) -> Self {
        #[cfg(all(target_os = "linux", feature = "secret-service"))]
        if keyring
            .as_any()
            .downcast_ref::<zbus_secret_service_keyring_store::Store>()
            .is_some()
        {
            // Items are created in the default collection: one Secret Service, one keyring.
            return Self {
                kind: "secret-service",
                identity: "secret-service".to_owned(),
                search: Search::Attributes,
            };
        }
        #[cfg(all(target_os = "linux", feature = "keyutils"))]
        if let Some(store) = keyring
            .as_any()
            .downcast_ref::<linux_keyutils_keyring_store::Store>()
        {
            // Descriptions `<prefix><user><divider><service><suffix>` name the keys, so the
            // delimiters are part of which items a store sees.
            let [prefix, divider, suffix] = store.delimiters.clone();
            return Self {
                kind: "keyutils",
                identity: format!("keyutils\n{prefix}\n{divider}\n{suffix}"),
                search: Search::KeyDescriptions {
                    prefix,
                    divider,
                    suffix,
                },
            };
        }
        Self {
            kind: "keyring",
            identity: keyring.vendor(),
            search: Search::Unsupported,
        }
    }

    fn lock_stem(&self, service: &str) -> String {
        #[cfg(unix)]
        {
            lock::stem(self.kind, &self.identity, service)
        }
        #[cfg(not(unix))]
        {
            format!("{}\n{}\n{service}", self.kind, self.identity)
        }
    }
}

static SHARED: LazyLock<Mutex<HashMap<String, Weak<Shared>>>> = LazyLock::new(Default::default);

fn lock_mutex<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the keyring half-written in a way the lock
    // protects against better than continuing does: every item write is atomic on its own.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shared_for(key: String) -> Arc<Shared> {
    let mut map = lock_mutex(&SHARED);
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
    data_encoding::HEXLOWER.encode(&bytes)
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

/// Whether a kernel keyring failure is `EDQUOT`: the user's key quota is used up. The
/// keyutils store keeps `linux_keyutils::KeyError` as the source, whose text is its name.
fn is_quota_exceeded(source: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    source.to_string() == "QuotaExceeded"
}

/// The refusal of a kernel keyring write over the user's key quota (nothing was written: the
/// kernel checks the quota before it changes a key), saying which setting raises it.
fn quota_exceeded(what: &str, size: usize) -> StoreError {
    #[cfg(unix)]
    let uid = std::fs::metadata("/proc/self")
        .map_or(u32::MAX, |m| std::os::unix::fs::MetadataExt::uid(&m));
    #[cfg(not(unix))]
    let uid = u32::MAX;
    let (bytes, keys) = if uid == 0 {
        ("root_maxbytes", "root_maxkeys")
    } else {
        ("maxbytes", "maxkeys")
    };
    // `<uid>: <usage> <nkeys>/<nikeys> <qnkeys>/<maxkeys> <qnbytes>/<maxbytes>`
    let usage = std::fs::read_to_string("/proc/key-users")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.trim_start().starts_with(&format!("{uid}:")))
                .map(str::to_owned)
        });
    let fields: Vec<&str> = usage
        .as_deref()
        .map_or(Vec::new(), |l| l.split_whitespace().collect());
    let pair = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.split_once('/'))
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
    };
    let (used_keys, max_keys) = pair(3).unwrap_or_default();
    let (used_bytes, max_bytes) = pair(4).unwrap_or_default();
    StoreError::TooLarge {
        key: format!(
            "{what} (the kernel keyring quota of uid {uid} is used up: {used_keys} of \
             {max_keys} keys, {used_bytes} of {max_bytes} bytes; raise \
             /proc/sys/kernel/keys/{bytes} or /proc/sys/kernel/keys/{keys}, or use the Secret \
             Service)"
        ),
        size,
        limit: max_bytes.saturating_sub(used_bytes),
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
    /// reading the namespace's index item) and that the namespace's lock file can be used.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unsupported`] when the backend is not compiled in; [`StoreError::Unavailable`]
    /// when the keyring service cannot be reached or the lock directory cannot be created;
    /// [`StoreError::PermissionDenied`] when the keyring is locked or refuses access, or the lock
    /// directory is not private to this user.
    pub async fn open(
        backend: KeyringBackend,
        options: KeyringOptions,
    ) -> Result<Self, StoreError> {
        blocking(move || {
            let keyring = build_keyring(backend)?;
            Self::assemble(keyring, backend.label().to_owned(), options)
        })
        .await
    }

    /// Opens the namespace of `options` in a keyring-core store you built (for example the
    /// Apple or Windows store crates). Prefer [`KeyringStore::open`] on Linux.
    ///
    /// The Secret Service and kernel keyring stores of the two Linux store crates are
    /// recognised and share their lock files with [`KeyringStore::open`]; any other store is
    /// identified by its vendor string, and its index cannot be rebuilt by a search (see the
    /// crate documentation).
    ///
    /// # Errors
    ///
    /// As [`KeyringStore::open`], except that the backend is always available: the keyring
    /// service cannot be reached or the lock directory cannot be created
    /// ([`StoreError::Unavailable`]), the keyring is locked or refuses access, or the lock
    /// directory is not private to this user ([`StoreError::PermissionDenied`]).
    pub async fn open_with_store(
        keyring: Arc<keyring_core::CredentialStore>,
        options: KeyringOptions,
    ) -> Result<Self, StoreError> {
        blocking(move || {
            let label = format!("{} ({})", keyring.vendor(), keyring.id());
            Self::assemble(keyring, label, options)
        })
        .await
    }

    /// Runs on a blocking thread (or outside a runtime).
    fn assemble(
        keyring: Arc<keyring_core::CredentialStore>,
        label: String,
        options: KeyringOptions,
    ) -> Result<Self, StoreError> {
        let durable = matches!(keyring.persistence(), CredentialPersistence::UntilDelete);
        let id = KeyringId::of(keyring.as_ref());
        let max_payload = (id.kind == "keyutils").then_some(KEYUTILS_MAX_PAYLOAD);
        let inner = Inner::new(
            KeyringHandle(Some(keyring)),
            label,
            id,
            options.namespace,
            max_payload,
            durable,
        );
        // The keyring answers. The index is only read here: a damaged one is rebuilt when used.
        inner.read_item(INDEX_USER, INDEX_USER)?;
        #[cfg(unix)]
        lock::lock_dir()?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The same keyring, seen through another (isolated) namespace.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner::new(
                KeyringHandle(inner.keyring.get().cloned()),
                inner.label.clone(),
                inner.id.clone(),
                namespace,
                inner.max_payload,
                inner.durable,
            )),
        }
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// The lock file that serialises this namespace's mutations across processes (its
    /// directory is created if missing; the file exists while the namespace holds records).
    /// Every store over the same keyring and namespace names the same file, in every process of
    /// the user and whatever its environment variables.
    ///
    /// # Errors
    ///
    /// The lock directory is not private to this user
    /// ([`StoreError::PermissionDenied`]) or cannot be created ([`StoreError::Unavailable`]);
    /// not on Unix, where there is no lock file ([`StoreError::Unsupported`]).
    pub fn lock_file(&self) -> Result<PathBuf, StoreError> {
        #[cfg(unix)]
        {
            Ok(lock::lock_path(&self.inner.lock_stem)?)
        }
        #[cfg(not(unix))]
        Err(StoreError::Unsupported {
            backend: BACKEND,
            operation: "cross-process lock files (Unix only)",
        })
    }

    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        blocking(move || f(&inner)).await
    }
}

/// Proof that this process holds the namespace's lock: the in-process mutex and, on Unix, the
/// lock file (released first: fields drop in order).
struct NamespaceLock<'a> {
    #[cfg(unix)]
    file: lock::FileLock,
    _mutex: MutexGuard<'a, ()>,
}

/// The namespace's index (every shard item), as read.
enum IndexItem {
    Missing,
    /// A shard is not a JSON list of strings, or a counted shard is missing.
    Damaged,
    /// The shards' record keys, shard 0 first.
    Shards(Vec<BTreeSet<String>>),
}

/// The index under the lock, as a change starts from it.
struct LockedIndex {
    /// The stored shards, shard 0 first (none when there is no index).
    shards: Vec<BTreeSet<String>>,
    /// The record keys of an index rebuilt by a search, to be written in full.
    rebuilt: Option<BTreeSet<String>>,
    /// Entries whose item is gone, to drop.
    stale: BTreeSet<String>,
}

impl LockedIndex {
    fn members(&self) -> BTreeSet<String> {
        let all = match &self.rebuilt {
            Some(members) => members.clone(),
            None => self.shards.iter().flatten().cloned().collect(),
        };
        all.difference(&self.stale).cloned().collect()
    }
}

/// Synchronous keyring access; every method runs on a blocking thread (or outside a runtime).
impl Inner {
    fn new(
        keyring: KeyringHandle,
        label: String,
        id: KeyringId,
        namespace: Namespace,
        max_payload: Option<usize>,
        durable: bool,
    ) -> Self {
        let service = format!("mcp-auth:{}", namespace.storage_key());
        let lock_stem = id.lock_stem(&service);
        Self {
            shared: shared_for(lock_stem.clone()),
            keyring,
            label,
            id,
            namespace,
            service,
            lock_stem,
            max_payload,
            durable,
        }
    }

    /// Takes the namespace's lock: the in-process mutex, then the lock file (waiting at most
    /// [`lock::LOCK_TIMEOUT`] for another process).
    fn lock(&self) -> Result<NamespaceLock<'_>, StoreError> {
        let mutex = lock_mutex(&self.shared.write);
        Ok(NamespaceLock {
            #[cfg(unix)]
            file: lock::FileLock::acquire(
                &self.lock_stem,
                lock::LockKind::Records,
                lock::LOCK_TIMEOUT,
            )?,
            _mutex: mutex,
        })
    }

    /// Runs `f` on the namespace's lease table under the namespace's lease lock, and saves the
    /// table when `f` reports a change. The lease lock is not the records' lock: a slow keyring
    /// call never delays a lease renewal.
    fn with_leases<T>(
        &self,
        f: impl FnOnce(&mut LeaseTable) -> (T, bool),
    ) -> Result<T, StoreError> {
        #[cfg(unix)]
        {
            let _mutex = lock_mutex(&self.shared.lease_write);
            let file = lock::FileLock::acquire(
                &self.lock_stem,
                lock::LockKind::Leases,
                lock::LOCK_TIMEOUT,
            )?;
            let mut table = file.read_leases()?;
            let (out, changed) = f(&mut table);
            if changed {
                file.write_leases(&table)?;
                if table.is_empty() {
                    file.remove_file();
                }
            }
            Ok(out)
        }
        #[cfg(not(unix))]
        {
            Ok(f(&mut lock_mutex(&self.shared.leases)).0)
        }
    }

    fn keyring(&self) -> Result<&Arc<keyring_core::CredentialStore>, StoreError> {
        self.keyring
            .get()
            .ok_or_else(|| StoreError::backend(BACKEND, "the keyring store was already released"))
    }

    fn entry(&self, what: &str, user: &str) -> Result<Entry, StoreError> {
        Entry::new_in_store(self.keyring()?, &self.service, user).map_err(|e| map_keyring(what, e))
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
        match self.entry(what, user)?.set_secret(bytes) {
            Ok(()) => Ok(()),
            Err(keyring_core::Error::PlatformFailure(source))
                if self.id.kind == "keyutils" && is_quota_exceeded(source.as_ref()) =>
            {
                Err(quota_exceeded(what, bytes.len()))
            }
            Err(e) => Err(map_keyring(what, e)),
        }
    }

    fn check_size(&self, what: &str, size: usize) -> Result<(), StoreError> {
        match self.max_payload {
            Some(limit) if size > limit => Err(StoreError::TooLarge {
                // The limit is the kernel's largest `user` key payload, fixed (no
                // /proc/sys/kernel/keys setting raises it).
                key: format!(
                    "{what} (the kernel keyring holds at most {limit} bytes in one key, a fixed \
                     limit; store large tokens in the Secret Service)"
                ),
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
        held: &NamespaceLock<'_>,
        key: &RecordKey,
        (version, value): (Version, Vec<u8>),
    ) -> Result<Version, StoreError> {
        self.index_add(held, key)?;
        self.write_item(&key.to_string(), &key.storage_key(), &value)?;
        Ok(version)
    }

    fn load_index(&self) -> Result<IndexItem, StoreError> {
        let Some(raw) = self.read_item(INDEX_USER, INDEX_USER)? else {
            return Ok(IndexItem::Missing);
        };
        let Some((first, count)) = index::parse_first(&raw) else {
            return Ok(IndexItem::Damaged);
        };
        let mut shards = vec![first];
        for i in 1..count {
            let raw = self.read_item(INDEX_USER, &index::shard_user(i))?;
            match raw.as_deref().and_then(index::parse_other) {
                Some(members) => shards.push(members),
                None => return Ok(IndexItem::Damaged),
            }
        }
        Ok(IndexItem::Shards(shards))
    }

    /// The record users stored in this namespace, found by searching the keyring itself (see
    /// [`search`]); `None` when this keyring cannot be searched.
    fn search_records(&self) -> Result<Option<BTreeSet<String>>, StoreError> {
        match &self.id.search {
            Search::Attributes => search::by_attributes(self.keyring()?, &self.service)
                .map(Some)
                .map_err(|e| map_keyring(INDEX_USER, e)),
            Search::KeyDescriptions {
                prefix,
                divider,
                suffix,
            } => {
                let Some(proc_keys) = search::read_proc_keys() else {
                    return Ok(None);
                };
                let candidates =
                    search::in_proc_keys(&proc_keys, (prefix, divider, suffix), &self.service);
                let mut found = BTreeSet::new();
                for user in candidates {
                    // Keys of other session keyrings are listed too; only ours can be read.
                    if self.read_item("a keyring item", &user)?.is_some() {
                        found.insert(user);
                    }
                }
                Ok(Some(found))
            }
            Search::Unsupported => Ok(None),
        }
    }

    /// The index under the lock: a damaged index is rebuilt by searching the keyring, and so is
    /// a missing one when `search_if_missing` (a missing index can only lose entries when
    /// something is added); entries a listing found without their item are dropped if their
    /// item is still missing (no writer can now be between adding an entry and writing its
    /// item).
    fn locked_index(
        &self,
        _held: &NamespaceLock<'_>,
        search_if_missing: bool,
    ) -> Result<LockedIndex, StoreError> {
        let mut locked = LockedIndex {
            shards: Vec::new(),
            rebuilt: None,
            stale: BTreeSet::new(),
        };
        match self.load_index()? {
            IndexItem::Shards(shards) => locked.shards = shards,
            IndexItem::Missing if !search_if_missing => {}
            // Missing: a namespace without records, or an index lost (deleted by hand, a
            // keyring cleaner). Only a search tells them apart.
            IndexItem::Missing => {
                if let Some(found) = self.search_records()?
                    && !found.is_empty()
                {
                    locked.rebuilt = Some(found);
                }
            }
            IndexItem::Damaged => match self.search_records()? {
                Some(found) => locked.rebuilt = Some(found),
                None => {
                    return Err(corrupt(
                        INDEX_USER,
                        "the namespace index is damaged and this keyring cannot be searched to \
                         rebuild it (records it listed stay in the keyring, unlisted)",
                    ));
                }
            },
        }
        let stale = std::mem::take(&mut *lock_mutex(&self.shared.stale));
        let members = locked.members();
        for member in stale {
            if members.contains(&member) && self.read_item("an index entry", &member)?.is_none() {
                locked.stale.insert(member);
            }
        }
        Ok(locked)
    }

    /// Saves `locked` with `add` added and `remove` removed: only the shards that change are
    /// written (a rebuilt index in full), every size checked before the first write. When the
    /// index becomes empty its items are removed, and so is the lock file (nothing is left to
    /// guard); that makes this the last step under the lock: every caller writes the index last
    /// (see `FileLock::remove_file`).
    fn save_index(
        &self,
        held: &NamespaceLock<'_>,
        locked: LockedIndex,
        add: Option<&str>,
        remove: &BTreeSet<String>,
    ) -> Result<(), StoreError> {
        let remove: BTreeSet<String> = remove.union(&locked.stale).cloned().collect();
        let planned = match &locked.rebuilt {
            Some(_) => {
                let mut members = locked.members();
                members.retain(|m| !remove.contains(m));
                members.extend(add.map(str::to_owned));
                let existing = self.shard_items_from(1)?;
                index::plan_rewrite(&members, existing, self.max_payload)
            }
            None => index::plan_change(&locked.shards, add, &remove, self.max_payload),
        };
        let plan = planned.map_err(|e| StoreError::TooLarge {
            key: format!(
                "{} (a shard of the namespace index; one keyring item holds at most {} bytes)",
                add.unwrap_or(INDEX_USER),
                e.limit
            ),
            size: e.size,
            limit: e.limit,
        })?;
        self.apply_index_plan(held, &plan)
    }

    fn apply_index_plan(&self, held: &NamespaceLock<'_>, plan: &Plan) -> Result<(), StoreError> {
        for step in &plan.steps {
            match step {
                Step::Write(i, value) => {
                    self.write_item(INDEX_USER, &index::shard_user(*i), value)?;
                }
                Step::Delete(i) => {
                    self.remove_item(INDEX_USER, &index::shard_user(*i))?;
                }
            }
        }
        if plan.emptied {
            // Leftover shard items of an interrupted change.
            let mut i = self.shard_items_from(1)?.max(1);
            while i > 1 {
                i -= 1;
                self.remove_item(INDEX_USER, &index::shard_user(i))?;
            }
            #[cfg(unix)]
            held.file.remove_file();
        }
        #[cfg(not(unix))]
        let _ = held;
        Ok(())
    }

    /// One past the last shard item present in the run of items starting at shard `from`
    /// (`from` itself when it is absent).
    fn shard_items_from(&self, from: usize) -> Result<usize, StoreError> {
        let mut i = from;
        while self.read_item(INDEX_USER, &index::shard_user(i))?.is_some() {
            i += 1;
        }
        Ok(i)
    }

    /// Adds `key` to the index if missing. Called before the record is written, so the index
    /// always covers every record (a failed write or a crash can leave an extra entry, which
    /// listing skips).
    fn index_add(&self, held: &NamespaceLock<'_>, key: &RecordKey) -> Result<(), StoreError> {
        let locked = self.locked_index(held, true)?;
        self.save_index(held, locked, Some(&key.storage_key()), &BTreeSet::new())
    }

    /// Removes `key` from the index. A missing index stays missing (listing or the next added
    /// record rebuilds it).
    fn index_remove(&self, held: &NamespaceLock<'_>, key: &RecordKey) -> Result<(), StoreError> {
        let locked = self.locked_index(held, false)?;
        self.save_index(held, locked, None, &BTreeSet::from([key.storage_key()]))
    }

    /// The index for listing: read without the lock when it is intact; rebuilt (and saved)
    /// under the lock when it is missing or damaged (or changed while being read).
    fn listing_index(&self) -> Result<BTreeSet<String>, StoreError> {
        if let IndexItem::Shards(shards) = self.load_index()? {
            return Ok(shards.into_iter().flatten().collect());
        }
        let held = self.lock()?;
        let locked = self.locked_index(&held, true)?;
        let members = locked.members();
        self.save_index(&held, locked, None, &BTreeSet::new())?;
        Ok(members)
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
        let held = self.lock()?;
        if !matches!(expect, Expect::Any) && !self.check(key, expect)? {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        self.store_record(&held, key, item)
    }

    fn delete(&self, key: &RecordKey, expect: &Expect) -> Result<bool, StoreError> {
        let held = self.lock()?;
        if !matches!(expect, Expect::Any) && !self.check(key, expect)? {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        let removed = self.remove_item(&key.to_string(), &key.storage_key())?;
        self.index_remove(&held, key)?;
        Ok(removed)
    }

    fn list(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        let mut keys = Vec::new();
        let mut stale = Vec::new();
        for member in self.listing_index()? {
            // Entries of record kinds this version does not know (a newer one wrote them).
            let Some(key) = RecordKey::from_storage_key(&member) else {
                continue;
            };
            if key.kind() != kind {
                continue;
            }
            // The index may name a record being written right now, or one whose item is gone.
            if self
                .read_item(&key.to_string(), &key.storage_key())?
                .is_some()
            {
                keys.push(key);
            } else {
                stale.push(member);
            }
        }
        if !stale.is_empty() {
            lock_mutex(&self.shared.stale).extend(stale);
        }
        Ok(keys)
    }

    fn delete_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        let held = self.lock()?;
        // A missing index is searched: a lost index must not hide tokens of the issuer.
        let locked = self.locked_index(&held, true)?;
        let matching: BTreeSet<String> = locked
            .members()
            .into_iter()
            .filter(|m| m.starts_with(prefix))
            .collect();
        let mut deleted = 0;
        for member in &matching {
            if self.remove_item("tokens", member)? {
                deleted += 1;
            }
        }
        self.save_index(&held, locked, None, &matching)?;
        Ok(deleted)
    }

    fn insert_pending(&self, pending_bytes: &[u8], state: &str) -> Result<(), StoreError> {
        let key = RecordKey::Pending(state.to_owned());
        let item = self.envelope(&key, pending_bytes)?;
        let held = self.lock()?;
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
        self.store_record(&held, &key, item).map(|_| ())
    }

    fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let key = RecordKey::Pending(state.to_owned());
        let held = self.lock()?;
        let Some((bytes, _)) = self.read_record(&key)? else {
            return Ok(None);
        };
        // Decode before deleting: a corrupt record is reported and left in place.
        let pending = record::decode_pending(state, &bytes)?;
        self.remove_item(&key.to_string(), &key.storage_key())?;
        self.index_remove(&held, &key)?;
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

/// Direct access to a namespace's keyring items, bypassing the lock and the index, for tests
/// that damage a store the way a user or another program could. Not part of the supported API.
#[doc(hidden)]
pub mod testing {
    use mcp_auth_core::StoreError;
    use mcp_auth_core::record::RecordKey;

    use crate::{INDEX_USER, KeyringStore};

    /// The raw value of the namespace's index item.
    pub async fn index_item(store: &KeyringStore) -> Result<Option<Vec<u8>>, StoreError> {
        store
            .run(|inner| inner.read_item(INDEX_USER, INDEX_USER))
            .await
    }

    /// The raw values of the index's shard items `index`, `index.1`, ... up to the first one
    /// absent (shard 0 counts how many are in use; items past that are leftovers).
    pub async fn index_items(store: &KeyringStore) -> Result<Vec<Vec<u8>>, StoreError> {
        store
            .run(|inner| {
                let mut items = Vec::new();
                while let Some(item) =
                    inner.read_item(INDEX_USER, &crate::index::shard_user(items.len()))?
                {
                    items.push(item);
                }
                Ok(items)
            })
            .await
    }

    /// Replaces index shard item `i` (0 is `index`) with `value`, or deletes it (`None`).
    pub async fn set_index_shard(
        store: &KeyringStore,
        i: usize,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        store
            .run(move |inner| {
                let user = crate::index::shard_user(i);
                match value {
                    Some(value) => inner.write_item(INDEX_USER, &user, &value),
                    None => inner.remove_item(INDEX_USER, &user).map(|_| ()),
                }
            })
            .await
    }

    /// Replaces the index item with `value`, or deletes it (`None`).
    pub async fn set_index_item(
        store: &KeyringStore,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        store
            .run(move |inner| match value {
                Some(value) => inner.write_item(INDEX_USER, INDEX_USER, &value),
                None => inner.remove_item(INDEX_USER, INDEX_USER).map(|_| ()),
            })
            .await
    }

    /// Deletes a record's item without touching the index.
    pub async fn remove_record_item(
        store: &KeyringStore,
        key: &RecordKey,
    ) -> Result<bool, StoreError> {
        let key = key.clone();
        store
            .run(move |inner| inner.remove_item("a record", &key.storage_key()))
            .await
    }
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
        // Every mutation and every lease change runs under the namespace's lock file on Unix,
        // so compare-and-swap and leases hold across processes there; elsewhere there is no
        // lock file, and they hold inside this process only.
        StoreCapabilities::NONE
            .with_durable(self.inner.durable)
            .with_list(true)
            .with_atomic_cas(cfg!(unix))
            .with_cross_process_lease(cfg!(unix))
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
        let key = key.clone();
        self.run(move |inner| {
            inner.with_leases(|table| {
                let lease = table.acquire(&key, ttl, SystemTime::now());
                let changed = lease.is_some();
                (lease, changed)
            })
        })
        .await
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let lease = lease.clone();
        self.run(move |inner| {
            inner.with_leases(|table| {
                let renewed = table.renew(&lease, ttl, SystemTime::now());
                let changed = renewed.is_some();
                (renewed, changed)
            })
        })
        .await
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.run(move |inner| {
            inner.with_leases(|table| {
                let released = table.release(&lease);
                (released, released)
            })
        })
        .await
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
