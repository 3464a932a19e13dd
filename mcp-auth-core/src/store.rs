//! The store traits. Every backend implements all four; the engine is written against
//! [`CredentialStore`], their union.
//!
//! Records are keyed by issuer (registrations), by issuer **and** resource (tokens), by resource
//! (bindings) and by `state` (pending authorizations), always inside the namespace the store was
//! constructed with. Writes carry an [`Expect`]ation and fail with [`StoreError::Conflict`] when it
//! does not hold: that compare-and-swap is how a rotated refresh token is saved without ever
//! overwriting a newer one.

use std::fmt::{self, Debug};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::ids::{IssuerId, ResourceUri, TokenKey};
use crate::model::{ClientRegistration, PendingAuthorization, ResourceBinding, TokenSet};

/// Opaque version of a stored record; changes on every write. Compare only for equality.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps a backend's version token (a counter, a UUID, an etag, ...).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The backend's token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({})", self.0)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record with the version it was read at.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    /// The record.
    pub value: T,
    /// Its version; pass it back as [`Expect::Version`] to update exactly this record.
    pub version: Version,
}

/// What a write expects to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Write unconditionally.
    Any,
    /// Only if there is no record.
    Absent,
    /// Only if the record is still at this version.
    Version(Version),
}

impl Expect {
    /// Whether a record currently at `current` (`None`: absent) satisfies this expectation.
    /// Backends that check expectations in memory under a lock use this.
    pub fn holds(&self, current: Option<&Version>) -> bool {
        match (self, current) {
            (Self::Any, _) => true,
            (Self::Absent, None) => true,
            (Self::Absent, Some(_)) => false,
            (Self::Version(want), Some(have)) => want == have,
            (Self::Version(_), None) => false,
        }
    }
}

/// What a backend guarantees. The conformance suite gates optional checks on these; isolation
/// checks are never optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCapabilities {
    /// Expectations are checked atomically with the write, even against concurrent writers in
    /// other processes.
    pub atomic_cas: bool,
    /// Refresh leases are exclusive across processes (not only inside one).
    pub cross_process_lease: bool,
    /// Records survive the process (and a restart of the machine).
    pub durable: bool,
    /// Records can be enumerated (`list_*`).
    pub list: bool,
}

impl StoreCapabilities {
    /// Everything guaranteed.
    pub const ALL: Self = Self {
        atomic_cas: true,
        cross_process_lease: true,
        durable: true,
        list: true,
    };

    /// Nothing guaranteed; start here and set what holds.
    pub const NONE: Self = Self {
        atomic_cas: false,
        cross_process_lease: false,
        durable: false,
        list: false,
    };

    /// Sets `atomic_cas`.
    pub const fn with_atomic_cas(mut self, yes: bool) -> Self {
        self.atomic_cas = yes;
        self
    }

    /// Sets `cross_process_lease`.
    pub const fn with_cross_process_lease(mut self, yes: bool) -> Self {
        self.cross_process_lease = yes;
        self
    }

    /// Sets `durable`.
    pub const fn with_durable(mut self, yes: bool) -> Self {
        self.durable = yes;
        self
    }

    /// Sets `list`.
    pub const fn with_list(mut self, yes: bool) -> Self {
        self.list = yes;
        self
    }
}

/// A held refresh lease: while it is valid, no other holder (in any process sharing the store)
/// acquires the lease for the same [`TokenKey`]. Release it when the refresh is saved; if the
/// holder dies, the lease expires and can be taken over.
#[derive(Clone, PartialEq, Eq)]
pub struct RefreshLease {
    key: TokenKey,
    token: String,
    expires_at: SystemTime,
}

impl RefreshLease {
    /// A new lease with a fresh random holder token, expiring `ttl` from now. Backends call this
    /// and then try to record it.
    pub fn new(key: TokenKey, ttl: Duration) -> Self {
        Self {
            key,
            token: crate::random_hex(16),
            expires_at: SystemTime::now() + ttl,
        }
    }

    /// The same holder's lease, expiring `ttl` from now (for backends renewing it).
    pub fn renewed(&self, ttl: Duration) -> Self {
        Self {
            key: self.key.clone(),
            token: self.token.clone(),
            expires_at: SystemTime::now() + ttl,
        }
    }

    /// Rebuilds a lease from its parts (for backends).
    pub fn from_parts(key: TokenKey, token: String, expires_at: SystemTime) -> Self {
        Self {
            key,
            token,
            expires_at,
        }
    }

    /// The token set this lease guards.
    pub fn key(&self) -> &TokenKey {
        &self.key
    }

    /// The holder's random token: only this holder can release the lease.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// When the lease expires and may be taken over.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

impl Debug for RefreshLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshLease")
            .field("key", &self.key)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What every store says about itself.
pub trait StoreInfo: Debug + Send + Sync {
    /// Short backend name for messages (`"memory"`, `"sqlite"`, ...).
    fn backend_name(&self) -> &'static str;
    /// What this store guarantees.
    fn capabilities(&self) -> StoreCapabilities;
}

/// Client registrations, one per authorization server issuer.
#[async_trait]
pub trait RegistrationStore: StoreInfo {
    /// The registration for `issuer`, with its version.
    async fn get_registration(
        &self,
        issuer: &IssuerId,
    ) -> Result<Option<Versioned<ClientRegistration>>, StoreError>;

    /// Stores `registration` under its own issuer if `expect` holds; returns the new version.
    async fn put_registration(
        &self,
        registration: &ClientRegistration,
        expect: Expect,
    ) -> Result<Version, StoreError>;

    /// Deletes the registration for `issuer` if `expect` holds. `Ok(false)`: there was none.
    async fn delete_registration(
        &self,
        issuer: &IssuerId,
        expect: Expect,
    ) -> Result<bool, StoreError>;

    /// Every issuer with a registration in this namespace.
    async fn list_registrations(&self) -> Result<Vec<IssuerId>, StoreError>;

    /// Every registration in this namespace with its version, in no particular order: exactly
    /// what [`get_registration`](Self::get_registration) returns for each issuer
    /// [`list_registrations`](Self::list_registrations) lists (a corrupt record fails the scan
    /// with [`StoreError::Corrupt`], as its `get` does). For bulk readers (`mcp-auth status`,
    /// `migrate`); not a snapshot across records unless the backend says so.
    ///
    /// The default lists, then gets each issuer (a record deleted in between is left out).
    /// Backends override it with one query.
    async fn scan_registrations(&self) -> Result<Vec<Versioned<ClientRegistration>>, StoreError> {
        let mut found = Vec::new();
        for issuer in self.list_registrations().await? {
            if let Some(r) = self.get_registration(&issuer).await? {
                found.push(r);
            }
        }
        Ok(found)
    }

    /// Writes every registration as [`put_registration`](Self::put_registration) with
    /// [`Expect::Any`] would (an import: whatever is there is overwritten) and returns the new
    /// versions, in order. On an error, any subset may have been written; the call can simply be
    /// repeated.
    ///
    /// The default puts them one by one. Backends may batch (SQLite: one transaction per 1000).
    async fn put_registrations_any(
        &self,
        registrations: &[ClientRegistration],
    ) -> Result<Vec<Version>, StoreError> {
        let mut versions = Vec::with_capacity(registrations.len());
        for r in registrations {
            versions.push(self.put_registration(r, Expect::Any).await?);
        }
        Ok(versions)
    }
}

/// Token sets, one per (issuer, resource), plus the refresh lease for each.
#[async_trait]
pub trait TokenStore: StoreInfo {
    /// The tokens for `key`, with their version.
    async fn get_tokens(&self, key: &TokenKey) -> Result<Option<Versioned<TokenSet>>, StoreError>;

    /// Stores `tokens` under `key` if `expect` holds; returns the new version.
    async fn put_tokens(
        &self,
        key: &TokenKey,
        tokens: &TokenSet,
        expect: Expect,
    ) -> Result<Version, StoreError>;

    /// Deletes the tokens for `key` if `expect` holds. `Ok(false)`: there were none.
    async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError>;

    /// Deletes every token set issued by `issuer`, for all resources (the SEP-2352
    /// invalidation); other issuers' tokens are untouched. Returns how many were deleted.
    async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError>;

    /// Every token key in this namespace.
    async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError>;

    /// Every token set in this namespace with its key and version, in no particular order:
    /// exactly what [`get_tokens`](Self::get_tokens) returns for each key
    /// [`list_tokens`](Self::list_tokens) lists (a corrupt record fails the scan with
    /// [`StoreError::Corrupt`], as its `get` does). For bulk readers; not a snapshot across
    /// records unless the backend says so, and no lease is taken: a caller that must not copy a
    /// refresh half-way checks [`TokenSet::refresh_state`] and takes the lease itself.
    ///
    /// The default lists, then gets each key (a record deleted in between is left out).
    /// Backends override it with one query.
    async fn scan_tokens(&self) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
        let mut found = Vec::new();
        for key in self.list_tokens().await? {
            if let Some(t) = self.get_tokens(&key).await? {
                found.push((key, t));
            }
        }
        Ok(found)
    }

    /// Writes every token set as [`put_tokens`](Self::put_tokens) with [`Expect::Any`] would (an
    /// import) and returns the new versions, in order. On an error, any subset may have been
    /// written; the call can simply be repeated. Takes no lease.
    ///
    /// The default puts them one by one. Backends may batch (SQLite: one transaction per 1000).
    async fn put_tokens_any(
        &self,
        tokens: &[(TokenKey, TokenSet)],
    ) -> Result<Vec<Version>, StoreError> {
        let mut versions = Vec::with_capacity(tokens.len());
        for (key, t) in tokens {
            versions.push(self.put_tokens(key, t, Expect::Any).await?);
        }
        Ok(versions)
    }

    /// The current versions of the binding of `key.resource` and of the tokens under `key`
    /// (`None`: absent), in **one** round trip. The engine keeps the decoded binding and token
    /// set of each server in memory and revalidates them with this on every `access_token()`, so
    /// a warm call reads no value and decodes nothing while neither record changed, and still
    /// sees every other process's write at once.
    ///
    /// The default answers [`StoreError::Unsupported`]: the engine then reads both records on
    /// every call, as before. Backends should implement it (the conformance suite checks it when
    /// they do).
    async fn binding_and_token_versions(
        &self,
        key: &TokenKey,
    ) -> Result<(Option<Version>, Option<Version>), StoreError> {
        let _ = key;
        Err(StoreError::Unsupported {
            backend: self.backend_name(),
            operation: "binding_and_token_versions",
        })
    }

    /// A number that changes whenever any record of this store may have changed — through this
    /// handle, a clone, another namespace over the same data, or anyone else sharing it — read
    /// without I/O. While it is unchanged the engine serves its decoded token without even
    /// [`TokenStore::binding_and_token_versions`].
    ///
    /// Only a store whose every writer is in this process can offer one (the memory store);
    /// the default, `None`, is right for every store shared between processes, and for
    /// wrappers that do not forward it.
    fn change_stamp(&self) -> Option<u64> {
        None
    }

    /// Tries to take the refresh lease for `key` for `ttl`. `Ok(None)`: another holder has it and
    /// it has not expired. An expired lease is taken over.
    async fn try_acquire_refresh_lease(
        &self,
        key: &TokenKey,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError>;

    /// Extends `lease` to expire `ttl` from now, for a holder whose refresh is still running (the
    /// engine renews its lease on a heartbeat, so a dead holder is noticed within one short TTL).
    /// Succeeds when this holder still has the lease, or when the lease is free (it expired, and
    /// nobody took it over): the holder takes it again. `Ok(None)`: another holder has it now.
    async fn renew_refresh_lease(
        &self,
        lease: &RefreshLease,
        ttl: Duration,
    ) -> Result<Option<RefreshLease>, StoreError>;

    /// Releases `lease` if it is still held by its holder. `Ok(false)`: it had expired and was
    /// taken over (or released) already, and nothing was changed.
    async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError>;
}

/// Which authorization server each MCP server is bound to, with its discovered metadata.
#[async_trait]
pub trait BindingStore: StoreInfo {
    /// The binding of `resource`, with its version.
    async fn get_binding(
        &self,
        resource: &ResourceUri,
    ) -> Result<Option<Versioned<ResourceBinding>>, StoreError>;

    /// Stores `binding` under its resource if `expect` holds; returns the new version.
    async fn put_binding(
        &self,
        binding: &ResourceBinding,
        expect: Expect,
    ) -> Result<Version, StoreError>;

    /// Deletes the binding of `resource` if `expect` holds. `Ok(false)`: there was none.
    async fn delete_binding(
        &self,
        resource: &ResourceUri,
        expect: Expect,
    ) -> Result<bool, StoreError>;

    /// Every bound resource in this namespace.
    async fn list_bindings(&self) -> Result<Vec<ResourceUri>, StoreError>;

    /// Every binding in this namespace with its version, in no particular order: exactly what
    /// [`get_binding`](Self::get_binding) returns for each resource
    /// [`list_bindings`](Self::list_bindings) lists (a corrupt record fails the scan with
    /// [`StoreError::Corrupt`]). Not a snapshot across records unless the backend says so.
    ///
    /// The default lists, then gets each resource (a record deleted in between is left out).
    /// Backends override it with one query.
    async fn scan_bindings(&self) -> Result<Vec<Versioned<ResourceBinding>>, StoreError> {
        let mut found = Vec::new();
        for resource in self.list_bindings().await? {
            if let Some(b) = self.get_binding(&resource).await? {
                found.push(b);
            }
        }
        Ok(found)
    }

    /// Writes every binding as [`put_binding`](Self::put_binding) with [`Expect::Any`] would (an
    /// import) and returns the new versions, in order. On an error, any subset may have been
    /// written; the call can simply be repeated.
    ///
    /// The default puts them one by one. Backends may batch (SQLite: one transaction per 1000).
    async fn put_bindings_any(
        &self,
        bindings: &[ResourceBinding],
    ) -> Result<Vec<Version>, StoreError> {
        let mut versions = Vec::with_capacity(bindings.len());
        for b in bindings {
            versions.push(self.put_binding(b, Expect::Any).await?);
        }
        Ok(versions)
    }
}

/// Authorization flows in progress, keyed by `state`, each expiring at its `expires_at`.
#[async_trait]
pub trait PendingAuthorizationStore: StoreInfo {
    /// Records a flow. Fails with [`StoreError::Conflict`] if the state is already in use.
    async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError>;

    /// Removes and returns the flow for `state`: each state can be redeemed once. Expired flows
    /// are never returned.
    async fn take_pending(&self, state: &str) -> Result<Option<PendingAuthorization>, StoreError>;
}

/// Everything the engine needs from a store; implemented for every type that implements the four
/// store traits.
pub trait CredentialStore:
    RegistrationStore + TokenStore + BindingStore + PendingAuthorizationStore
{
}

impl<T> CredentialStore for T where
    T: RegistrationStore + TokenStore + BindingStore + PendingAuthorizationStore + ?Sized
{
}

// Forwarding impls for smart pointers. `missing_trait_methods` makes a new trait method that is
// not forwarded a compile error instead of a silently used default.
macro_rules! forward_store_impls {
    ($($ptr:ident),+) => {$(
        #[deny(clippy::missing_trait_methods)]
        impl<T: StoreInfo + ?Sized> StoreInfo for $ptr<T> {
            fn backend_name(&self) -> &'static str {
                (**self).backend_name()
            }
            fn capabilities(&self) -> StoreCapabilities {
                (**self).capabilities()
            }
        }

        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: RegistrationStore + ?Sized> RegistrationStore for $ptr<T> {
            async fn get_registration(
                &self,
                issuer: &IssuerId,
            ) -> Result<Option<Versioned<ClientRegistration>>, StoreError> {
                (**self).get_registration(issuer).await
            }
            async fn put_registration(
                &self,
                registration: &ClientRegistration,
                expect: Expect,
            ) -> Result<Version, StoreError> {
                (**self).put_registration(registration, expect).await
            }
            async fn delete_registration(
                &self,
                issuer: &IssuerId,
                expect: Expect,
            ) -> Result<bool, StoreError> {
                (**self).delete_registration(issuer, expect).await
            }
            async fn list_registrations(&self) -> Result<Vec<IssuerId>, StoreError> {
                (**self).list_registrations().await
            }
            async fn scan_registrations(
                &self,
            ) -> Result<Vec<Versioned<ClientRegistration>>, StoreError> {
                (**self).scan_registrations().await
            }
            async fn put_registrations_any(
                &self,
                registrations: &[ClientRegistration],
            ) -> Result<Vec<Version>, StoreError> {
                (**self).put_registrations_any(registrations).await
            }
        }

        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: TokenStore + ?Sized> TokenStore for $ptr<T> {
            async fn get_tokens(
                &self,
                key: &TokenKey,
            ) -> Result<Option<Versioned<TokenSet>>, StoreError> {
                (**self).get_tokens(key).await
            }
            async fn put_tokens(
                &self,
                key: &TokenKey,
                tokens: &TokenSet,
                expect: Expect,
            ) -> Result<Version, StoreError> {
                (**self).put_tokens(key, tokens, expect).await
            }
            async fn delete_tokens(&self, key: &TokenKey, expect: Expect) -> Result<bool, StoreError> {
                (**self).delete_tokens(key, expect).await
            }
            async fn delete_issuer_tokens(&self, issuer: &IssuerId) -> Result<usize, StoreError> {
                (**self).delete_issuer_tokens(issuer).await
            }
            async fn list_tokens(&self) -> Result<Vec<TokenKey>, StoreError> {
                (**self).list_tokens().await
            }
            async fn scan_tokens(
                &self,
            ) -> Result<Vec<(TokenKey, Versioned<TokenSet>)>, StoreError> {
                (**self).scan_tokens().await
            }
            async fn put_tokens_any(
                &self,
                tokens: &[(TokenKey, TokenSet)],
            ) -> Result<Vec<Version>, StoreError> {
                (**self).put_tokens_any(tokens).await
            }
            async fn binding_and_token_versions(
                &self,
                key: &TokenKey,
            ) -> Result<(Option<Version>, Option<Version>), StoreError> {
                (**self).binding_and_token_versions(key).await
            }
            fn change_stamp(&self) -> Option<u64> {
                (**self).change_stamp()
            }
            async fn try_acquire_refresh_lease(
                &self,
                key: &TokenKey,
                ttl: Duration,
            ) -> Result<Option<RefreshLease>, StoreError> {
                (**self).try_acquire_refresh_lease(key, ttl).await
            }
            async fn renew_refresh_lease(
                &self,
                lease: &RefreshLease,
                ttl: Duration,
            ) -> Result<Option<RefreshLease>, StoreError> {
                (**self).renew_refresh_lease(lease, ttl).await
            }
            async fn release_refresh_lease(&self, lease: &RefreshLease) -> Result<bool, StoreError> {
                (**self).release_refresh_lease(lease).await
            }
        }

        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: BindingStore + ?Sized> BindingStore for $ptr<T> {
            async fn get_binding(
                &self,
                resource: &ResourceUri,
            ) -> Result<Option<Versioned<ResourceBinding>>, StoreError> {
                (**self).get_binding(resource).await
            }
            async fn put_binding(
                &self,
                binding: &ResourceBinding,
                expect: Expect,
            ) -> Result<Version, StoreError> {
                (**self).put_binding(binding, expect).await
            }
            async fn delete_binding(
                &self,
                resource: &ResourceUri,
                expect: Expect,
            ) -> Result<bool, StoreError> {
                (**self).delete_binding(resource, expect).await
            }
            async fn list_bindings(&self) -> Result<Vec<ResourceUri>, StoreError> {
                (**self).list_bindings().await
            }
            async fn scan_bindings(&self) -> Result<Vec<Versioned<ResourceBinding>>, StoreError> {
                (**self).scan_bindings().await
            }
            async fn put_bindings_any(
                &self,
                bindings: &[ResourceBinding],
            ) -> Result<Vec<Version>, StoreError> {
                (**self).put_bindings_any(bindings).await
            }
        }

        #[deny(clippy::missing_trait_methods)]
        #[async_trait]
        impl<T: PendingAuthorizationStore + ?Sized> PendingAuthorizationStore for $ptr<T> {
            async fn insert_pending(&self, pending: &PendingAuthorization) -> Result<(), StoreError> {
                (**self).insert_pending(pending).await
            }
            async fn take_pending(
                &self,
                state: &str,
            ) -> Result<Option<PendingAuthorization>, StoreError> {
                (**self).take_pending(state).await
            }
        }
    )+};
}

use std::boxed::Box;
use std::sync::Arc;
forward_store_impls!(Arc, Box);
