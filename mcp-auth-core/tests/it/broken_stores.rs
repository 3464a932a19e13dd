//! The conformance suite must be able to fail: each deliberately broken store below has one
//! defect, and the suite must catch it (while the correct `MemoryStore` passes every check).
#![cfg(feature = "conformance")]
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use mcp_auth_core::conformance::{MemoryFactory, Outcome, StoreFactory, run_all};
use mcp_auth_core::record::RecordKey;
use mcp_auth_core::{
    BindingStore, ClientRegistration, Expect, ExposeSecret, IssuerId, MemoryStore, Namespace,
    PendingAuthorization, PendingAuthorizationStore, RefreshLease, RegistrationStore,
    ResourceBinding, ResourceUri, StoreCapabilities, StoreError, StoreInfo, TokenKey, TokenSet,
    TokenStore, Version, Versioned,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Defect {
    /// One credential slot for every authorization server.
    IgnoresIssuer,
    /// Treats `https://as/t/` and `https://as/t` as one issuer.
    NormalisesTrailingSlash,
    /// Ignores expectations: last write wins.
    LastWriteWins,
    /// Grants a lease to everyone who asks.
    LeaseGrantedTwice,
    /// Prints secrets it has seen in its `Debug` output.
    SecretInDebug,
    /// Every namespace sees the same data.
    IgnoresNamespace,
    /// Drops unknown fields on write.
    DropsExtra,
    /// `delete_issuer_tokens` deletes every issuer's tokens.
    DeleteIssuerDeletesAll,
    /// Renewal overwrites whoever holds the lease, and never extends it.
    RenewStealsLease,
    /// Reports the first versions it ever saw, forever (a stale cache).
    StaleVersions,
    /// `scan_tokens` serves its first answer forever (a stale bulk cache).
    ScanServesStaleTokens,
    /// `scan_registrations` and `scan_bindings` return every namespace's records.
    ScanIgnoresNamespace,
    /// `put_tokens_any` loses the last record of a batch (and still reports a version for it).
    BatchDropsLast,
    /// Stores DPoP-bound tokens without their private key.
    DropsDpopKey,
    /// Offers a change stamp that never moves.
    StuckChangeStamp,
}

const SLOT: &str = "https://one-slot.invalid";

struct Broken {
    inner: MemoryStore,
    defect: Defect,
    seen_secrets: Mutex<Vec<String>>,
    first_versions: Mutex<std::collections::HashMap<TokenKey, VersionPair>>,
    first_scan: Mutex<Option<TokenScan>>,
    /// Every namespace the factory opened (for `ScanIgnoresNamespace`).
    every_namespace: Arc<Mutex<Vec<MemoryStore>>>,
}

/// The versions of a binding and of its tokens.
type VersionPair = (Option<Version>, Option<Version>);

/// What `scan_tokens` returns.
type TokenScan = Vec<(TokenKey, Versioned<TokenSet>)>;

impl fmt::Debug for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Broken");
        d.field("inner", &self.inner);
        if self.defect == Defect::SecretInDebug {
            d.field("recent", &*self.seen_secrets.lock().unwrap());
        }
        d.finish()
    }
}

impl Broken {
    fn issuer_in(&self, issuer: &IssuerId) -> IssuerId {
        match self.defect {
            Defect::IgnoresIssuer => IssuerId::new(SLOT).unwrap(),
            Defect::NormalisesTrailingSlash => IssuerId::new(issuer.as_str().trim_end_matches('/'))
                .unwrap_or_else(|_| issuer.clone()),
            _ => issuer.clone(),
        }
    }

    fn key_in(&self, key: &TokenKey) -> TokenKey {
        TokenKey::new(self.issuer_in(&key.issuer), key.resource.clone())
    }

    fn expect(&self, expect: Expect) -> Expect {
        if self.defect == Defect::LastWriteWins {
            Expect::Any
        } else {
            expect
        }
    }

    fn remember(&self, secret: &str) {
        self.seen_secrets.lock().unwrap().push(secret.to_owned());
    }
}

impl StoreInfo for Broken {
    fn backend_name(&self) -> &'static str {
        "broken"
    }
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities()
    }
}

#[async_trait]
impl RegistrationStore for Broken {
    async fn get_registration(
        &self,
        issuer: &IssuerId,
    ) -> Result<Option<Versioned<ClientRegistration>>, StoreError> {
        let got = self.inner.get_registration(&self.issuer_in(issuer)).await?;
        Ok(got.map(|mut v| {
            v.value.issuer = issuer.clone();
            v
        }))
    }
    async fn put_registration(
        &self,
        registration: &ClientRegistration,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        let mut r = registration.clone();
        r.issuer = self.issuer_in(&r.issuer);
        if self.defect == Defect::DropsExtra {
            r.extra.clear();
        }
        if let Some(s) = &r.client_secret {
            self.remember(s.expose_secret());
        }
        self.inner.put_registration(&r, self.expect(expect)).await
    }
    async fn delete_registration(
        &self,
        issuer: &IssuerId,
        expect: Expect,
    ) -> Result<bool, StoreError> {
        self.inner
            .delete_registration(&self.issuer_in(issuer), self.expect(expect))
            .await
    }
    async fn list_registrations(&self) -> Result<Vec<IssuerId>, StoreError> {
        self.inner.list_registrations().await
    }
    async fn scan_registrations(&self) -> Result<Vec<Versioned<ClientRegistration>>, StoreError> {
        if self.defect == Defect::ScanIgnoresNamespace {
            let stores = self.every_namespace.lock().unwrap().clone();
            let mut all = Vec::new();
            for store in stores {
                all.extend(store.scan_registrations().await?);
            }
            return Ok(all);
        }
        self.inner.scan_registrations().await
    }
    async fn put_registrations_any(
        &self,
        registrations: &[ClientRegistration],
    ) -> Result<Vec<Version>, StoreError> {
        self.inner.put_registrations_any(registrations).await
    }
}

#[async_trait]
impl TokenStore for Broken {
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError> {
        self.inner.get_tokens(&self.key_in(key)).await
    }
    async fn put_tokens(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.remember(tokens.access_token.expose_secret());
        let mut t = tokens.clone();
        if self.defect == Defect::DropsExtra {
            t.extra.clear();
        }
        if self.defect == Defect::DropsDpopKey {
            t.dpop_key = None;
        }
        self.inner
            .put_tokens(&self.key_in(key), &t, self.expect(expect))
            .await
    }
    fn change_stamp(&self) -> Option<u64> {
        (self.defect == Defect::StuckChangeStamp).then_some(7)
    }
    async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError> {
        self.inner
            .delete_tokens(&self.key_in(key), self.expect(expect))
            .await
    }
    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
        if self.defect == Defect::DeleteIssuerDeletesAll {
            let mut n = 0;
            for key in self.inner.list_tokens().await? {
                n += usize::from(self.inner.delete_tokens(&key, Expect::Any).await?);
            }
            return Ok(n);
        }
        self.inner
            .delete_issuer_tokens(&self.issuer_in(issuer))
            .await
    }
    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
        self.inner.list_tokens().await
    }
    async fn scan_tokens(&self) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
        let fresh = self.inner.scan_tokens().await?;
        if self.defect == Defect::ScanServesStaleTokens {
            return Ok(self.first_scan.lock().unwrap().get_or_insert(fresh).clone());
        }
        Ok(fresh)
    }
    async fn put_tokens_any(
        &self,
        tokens: &[(TokenKey, TokenSet)],
    ) -> Result<Vec<Version>, StoreError> {
        if self.defect == Defect::BatchDropsLast && !tokens.is_empty() {
            let mut versions = self
                .inner
                .put_tokens_any(&tokens[..tokens.len() - 1])
                .await?;
            versions.push(Version::new("never-written"));
            return Ok(versions);
        }
        self.inner.put_tokens_any(tokens).await
    }
    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        if self.defect == Defect::LeaseGrantedTwice {
            return Ok(Some(RefreshLease::new(key.clone(), ttl)));
        }
        self.inner
            .try_acquire_refresh_lease(&self.key_in(key), ttl)
            .await
            .map(|lease| {
                lease.map(|l| {
                    RefreshLease::from_parts(key.clone(), l.token().to_owned(), l.expires_at())
                })
            })
    }
    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        let fresh = self
            .inner
            .binding_and_token_versions(&self.key_in(key))
            .await?;
        if self.defect == Defect::StaleVersions {
            let mut first = self.first_versions.lock().unwrap();
            return Ok(first.entry(key.clone()).or_insert(fresh).clone());
        }
        Ok(fresh)
    }
    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError> {
        if self.defect == Defect::RenewStealsLease {
            // Claims success without touching the lease: it lapses after its first TTL, and the
            // old holder "renews" over a new one.
            let _ = ttl;
            return Ok(Some(lease.clone()));
        }
        let inner = RefreshLease::from_parts(
            self.key_in(lease.key()),
            lease.token().to_owned(),
            lease.expires_at(),
        );
        self.inner.renew_refresh_lease(&inner, ttl).await.map(|l| {
            l.map(|l| {
                RefreshLease::from_parts(lease.key().clone(), l.token().to_owned(), l.expires_at())
            })
        })
    }
    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
        if self.defect == Defect::LeaseGrantedTwice {
            return Ok(true);
        }
        let inner = RefreshLease::from_parts(
            self.key_in(lease.key()),
            lease.token().to_owned(),
            lease.expires_at(),
        );
        self.inner.release_refresh_lease(&inner).await
    }
}

#[async_trait]
impl BindingStore for Broken {
    async fn get_binding(
        &self,
        resource: &ResourceUri,
    ) -> Result<Option<Versioned<ResourceBinding>>, StoreError> {
        self.inner.get_binding(resource).await
    }
    async fn put_binding(
        &self,
        binding: &ResourceBinding,
        expect: Expect,
    ) -> Result<Version, StoreError> {
        self.inner.put_binding(binding, self.expect(expect)).await
    }
    async fn delete_binding(
        &self,
        resource: &ResourceUri,
        expect: Expect,
    ) -> Result<bool, StoreError> {
        self.inner
            .delete_binding(resource, self.expect(expect))
            .await
    }
    async fn list_bindings(&self) -> Result<Vec<ResourceUri>, StoreError> {
        self.inner.list_bindings().await
    }
    async fn scan_bindings(&self) -> Result<Vec<Versioned<ResourceBinding>>, StoreError> {
        if self.defect == Defect::ScanIgnoresNamespace {
            let stores = self.every_namespace.lock().unwrap().clone();
            let mut all = Vec::new();
            for store in stores {
                all.extend(store.scan_bindings().await?);
            }
            return Ok(all);
        }
        self.inner.scan_bindings().await
    }
    async fn put_bindings_any(
        &self,
        bindings: &[ResourceBinding],
    ) -> Result<Vec<Version>, StoreError> {
        self.inner.put_bindings_any(bindings).await
    }
}

#[async_trait]
impl PendingAuthorizationStore for Broken {
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
        self.remember(pending.pkce_verifier.expose_secret());
        self.inner.insert_pending(pending).await
    }
    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError> {
        self.inner.take_pending(state).await
    }
}

struct BrokenFactory {
    memory: MemoryFactory,
    defect: Defect,
    every_namespace: Arc<Mutex<Vec<MemoryStore>>>,
}

#[async_trait]
impl StoreFactory for BrokenFactory {
    type Store = Broken;

    async fn open(&self, namespace: &Namespace) -> Result<Broken, StoreError> {
        let namespace = if self.defect == Defect::IgnoresNamespace {
            Namespace::default()
        } else {
            namespace.clone()
        };
        let inner = self.memory.open(&namespace).await?;
        self.every_namespace.lock().unwrap().push(inner.clone());
        Ok(Broken {
            inner,
            defect: self.defect,
            seen_secrets: Mutex::default(),
            first_versions: Mutex::default(),
            first_scan: Mutex::default(),
            every_namespace: Arc::clone(&self.every_namespace),
        })
    }

    async fn write_raw(
        &self,
        namespace: &Namespace,
        key: &RecordKey,
        bytes: &[u8],
    ) -> Result<bool, StoreError> {
        self.memory.write_raw(namespace, key, bytes).await
    }
}

async fn assert_caught(defect: Defect, must_fail: &[&str]) {
    let factory = BrokenFactory {
        memory: MemoryFactory::new(),
        defect,
        every_namespace: Arc::default(),
    };
    let report = run_all(&factory).await;
    let failed = report.failed();
    println!("{defect:?}: {} checks failed: {failed:?}", failed.len());
    for name in must_fail {
        assert!(
            failed.contains(name),
            "defect {defect:?} was not caught by {name}; report:\n{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_memory_store_passes_every_check() {
    let report = run_all(&MemoryFactory::new()).await;
    assert!(report.failed().is_empty(), "{report}");
    assert!(
        report
            .results()
            .iter()
            .all(|(_, r)| matches!(r, Ok(Outcome::Passed))),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_store_that_ignores_the_issuer() {
    assert_caught(
        Defect::IgnoresIssuer,
        &[
            "registrations_isolated_per_issuer",
            "tokens_isolated_per_issuer",
            "lookalike_issuer_trailing_slash",
            "leases_are_per_token_key",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_store_that_normalises_a_trailing_slash() {
    assert_caught(
        Defect::NormalisesTrailingSlash,
        &[
            "lookalike_issuer_trailing_slash",
            "delete_issuer_tokens_leaves_other_issuers",
            "leases_are_per_token_key",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_last_write_wins_instead_of_cas() {
    assert_caught(
        Defect::LastWriteWins,
        &[
            "put_absent_conflicts_when_present",
            "put_version_conflicts_when_stale",
            "put_version_conflicts_when_deleted",
            "delete_with_stale_version_conflicts_and_keeps_record",
            "concurrent_cas_has_one_winner",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_lease_granted_twice() {
    assert_caught(
        Defect::LeaseGrantedTwice,
        &[
            "lease_is_exclusive",
            "stale_holder_cannot_release_taken_over_lease",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_renewal_that_does_not_hold_the_lease() {
    assert_caught(
        Defect::RenewStealsLease,
        &[
            "renewed_lease_stays_exclusive",
            "taken_over_lease_cannot_be_renewed",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_stale_versions() {
    assert_caught(
        Defect::StaleVersions,
        &["binding_and_token_versions_match_reads"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_secret_visible_in_debug() {
    assert_caught(Defect::SecretInDebug, &["no_secret_in_debug"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_store_that_ignores_the_namespace() {
    assert_caught(
        Defect::IgnoresNamespace,
        &[
            "namespaces_isolate_registrations",
            "namespaces_isolate_tokens_bindings_and_pending",
            "namespaces_isolate_leases",
            "lookalike_namespaces_are_distinct",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_store_that_drops_unknown_fields() {
    assert_caught(
        Defect::DropsExtra,
        &[
            "registration_round_trips_every_field",
            "tokens_round_trip_every_field",
            "unknown_extra_fields_survive",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_delete_issuer_that_deletes_everything() {
    assert_caught(
        Defect::DeleteIssuerDeletesAll,
        &[
            "delete_issuer_tokens_leaves_other_issuers",
            "lookalike_issuer_trailing_slash",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_scan_serving_stale_tokens() {
    assert_caught(
        Defect::ScanServesStaleTokens,
        &["scans_return_exactly_what_gets_return"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_scan_that_ignores_the_namespace() {
    assert_caught(
        Defect::ScanIgnoresNamespace,
        &["scans_return_exactly_what_gets_return"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_batch_write_that_drops_a_record() {
    assert_caught(Defect::BatchDropsLast, &["put_any_batches_write_like_puts"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_store_that_drops_the_dpop_key() {
    assert_caught(Defect::DropsDpopKey, &["tokens_round_trip_every_field"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_change_stamp_that_never_moves() {
    assert_caught(
        Defect::StuckChangeStamp,
        &["change_stamp_moves_on_every_write"],
    )
    .await;
}

#[test]
fn arc_and_box_forward_every_method() {
    fn assert_store<S: mcp_auth_core::CredentialStore>() {}
    assert_store::<Arc<MemoryStore>>();
    assert_store::<Box<MemoryStore>>();
    assert_store::<Arc<dyn mcp_auth_core::CredentialStore>>();
}
