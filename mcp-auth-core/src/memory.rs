//! [`MemoryStore`]: all four store traits in process memory. The default for tests and
//! short-lived processes; nothing survives the process.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ids::{IssuerId, Namespace, TokenKey};
use crate::model::{PendingAuthorization, TokenSet};
use crate::raw::{self, RawRecords};
use crate::record::{self, RecordKey, RecordKind};
use crate::store::{
    Expect, PendingAuthorizationStore, RefreshLease, StoreCapabilities, StoreInfo, TokenStore,
    Version, Versioned,
};

const BACKEND: &str = "memory";

struct Entry {
    bytes: Vec<u8>,
    version: u64,
}

#[derive(Default)]
struct Shared {
    /// (namespace key, record storage key) → encoded record.
    records: HashMap<(String, String), Entry>,
    /// (namespace key, token storage key) → (holder token, expiry).
    leases: HashMap<(String, String), (String, SystemTime)>,
    next_version: u64,
}

/// An in-memory store. Records are held in the same encoded form the durable backends write, so
/// it behaves like them (including `Corrupt` on bad data).
///
/// Clones share data. [`MemoryStore::with_namespace`] opens another, isolated namespace over the
/// same data — how a gateway keeps one tenant per namespace.
///
/// ```
/// use mcp_auth_core::{MemoryStore, Namespace, RegistrationStore};
///
/// # tokio_test_block_on(async {
/// let alice = MemoryStore::new();
/// let bob = alice.with_namespace(Namespace::new("bob")?);
/// assert!(bob.list_registrations().await?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Mutex<Shared>>,
    /// The last version handed out (after every insert and removal): the store's change stamp,
    /// readable without the lock.
    stamp: Arc<AtomicU64>,
    namespace: Namespace,
    namespace_key: String,
}

impl MemoryStore {
    /// An empty store in the default namespace.
    pub fn new() -> Self {
        Self::from_parts(Arc::default(), Arc::default(), Namespace::default())
    }

    /// The same data, seen through another namespace.
    pub fn with_namespace(&self, namespace: Namespace) -> Self {
        Self::from_parts(Arc::clone(&self.shared), Arc::clone(&self.stamp), namespace)
    }

    /// This store's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    fn from_parts(shared: Arc<Mutex<Shared>>, stamp: Arc<AtomicU64>, namespace: Namespace) -> Self {
        let namespace_key = namespace.storage_key();
        Self {
            shared,
            stamp,
            namespace,
            namespace_key,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // No code panics while holding the lock, so a poisoned map is still consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new version, published as the change stamp (call with the lock held, after or
    /// before the change it marks: readers compare stamps only after taking the lock).
    fn bump(&self, shared: &mut Shared) -> u64 {
        shared.next_version += 1;
        self.stamp.store(shared.next_version, Ordering::Release);
        shared.next_version
    }

    fn slot(&self, key: &RecordKey) -> (String, String) {
        (self.namespace_key.clone(), key.storage_key())
    }

    fn get_raw(&self, key: &RecordKey) -> Option<(Vec<u8>, Version)> {
        self.lock()
            .records
            .get(&self.slot(key))
            .map(|e| (e.bytes.clone(), Version::new(e.version.to_string())))
    }

    fn put_raw(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: &Expect,
    ) -> Result<Version, StoreError> {
        let slot = self.slot(key);
        let mut shared = self.lock();
        let current = shared
            .records
            .get(&slot)
            .map(|e| Version::new(e.version.to_string()));
        if !expect.holds(current.as_ref()) {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        let version = self.bump(&mut shared);
        shared.records.insert(slot, Entry { bytes, version });
        Ok(Version::new(version.to_string()))
    }

    fn delete_raw(&self, key: &RecordKey, expect: &Expect) -> Result<bool, StoreError> {
        let slot = self.slot(key);
        let mut shared = self.lock();
        let current = shared
            .records
            .get(&slot)
            .map(|e| Version::new(e.version.to_string()));
        if !matches!(expect, Expect::Any) && !expect.holds(current.as_ref()) {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        let removed = shared.records.remove(&slot).is_some();
        self.bump(&mut shared);
        Ok(removed)
    }

    fn list_raw(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        let shared = self.lock();
        let mut keys = Vec::new();
        for (ns, storage_key) in shared.records.keys() {
            if ns != &self.namespace_key {
                continue;
            }
            let key =
                RecordKey::from_storage_key(storage_key).ok_or_else(|| StoreError::Corrupt {
                    key: storage_key.clone(),
                    reason: "unrecognised storage key".to_owned(),
                })?;
            if key.kind() == kind {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// Writes raw bytes under `key`, bypassing encoding (the conformance suite uses this to plant
    /// corrupt records).
    #[cfg(feature = "conformance")]
    pub(crate) fn write_raw(&self, key: &RecordKey, bytes: &[u8]) {
        let slot = self.slot(key);
        let mut shared = self.lock();
        let version = self.bump(&mut shared);
        shared.records.insert(
            slot,
            Entry {
                bytes: bytes.to_vec(),
                version,
            },
        );
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let records = self
            .lock()
            .records
            .keys()
            .filter(|(ns, _)| ns == &self.namespace_key)
            .count();
        f.debug_struct("MemoryStore")
            .field("namespace", &self.namespace)
            .field("records", &records)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RawRecords for MemoryStore {
    async fn get_record(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Ok(self.get_raw(key))
    }

    async fn put_record(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.put_raw(key, bytes, &expect)
    }

    async fn delete_record(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError> {
        self.delete_raw(key, &expect)
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        self.list_raw(kind)
    }

    /// Under one lock: a consistent snapshot of the namespace.
    async fn scan_records(
        &self,
        kind: RecordKind,
    ) -> Result<Vec<(RecordKey, Vec<u8>, Version)>, StoreError> {
        let shared = self.lock();
        let mut found = Vec::new();
        for ((ns, storage_key), entry) in &shared.records {
            if ns != &self.namespace_key {
                continue;
            }
            let key =
                RecordKey::from_storage_key(storage_key).ok_or_else(|| StoreError::Corrupt {
                    key: storage_key.clone(),
                    reason: "unrecognised storage key".to_owned(),
                })?;
            if key.kind() == kind {
                found.push((
                    key,
                    entry.bytes.clone(),
                    Version::new(entry.version.to_string()),
                ));
            }
        }
        Ok(found)
    }

    /// Under one lock: all or nothing.
    async fn put_records_any(
        &self,
        records: Vec<(RecordKey, Vec<u8>)>,
    ) -> Result<Vec<Version>, StoreError> {
        let mut shared = self.lock();
        let mut versions = Vec::with_capacity(records.len());
        for (key, bytes) in records {
            let version = self.bump(&mut shared);
            shared
                .records
                .insert(self.slot(&key), Entry { bytes, version });
            versions.push(Version::new(version.to_string()));
        }
        Ok(versions)
    }
}

crate::impl_record_stores!(MemoryStore);

impl StoreInfo for MemoryStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::NONE
            .with_atomic_cas(true)
            .with_list(true)
    }
}

#[async_trait]
impl TokenStore for MemoryStore {
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
        let mut deleted = 0;
        for key in self.list_tokens().await? {
            if &key.issuer == issuer && self.delete_raw(&RecordKey::Tokens(key), &Expect::Any)? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        raw::list_tokens(self).await
    }

    async fn scan_tokens(&self) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
        raw::scan_tokens(self).await
    }

    async fn put_tokens_any(
        &self,
        tokens: &[(TokenKey, TokenSet)],
    ) -> Result<Vec<Version>, StoreError> {
        raw::put_tokens_any(self, tokens).await
    }

    fn change_stamp(&self) -> Option<u64> {
        Some(self.stamp.load(Ordering::Acquire))
    }

    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        let binding = self.slot(&RecordKey::Binding(key.resource.clone()));
        let tokens = self.slot(&RecordKey::Tokens(key.clone()));
        let shared = self.lock();
        let version = |slot| {
            shared
                .records
                .get(slot)
                .map(|e: &Entry| Version::new(e.version.to_string()))
        };
        Ok((version(&binding), version(&tokens)))
    }

    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let slot = (self.namespace_key.clone(), key.storage_key());
        let mut shared = self.lock();
        let now = SystemTime::now();
        if let Some((_, expires)) = shared.leases.get(&slot)
            && *expires > now
        {
            return Ok(None);
        }
        let lease = RefreshLease::new(key.clone(), ttl);
        shared
            .leases
            .insert(slot, (lease.token().to_owned(), lease.expires_at()));
        Ok(Some(lease))
    }

    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let slot = (self.namespace_key.clone(), lease.key().storage_key());
        let mut shared = self.lock();
        if let Some((token, expires)) = shared.leases.get(&slot)
            && token != lease.token()
            && *expires > SystemTime::now()
        {
            return Ok(None);
        }
        let renewed = lease.renewed(ttl);
        shared
            .leases
            .insert(slot, (renewed.token().to_owned(), renewed.expires_at()));
        Ok(Some(renewed))
    }

    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        let slot = (self.namespace_key.clone(), lease.key().storage_key());
        let mut shared = self.lock();
        match shared.leases.get(&slot) {
            Some((token, _)) if token == lease.token() => {
                shared.leases.remove(&slot);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl PendingAuthorizationStore for MemoryStore {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        let key = RecordKey::Pending(pending.state.clone());
        let bytes = record::encode_pending(pending)?;
        let slot = self.slot(&key);
        let mut shared = self.lock();
        if let Some(existing) = shared.records.get(&slot) {
            // An expired flow no longer holds its state; anything else is a collision.
            let expired = record::decode_pending(&pending.state, &existing.bytes)
                .is_ok_and(|p| p.expires_at.is_past());
            if !expired {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                });
            }
        }
        let version = self.bump(&mut shared);
        shared.records.insert(slot, Entry { bytes, version });
        Ok(())
    }

    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let key = RecordKey::Pending(state.to_owned());
        let slot = self.slot(&key);
        let mut shared = self.lock();
        let Some(entry) = shared.records.get(&slot) else {
            return Ok(None);
        };
        // Decode before removing: a corrupt record is reported and left in place.
        let pending = record::decode_pending(state, &entry.bytes)?;
        shared.records.remove(&slot);
        self.bump(&mut shared);
        Ok((!pending.expires_at.is_past()).then_some(pending))
    }
}
