//! A credential store of your own, checked by mcp-auth's conformance suite.
//!
//! ```text
//! cargo run -p mcp-auth-core --example custom_store
//! ```
//!
//! `MapStore` below keeps records in a map behind a mutex: swap the map for your database, and
//! keep the rules the comments point out. It stores what every mcp-auth backend stores — the
//! encoded records of `mcp_auth_core::record`, byte for byte — so it only has to get, put
//! (with compare-and-swap), delete and list opaque bytes; `mcp_auth_core::raw` turns that into
//! the typed store traits. Refresh leases, pending authorizations and per-issuer deletion are
//! written by hand: they are where backends differ.
//!
//! `main` runs every conformance check (`mcp_auth_core::conformance::run_all`) and prints one
//! line per check. In your own crate, `mcp_auth_core::store_conformance_tests!(YourFactory)` in
//! a test file gives one `#[test]` per check instead (feature `conformance`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use mcp_auth_core::conformance::{StoreFactory, run_all};
use mcp_auth_core::raw::{self, RawRecords};
use mcp_auth_core::record::{self, RecordKey, RecordKind};
use mcp_auth_core::{
    Expect, IssuerId, Namespace, PendingAuthorization, PendingAuthorizationStore, RefreshLease,
    StoreCapabilities, StoreError, StoreInfo, TokenKey, TokenSet, TokenStore, Version, Versioned,
    async_trait,
};

/// Everything the store holds, shared by every handle and every namespace over it.
#[derive(Default)]
struct Data {
    /// (namespace key, record key) → (encoded record, version). Both keys are the library's
    /// `storage_key()`s: injective, and safe in any backend's key syntax.
    records: HashMap<(String, String), (Vec<u8>, u64)>,
    /// (namespace key, token key) → (lease holder's token, lease expiry).
    leases: HashMap<(String, String), (String, SystemTime)>,
    /// The last version handed out. Versions must never repeat for a key (not even after a
    /// delete), or a stale compare-and-swap could succeed: a counter that only grows is enough.
    last_version: u64,
}

/// One namespace of a shared map. Clones share the data.
#[derive(Clone, Default)]
struct MapStore {
    data: Arc<Mutex<Data>>,
    namespace: String,
}

impl MapStore {
    /// The same data seen through another namespace (tenants never see each other's records).
    fn with_namespace(&self, namespace: &Namespace) -> Self {
        Self {
            data: Arc::clone(&self.data),
            namespace: namespace.storage_key(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        // Nothing panics while holding the lock, so a poisoned map is still consistent.
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, key: &RecordKey) -> (String, String) {
        (self.namespace.clone(), key.storage_key())
    }

    fn lease_slot(&self, key: &TokenKey) -> (String, String) {
        (self.namespace.clone(), key.storage_key())
    }

    /// Every record key in this namespace (under the caller's lock).
    fn keys_in_namespace(&self, data: &Data) -> Result<Vec<RecordKey>, StoreError> {
        let mut keys = Vec::new();
        for (namespace, storage_key) in data.records.keys() {
            if namespace != &self.namespace {
                continue;
            }
            // Anything the library did not write is reported, never skipped silently.
            keys.push(RecordKey::from_storage_key(storage_key).ok_or_else(|| {
                StoreError::Corrupt {
                    key: storage_key.clone(),
                    reason: "unrecognised storage key".to_owned(),
                }
            })?);
        }
        Ok(keys)
    }
}

fn version(n: u64) -> Version {
    Version::new(n.to_string())
}

fn next_version(data: &mut Data) -> u64 {
    data.last_version += 1;
    data.last_version
}

/// `Debug` must never show a secret: the records hold tokens, so only the namespace is shown.
impl fmt::Debug for MapStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl StoreInfo for MapStore {
    fn backend_name(&self) -> &'static str {
        "example-map"
    }

    /// Say only what really holds: the suite checks what is declared. One mutex makes every
    /// compare-and-swap atomic and the map can be listed; nothing survives the process and
    /// leases are not shared with other processes.
    fn capabilities(&self) -> StoreCapabilities {
        StoreCapabilities::NONE
            .with_atomic_cas(true)
            .with_list(true)
    }
}

/// The four raw operations; `impl_record_stores!` and the `raw::*` helpers build the typed
/// traits on them.
#[async_trait]
impl RawRecords for MapStore {
    async fn get_record(&self, key: &RecordKey) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Ok(self
            .lock()
            .records
            .get(&self.slot(key))
            .map(|(bytes, v)| (bytes.clone(), version(*v))))
    }

    async fn put_record(
        &self,
        key: &RecordKey,
        bytes: Vec<u8>,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        let slot = self.slot(key);
        let mut data = self.lock();
        // Compare-and-swap: check the expectation and write under the same lock (in a database:
        // in one conditional statement or transaction).
        let current = data.records.get(&slot).map(|(_, v)| version(*v));
        if !expect.holds(current.as_ref()) {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        let new = next_version(&mut data);
        data.records.insert(slot, (bytes, new));
        Ok(version(new))
    }

    async fn delete_record(&self, key: &RecordKey, expect: Expect) -> Result<bool, StoreError> {
        let slot = self.slot(key);
        let mut data = self.lock();
        let current = data.records.get(&slot).map(|(_, v)| version(*v));
        if !expect.holds(current.as_ref()) {
            return Err(StoreError::Conflict {
                key: key.to_string(),
            });
        }
        Ok(data.records.remove(&slot).is_some())
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<RecordKey>, StoreError> {
        let data = self.lock();
        Ok(self
            .keys_in_namespace(&data)?
            .into_iter()
            .filter(|key| key.kind() == kind)
            .collect())
    }
}

// `RegistrationStore` and `BindingStore`, entirely from `RawRecords`.
mcp_auth_core::impl_record_stores!(MapStore);

#[async_trait]
impl TokenStore for MapStore {
    // The record half: one line each.
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

    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        raw::list_tokens(self).await
    }

    /// The SEP-2352 invalidation: every token set of `issuer`, and nobody else's.
    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
        let mut data = self.lock();
        let mut deleted = 0;
        for key in self.keys_in_namespace(&data)? {
            if let RecordKey::Tokens(tokens) = &key
                && &tokens.issuer == issuer
                && data.records.remove(&self.slot(&key)).is_some()
            {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Optional (the default answers `Unsupported`), but cheap here and it spares the engine
    /// two record reads on every `access_token()`.
    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        let data = self.lock();
        let version_of =
            |key: RecordKey| data.records.get(&self.slot(&key)).map(|(_, v)| version(*v));
        Ok((
            version_of(RecordKey::Binding(key.resource.clone())),
            version_of(RecordKey::Tokens(key.clone())),
        ))
    }

    /// At most one refresh per token set at a time. A lease that expired (its holder died) is
    /// taken over.
    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let slot = self.lease_slot(key);
        let mut data = self.lock();
        if let Some((_, expires)) = data.leases.get(&slot)
            && *expires > SystemTime::now()
        {
            return Ok(None);
        }
        let lease = RefreshLease::new(key.clone(), ttl);
        data.leases
            .insert(slot, (lease.token().to_owned(), lease.expires_at()));
        Ok(Some(lease))
    }

    /// The holder extends its lease; it may also retake a lease that expired and that nobody
    /// took over. Another holder's live lease is never touched.
    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        let slot = self.lease_slot(lease.key());
        let mut data = self.lock();
        if let Some((holder, expires)) = data.leases.get(&slot)
            && holder != lease.token()
            && *expires > SystemTime::now()
        {
            return Ok(None);
        }
        let renewed = lease.renewed(ttl);
        data.leases
            .insert(slot, (renewed.token().to_owned(), renewed.expires_at()));
        Ok(Some(renewed))
    }

    /// Only the holder releases its lease.
    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        let slot = self.lease_slot(lease.key());
        let mut data = self.lock();
        match data.leases.get(&slot) {
            Some((holder, _)) if holder == lease.token() => {
                data.leases.remove(&slot);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl PendingAuthorizationStore for MapStore {
    /// A `state` in use is a conflict, unless its flow has expired.
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        let key = RecordKey::Pending(pending.state.clone());
        let bytes = record::encode_pending(pending)?;
        let slot = self.slot(&key);
        let mut data = self.lock();
        if let Some((existing, _)) = data.records.get(&slot) {
            let expired = record::decode_pending(&pending.state, existing)
                .is_ok_and(|p| p.expires_at.is_past());
            if !expired {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                });
            }
        }
        let new = next_version(&mut data);
        data.records.insert(slot, (bytes, new));
        Ok(())
    }

    /// Each `state` is redeemed once: read and remove under one lock. An expired flow is removed
    /// but not returned; a corrupt record is reported and left in place.
    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        let slot = self.slot(&RecordKey::Pending(state.to_owned()));
        let mut data = self.lock();
        let Some((bytes, _)) = data.records.get(&slot) else {
            return Ok(None);
        };
        let pending = record::decode_pending(state, bytes)?;
        data.records.remove(&slot);
        Ok((!pending.expires_at.is_past()).then_some(pending))
    }
}

/// How the conformance suite opens stores: every namespace over one shared map, so namespace
/// isolation and "reopening" are tested for real.
#[derive(Default)]
struct MapFactory {
    root: MapStore,
}

#[async_trait]
impl StoreFactory for MapFactory {
    type Store = MapStore;

    async fn open(&self, namespace: &Namespace) -> Result<MapStore, StoreError> {
        Ok(self.root.with_namespace(namespace))
    }

    /// Lets the suite plant damaged records, to check that the store reports them as
    /// `Corrupt` instead of serving them (return `Ok(false)` if your backend cannot).
    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        let store = self.root.with_namespace(namespace);
        let mut data = store.lock();
        let new = next_version(&mut data);
        data.records.insert(store.slot(key), (bytes.to_vec(), new));
        Ok(true)
    }
}

/// The checks that failed, as `main`'s error.
struct Failed(Vec<&'static str>);

/// `main` returning `Err` prints it with `Debug`.
impl fmt::Debug for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conformance check(s) failed: {}",
            self.0.len(),
            self.0.join(", ")
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Failed> {
    // Every check, one after another; each opens a fresh namespace and cleans up after itself.
    let report = run_all(&MapFactory::default()).await;
    // One line per check: PASS, SKIP (with the capability it needs) or FAIL (with what the
    // store did).
    print!("{report}");
    let failed = report.failed();
    if !failed.is_empty() {
        return Err(Failed(failed));
    }
    let passed = report.passed().len();
    let skipped = report.results().len() - passed;
    println!("all checks held: {passed} passed, {skipped} skipped");
    Ok(())
}
